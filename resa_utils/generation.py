"""Batched greedy generation (KV cache, left padding, stop strings) and a resumable evaluation
of graded problems: finished batches are kept as sweep rows, so a killed evaluation resumes."""

from __future__ import annotations

from pathlib import Path

import torch

from .progress import PROGRESS_INTERVAL_S, tqdm


@torch.no_grad()
def generate(lm, prompts: list[str], max_new_tokens: int = 256, batch_size: int = 16,
             stop: tuple[str, ...] = (), progress: bool = False) -> list[dict]:
    """Greedy continuations of `prompts`, `batch_size` at a time (left-padded, one KV cache per
    batch). Each result: `{"text", "n_tokens"}`, the text cut after the first stop string."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be >= 1")
    tok = lm.tokenizer
    empty = [i for i, p in enumerate(prompts) if not tok(p, add_special_tokens=False)["input_ids"]]
    if empty:
        raise ValueError(f"prompts {empty[:10]} tokenize to nothing: drop them or give them text")
    side = tok.padding_side
    tok.padding_side = "left"
    out: list[dict] = []
    try:
        for a in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress,
                      leave=False, mininterval=PROGRESS_INTERVAL_S):
            enc = tok(prompts[a:a + batch_size], return_tensors="pt", padding=True).to(lm.device)
            kwargs = dict(stop_strings=list(stop), tokenizer=tok) if stop else {}
            ids = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id, **kwargs)
            for row in ids[:, enc.input_ids.shape[1]:]:
                keep = row[row != tok.pad_token_id] if tok.pad_token_id != tok.eos_token_id else row
                text = tok.decode(keep, skip_special_tokens=True)
                out.append({"text": _cut(text, stop), "n_tokens": int(_n_generated(row, tok))})
    finally:
        tok.padding_side = side
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
             stop: tuple[str, ...] = ("</answer>",)):
    """Generate for every problem and grade it: a DataFrame with one row per problem (uid,
    correct, generated text, n_tokens, reflection counts). Batches are sweep rows in `path`
    (keyed by `setup` and the batch's problems), so a killed evaluation resumes."""
    import pandas as pd

    from .sweep import run_sweep
    from .tasks import REFLECTION_PHRASES, is_correct, reflection_counts

    if not problems:
        raise ValueError("evaluate got no problems")
    configs = [{"setup": setup, "uids": [p.uid for p in problems[a:a + batch_size]],
                "max_new_tokens": max_new_tokens, "stop": list(stop)}
               for a in range(0, len(problems), batch_size)]
    by_uid = {p.uid: p for p in problems}

    def run_batch(c: dict) -> dict:
        batch = [by_uid[u] for u in c["uids"]]
        gens = generate(lm, [make_prompt(p) for p in batch], max_new_tokens, len(batch), stop)
        return {"results": [{"uid": p.uid, "answer": p.answer, "text": g["text"],
                             "n_tokens": g["n_tokens"], "correct": is_correct(g["text"], p.answer),
                             **reflection_counts(g["text"])} for p, g in zip(batch, gens)]}

    rows = run_sweep(path, configs, run_batch, desc="evaluate")
    columns = ["uid", "answer", "correct", "n_tokens", "text", *REFLECTION_PHRASES]
    return pd.DataFrame([r for batch in rows.results for r in batch])[columns]
