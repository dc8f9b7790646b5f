"""Steering vectors (paper 2, and later notebook 04): contrastive activation addition
(difference of means of the last-token hidden state over two prompt sets), a hook that adds
`α v/‖v‖` at every position of one block's output, and the logit-difference metric.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from resa_utils.lm.activations import decoder_layers, resid_hook, splice
from resa_utils.lm.generation import check_prompts, left_padding


def diff_of_means(pos_ND: torch.Tensor, neg_ND: torch.Tensor) -> torch.Tensor:
    """CAA direction: mean of the positive set minus mean of the negative set (unnormalised)."""
    if len(pos_ND) == 0 or len(neg_ND) == 0:
        raise ValueError("both prompt sets need at least one prompt")
    return pos_ND.double().mean(0).float() - neg_ND.double().mean(0).float()


def _encode(lm, prompts: list[str]):
    """Left-padded ids: the last position is every prompt's last token."""
    check_prompts(lm.tokenizer, prompts)
    with left_padding(lm.tokenizer) as tok:
        return tok(prompts, return_tensors="pt", padding=True).to(lm.device)


@torch.no_grad()
def last_token_states(lm, prompts: list[str], layer: int, batch_size: int = 16) -> torch.Tensor:
    """Block `layer`'s output at each prompt's last token: `acts_ND` (float32, CPU)."""
    return torch.cat([p.h_BTD[:, -1].float().cpu() for p in run_prefix(lm, prompts, layer, batch_size)])


@contextmanager
def steer(lm, layer: int, v_D: torch.Tensor, alpha: float):
    """Inside the block, block `layer`'s output gets `alpha · v/‖v‖` added at every position;
    the model is as it was on exit."""
    norm = float(v_D.norm())
    if norm == 0:
        raise ValueError("steering vector has zero norm")
    delta = (alpha * v_D / norm).to(device=lm.device, dtype=lm.dtype)
    with splice(lm.model, resid_hook(layer), lambda h: h + delta):
        yield


def generate_steered(lm, prompts: list[str], layer: int, delta_ND: torch.Tensor,
                     max_new_tokens: int, stop: tuple[str, ...] = ()) -> list[dict]:
    """Greedy continuations of `prompts`, prompt i steered by `delta_ND[i]` added at every position
    of block `layer`'s output (a zero row: unsteered). All prompts run as one batch, so prompts
    steered by different vectors share one `generate` (memory-bound on CPU: many rows cost
    about as much as one)."""
    from resa_utils.lm.generation import generate

    if delta_ND.shape[0] != len(prompts):
        raise ValueError(f"{delta_ND.shape[0]} steering rows for {len(prompts)} prompts: give one per prompt")
    delta = delta_ND.to(device=lm.device, dtype=lm.dtype)[:, None, :]
    with splice(lm.model, resid_hook(layer), lambda h: h + delta):
        return generate(lm, prompts, max_new_tokens, batch_size=len(prompts), stop=stop)


@dataclass
class Prefix:
    """Block `layer`'s output for one batch of left-padded prompts: the rest of the model can be
    run from it many times (one per steering vector and α) without redoing blocks 0..layer."""

    layer: int
    h_BTD: torch.Tensor
    attention_mask_BT: torch.Tensor


@torch.no_grad()
def run_prefix(lm, prompts: list[str], layer: int, batch_size: int = 16) -> list[Prefix]:
    """Blocks 0..`layer` over `prompts`, `batch_size` at a time (the model stops there)."""
    from resa_utils.lm.activations import run_with_cache

    n_layers = len(decoder_layers(lm.model))
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer} is out of range for {lm.name} ({n_layers} layers): "
                         f"use 0..{n_layers - 1}")
    out = []
    for a in range(0, len(prompts), batch_size):
        enc = _encode(lm, prompts[a:a + batch_size])
        acts = run_with_cache(lm.model, enc.input_ids, [resid_hook(layer)], enc.attention_mask)
        out.append(Prefix(layer, acts[resid_hook(layer)], enc.attention_mask))
    return out


class _Skip(torch.nn.Module):
    """A decoder block that passes its input through (stands in for blocks already run)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextmanager
def _skip_blocks(model, n: int):
    """Blocks 0..n-1 pass their input through, so `inputs_embeds` enters block n. The blocks stay
    in place (not sliced away): models index per-block settings (sliding or full attention) by
    position in the list."""
    layers = decoder_layers(model)
    saved = [layers[i] for i in range(n)]
    for i in range(n):
        layers[i] = _Skip()
    try:
        yield
    finally:
        for i, block in enumerate(saved):
            layers[i] = block


def _token_ids(lm, pos_token: str | int, neg_token: str | int) -> list[int]:
    ids = []
    for t in (pos_token, neg_token):
        if isinstance(t, int):  # a token id
            ids.append(t)
            continue
        enc = lm.tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"behaviour token {t!r} is {len(enc)} tokens for {lm.name}: pick one "
                             "that is a single token (often with a leading space)")
        ids.append(enc[0])
    return ids


@torch.no_grad()
def logit_diff_from(lm, prefixes: list[Prefix], pos_token: str | int, neg_token: str | int,
                    delta_D: torch.Tensor | None = None) -> torch.Tensor:
    """`logit_diff` of the prompts behind `prefixes`, with `delta_D` added at every position of
    the prefix block's output (None: unsteered), running only the blocks after it: the same
    numbers as `steer` + `logit_diff`, at the cost of the remaining blocks."""
    ids = _token_ids(lm, pos_token, neg_token)
    out = []
    for p in prefixes:
        h = p.h_BTD if delta_D is None else p.h_BTD + delta_D.to(device=p.h_BTD.device, dtype=p.h_BTD.dtype)
        with _skip_blocks(lm.model, p.layer + 1):
            logits = lm.model(inputs_embeds=h, attention_mask=p.attention_mask_BT, use_cache=False,
                              logits_to_keep=1).logits[:, -1].float()
        out.append((logits[:, ids[0]] - logits[:, ids[1]]).cpu())
    return torch.cat(out)


@torch.no_grad()
def logit_diff(lm, prompts: list[str], pos_token: str | int, neg_token: str | int,
               batch_size: int = 16) -> torch.Tensor:
    """Logit(y+) − Logit(y−) of the next token after each prompt: `diff_N`. Each of `pos_token`
    and `neg_token` must be one token (e.g. " Yes" / " No"), or a token id."""
    ids = _token_ids(lm, pos_token, neg_token)
    out = []
    for a in range(0, len(prompts), batch_size):
        enc = _encode(lm, prompts[a:a + batch_size])
        logits = lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                          use_cache=False, logits_to_keep=1).logits[:, -1].float()  # LM head on the last position only
        out.append((logits[:, ids[0]] - logits[:, ids[1]]).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- behaviours

BEHAVIOURS_DIR = Path(__file__).resolve().parents[1] / "data" / "behaviours"


@dataclass
class Behaviour:
    """A contrastive prompt set (`resa_utils/data/behaviours/<name>.json`): prompts are
    `template.format(text=item)`, and the metric is Logit(pos_token) − Logit(neg_token)."""

    name: str
    description: str
    template: str
    pos_token: str
    neg_token: str
    pos: list[str]
    neg: list[str]

    def prompts(self, items: list[str]) -> list[str]:
        return [self.template.format(text=t) for t in items]

    def split(self, n_fit: int, seed: int) -> tuple[list[str], list[str], list[str], list[str]]:
        """`(fit_pos, fit_neg, eval_pos, eval_neg)` prompts: a seeded shuffle of each side, the
        first `n_fit` for the vector and the rest held out."""
        if not 0 < n_fit < min(len(self.pos), len(self.neg)):
            raise ValueError(f"n_fit={n_fit} must leave held-out prompts: behaviour {self.name!r} has "
                             f"{len(self.pos)} / {len(self.neg)} prompts a side")
        out = []
        for i, side in enumerate((self.pos, self.neg)):
            order = torch.randperm(len(side), generator=torch.Generator().manual_seed(seed + i)).tolist()
            out.append([side[j] for j in order])
        (p, n) = out
        return self.prompts(p[:n_fit]), self.prompts(n[:n_fit]), self.prompts(p[n_fit:]), self.prompts(n[n_fit:])


def behaviour_names() -> list[str]:
    return sorted(f.stem for f in BEHAVIOURS_DIR.glob("*.json"))


def load_behaviour(name: str) -> Behaviour:
    path = BEHAVIOURS_DIR / f"{name}.json"
    if not path.exists():
        raise ValueError(f"unknown behaviour {name!r}: use one of {behaviour_names()}")
    data = json.loads(path.read_text())
    return Behaviour(**{k: data[k] for k in ("name", "description", "template", "pos_token", "neg_token",
                                              "pos", "neg")})


def random_like(v_D: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction with the norm of `v_D` (the steering control)."""
    r = torch.randn(v_D.shape, generator=torch.Generator().manual_seed(seed))
    return r / r.norm() * v_D.norm()



def evaluate_steered(lm, problems: list, make_prompt, layer: int, vectors: dict[str, torch.Tensor],
                     scales: list[float], path: str | Path, setup: dict, max_new_tokens: int = 128,
                     batch_size: int = 64, stop: tuple[str, ...] = ("</answer>",)):
    """Greedy answers to `problems` with `scale · v` (v as given, not normalised) added to block
    `layer`'s output at every position, for every named vector and scale (scale 0: unsteered,
    run once). One DataFrame row per (vector, scale, problem): correct, n_tokens, text and the
    reflection-phrase counts. Batches mix settings (each row its own vector) and are sweep rows
    in `path`, keyed by `setup`, so a killed sweep resumes."""
    import pandas as pd

    from resa_utils.core.sweep import config_key, run_sweep
    from resa_utils.data.tasks import REFLECTION_PHRASES, is_correct, reflection_counts

    if not problems or not vectors or not scales:
        raise ValueError("evaluate_steered needs problems, vectors and scales (none may be empty)")
    D = int(lm.model.config.hidden_size)
    for name, v in vectors.items():
        if tuple(v.shape) != (D,):
            raise ValueError(f"steering vector {name!r} has shape {tuple(v.shape)}, the model's width is {D}")
    settings = [("none", 0.0)] if 0 in scales else []
    settings += [(n, float(s)) for n in vectors for s in scales if s != 0]
    jobs = [(n, s, p) for n, s in settings for p in problems]
    keys = {n: config_key({"v": v.tolist()}) for n, v in vectors.items()}  # a changed vector reruns
    configs = [{"setup": setup, "max_new_tokens": max_new_tokens, "stop": list(stop),
                "jobs": [(n, s, keys.get(n, ""), p.uid) for n, s, p in jobs[a:a + batch_size]]}
               for a in range(0, len(jobs), batch_size)]
    by_uid = {p.uid: p for p in problems}

    def run_batch(c: dict) -> dict:
        batch = [(n, s, by_uid[u]) for n, s, _, u in c["jobs"]]
        delta = torch.stack([vectors[n] * s if n in vectors else torch.zeros(D) for n, s, _ in batch])
        gens = generate_steered(lm, [make_prompt(p) for _, _, p in batch], layer, delta, max_new_tokens, stop)
        return {"results": [{"vector": n, "scale": s, "uid": p.uid, "correct": is_correct(g["text"], p.answer),
                             "n_tokens": g["n_tokens"], "text": g["text"], **reflection_counts(g["text"])}
                            for (n, s, p), g in zip(batch, gens)]}

    rows = run_sweep(path, configs, run_batch, desc="steered generations")
    columns = ["vector", "scale", "uid", "correct", "n_tokens", "text", *REFLECTION_PHRASES]
    return pd.DataFrame([r for batch in rows.results for r in batch])[columns]

