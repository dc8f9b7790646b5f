"""Batched greedy generation (KV cache, left padding, stop strings) and a resumable evaluation
of graded problems: finished batches are kept as sweep rows, so a killed evaluation resumes."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch

from resa_utils.core.progress import PROGRESS_INTERVAL_S, tqdm


def chat_prompt(tokenizer, user: str, system: str | None = None) -> str:
    """`user` (and `system`) in the model's chat template, ready for the assistant's turn; plain
    text where the tokenizer has no template. The template's leading BOS is dropped when the
    tokenizer adds one itself, so the prompt is not tokenized with two."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]
    if not getattr(tokenizer, "chat_template", None):
        return (system + "\n\n" if system else "") + user + "\n"
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        return text[len(bos):]
    return text


def check_prompts(tokenizer, prompts: list[str]) -> None:
    """Refuse prompts that tokenize to nothing (there is no last token to continue from)."""
    empty = [i for i, p in enumerate(prompts) if not tokenizer(p, add_special_tokens=False)["input_ids"]]
    if empty:
        raise ValueError(f"prompts {empty[:10]} tokenize to nothing: drop them or give them text")


@contextmanager
def left_padding(tokenizer):
    """Pad on the left inside the block, so every prompt's last token is the batch's last
    position; the tokenizer's own side is restored on exit."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side


@torch.no_grad()
def generate(lm, prompts: list[str], max_new_tokens: int = 256, batch_size: int = 16,
             stop: tuple[str, ...] = (), progress: bool = False, temperature: float = 0.0,
             seed: int = 0) -> list[dict]:
    """Continuations of `prompts`, `batch_size` at a time (left-padded, one KV cache per batch):
    greedy, or sampled at `temperature` > 0 (batch i seeded with `seed + i`, so a rerun of a
    batch repeats it). Each result: `{"text", "n_tokens"}`, the text cut after the first stop."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    tok = lm.tokenizer
    check_prompts(tok, prompts)
    out: list[dict] = []
    with left_padding(tok):
        for a in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress,
                      leave=False, mininterval=PROGRESS_INTERVAL_S):
            enc = tok(prompts[a:a + batch_size], return_tensors="pt", padding=True).to(lm.device)
            kwargs = dict(stop_strings=list(stop), tokenizer=tok) if stop else {}
            if temperature > 0:
                torch.manual_seed(seed + a // batch_size)
                kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
            ids = lm.model.generate(**enc, max_new_tokens=max_new_tokens,
                                    pad_token_id=tok.pad_token_id, **kwargs)
            for row in ids[:, enc.input_ids.shape[1]:]:
                keep = row[row != tok.pad_token_id] if tok.pad_token_id != tok.eos_token_id else row
                text = tok.decode(keep, skip_special_tokens=True)
                out.append({"text": _cut(text, stop), "n_tokens": int(_n_generated(row, tok))})
    return out


def _n_generated(row: torch.Tensor, tok) -> int:
    """Tokens generated before padding (EOS counted once)."""
    pads = (row == tok.pad_token_id).nonzero()
    end = int(pads[0]) if len(pads) else len(row)
    if tok.pad_token_id == tok.eos_token_id and end < len(row):
        end += 1
    return end


def _cut(text: str, stop: tuple[str, ...]) -> str:
    ends = [text.find(s) + len(s) for s in stop if s in text]
    return text[:min(ends)] if ends else text


def evaluate(lm, problems: list, make_prompt, path: str | Path, setup: dict,
             max_new_tokens: int = 256, batch_size: int = 16,
             stop: tuple[str, ...] = ("</answer>",), temperature: float = 0.0, seed: int = 0,
             desc: str = "evaluate"):
    """Generate for every problem and grade it: a DataFrame with one row per problem (uid,
    correct, lenient, generated text, n_tokens, reflection counts). `correct` needs the answer
    in the asked format; `lenient` takes the last number anywhere. Batches are sweep rows in
    `path` (keyed by `setup` and the batch's problems), so a killed evaluation resumes.
    With `temperature` > 0 each problem is sampled once per occurrence in `problems`.
    `df.attrs["seconds"]`: the generation time summed over every batch, including batches
    finished by an earlier, interrupted call."""
    import pandas as pd

    from resa_utils.core.sweep import run_sweep
    from resa_utils.data.tasks import REFLECTION_PHRASES, is_correct, reflection_counts

    if not problems:
        raise ValueError("evaluate got no problems")
    configs = [{"setup": setup, "uids": [p.uid for p in problems[a:a + batch_size]],
                "max_new_tokens": max_new_tokens, "stop": list(stop),
                "temperature": temperature, "seed": seed + a}
               for a in range(0, len(problems), batch_size)]
    by_uid = {p.uid: p for p in problems}

    def run_batch(c: dict) -> dict:
        batch = [by_uid[u] for u in c["uids"]]
        t0 = time.perf_counter()
        gens = generate(lm, [make_prompt(p) for p in batch], max_new_tokens, len(batch), stop,
                        temperature=temperature, seed=c["seed"])
        return {"results": [{"uid": p.uid, "answer": p.answer, "text": g["text"],
                             "n_tokens": g["n_tokens"], "correct": is_correct(g["text"], p.answer),
                             "lenient": is_correct(g["text"], p.answer, lenient=True),
                             **reflection_counts(g["text"])} for p, g in zip(batch, gens)],
                "seconds": time.perf_counter() - t0}

    rows = run_sweep(path, configs, run_batch, desc=desc)
    columns = ["uid", "answer", "correct", "lenient", "n_tokens", "text", *REFLECTION_PHRASES]
    df = pd.DataFrame([r for batch in rows.results for r in batch])[columns]
    # generation time of every batch, whenever it ran: a resumed evaluation reports its full cost
    df.attrs["seconds"] = float(rows["seconds"].sum()) if "seconds" in rows else float("nan")
    return df
