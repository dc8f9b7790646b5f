"""Notebook 00's method: a base model distilled into a reasoner on templated worked traces, and
a stronger reasoner by rejection-sampling fine-tuning (RFT) on its own correct samples; the
accuracy table with Wilson intervals, and each stage's cost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from resa_utils.data.tasks import REFLECTION_PHRASES, Problem, TraceStyle, wilson, worked_trace

if TYPE_CHECKING:
    import pandas as pd


def trace_examples(problems: list[Problem], style: TraceStyle, make_prompt: Callable,
                   seed: int = 0) -> list[tuple[str, str]]:
    """`(prompt, worked trace)` pairs for distillation (templated traces, seeded)."""
    rng = random.Random(seed)
    return [(make_prompt(p), worked_trace(p, style, rng)) for p in problems]


def correct_samples(samples, problems: list[Problem], make_prompt: Callable,
                    per_problem: int | None = None) -> list[tuple[str, str]]:
    """RFT's training set: the correct (strictly graded) samples in `samples` (a frame from
    `generation.evaluate`), distinct texts only, at most `per_problem` per problem."""
    by_uid = {p.uid: p for p in problems}
    out, seen, count = [], set(), {}
    for row in samples.itertuples():
        if not row.correct or (row.uid, row.text) in seen:
            continue
        if per_problem is not None and count.get(row.uid, 0) >= per_problem:
            continue
        seen.add((row.uid, row.text))
        count[row.uid] = count.get(row.uid, 0) + 1
        out.append((make_prompt(by_uid[row.uid]), row.text))
    return out


def accuracy_row(model: str, df) -> dict:
    """One model's evaluation as a table row: pass@1 (strict and lenient) with Wilson 95%
    intervals, mean generated tokens, and reflection phrases per problem."""
    n, k, k_len = len(df), int(df.correct.sum()), int(df.lenient.sum())
    lo, hi = wilson(k, n)
    llo, lhi = wilson(k_len, n)
    return {"model": model, "n": n, "correct": k, "pass@1": k / n, "ci_low": lo, "ci_high": hi,
            "lenient pass@1": k_len / n, "lenient ci_low": llo, "lenient ci_high": lhi,
            "mean tokens": float(df.n_tokens.mean()),
            **{f"{w} / problem": float(df[w].mean()) for w in REFLECTION_PHRASES}}


def lift(better: dict, worse: dict, key: str = "") -> dict:
    """Points gained from `worse` to `better` and whether their 95% intervals are disjoint."""
    p, lo, hi = (f"{key}pass@1", f"{key}ci_low", f"{key}ci_high")
    return {"points": 100 * (better[p] - worse[p]), "disjoint": better[lo] > worse[hi]}


def generation_flops(n_params: int, prompt_tokens: int, generated_tokens: int) -> float:
    """Forward FLOPs of generation, 2 · params · tokens (prompt once, each new token once with
    the KV cache; attention's own FLOPs are small at these lengths and left out)."""
    return 2.0 * n_params * (prompt_tokens + generated_tokens)


@dataclass
class ModelEval:
    """One model's graded answers on a problem set, its accuracy row and its cost."""

    label: str
    answers: "pd.DataFrame"
    """One row per problem (`generation.evaluate`'s frame: uid, correct, lenient, text, n_tokens, ...)."""
    row: dict
    """`accuracy_row(label, answers)`: pass@1 with its Wilson interval, mean tokens, phrases."""
    cost: dict
    """`{"stage", "wall s", "tokens", "FLOPs"}` of the evaluation (prompt and generated tokens)."""

    def metrics(self) -> dict:
        """Scalars to record for this model (`<label>/pass@1`, lenient, mean tokens)."""
        r = self.row
        return {f"{self.label}/pass@1": r["pass@1"], f"{self.label}/lenient_pass@1": r["lenient pass@1"],
                f"{self.label}/mean_tokens": r["mean tokens"]}

    def summary(self) -> str:
        r = self.row
        return (f"{self.label}: pass@1 {r['pass@1']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] on {r['n']}, "
                f"lenient {r['lenient pass@1']:.3f}, mean {r['mean tokens']:.0f} tokens, "
                f"{self.cost['wall s'] / 60:.1f} min")


def evaluate_model(lm, label: str, problems: list[Problem], make_prompt: Callable, path, setup: dict,
                   max_new_tokens: int, batch_size: int, **evaluate_kw) -> ModelEval:
    """Greedy answers of `lm` to `problems`, graded, with their accuracy row and cost (resumable:
    batches are sweep rows in `path`, keyed by `setup` plus the label)."""
    from resa_utils.lm.generation import evaluate

    df = evaluate(lm, problems, make_prompt, path, {**setup, "model": label}, max_new_tokens,
                  batch_size, desc=f"eval {label}", **evaluate_kw)
    n_params = sum(p.numel() for p in lm.model.parameters())
    prompt_tokens = sum(len(lm.tokenizer(make_prompt(p))["input_ids"]) for p in problems)
    generated = int(df.n_tokens.sum())
    cost = {"stage": f"evaluate {label}", "wall s": df.attrs["seconds"], "tokens": prompt_tokens + generated,
            "FLOPs": generation_flops(n_params, prompt_tokens, generated)}
    return ModelEval(label, df, accuracy_row(label, df), cost)
