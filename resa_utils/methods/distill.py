"""Notebook 00's method: a base model distilled into a reasoner on templated worked traces (full
fine-tuning or LoRA, over training seeds), an early checkpoint of that distillation as the weaker
target and the finished model as the stronger source, scaled variants as a dose-response; the
accuracy, behaviour and representation measures, with Wilson intervals, and each stage's cost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from resa_utils.data.tasks import REFLECTION_PHRASES, Problem, TraceStyle, extract_answer, prompt, wilson, worked_trace

if TYPE_CHECKING:
    import pandas as pd

    from resa_utils.lm.content import ContentRule
    from resa_utils.lm.lora import LoraTrainConfig


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


# --------------------------------------------------------------------------- splits and steps

def held_out_splits(held_out: list[Problem], sizes: dict[str, int]) -> dict[str, list[Problem]]:
    """Cut the held-out problems into named, disjoint splits in the order of `sizes` (e.g. test,
    dev, select): the test split is never used to choose anything."""
    need = sum(sizes.values())
    if len(held_out) < need:
        raise ValueError(f"{len(held_out)} held-out problems, but the splits {sizes} need {need}")
    out, a = {}, 0
    for name, n in sizes.items():
        out[name], a = held_out[a:a + n], a + n
    return out


def total_steps(n_rows: int, cfg: "LoraTrainConfig") -> int:
    """Optimizer steps `train_lora` takes on `n_rows` examples (Trainer's count: ceil per epoch)."""
    import math

    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = math.ceil(n_rows / cfg.batch_size) // cfg.grad_accum
    return max(1, math.ceil(cfg.epochs * max(1, per_epoch)))


def recipe(cfg: "LoraTrainConfig", n_examples: int) -> dict:
    """What a registered model's training was, for its metadata: the config, the examples and steps."""
    from resa_utils.lm.lora import config_json

    return {**config_json(cfg), "n_examples": n_examples, "total_steps": total_steps(n_examples, cfg)}


def load_checkpoint(lm, folder: str | Path, finetune: str):
    """Put the weights a kept checkpoint holds (`out_dir/step-<n>` of `train_lora`) into `lm`, the
    base: a full model's weights, or a LoRA adapter merged in. Returns `lm`."""
    if finetune == "full":
        from resa_utils.lm.weights import load_full_weights

        load_full_weights(lm.model, folder)
    else:
        from peft import PeftModel

        lm.model = PeftModel.from_pretrained(lm.model, str(folder)).merge_and_unload()
    lm.model.eval()
    return lm


def early_steps(total: int, fractions: list[float]) -> tuple[int, ...]:
    """The optimizer steps at `fractions` of `total` (rounded, at least 1, below `total`, distinct):
    the early checkpoints kept as candidate targets."""
    return tuple(sorted({min(total - 1, max(1, round(f * total))) for f in fractions} - {0}))


# --------------------------------------------------------------------------- behaviour

def teacher_rates(problems: list[Problem], style: TraceStyle, seed: int) -> dict[str, float]:
    """Mean count per trace of each reflection phrase in teacher traces written for `problems`
    (the same counting as the models' answers: whole words)."""
    from resa_utils.data.tasks import reflection_counts

    rng = random.Random(seed)
    counts = [reflection_counts(worked_trace(p, style, rng)) for p in problems]
    return {w: sum(c[w] for c in counts) / max(1, len(counts)) for w in REFLECTION_PHRASES}


def behaviour_rows(label: str, answers: "pd.DataFrame", teacher: dict[str, float], decoding: str,
                   factor: float = 2.0) -> list[dict]:
    """Per reflection phrase: its count per answer in `answers` against the teacher's per trace,
    their ratio, and whether it lies within `factor` (either way)."""
    rows = []
    for w in REFLECTION_PHRASES:
        rate, ref = float(answers[w].mean()), teacher[w]
        ratio = rate / ref if ref > 0 else float("nan")
        rows.append({"model": label, "decoding": decoding, "phrase": w, "per answer": rate,
                     "teacher per trace": ref, "ratio": ratio,
                     "within": bool(ref > 0 and 1 / factor <= ratio <= factor)})
    return rows


def format_share(answers: "pd.DataFrame") -> float:
    """Share of answers whose final number can be read in the asked format (strict grading)."""
    return float(answers.text.map(lambda t: extract_answer(t) is not None).mean())


# --------------------------------------------------------------------------- target and source

def choose_target(candidates: dict[int, ModelEval], source: ModelEval, margin: float,
                  min_format: float) -> tuple[int | None, "pd.DataFrame"]:
    """The rule, fixed before any run, that picks notebook 01's target among the early checkpoints
    (evaluated on the selection split, never the dev or test split): the latest step whose answers
    keep the format (share >= `min_format`) and score at least `margin` points below the finished
    model (the source). Returns the step (None if no checkpoint qualifies) and the table."""
    import pandas as pd

    rows = []
    for step, ev in sorted(candidates.items()):
        gap = 100 * (source.row["pass@1"] - ev.row["pass@1"])
        fmt = format_share(ev.answers)
        rows.append({"step": step, "pass@1": ev.row["pass@1"], "format share": fmt, "points below source": gap,
                     "qualifies": bool(fmt >= min_format and gap >= margin)})
    table = pd.DataFrame(rows, columns=["step", "pass@1", "format share", "points below source", "qualifies"])
    ok = table[table.qualifies]
    return (int(ok.step.iloc[-1]) if len(ok) else None), table.assign(chosen=table.step.isin(ok.step.tail(1)))


# --------------------------------------------------------------------------- representations

def reasoning_windows(problems: list[Problem], style: TraceStyle, make_prompt: Callable, tokenizer,
                      n_windows: int, seq_len: int, seed: int) -> torch.Tensor:
    """`[N, seq_len]` token windows of reasoning text: each problem's chat prompt followed by a
    teacher trace (seeded), concatenated; the text both models are compared on."""
    from resa_utils.data.windows import token_windows

    rng = random.Random(seed)
    texts = [make_prompt(p) + worked_trace(p, style, rng) for p in problems]
    return token_windows(texts, tokenizer, seq_len, n_windows, add_bos=tokenizer.bos_token_id is not None)


def representation_table(base, models: list[str], load: Callable, windows: dict[str, torch.Tensor],
                         layers: list[int], rule: "ContentRule | None" = None) -> "pd.DataFrame":
    """`representation_change` of each named model against `base` on each text kind: one row per
    (model, text, block). `load(name)` builds a model, so one of them is in memory at a time."""
    import pandas as pd

    frames = []
    for label in models:
        lm = load(label)
        for text, ids in windows.items():
            frames.append(representation_change(base, lm, ids, layers, rule).assign(model=label, text=text))
        del lm
    df = pd.concat(frames, ignore_index=True)
    return df[["model", "text", *[c for c in df.columns if c not in ("model", "text")]]]


# --------------------------------------------------------------------------- dose-response

def dose_table(scales: dict[str, float], acc: dict[str, dict], behaviour: "pd.DataFrame",
               reps: "pd.DataFrame", block: int) -> "pd.DataFrame":
    """One row per scaled model (label -> scale): greedy pass@1 with its interval, each phrase per
    sampled answer, and the median same-token cosine at `block` on each text kind."""
    import pandas as pd

    rows = []
    for label, scale in sorted(scales.items(), key=lambda kv: kv[1]):
        r = acc[label]
        row = {"model": label, "scale": scale, "n": r["n"], "pass@1": r["pass@1"], "ci_low": r["ci_low"],
               "ci_high": r["ci_high"]}
        b = behaviour[(behaviour.model == label) & (behaviour.decoding == "sampled")]
        row.update({f"{w} / answer": float(b[b.phrase == w]["per answer"].iloc[0]) if len(b) else float("nan")
                    for w in REFLECTION_PHRASES})
        for text in reps.text.unique():
            grp = reps[(reps.model == label) & (reps.block == block) & (reps.text == text)]
            same = 1.0 if scale == 0 else float("nan")  # scale 0 is the base itself
            row[f"median cos ({text})"] = float(grp["median cos"].iloc[0]) if len(grp) else same
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- verdicts

@dataclass
class Thresholds:
    """The bars fixed before any run (notebook parameters)."""

    lift: float = 20.0
    """Points of strict pass@1 each seed's reasoner must gain over the base (disjoint intervals too)."""
    rate_factor: float = 2.0
    """Each reflection phrase per sampled answer within this factor of the teacher's rate."""
    max_cos: float = 0.95
    """The reasoner's median same-token cosine with the base at the studied block, on reasoning
    text, at most this (the models really differ where notebook 04 reads them)."""
    gap: float = 10.0
    """Points of dev pass@1 the source must gain over the target (disjoint intervals too)."""
    base_max: float = 0.2
    """The base's pass@1 at most this, so a lift of `lift` points can be measured."""


def judge(acc: dict[str, dict], seeds: list[str], behaviour: "pd.DataFrame", reps: "pd.DataFrame",
          dev: dict[str, dict] | None, block: int, th: Thresholds, task: str, difficulty: int) -> tuple[list[dict], list[dict]]:
    """Notebook 00's preconditions and claims from its tables, by the fixed `th`. `acc`: accuracy
    rows by label ("base", each of `seeds`); `behaviour`: `behaviour_rows` frames; `reps`:
    `representation_table`; `dev`: {"target", "source"} rows on the dev split, None when no
    checkpoint qualified as target. Returns (precondition rows, claim rows); claim numbers are
    1 lift, 2 lenient lift, 3 phrases, 4 representation, 5 source over target."""
    b = acc["base"]
    pre = [_pre("the base is weak at the task (a lift can be measured)", "base pass@1", f"<= {th.base_max}",
                b["pass@1"], b["pass@1"] <= th.base_max, "1 2")]
    lifts = {s: lift(acc[s], b) for s in seeds}
    for s in seeds:
        pre.append(_pre(f"reasoner {s} lifts pass@1", "points over base (disjoint 95% CI)", f">= {th.lift}",
                        lifts[s]["points"], lifts[s]["points"] >= th.lift and lifts[s]["disjoint"], ""))
    sampled = behaviour[(behaviour.decoding == "sampled") & behaviour.model.isin(seeds)]
    for w in REFLECTION_PHRASES:
        grp = sampled[sampled.phrase == w]
        worst = grp.ratio.map(lambda r: max(r, 1 / r) if r > 0 else float("inf")).max()
        pre.append(_pre(f"'{w}' per sampled answer near the teacher's rate", "worst ratio over seeds (either way)",
                        f"<= {th.rate_factor}", worst, bool(grp.within.all()), ""))
    first = seeds[0]
    cos = reps[(reps.model == first) & (reps.block == block)].set_index("text")["median cos"]
    pre.append(_pre(f"the reasoner's residual stream moved (block {block}, reasoning text)",
                    "median same-token cosine with the base", f"<= {th.max_cos}", cos.get("reasoning", float("nan")),
                    cos.get("reasoning", 1.0) <= th.max_cos, ""))
    g = lift(dev["source"], dev["target"]) if dev is not None else None
    if g is not None:
        pre.append(_pre("the source beats the target on the dev split", "points (disjoint 95% CI)", f">= {th.gap}",
                        g["points"], g["points"] >= th.gap and g["disjoint"], ""))
    pre.append(_pre("an early checkpoint keeps the format and lies below the source (selection split)",
                    "qualifying checkpoint", "exists", "yes" if dev is not None else "none", dev is not None, "5"))
    ok = all(lifts[s]["points"] >= th.lift and lifts[s]["disjoint"] for s in seeds)
    worst_lift = min(lifts[s]["points"] for s in seeds)
    lenient = {s: lift(acc[s], b, "lenient ") for s in seeds}
    len_lift = min(lenient[s]["points"] for s in seeds)
    claims = [
        {"claim": f"distillation lifts held-out pass@1 by >= {th.lift:g} points with disjoint 95% intervals, on every seed",
         "metric": "pass@1 points (reasoner - base), worst seed", "paper": th.lift, "ours": round(worst_lift, 1),
         "held": "yes" if ok else ("partly" if worst_lift > 0 else "no"),
         "note": f"{task} d{difficulty}, n={b['n']}; base {b['pass@1']:.3f}; "
                 + "; ".join(f"{s} {acc[s]['pass@1']:.3f} [{acc[s]['ci_low']:.3f}, {acc[s]['ci_high']:.3f}]" for s in seeds)
                 + "; the paper column is our bar (R1-Distill's own lift is far larger)"},
        {"claim": "the lift is not only format: lenient grading (last number anywhere) also improves",
         "metric": "lenient pass@1 points, worst seed", "paper": float("nan"), "ours": round(len_lift, 1),
         "held": "yes" if all(lenient[s]["disjoint"] for s in seeds) else "no",
         "note": f"base lenient {b['lenient pass@1']:.3f}"},
        {"claim": "the reasoner imitates its teacher's reflection phrases (paper 4: R1-distilled models' "
                  "'wait' / 'therefore' behaviours)",
         "metric": f"phrases within {th.rate_factor:g}x of the teacher's rate (sampled, T=1)", "paper": float("nan"),
         "ours": f"{int(sampled.within.sum())}/{len(sampled)}", "held": _share_held(sampled.within),
         "note": "; ".join(f"{r.model} {r.phrase} {r['per answer']:.2f} vs {r['teacher per trace']:.2f}"
                           for _, r in sampled.iterrows())},
        {"claim": "distillation moves the residual stream (what notebook 04's crosscoder needs)",
         "metric": f"median same-token cosine, block {block}, reasoning text", "paper": float("nan"),
         "ours": round(float(cos.get("reasoning", float("nan"))), 3),
         "held": "yes" if cos.get("reasoning", 1.0) <= th.max_cos else "no",
         "note": f"English text: {float(cos.get('english', float('nan'))):.3f}; threshold {th.max_cos}; "
                 "the committed LoRA reasoner of the previous design had 0.98"},
    ]
    if g is not None:
        s_, t_ = dev["source"], dev["target"]
        claims.append({"claim": "a stronger source over its target (Tina's RL over R1-Distill in paper 1): "
                                f">= {th.gap:g} points, disjoint intervals, dev split",
                       "metric": "dev pass@1 points (source - target)", "paper": th.gap, "ours": round(g["points"], 1),
                       "held": "yes" if g["points"] >= th.gap and g["disjoint"] else ("partly" if g["points"] > 0 else "no"),
                       "note": f"source {s_['pass@1']:.3f} [{s_['ci_low']:.3f}, {s_['ci_high']:.3f}], target "
                               f"{t_['pass@1']:.3f} [{t_['ci_low']:.3f}, {t_['ci_high']:.3f}], n={s_['n']}"})
    else:
        claims.append({"claim": "a stronger source over its target (Tina's RL over R1-Distill in paper 1)",
                       "metric": "dev pass@1 points (source - target)", "paper": th.gap, "ours": float("nan"),
                       "held": "not tested", "note": "no early checkpoint qualified as target"})
    return pre, claims


def _pre(what: str, measure: str, threshold: str, value, met: bool, gates: str) -> dict:
    v = f"{value:.3f}" if isinstance(value, float) else str(value)
    return {"precondition": what, "measure": measure, "threshold": threshold, "value": v,
            "met": "yes" if met else "no", "gates": gates}


def _share_held(flags: "pd.Series") -> str:
    return "yes" if len(flags) and flags.all() else ("partly" if flags.any() else "no")
