"""Notebook 00's method: a base model distilled into a reasoner on templated worked traces, and
a stronger reasoner by rejection-sampling fine-tuning (RFT) on its own correct samples; the
accuracy table with Wilson intervals, and each stage's cost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from resa_utils.data.tasks import REFLECTION_PHRASES, Problem, TraceStyle, prompt, wilson, worked_trace

if TYPE_CHECKING:
    import pandas as pd

    from resa_utils.lm.content import ContentRule
    from resa_utils.lm.lora import LoraResult, LoraTrainConfig


@dataclass(eq=False)
class TaskPrompt:
    """The prompt every stage shares: the task's question (`tasks.prompt`) in `tokenizer`'s chat
    template. A picklable callable `problem -> str` (worker processes can take it)."""

    tokenizer: object

    def __call__(self, problem: Problem) -> str:
        from resa_utils.lm.generation import chat_prompt

        return chat_prompt(self.tokenizer, prompt(problem))


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
        """One line to print: pass@1 with its interval, lenient pass@1, mean tokens, minutes."""
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


# --------------------------------------------------------------------------- choosing the base

SPEED_COLUMNS = ["model", "n_params", "tokens/s", "tokens_per_example", "est. distill min"]


def candidate_speed(models: list[str], problems: list[Problem], style: TraceStyle, cfg: "LoraTrainConfig",
                    steps: int, path: str | Path, setup: dict, n_train: int, epochs: float,
                    seed: int = 0) -> "pd.DataFrame":
    """LoRA training tokens/s of each candidate base on its own trace examples (`steps` timed
    optimizer steps after one warm-up), and the distillation minutes that implies for `n_train`
    traces over `epochs`: the base is chosen by what fits the budget. One resumable sweep row per
    model in `path`; an empty frame when `steps` is 0."""
    import pandas as pd

    from resa_utils.core.sweep import run_sweep

    if not steps:
        return pd.DataFrame(columns=SPEED_COLUMNS)
    fn = partial(_speed_row, problems=problems[: cfg.batch_size * (steps + 1)], style=style, cfg=cfg,
                 steps=steps, seed=seed)
    speed = run_sweep(path, [{"model": m, "setup": setup} for m in models], fn, desc="candidates")
    speed["est. distill min"] = speed.tokens_per_example * n_train * epochs / speed["tokens/s"] / 60
    return speed[SPEED_COLUMNS]


def _speed_row(config: dict, problems: list[Problem], style: TraceStyle, cfg: "LoraTrainConfig",
               steps: int, seed: int) -> dict:
    """One candidate's measured speed; `n_params` counts the model as trained (adapters included)."""
    from resa_utils.lm.lora import lora_tokens_per_s
    from resa_utils.lm.models import load_model

    lm = load_model(config["model"])
    examples = trace_examples(problems, style, TaskPrompt(lm.tokenizer), seed)
    out = lora_tokens_per_s(lm, examples, cfg, steps)
    return {**out, "n_params": sum(p.numel() for p in lm.model.parameters())}


# --------------------------------------------------------------------------- rejection sampling

@dataclass
class RftRound:
    """One round of rejection-sampling fine-tuning: what was sampled and kept, its cost, and the
    model trained on the kept samples (`train` and `model` are None when nothing was correct)."""

    stats: dict
    """The round's row: round, samples, correct, kept (distinct), problems solved, problems."""
    samples: "pd.DataFrame"
    """Every graded sample (`generation.evaluate`'s frame, `k` rows per problem)."""
    kept: list[tuple[str, str]]
    """The distinct correct samples as `(prompt, response)` training pairs."""
    costs: list[dict]
    """`{"stage", "wall s", "tokens", "FLOPs"}` of the sampling, then of the LoRA training (if any)."""
    train: "LoraResult | None" = None
    model: object | None = None
    """The registered model (base + continued adapter, merged), loaded from the cache."""

    @property
    def trained(self) -> bool:
        return self.train is not None


def rft_round(current, problems: list[Problem], make_prompt: Callable, round_: int, *, k: int,
              temperature: float, seed: int, sample_path: str | Path, setup: dict, max_new_tokens: int,
              batch_size: int, base_model: str, cfg: "LoraTrainConfig", out_dir: str | Path,
              init_adapter: str | Path | None, register_as: str, info: dict) -> RftRound:
    """Sample `k` answers per problem from `current` at `temperature` (seed `seed + 1000 * round_`),
    keep the distinct correct ones, and continue training `init_adapter` on them from `base_model`
    (`cfg` with seed `seed + round_ + 1`), registered as `register_as`: RFT stands in for RL, the
    model is rewarded only through which of its own samples it trains on. Sampling resumes from
    `sample_path`, training from `out_dir`."""
    from resa_utils.lm import adapters
    from resa_utils.lm.generation import evaluate
    from resa_utils.lm.lora import train_lora
    from resa_utils.lm.models import load_model

    label = "reasoner" if round_ == 0 else f"rft{round_}"
    samples = evaluate(current, [p for p in problems for _ in range(k)], make_prompt, sample_path,
                       {**setup, "round": round_, "k": k, "temperature": temperature, "model": label},
                       max_new_tokens, batch_size, temperature=temperature, seed=seed + 1000 * round_,
                       desc=f"rft {round_} sample")
    kept = correct_samples(samples, problems, make_prompt)
    n_params = sum(p.numel() for p in current.model.parameters())
    prompt_tokens = k * sum(len(current.tokenizer(make_prompt(p))["input_ids"]) for p in problems)
    generated = int(samples.n_tokens.sum())
    stats = {"round": round_, "samples": len(samples), "correct": int(samples.correct.sum()),
             "kept (distinct)": len(kept), "problems solved": int(samples[samples.correct].uid.nunique()),
             "problems": len(problems)}
    costs = [{"stage": f"RFT round {round_} sample", "wall s": samples.attrs["seconds"],
              "tokens": prompt_tokens + generated, "FLOPs": generation_flops(n_params, prompt_tokens, generated)}]
    if not kept:
        return RftRound(stats, samples, kept, costs)
    lm = load_model(base_model)
    res = train_lora(lm, kept, replace(cfg, seed=seed + round_ + 1), out_dir, init_adapter=init_adapter)
    costs.append({"stage": f"RFT round {round_} LoRA", "wall s": res.seconds, "tokens": res.tokens,
                  "FLOPs": res.flops})
    adapters.register_adapter(register_as, lm, res.adapter_dir, {"stage": f"rft round {round_}", **info})
    del lm
    return RftRound(stats, samples, kept, costs, res, load_model(register_as))


# --------------------------------------------------------------------------- results

def training_curves(curves: dict[str, list[dict]]) -> "pd.DataFrame":
    """Every LoRA training's logged loss as one tidy frame (training, step, loss), for plotting."""
    import pandas as pd

    frames = [pd.DataFrame(rows).assign(training=name) for name, rows in curves.items() if rows]
    if not frames:
        return pd.DataFrame(columns=["training", "step", "loss"])
    return pd.concat(frames, ignore_index=True)[["training", "step", "loss"]]


def example_outputs(evals: Iterable[ModelEval], n: int) -> "pd.DataFrame":
    """The first `n` held-out generations of each model (model, uid, answer, correct, output),
    to read next to the accuracy numbers."""
    import pandas as pd

    rows = [{"model": ev.label, "uid": r.uid, "answer": r.answer, "correct": r.correct, "output": r.text}
            for ev in evals for r in ev.answers.head(n).itertuples()]
    return pd.DataFrame(rows, columns=["model", "uid", "answer", "correct", "output"])


@dataclass
class Verdict:
    """Notebook 00's claims, judged by rules fixed before the run: the paper-comparison rows and
    whether the reasoner clears the bar that notebooks 01 and 04 build on."""

    rows: list[dict]
    lift_points: float
    """Strict pass@1 points, reasoner minus base."""
    lift_disjoint: bool
    reasoner_ok: bool
    """At least 20 points, disjoint 95% intervals, and at least 300 held-out problems."""


def judge_reasoners(acc: "pd.DataFrame", *, n_test: int, task: str, difficulty: int, wait_rate: float,
                    rft_rounds: int, rft_k: int, rft_temperature: float) -> Verdict:
    """The paper-comparison rows from the accuracy table (one `accuracy_row` per model: base,
    reasoner, optionally rft): the distillation lift (strict and lenient), the reflection
    phrases, and RFT over the reasoner ('partly' = higher but intervals overlap)."""
    rows_by = {r["model"]: r for r in acc.to_dict("records")}
    b, rs = rows_by["base"], rows_by["reasoner"]
    gain, gain_len = lift(rs, b), lift(rs, b, "lenient ")
    ok = gain["points"] >= 20 and gain["disjoint"] and n_test >= 300
    rows = [{"claim": "distillation lifts held-out pass@1 by >= 20 points, 95% intervals disjoint, n >= 300",
             "metric": "pass@1 points (reasoner - base)", "paper": 20.0, "ours": round(gain["points"], 1),
             "held": "yes" if ok else ("partly" if gain["disjoint"] else "no"),
             "note": f"{task} d{difficulty}, n={n_test}; base {b['pass@1']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}], "
                     f"reasoner {rs['pass@1']:.3f} [{rs['ci_low']:.3f}, {rs['ci_high']:.3f}]; "
                     "the paper column is our bar, not a published number"},
            {"claim": "the lift is not only format: lenient grading (last number anywhere) also improves",
             "metric": "lenient pass@1 points", "paper": float("nan"), "ours": round(gain_len["points"], 1),
             "held": "yes" if gain_len["disjoint"] else "no",
             "note": f"base {b['lenient pass@1']:.3f}, reasoner {rs['lenient pass@1']:.3f}"},
            {"claim": "the reasoner uses the reflection phrases of its traces (paper 4: R1-distilled models' "
                      "'wait', 'however' latents)",
             "metric": "'Wait' per generation (reasoner vs base)", "paper": float("nan"),
             "ours": round(rs["Wait / problem"], 2), "held": "yes" if rs["Wait / problem"] > b["Wait / problem"] else "no",
             "note": f"base {b['Wait / problem']:.2f}; trace rate wait_rate={wait_rate} per step"}]
    if "rft" in rows_by:
        f = rows_by["rft"]
        g = lift(f, rs)
        rows.append({"claim": "RFT makes a stronger reasoner (as Tina's RL over R1-Distill in paper 1)",
                     "metric": "pass@1 points (rft - reasoner)", "paper": float("nan"), "ours": round(g["points"], 1),
                     "held": "yes" if g["disjoint"] else ("partly" if g["points"] > 0 else "no"),
                     "note": f"rft {f['pass@1']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}]; {rft_rounds} round(s), "
                             f"k={rft_k} at T={rft_temperature}; 'partly' = higher but intervals overlap"})
    return Verdict(rows, gain["points"], gain["disjoint"], ok)


@torch.no_grad()
def representation_change(base, other, windows_NT: torch.Tensor, layers: list[int],
                          rule: "ContentRule | None" = None, batch_size: int = 8) -> "pd.DataFrame":
    """How far a fine-tune moved the residual stream: per block, the cosine between the base's and
    the other model's output at the same token, over content rows (`rule`; default ContentRule():
    no special tokens, no window starts, no massive-norm rows in either model). One row per block:
    median and quartiles of the cosine, median relative norm change, n."""
    import pandas as pd

    from resa_utils.lm.activations import resid_hook, run_with_cache
    from resa_utils.lm.content import ContentRule, content_positions, select_rows

    rule = ContentRule() if rule is None else rule
    hooks = [resid_hook(layer) for layer in layers]
    cos: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    rel: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for a in range(0, windows_NT.shape[0], batch_size):
        ids = windows_NT[a:a + batch_size]
        pos = content_positions(ids, base.tokenizer).reshape(-1)
        xa = run_with_cache(base.model, ids.to(base.device), hooks)
        xb = run_with_cache(other.model, ids.to(other.device), hooks)
        for h in hooks:
            ra = xa[h].float().reshape(-1, xa[h].shape[-1]).cpu()
            rb = xb[h].float().reshape(-1, xb[h].shape[-1]).cpu()
            keep = select_rows(ra, pos, rule)[0] & select_rows(rb, pos, rule)[0]
            cos[h].append(torch.nn.functional.cosine_similarity(ra[keep], rb[keep], dim=-1))
            rel[h].append((rb[keep] - ra[keep]).norm(dim=-1) / ra[keep].norm(dim=-1).clamp_min(1e-12))
    rows = []
    for layer, h in zip(layers, hooks):
        c, r = torch.cat(cos[h]), torch.cat(rel[h])
        q = torch.quantile(c.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        rows.append({"block": layer, "median cos": q[1], "cos q25": q[0], "cos q75": q[2],
                     "median relative change": float(r.median()), "n": int(c.numel())})
    return pd.DataFrame(rows)
