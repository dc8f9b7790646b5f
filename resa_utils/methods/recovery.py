"""Paper 5's experiments as functions: feature recovery on synthetic data, and the
reconstruction-sparsity frontier and seed consistency on real activations."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from resa_utils.core.sweep import config_key
from resa_utils.data.synthetic import (SyntheticConfig, fresh_samples, make_dataset,
                                       matched_firing_corr, max_cosines, recovery_rate)
from resa_utils.lm.activations import ActivationCache, harvest_splits
from resa_utils.lm.content import ContentRule
from resa_utils.sae import SAE, TrainConfig, evaluate_sae, spliced_ce, train_sae
from resa_utils.sae.train import CacheJob, train_and_evaluate

THRESHOLDS = (0.8, 0.9, 0.95, 0.99)


def synthetic_recovery(syn: SyntheticConfig, train: TrainConfig,
                       thresholds: tuple[float, ...] = THRESHOLDS, device=None) -> dict:
    """Train one SAE on synthetic data; return recovery at each τ plus FVU, L0, dead fraction
    (measured on the first 20k training samples: the generator is the distribution)."""
    x_ND, features = make_dataset(syn)
    result = train_sae(x_ND, train, progress=False, device=device)
    ev = evaluate_sae(result.sae, x_ND[:20_000])
    rec = recovery_rate(features, result.sae.W_dec.detach(), thresholds)
    return {**{f"recovery@{t}": r for t, r in rec.items()}, "fvu": ev["fvu"], "l0": ev["l0"],
            "dead_frac": ev["dead_frac"], "seconds": result.seconds, "curve": result.history}


FIRING_R = 0.9
"""A feature counts as recovered by firing when its best live decoder match also fires with its
coefficient: Pearson r ≥ this between `h_i` and the latent's activation on held-out samples."""


@torch.no_grad()
def synthetic_scores(sae: SAE, features_FD: torch.Tensor, x_ND: torch.Tensor, codes_NF: torch.Tensor,
                     thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, float]:
    """Recovery of known features by `sae`, scored on held-out samples `x_ND` (codes `codes_NF`):
    `recovery@τ` over live latents only (a dead latent's decoder row can sit on a feature
    without ever reconstructing it), `recovery_all@τ` over every row (the old metric, for
    contrast), `firing@r` (share of features whose best live match fires with r ≥ FIRING_R),
    the mean of that r, and FVU, L0 and dead fraction on the same samples. Two sign checks:
    `neg_scale`, the share of live latents whose decoder row points against their encoder
    direction (tied GBA: output scale a_m < 0, so the decoder row is −w_m and a cosine match
    with +v misses it), and `recovery_enc@0.9`, recovery scored on the live encoder directions
    w_m instead of the decoder rows."""
    ev = evaluate_sae(sae, x_ND)
    alive = ev["density"] > 0
    W = sae.W_dec.detach().float().cpu()
    enc = sae.W_enc.detach().float().cpu().t()
    live = recovery_rate(features_FD, W, thresholds, alive_M=alive)
    every = recovery_rate(features_FD, W, thresholds)
    by_enc = recovery_rate(features_FD, enc, (0.9,), alive_M=alive)[0.9]
    align = (W * enc).sum(1)[alive]
    lat = torch.cat([sae.encode(x_ND[a:a + 8192].to(sae.W_enc.device)).cpu() for a in range(0, len(x_ND), 8192)])
    r = matched_firing_corr(features_FD, W, codes_NF, lat)
    return {**{f"recovery@{t}": v for t, v in live.items()}, **{f"recovery_all@{t}": v for t, v in every.items()},
            "recovery_enc@0.9": by_enc, "neg_scale": float((align < 0).float().mean()) if len(align) else 0.0,
            f"firing@{FIRING_R}": float((r >= FIRING_R).float().mean()), "firing_r_mean": float(r.mean()),
            "fvu": ev["fvu"], "l0": ev["l0"], "dead_frac": ev["dead_frac"]}


def lr_progress(cfg: TrainConfig, steps: int) -> float:
    """Optimisation progress after `steps` optimiser steps of `cfg`: the sum of the learning
    rates used, Σ lr_t (the trainer's schedule: constant, then a linear decay to 0 over the last
    `lr_decay_frac` of the steps; `lr` None = sparsify's width-scaled 2e-4 / sqrt(d_sae / 2^14)).
    Runs at different lr or lengths line up on this axis where they do not on samples."""
    lr = cfg.lr if cfg.lr else 2e-4 / math.sqrt(cfg.d_sae / 2**14)
    n = cfg.n_steps
    if cfg.lr_decay_frac == 0:
        return lr * steps
    decay = max(1, int(cfg.lr_decay_frac * n))
    start = n - decay
    t = np.arange(start, max(steps, start))
    return float(lr * (min(steps, start) + np.clip((n - t) / decay, 0.0, None).sum()))


def start_from(features_FD: torch.Tensor | None = None, a_init: float | None = None,
               a_frozen: bool = False):
    """A `train_sae` init hook for the toy's diagnostics: decoder rows 0..n-1 (and the matching
    encoder columns) set to the n true features `features_FD`, the other rows left random; tied
    GBA's output scales a_m set to `a_init`; a_m frozen (no gradient) with `a_frozen`. None when
    nothing is asked."""
    if features_FD is None and a_init is None and not a_frozen:
        return None

    def init(trainer) -> None:
        scale = getattr(trainer, "out_scale_F", None)
        if (a_init is not None or a_frozen) and (scale is None or not trainer.cfg.gba_tied):
            raise ValueError(f"a_m settings need tied GBA (an output scale per latent); got method {trainer.cfg.method!r}")
        with torch.no_grad():
            if features_FD is not None:
                n, W = features_FD.shape[0], trainer.sae.W_dec
                if n > W.shape[0]:
                    raise ValueError(f"cannot start {W.shape[0]} latents at {n} true features: raise the width")
                W[:n] = features_FD.to(W)
                trainer.sae.W_enc[:, :n] = features_FD.t().to(W)
            if a_init is not None:
                scale.fill_(a_init)
        if a_frozen:
            scale.requires_grad_(False)
    return init


def synthetic_run(syn: SyntheticConfig, train: TrainConfig, probe_samples: tuple[int, ...] = (),
                  n_eval: int = 20_000, thresholds: tuple[float, ...] = THRESHOLDS,
                  checkpoint_dir=None, device=None, init: dict | None = None) -> dict:
    """Train one SAE on synthetic data and score it (`synthetic_scores`) on `n_eval` fresh
    held-out samples of the same features, at each of `probe_samples` training samples and at
    the end (`train.n_tokens`, the stopping rule fixed before the run). `init` (keys `truth`,
    `a_init`, `a_frozen`) starts the run as `start_from` says. Returns the final scores,
    `seconds` (training only), `curve` (one row per probe with `samples` and `progress`, the
    summed lr so far) and the run's `peak@0.9`, `peak_samples` and `peak_progress` (the probe
    with the highest live recovery@0.9, the final one included)."""
    x_ND, features = make_dataset(syn)
    x_ev, codes_ev = fresh_samples(syn, features, n_eval, seed=syn.seed + 1_000_003)
    probe = lambda sae: synthetic_scores(sae, features, x_ev, codes_ev, thresholds)  # noqa: E731
    init = init or {}
    hook = start_from(features if init.get("truth") else None, init.get("a_init"), bool(init.get("a_frozen")))
    result = train_sae(x_ND, train, progress=False, device=device, probe=probe,
                       probe_tokens=tuple(probe_samples), checkpoint_dir=checkpoint_dir, init=hook)
    curve = [{"samples": p["tokens"], "progress": lr_progress(train, p["step"]),
              **{k: v for k, v in p.items() if k not in ("step", "tokens")}} for p in result.probes]
    final = {k: v for k, v in curve[-1].items() if k not in ("samples", "progress")}
    peak = max(curve, key=lambda c: c["recovery@0.9"])
    return {**final, "seconds": result.seconds, "curve": curve, "peak@0.9": peak["recovery@0.9"],
            "peak_samples": peak["samples"], "peak_progress": peak["progress"]}


def synthetic_row(c: dict) -> dict:
    """`synthetic_run` from a sweep config (a module-level function, so `run_sweep` can run it
    in worker processes): `c["syn"]` and `c["train"]` hold `SyntheticConfig` / `TrainConfig`
    fields, `c["probe_samples"]` and `c["n_eval"]` the probes, `c.get("init")` a diagnostic's
    start; other keys are labels."""
    return synthetic_run(SyntheticConfig(**c["syn"]), TrainConfig(**c["train"]),
                         tuple(c["probe_samples"]), c["n_eval"], init=c.get("init"))


SYN_ROW_KEYS = ("peak@0.9", "neg_scale", "recovery_enc@0.9")
"""Results a stored synthetic row must hold (a row of an older layout lacks them and is rerun)."""


def has_scores(row: dict) -> bool:
    """Whether a stored synthetic row has this layout's scores (`run_sweep`'s `valid`)."""
    return all(k in row for k in SYN_ROW_KEYS)


def pairwise_consistency(saes: list[SAE], thresholds: tuple[float, ...] = (0.9, 0.7),
                         eval_ND: torch.Tensor | None = None) -> dict[str, float]:
    """Seed consistency over ordered pairs (A, B) of SAEs: the share of A's latents (alive on
    `eval_ND`, if given) whose best decoder match in B has cosine > τ, averaged over pairs,
    for each τ; plus the median best-match cosine (`seed_match_cosines` summarised)."""
    pairs = seed_match_cosines(saes, eval_ND)
    nan = float("nan")
    out = {f"consistency@{t}": sum(float((p > t).float().mean()) for p in pairs) / len(pairs) if pairs else nan
           for t in thresholds}
    out["median_max_cos"] = sum(float(p.median()) for p in pairs) / len(pairs) if pairs else nan
    return out


def best_match_cosines(a: SAE, b: SAE, alive_a: torch.Tensor | None = None) -> torch.Tensor:
    """For each latent of `a` (only those in the mask `alive_a`, if given), the cosine of its
    decoder row with the best-matching row of `b`: `[M]`, whose distribution is seed consistency."""
    dec_a = a.W_dec.detach().float().cpu()
    if alive_a is not None:
        dec_a = dec_a[alive_a.cpu()]
    return max_cosines(dec_a, b.W_dec.detach().float().cpu())


def random_match_cosines(n_a: int, n_b: int, d: int, seed: int = 0) -> torch.Tensor:
    """The same statistic for two sets of random Gaussian directions (`n_a` against `n_b` in d
    dims): the floor a real consistency has to clear."""
    g = torch.Generator().manual_seed(seed)
    return max_cosines(torch.randn(n_a, d, generator=g), torch.randn(n_b, d, generator=g))


def seed_match_cosines(saes: list[SAE], eval_ND: torch.Tensor | None,
                       min_density: float = 0.0) -> list[torch.Tensor]:
    """Seed consistency as distributions: for each ordered pair (A, B) of `saes` (one per seed),
    the best-match cosine in B of every latent of A firing on more than `min_density` of the
    tokens `eval_ND` (0 = every live latent; `eval_ND` None = every latent). One `[M_A]` tensor
    per pair, A-major order."""
    masks = [None if eval_ND is None else evaluate_sae(s, eval_ND)["density"] > min_density for s in saes]
    return [best_match_cosines(a, b, masks[i]) for i, a in enumerate(saes)
            for j, b in enumerate(saes) if i != j]


# --------------------------------------------------------------------------- the notebook's steps

METHODS = {"topk": "TopK", "relu_l1": "L1", "gba": "GBA"}
"""The three methods compared: `TrainConfig.method` -> the name shown in tables and figures."""


def knobs(method: str, setting) -> dict:
    """The `TrainConfig` fields one tuning setting sets: TopK's k, L1's coefficient, or GBA's
    `[p_high, p_low, gamma, steps between updates]`."""
    if method == "topk":
        return {"k": int(setting)}
    if method == "relu_l1":
        return {"l1_coefficient": float(setting)}
    hi, lo, gamma, every = setting
    return {"gba_p_high": hi, "gba_p_low": lo, "gba_gamma": gamma, "gba_interval": int(every)}


def label(method: str, setting) -> str:
    """A setting as shown in tables and tick labels: `k=20`, `λ=0.03`, `0.1→0.001, γ 0.01/50`."""
    if method == "topk":
        return f"k={int(setting)}"
    if method == "relu_l1":
        return f"λ={setting:g}"
    return f"{setting[0]:g}→{setting[1]:g}, γ {setting[2]:g}/{int(setting[3])}"


@dataclass(frozen=True)
class ToySpec:
    """The synthetic toy and its training budget, shared by every run (the notebook's parameters)."""

    n_features: int
    d: int
    paper_mix: list
    n_samples: int
    width: int
    samples: int
    """The stopping point: training samples every SAE sees."""
    batch: int
    probe_samples: list
    n_eval: int


def syn_config(toy: ToySpec, method: str, setting, seed: int, role: str, diagnostic: str = "",
               mix: list | None = None, width: int | None = None, train: dict | None = None,
               init: dict | None = None) -> dict:
    """One synthetic run for `synthetic_row`: every knob it depends on is in the config, hence in
    its sweep key; `role` is "report" (the tuning budget), "wrong ladder" or "diagnostic" (then
    `diagnostic` names it, and `mix`, `width`, `train` (TrainConfig fields) and `init`
    (`start_from`'s) change the run)."""
    syn = asdict(SyntheticConfig(n_features=toy.n_features, d=toy.d, sparsities=tuple(mix or toy.paper_mix),
                                 n_samples=toy.n_samples, seed=seed))
    fields = dict(method=method, d_sae=width or toy.width, n_tokens=toy.samples, batch_size=toy.batch,
                  seed=seed, dead_tokens=20 * toy.batch, checkpoint_every=10**9, **knobs(method, setting))
    out = {"method": method, "setting": setting, "seed": seed, "role": role,
           "syn": syn, "train": asdict(TrainConfig(**{**fields, **(train or {})})),
           "probe_samples": toy.probe_samples, "n_eval": toy.n_eval}
    return out | ({"diagnostic": diagnostic, "init": init or {}} if role == "diagnostic" else {})


@dataclass(frozen=True)
class DiagSpec:
    """The toy's diagnostics (one run per seed each; fixed before the runs): does recovery hold
    when training starts at the truth, on the easy toy, at a small constant lr, with one GBA
    group targeting the true frequency at width ≥ 4n, and with a small or frozen output scale?"""

    easy_mix: list
    """The easy toy's sparsities (e.g. [3]: every sample 3-sparse)."""
    lr: float
    """The fixed learning rate (no decay) of the 'fixed lr' runs."""
    a_init: float
    """Tied GBA's initial output scale a_m in the 'small a_m' run."""
    f_true: float
    """The toy's true feature frequency f: the single group's target."""


DIAGNOSTICS = {
    "start at truth": "decoder rows 1..n start at the n true features (other rows random); every method at its paper setting",
    "easy toy": "every sample has the easy sparsity only; every method at its paper setting",
    "fixed low lr": "a constant lr (no decay); every method at its paper setting",
    "one group at f": "GBA with one group whose target is the true frequency f, at width >= 4n",
    "small a_m": "tied GBA with every output scale a_m starting small",
    "frozen a_m": "tied GBA with every output scale a_m fixed at 1 (no gradient)",
}
"""The diagnostics, by name: what each changes from the paper setting."""


def diagnostic_configs(toy: ToySpec, paper: dict, seeds: list[int], spec: DiagSpec) -> list[dict]:
    """Every diagnostic run (`DIAGNOSTICS`), on every seed; each at the method's paper setting
    unless the diagnostic says otherwise."""
    g = paper["gba"]
    out = []
    for seed in seeds:
        for m in METHODS:
            out.append(syn_config(toy, m, paper[m], seed, "diagnostic", "start at truth", init={"truth": True}))
            out.append(syn_config(toy, m, paper[m], seed, "diagnostic", "easy toy", mix=spec.easy_mix))
            out.append(syn_config(toy, m, paper[m], seed, "diagnostic", "fixed low lr",
                                  train={"lr": spec.lr, "lr_decay_frac": 0.0}))
        one = [spec.f_true, spec.f_true, g[2], g[3]]
        out.append(syn_config(toy, "gba", one, seed, "diagnostic", "one group at f",
                              width=max(toy.width, 4 * toy.n_features), train={"gba_groups": 1}))
        out.append(syn_config(toy, "gba", g, seed, "diagnostic", "small a_m", init={"a_init": spec.a_init}))
        out.append(syn_config(toy, "gba", g, seed, "diagnostic", "frozen a_m", init={"a_frozen": True}))
    return out


def wrong_settings(wrong_ladders: list, paper_gba: list) -> list[list]:
    """Each wrong `[p_high, p_low]` ladder as a full GBA setting with the paper's bias schedule."""
    return [[hi, lo, paper_gba[2], paper_gba[3]] for hi, lo in wrong_ladders]


def syn_configs(toy: ToySpec, grids: dict[str, list], wrong: list[list], seeds: list[int]) -> list[dict]:
    """Every synthetic run: each method's tuning budget on every seed, then the wrong ladders."""
    configs = [syn_config(toy, m, s, seed, "report") for seed in seeds for m in METHODS for s in grids[m]]
    return configs + [syn_config(toy, "gba", s, seed, "wrong ladder") for seed in seeds for s in wrong]


def label_runs(rows: pd.DataFrame, paper: dict) -> pd.DataFrame:
    """The sweep's rows without their nested configs, with `Method`, `setting_label` and
    `paper setting` (the method's paper setting in the tuning budget); `diagnostic` is "" for
    the report and wrong-ladder runs."""
    out = rows.drop(columns=["syn", "train", "probe_samples", "n_eval", "init"], errors="ignore")
    out["diagnostic"] = out["diagnostic"].fillna("") if "diagnostic" in out else ""
    out["Method"] = out.method.map(METHODS)
    out["setting_label"] = [label(m, s) for m, s in zip(out.method, out.setting)]
    out["paper setting"] = [s == paper[m] and r == "report" for m, s, r in zip(out.method, out.setting, out.role)]
    return out


def loo_tuned(report: pd.DataFrame, method: str, seeds: list[int]) -> pd.DataFrame:
    """The tuning rule, fixed before the runs: for each seed, the setting with the highest mean
    live recovery@0.9 on the *other* seeds (ties: lower FVU), scored on the held-out seed."""
    part, rows = report[report.method == method], []
    for s in seeds:
        other = part[part.seed != s].groupby("setting_label")[["recovery@0.9", "fvu"]].mean()
        best = other.sort_values(["recovery@0.9", "fvu"], ascending=[False, True]).index[0]
        rows.append(part[(part.seed == s) & (part.setting_label == best)].iloc[0])
    return pd.DataFrame(rows)


@dataclass
class Tuning:
    """Leave-one-seed-out tuning of every method: its rows and the settings it picked."""

    tuned: dict[str, pd.DataFrame]
    """Per method, one row per held-out seed: that seed's run at the setting picked on the others."""
    picked: dict[str, list[str]]
    """Per method, the setting labels picked on some fold (sorted)."""

    def choices(self) -> pd.DataFrame:
        """One row per method and held-out seed: the pick and its scores."""
        return pd.concat(self.tuned.values())[["Method", "seed", "setting_label", "recovery@0.9", "fvu", "l0"]]


def tune(report: pd.DataFrame, seeds: list[int]) -> Tuning:
    """`loo_tuned` for every method."""
    tuned = {m: loo_tuned(report, m, seeds) for m in METHODS}
    return Tuning(tuned, {m: sorted(set(t.setting_label)) for m, t in tuned.items()})


def mean_sd(df: pd.DataFrame, by: list[str], cols: list[str]) -> pd.DataFrame:
    """Mean ± sd over seeds of each column, as text, one row per group."""
    g = df.groupby(by, sort=False)[cols]
    m, s = g.mean(), g.std(ddof=1).fillna(0)
    out = m.map(lambda v: f"{v:.3f}") + " ± " + s.map(lambda v: f"{v:.3f}")
    return out.assign(seeds=g.size()).reset_index()


TOY_METRICS = ["peak@0.9", "recovery@0.8", "recovery@0.9", "recovery@0.99", "firing@0.9", "firing_r_mean", "recovery_all@0.9",
               "fvu", "l0", "dead_frac"]
"""The toy's scores shown in its tables."""


def headline_table(report: pd.DataFrame, wrong_rows: pd.DataFrame, tuning: Tuning,
                   metrics: list[str] = TOY_METRICS) -> pd.DataFrame:
    """Each method at its paper setting and tuned, then the wrong ladders: mean ± sd over seeds."""
    rows = []
    for m in METHODS:
        rows.append(mean_sd(report[(report.method == m) & report["paper setting"]], ["Method", "setting_label"], metrics)
                    .assign(row="paper setting"))
        t = tuning.tuned[m].assign(setting_label=" / ".join(tuning.picked[m]))
        rows.append(mean_sd(t, ["Method", "setting_label"], metrics).assign(row="tuned (leave one seed out)"))
    rows.append(mean_sd(wrong_rows, ["Method", "setting_label"], metrics).assign(row="wrong ladder"))
    return pd.concat(rows, ignore_index=True)[["Method", "row", "setting_label", "seeds", *metrics]]


def toy_records(report: pd.DataFrame, tuning: Tuning) -> dict[str, float]:
    """The toy's recorded metrics: mean recovery@0.9 and FVU of each method, paper and tuned."""
    out = {}
    for m in METHODS:
        for which, part in (("paper", report[(report.method == m) & report["paper setting"]]), ("tuned", tuning.tuned[m])):
            out[f"toy/{m}/{which}/recovery@0.9"] = float(part["recovery@0.9"].mean())
            out[f"toy/{m}/{which}/fvu"] = float(part.fvu.mean())
    return out


def recovery_curves(report: pd.DataFrame, tuning: Tuning, paper: dict) -> pd.DataFrame:
    """The probes along training, one row per (method, paper/tuned, seed, probe): the paper
    setting's runs and the tuned runs; `same` when every fold picked the paper setting."""
    rows = []
    for m in METHODS:
        paper_rows = report[(report.method == m) & report["paper setting"]]
        same = tuning.picked[m] == [label(m, paper[m])]
        for which, part in (("paper", paper_rows), ("tuned", tuning.tuned[m])):
            for _, r in part.iterrows():
                rows += [{"Method": r.Method, "which": which, "same": same, "seed": r.seed, **c} for c in r.curve]
    return pd.DataFrame(rows)


def curve_summary(curves: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean and sd over seeds of each metric at each probe, one row per (series, samples,
    metric); a paper series whose tuned pick is the paper setting is dropped (drawn once, as
    `<Method> tuned = paper`)."""
    out = []
    for (name, which), part in curves.groupby(["Method", "which"], sort=False):
        same = bool(part.same.all())
        if which == "paper" and same:
            continue
        series = f"{name} {'tuned' if which == 'tuned' else 'paper'}" + (" = paper" if same else "")
        for col in metrics:
            g = part.groupby("samples")[col]
            out.append(pd.DataFrame({"Method": name, "which": which, "series": series, "metric": col,
                                     "samples": g.mean().index.astype(float), "mean": g.mean().values,
                                     "sd": g.std(ddof=1).fillna(0).values}))
    return pd.concat(out, ignore_index=True)


SENSITIVITY_BARS = {"recovery@0.8": "recovery τ 0.8", "recovery@0.9": "recovery τ 0.9",
                    "firing_r_mean": "mean firing r", "recovery_all@0.9": "τ 0.9, all rows (old)"}
"""The bars of the sensitivity figure: metric -> legend text."""


def sensitivity_bars(sens: pd.DataFrame, tuning: Tuning, bars: dict[str, str] = SENSITIVITY_BARS) -> pd.DataFrame:
    """One row per (method, setting, bar metric): mean and sd over seeds, the tick text (with
    mean FVU and L0, ★ the paper setting, ◆ a tuned pick) and whether it is a wrong ladder."""
    out = []
    for m in METHODS:
        part = sens[sens.method == m]
        order = list(dict.fromkeys(part.setting_label))
        g = part.groupby("setting_label", sort=False)
        mean, sd = g[list(bars) + ["fvu", "l0"]].mean().loc[order], g[list(bars)].std(ddof=1).fillna(0).loc[order]
        for s_label in order:
            runs = part[part.setting_label == s_label]
            row = runs.iloc[0]
            tag = (" ★" if row["paper setting"] else "") + (" ◆" if s_label in tuning.picked[m] and row.role == "report" else "")
            tick = f"{s_label}{tag}\nFVU {mean.loc[s_label, 'fvu']:.2f} · L0 {mean.loc[s_label, 'l0']:.1f}"
            wrong = bool((runs.role == "wrong ladder").any())
            out += [{"Method": METHODS[m], "setting_label": s_label, "tick": tick, "wrong": wrong, "metric": b,
                     "bar": text, "mean": float(mean.loc[s_label, b]), "sd": float(sd.loc[s_label, b])}
                    for b, text in bars.items()]
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- diagnostics and progress

PAPER_SETTING, TUNED = "paper setting", "tuned (leave one seed out)"
"""The series names of the report runs in the diagnostics table and the progress figure."""


def series_runs(syn: pd.DataFrame, tuning: Tuning) -> pd.DataFrame:
    """Every run that belongs to a named series, with `series`: each method's paper-setting
    runs, its tuned runs (one per held-out seed) and its diagnostic runs (`DIAGNOSTICS`)."""
    parts = [syn[(syn.role == "report") & syn["paper setting"]].assign(series=PAPER_SETTING)]
    parts += [t.assign(series=TUNED) for t in tuning.tuned.values()]
    diag = syn[syn.role == "diagnostic"]
    parts.append(diag.assign(series=diag.diagnostic))
    return pd.concat(parts, ignore_index=True)


DIAG_METRICS = ["peak@0.9", "recovery@0.9", "recovery_enc@0.9", "neg_scale", "firing_r_mean", "fvu", "l0", "dead_frac"]
"""The diagnostics table's scores: the peak along training and the final value side by side."""


def diagnostics_table(runs: pd.DataFrame, metrics: list[str] = DIAG_METRICS) -> pd.DataFrame:
    """One row per (method, series): mean ± sd over seeds of each metric (`peak@0.9` the best
    probe, `recovery@0.9` the final one, the rule's value), the mean drop from peak to final
    and the median number of samples at the peak."""
    out = mean_sd(runs, ["Method", "series"], metrics)
    g = runs.assign(drop=runs["peak@0.9"] - runs["recovery@0.9"]).groupby(["Method", "series"], sort=False)
    out["peak − final"] = g["drop"].mean().values
    out["peak at samples"] = g["peak_samples"].median().values
    order = {n: i for i, n in enumerate(METHODS.values())}
    return out.sort_values("Method", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)


def diagnostic_records(runs: pd.DataFrame) -> dict[str, float]:
    """The diagnostics' recorded metrics: mean peak and final live recovery@0.9 and the share of
    negative output scales of each (method, series)."""
    g = runs.groupby(["Method", "series"], sort=False)[["peak@0.9", "recovery@0.9", "neg_scale"]].mean()
    return {f"toy/{m}/{s}/{c}": float(v) for (m, s), row in g.iterrows() for c, v in row.items()}


def progress_curves(runs: pd.DataFrame, metric: str = "recovery@0.9") -> pd.DataFrame:
    """Each run's probes as rows (Method, series, seed, samples, progress = Σ lr so far,
    `metric`), for recovery against optimisation progress."""
    rows = [{"Method": r.Method, "series": r.series, "seed": r.seed, "samples": c["samples"],
             "progress": c["progress"], metric: c[metric]} for r in runs.itertuples() for c in r.curve]
    return pd.DataFrame(rows)


def progress_summary(curves: pd.DataFrame, metric: str = "recovery@0.9") -> pd.DataFrame:
    """Mean and sd over seeds at each probe of each (method, series), with `peak` (the probe
    where the mean is highest, the first if tied) and `final` (the last probe) flagged."""
    g = curves.groupby(["Method", "series", "progress"], sort=False)
    out = g[metric].agg(["mean", "std"]).rename(columns={"std": "sd"}).reset_index()
    out["sd"] = out.sd.fillna(0)
    out["samples"] = g["samples"].first().values
    out = out.sort_values(["Method", "series", "progress"], kind="stable").reset_index(drop=True)
    by = out.groupby(["Method", "series"], sort=False)
    out["final"] = out.index.isin(by.tail(1).index)
    out["peak"] = out.index.isin(by["mean"].idxmax().values)
    return out


def paper_marks(paper: dict) -> dict[str, list[tuple[float, str]]]:
    """The paper's toy numbers to place on the progress curves: method -> [(recovery@0.9, text)]
    (TopK at its paper k when the paper reports that k; GBA's 100 %)."""
    topk = dict(PAPER_TOPK)
    marks = {"GBA": [(1.0, "paper: GBA 100 %")]}
    if paper["topk"] in topk:
        marks["TopK"] = [(topk[paper["topk"]], f"paper: TopK k={paper['topk']} {100 * topk[paper['topk']]:.1f} %")]
    return marks


def easy_precondition(syn: pd.DataFrame, min_recovery: float, gates: str) -> dict:
    """The toy's premise: on the easy toy some method recovers the features (mean final live
    recovery@0.9 over seeds ≥ `min_recovery`); else data, training or scoring is broken and no
    toy claim could have held. `gates`: the claim numbers it gates."""
    easy = syn[(syn.role == "diagnostic") & (syn.diagnostic == "easy toy")]
    best = easy.groupby("Method")["recovery@0.9"].mean()
    value = float(best.max()) if len(best) else float("nan")
    return {"precondition": "the easy toy is recovered by some method at its paper setting",
            "measure": f"best mean final recovery@0.9 on the easy toy ({best.idxmax() if len(best) else 'none'})",
            "threshold": f">= {min_recovery:g}", "value": f"{value:.3f}", "met": "yes" if value >= min_recovery else "no",
            "gates": gates}



@dataclass(frozen=True)
class RealSpec:
    """What every real-activation SAE shares: width, one pass over `n_tokens`, Adam lr, AuxK's
    dead window, GBA's `(gamma, interval)` schedule, the key of the activations it reads and the
    content `rule` that chose its rows (in every config, so no row trained under another rule is
    reused)."""

    d_sae: int
    n_tokens: int
    batch: int
    lr: float
    dead_tokens: int
    gba_schedule: list
    data_key: str
    default_variant: str = "tied/relu"
    """GBA's default `encoder/activation` variant (the first of `gba_variants`)."""
    rule: ContentRule = ContentRule()
    """The content rows the SAEs train and are evaluated on (`lm.content`)."""


def real_train_config(spec: RealSpec, method: str, knob, seed: int, variant: str | None = None) -> TrainConfig:
    """One real SAE's `TrainConfig`: TopK's k, L1's coefficient, or GBA's ladder `knob → knob/100`
    with the real schedule and `variant` (`tied|untied/relu|jumprelu`)."""
    kw = dict(method=method, d_sae=spec.d_sae, n_tokens=spec.n_tokens, batch_size=spec.batch,
              lr=spec.lr, seed=seed, dead_tokens=spec.dead_tokens, checkpoint_every=100)
    if method == "topk":
        kw["k"] = int(knob)
    elif method == "relu_l1":
        kw["l1_coefficient"] = float(knob)
    else:
        tied, act = (variant or spec.default_variant).split("/")
        kw.update(gba_p_high=float(knob), gba_p_low=float(knob) / 100, gba_gamma=spec.gba_schedule[0],
                  gba_interval=int(spec.gba_schedule[1]), gba_tied=tied == "tied", gba_activation=act)
    return TrainConfig(**kw)


def real_config(spec: RealSpec, method: str, knob, seed: int, variant: str | None = None) -> dict:
    """One real SAE as a sweep config (labels, the data key, the content rule and its full
    `TrainConfig`)."""
    variant = variant or spec.default_variant
    return {"method": method, "knob": knob, "seed": seed, "variant": variant if method == "gba" else "",
            "data": spec.data_key, "content_rule": asdict(spec.rule),
            "cfg": asdict(real_train_config(spec, method, knob, seed, variant))}


def real_configs(spec: RealSpec, knob_grid: dict[str, list], seeds: list[int], gba_variants: list,
                 variant_p_highs: list) -> list[dict]:
    """Every real SAE: each method's knob grid on every seed (the frontier with its spread over
    seeds, and seed consistency at every setting), then the other GBA variants at
    `variant_p_highs` on the first seed."""
    out = [real_config(spec, m, kn, s) for s in seeds for m in METHODS for kn in knob_grid[m]]
    return out + [real_config(spec, "gba", kn, seeds[0], "/".join(v)) for v in gba_variants[1:] for kn in variant_p_highs]


def shared_data_key(model: str, corpus: str, seed: int, eval_frac: float, seq_len: int, layers: list[int],
                    train_windows: int, eval_windows: int) -> str:
    """The data key of an activation cache harvested the way notebook 03 harvests its own (the
    same fields, so a request with 03's corpus, split, windows and layers names 03's cache):
    05 reads that cache when it is there instead of harvesting again."""
    return config_key({"model": model, "corpus": corpus, "seed": seed, "eval_frac": eval_frac, "seq_len": seq_len,
                       "dtype": "bfloat16", "layers": list(layers), "train_windows": train_windows,
                       "eval_windows": eval_windows})


def activation_dir(root: Path, shared_notebook: str, shared_name: str, own_name: str, hook: str,
                   n_train_windows: int) -> tuple[Path, bool]:
    """Where the real section's activations are: `shared_notebook`'s finished cache
    (`root/../<shared_notebook>/<shared_name>`, same profile) when it holds `hook` over the same
    number of training windows, else this notebook's own folder `root/<own_name>`; and whether
    it is the shared one."""
    if shared_notebook:
        shared = Path(root).parent / shared_notebook / shared_name
        if all(ActivationCache.is_complete(shared / s) for s in ("train", "eval")):
            train = ActivationCache(shared / "train")
            if hook in train.hooks and train.manifest["n_windows"] == n_train_windows:
                return shared, True
    return Path(root) / own_name, False


def open_or_harvest(folder: Path, reused: bool, lm, splits: dict[str, torch.Tensor], hook: str,
                    workers: int = 1) -> tuple[dict, dict]:
    """The split caches under `folder`: opened as they are when `reused` (another notebook's
    cache, harvested for more hooks), else built or resumed for `hook` alone (`harvest_splits`).
    Returns the caches and the harvest's `{tokens, seconds, tokens/s}` (0 tokens when reused)."""
    if reused:
        return {s: ActivationCache(Path(folder) / s) for s in splits}, {"tokens": 0, "seconds": 0.0, "tokens/s": float("nan")}
    return harvest_splits(folder, lm, splits, [hook], workers=workers)


def real_jobs(configs: list[dict], train_dir: Path, eval_dir: Path, hook: str, save_dir: Path, metadata: dict,
              in_ram: bool, rule: ContentRule) -> dict:
    """A `CacheJob` per real config, by its sweep key: `run_sweep(..., partial(train_cache_job,
    jobs=jobs), workers=N)` trains them in worker processes on the caches' content rows."""
    return {config_key(c): CacheJob(str(train_dir), str(eval_dir), hook, TrainConfig(**c["cfg"]), str(sae_path(save_dir, c)),
                                    metadata, in_ram=in_ram, rule=rule) for c in configs}


def sae_path(save_dir: Path, c: dict) -> Path:
    """The folder of a real config's SAE weights (labels plus the config's key)."""
    return Path(save_dir) / f"{c['method']}_{c['variant'].replace('/', '-')}_{c['knob']}_seed{c['seed']}_{config_key(c)}"


REAL_KEYS = ("method", "knob", "seed", "variant", "data", "content_rule", "cfg")
"""The fields of a real config (a stored row from another layout lacks some and is recomputed)."""


def has_sae(row: dict, save_dir: Path) -> bool:
    """Whether a stored sweep row has this layout and its SAE weights are still in `save_dir`."""
    return all(q in row for q in REAL_KEYS) and (sae_path(save_dir, {q: row[q] for q in REAL_KEYS}) / "cfg.json").exists()


def load_sae(save_dir: Path, c: dict) -> SAE:
    """The trained SAE of real config `c`."""
    return SAE.load(sae_path(save_dir, c))


def real_row(c: dict, train_data, eval_ND: torch.Tensor, save_dir: Path, metadata: dict) -> dict:
    """Train real config `c` on `train_data` (content rows in RAM, or `(KeptRows, hook)` streamed,
    chosen by the rule in `c["content_rule"]`), save it, and return its held-out row
    (`train_and_evaluate`, on content rows `eval_ND`); bind the data with `partial`."""
    _, row = train_and_evaluate(train_data, eval_ND, TrainConfig(**c["cfg"]), sae_path(save_dir, c), metadata=metadata)
    return row


def knob_label(method: str, knob) -> str:
    """A real setting as text: `k=32`, `λ=0.05`, `p=0.05` (GBA's ladder p → p/100)."""
    return f"k={int(knob)}" if method == "topk" else f"λ={knob:g}" if method == "relu_l1" else f"p={knob:g}"


def label_real(rows: pd.DataFrame, default_variant: str = "tied/relu") -> pd.DataFrame:
    """The real sweep's rows with `Method`, `series` (the method, plus a GBA variant other than
    the default), `setting` (`knob_label`) and `default` (not another GBA variant)."""
    out = rows.copy()
    out["Method"] = out.method.map(METHODS)
    out["default"] = out.variant.isin(["", default_variant])
    out["series"] = [n if d else f"{n} ({v})" for n, v, d in zip(out.Method, out.variant, out["default"])]
    out["setting"] = [knob_label(m, k) for m, k in zip(out.method, out.knob)]
    return out


def frontier_spread(real: pd.DataFrame) -> pd.DataFrame:
    """Each (series, setting) over seeds: mean and sd of L0 and FVU, one row each, in L0 order
    within a series (the frontier figure's points)."""
    g = real.groupby(["series", "Method", "default", "setting"], sort=False)
    sd = g[["l0", "fvu"]].std(ddof=1).fillna(0).rename(columns={"l0": "l0_sd", "fvu": "fvu_sd"})
    out = g[["l0", "fvu"]].mean().join(sd)
    out = out.join(g.size().rename("seeds")).reset_index()
    return out.sort_values(["series", "l0"], kind="stable").reset_index(drop=True)


@dataclass
class MatchedL0:
    """Where GBA's and TopK's L0 ranges overlap (`matched_l0`): `lo` to `hi`,
    and the matched L0, their geometric middle (NaN when they do not overlap)."""

    lo: float
    hi: float

    @property
    def overlap(self) -> bool:
        return self.lo <= self.hi

    @property
    def l0(self) -> float:
        return math.sqrt(self.lo * self.hi) if self.overlap else float("nan")


def matched_l0(frontier: pd.DataFrame, a: str = "GBA", b: str = "TopK") -> MatchedL0:
    """The overlap of the default series `a` and `b` in L0: the rule, fixed before the run, that
    places the frontier comparison. On per-seed rows (`label_real`, with a `seed` column) it is the
    overlap of every seed's range, so each seed's frontier, ΔCE's included, covers the matched L0
    and interpolates there; on `frontier_spread` rows, of the means over seeds."""
    keys = ["series", "seed"] if "seed" in frontier.columns else ["series"]
    l0 = frontier[frontier.series.isin([a, b])].groupby(keys).l0
    return MatchedL0(float(l0.min().max()), float(l0.max().min()))


def at_l0(part: pd.DataFrame, l0: float, col: str = "fvu") -> float:
    """`col` of a frontier (`l0`, `col` rows) at L0 `l0`, interpolated linearly in log L0; NaN
    outside the frontier's L0 range (no extrapolation)."""
    part = part.sort_values("l0")
    if not len(part) or not part.l0.min() <= l0 <= part.l0.max():
        return float("nan")
    return float(np.interp(np.log(l0), np.log(part.l0.values), part[col].values))


def matched_table(real: pd.DataFrame, dce: pd.DataFrame, match: MatchedL0, seeds: list[int]) -> pd.DataFrame:
    """Every default series at the matched L0: FVU interpolated on each seed's frontier (mean,
    sd, per seed) and ΔCE interpolated on the first seed's spliced SAEs (`dce`: series, l0,
    `ΔCE nats`); NaN where the matched L0 lies outside a series' range."""
    rows = []
    for series, part in real[real["default"]].groupby("series", sort=False):
        per_seed = [at_l0(part[part.seed == s], match.l0) for s in seeds]
        rows.append({"series": series, "matched L0": match.l0, "fvu": np.mean(per_seed),
                     "fvu sd": np.std(per_seed, ddof=1) if len(per_seed) > 1 else 0.0,
                     "fvu per seed": " / ".join(f"{v:.3f}" for v in per_seed),
                     "ΔCE nats": at_l0(dce[dce.series == series], match.l0, "ΔCE nats")})
    return pd.DataFrame(rows)


def ce_splices(spec: RealSpec, knob_grid: dict[str, list], seed: int, gba_variants: list,
               variant_p_highs: list) -> dict[str, dict]:
    """What each ΔCE splice is: every setting of every method on `seed` (so ΔCE can be read at
    the matched L0), then the other GBA variants, by name (`TopK k=32`, `GBA (untied/relu) p=0.05`)."""
    out = {f"{METHODS[m]} {knob_label(m, kn)}": real_config(spec, m, kn, seed) for m in METHODS for kn in knob_grid[m]}
    for v in gba_variants[1:]:
        out |= {f"GBA ({'/'.join(v)}) {knob_label('gba', kn)}": real_config(spec, "gba", kn, seed, "/".join(v))
                for kn in variant_p_highs}
    return out


def ce_sweep_key(splices: dict[str, dict], windows: int, seq_len: int, rule: ContentRule = ContentRule()) -> dict:
    """The CE sweep's one config: the splices' keys, the windows and the content rule (the
    positions every splice, zero ablation included, leaves clean)."""
    return {"saes": {n: config_key(c) for n, c in splices.items()}, "windows": windows, "ce_seq_len": seq_len,
            "content_rule": asdict(rule)}


def ce_row(c: dict, lm, hook: str, splices: dict[str, dict], save_dir: Path, windows_NT: torch.Tensor) -> dict:
    """Per-window CE (nats) clean, zero-ablated and with each SAE of `splices` spliced in at
    `hook` (`spliced_ce`), leaving clean the positions that the content rule of the sweep config
    `c` (`ce_sweep_key`) leaves out, so the rule that keys the row is the one it ran under; bind
    the other arguments with `partial` for `run_sweep`."""
    rule = ContentRule(**c["content_rule"])
    saes = {"zero": (hook, torch.zeros_like), **{n: (hook, load_sae(save_dir, c)) for n, c in splices.items()}}
    out = spliced_ce(lm, saes, windows_NT, batch_size=8, rule=rule)
    return {"per_window": {n: v.tolist() for n, v in out["per_window"].items()}}


@dataclass
class DeltaCE:
    """ΔCE of each splice against the clean model, and the clean and zero-ablated mean CE."""

    table: pd.DataFrame
    clean: float
    zero: float
    n_windows: int

    def records(self) -> dict[str, float]:
        """`real/<SAE>/delta_ce` and `real/<SAE>/ce_recovered` for every splice."""
        out = {}
        for name, d, rec in zip(self.table["SAE"], self.table["ΔCE nats"], self.table["CE recovered"]):
            out[f"real/{name}/delta_ce"], out[f"real/{name}/ce_recovered"] = d, rec
        return out


def delta_ce(per_window: dict[str, list[float]], splices: dict[str, dict], real: pd.DataFrame,
             configs: list[dict]) -> DeltaCE:
    """Per splice: mean ΔCE in nats over windows with a 95 % interval, CE recovered against zero
    ablation, and the SAE's series, FVU and L0 (`real` holds `configs`' rows, in order)."""
    pw = {n: torch.tensor(v) for n, v in per_window.items()}
    by_key = {config_key(c): r for c, (_, r) in zip(configs, real.iterrows())}
    missing = [n for n, c in splices.items() if config_key(c) not in by_key]
    if missing:
        raise ValueError(f"splices {missing} are not among the real sweep's configs: build them from the same "
                         "RealSpec (same data key and content rule) as the SAEs")
    rows = []
    for name, c in splices.items():
        diff, r = pw[name] - pw["clean"], by_key[config_key(c)]
        rows.append({"SAE": name, "series": r.get("series", ""), "setting": c["knob"], "ΔCE nats": float(diff.mean()),
                     "± 95%": 1.96 * float(diff.std()) / math.sqrt(len(diff)),
                     "CE recovered": float((pw["zero"].mean() - pw[name].mean()) / (pw["zero"].mean() - pw["clean"].mean())),
                     "fvu": r.fvu, "l0": r.l0})
    return DeltaCE(pd.DataFrame(rows), float(pw["clean"].mean()), float(pw["zero"].mean()), len(pw["clean"]))


@dataclass
class Consistency:
    """Seed consistency of every default setting: the table, every best-match cosine
    (`Method`, `setting`, `subset`, `cos`) and the random-direction floor."""

    table: pd.DataFrame
    cosines: pd.DataFrame
    floor: torch.Tensor

    def picked(self, picks: dict[str, str]) -> pd.DataFrame:
        """The cosines of one setting per method (`picks`: Method -> setting)."""
        keep = [picks.get(m) == s for m, s in zip(self.cosines.Method, self.cosines.setting)]
        return self.cosines[keep]


def setting_configs(spec: RealSpec, knob_grid: dict[str, list], seeds: list[int]) -> dict[tuple[str, str], list[dict]]:
    """Each default setting on every seed: (Method, setting) -> one config per seed."""
    return {(name, knob_label(m, kn)): [real_config(spec, m, kn, s) for s in seeds]
            for m, name in METHODS.items() for kn in knob_grid[m]}


def seed_consistency(configs: dict[tuple[str, str], list[dict]], save_dir: Path, eval_ND: torch.Tensor,
                     frequent_density: float, floor: torch.Tensor) -> Consistency:
    """For each setting's SAEs (one config per seed, loaded one setting at a time), over all
    live and over frequent latents: the share of best matches in another seed above 0.9 (mean
    and sd over ordered pairs) and 0.7, the median best-match cosine, and the random floor's."""
    rows, dists = [], []
    for (name, setting), per_seed in configs.items():
        saes = [load_sae(save_dir, c) for c in per_seed]
        density = [evaluate_sae(s, eval_ND)["density"] for s in saes]  # once per SAE, for both subsets
        for subset, dens in (("all live", 0.0), ("frequent", frequent_density)):
            pairs = [best_match_cosines(a, b, density[i] > dens) for i, a in enumerate(saes)
                     for j, b in enumerate(saes) if i != j]
            cos = torch.cat(pairs) if pairs else torch.zeros(0)
            dists.append(pd.DataFrame({"Method": name, "setting": setting, "subset": subset, "cos": cos.numpy()}))
            at9 = [float((p > 0.9).float().mean()) for p in pairs]
            rows.append({"Method": name, "setting": setting, "subset": subset,
                         "latents per SAE": np.mean([len(p) for p in pairs]),
                         "consistency@0.9": np.mean(at9), "sd over pairs": np.std(at9, ddof=1) if len(at9) > 1 else 0.0,
                         "consistency@0.7": np.mean([float((p > 0.7).float().mean()) for p in pairs]),
                         "median best-match cos": float(cos.median()) if len(cos) else float("nan")})
    table = pd.DataFrame(rows)
    table["random floor @0.9"] = float((floor > 0.9).float().mean())
    table["random floor median"] = float(floor.median())
    return Consistency(table, pd.concat(dists, ignore_index=True), floor)


def nearest_setting(spread: pd.DataFrame, series: str, l0: float) -> str:
    """The setting of `series` whose mean L0 is nearest `l0` in log L0 (its middle setting when
    `l0` is NaN): where the consistency claim compares methods."""
    part = spread[spread.series == series].sort_values("l0").reset_index(drop=True)
    if l0 != l0:
        return part.setting.iloc[len(part) // 2]
    return part.setting.iloc[int(np.argmin(np.abs(np.log(part.l0.values) - math.log(l0))))]



# --------------------------------------------------------------------------- ours vs the paper


def held(ok: bool, partly: bool) -> str:
    """A claim's verdict: "yes" when `ok`, else "partly" when `partly`, else "no"."""
    return "yes" if ok else "partly" if partly else "no"


def mean_sd_text(v: pd.Series) -> str:
    """`mean ± sd` (sd over seeds, ddof 1) to three decimals."""
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def beats(a: pd.Series, b: pd.Series) -> str:
    """Whether `a` beats `b` over seeds: "yes" when the difference in means exceeds the larger
    sd, "partly" when the means differ by less than that, "no" when `b` wins by more."""
    diff, spread = a.mean() - b.mean(), max(a.std(ddof=1), b.std(ddof=1))
    return "yes" if diff > spread else "partly" if abs(diff) <= spread else "no"


def toy_part(syn: pd.DataFrame, method: str, setting, role: str = "report") -> pd.DataFrame:
    """The runs of `method` at `setting` in `role`, one per seed (empty when it did not run)."""
    same = np.array([s == setting for s in syn.setting], dtype=bool)
    return syn[(syn.method == method) & (syn.role == role) & same]


def toy_scores(syn: pd.DataFrame, method: str, setting, role: str = "report") -> pd.Series:
    """Live recovery@0.9 of `method` at `setting` over seeds (empty when it did not run)."""
    return toy_part(syn, method, setting, role)["recovery@0.9"]


def peak_text(part: pd.DataFrame) -> str:
    """The peak along training beside the final value the rule reads: `peak 0.97 at ~2M samples`."""
    if part.empty or "peak@0.9" not in part:
        return ""
    return f"; peak along training {part['peak@0.9'].mean():.3f} at ~{part['peak_samples'].median():,.0f} samples"


UNSTATED = "the paper does not state the toy's SAE width, lr, steps, coefficient law or a_m init"
"""What the toy claims' notes say the paper leaves open (our choices stand in for them)."""


PAPER_TOPK = ((20, 0.984), (30, 0.242), (50, 0.234))
"""The paper's toy: TopK k -> published recovery@0.9 (k 20 recovers, k 30 and 50 fail)."""


def toy_claims(syn: pd.DataFrame, tuning: Tuning, toy: ToySpec, paper_gba: list, wrong: list[list],
               f_true: float, seeds: list[int], topk_grid: list[int]) -> list[dict]:
    """The paper-comparison rows of the toy: TopK at the paper's k, GBA's paper setting, tuned GBA
    against tuned TopK, and each wrong ladder, by the rules stated before the runs."""
    seeds_note = (f"final value (the rule), mean ± sd over seeds {seeds}; width {toy.width}; {toy.samples:,} samples; "
                  f"{UNSTATED}")
    toy_name = f"the toy (n={toy.n_features}, d={toy.d}, s={'/'.join(map(str, toy.paper_mix))})"
    rows = []
    for k, pub in PAPER_TOPK:
        part = toy_part(syn, "topk", k)
        v = part["recovery@0.9"]
        good = pub > 0.5
        verdict = ("not tested" if v.empty else held(v.mean() >= pub - 0.1, v.mean() >= pub - 0.2) if good
                   else held(v.mean() <= pub + 0.1, v.mean() <= pub + 0.2))
        rows.append({"claim": f"TopK k={k} {'recovers' if good else 'fails on'} {toy_name}",
                     "metric": "recovery@0.9 (live latents)", "paper": pub, "ours": "not run" if v.empty else mean_sd_text(v),
                     "held": verdict, "note": seeds_note + peak_text(part) if not v.empty else f"k={k} is not in topk_grid {topk_grid}"})
    part = toy_part(syn, "gba", paper_gba)
    v = part["recovery@0.9"]
    rows.append({"claim": f"GBA (paper setting) recovers every feature of {toy_name}", "metric": "recovery@0.9 (live latents)",
                 "paper": 1.0, "ours": mean_sd_text(v), "held": held(v.mean() >= 0.9, v.mean() >= 0.8),
                 "note": f"{label('gba', paper_gba)}; {seeds_note}{peak_text(part)}"})
    g, t = tuning.tuned["gba"]["recovery@0.9"], tuning.tuned["topk"]["recovery@0.9"]
    rows.append({"claim": "GBA recovers more of the toy than TopK (each tuned with the same budget)",
                 "metric": "recovery@0.9 (live latents)", "paper": "GBA > TopK",
                 "ours": f"GBA {mean_sd_text(g)} vs TopK {mean_sd_text(t)}", "held": beats(g, t),
                 "note": f"leave-one-seed-out picks: GBA {' / '.join(tuning.picked['gba'])}; "
                         f"TopK {' / '.join(tuning.picked['topk'])}"})
    for s in wrong:
        v = toy_scores(syn, "gba", s, "wrong ladder")
        side = "above" if s[1] > f_true else "below"
        rows.append({"claim": f"GBA with a wrong frequency range fails (ladder {s[0]:g}→{s[1]:g}, all {side} f)",
                     "metric": "recovery@0.9 (live latents)", "paper": 0.039,
                     "ours": mean_sd_text(v), "held": held(v.mean() <= 0.139, v.mean() <= 0.239),
                     "note": f"rule: yes at <= 0.139 (paper + 0.1), partly at <= 0.239; this ladder {s[0]:g}→{s[1]:g} lies "
                             f"{side} f = {f_true:.3f}; the paper's wrong range is not stated"})
    return rows


def frontier_claim(matched: pd.DataFrame, spread: pd.DataFrame, match: MatchedL0, setup: str,
                   default_variant: str) -> dict:
    """GBA vs TopK on the frontier: the ratio of their FVUs at the matched L0 (each seed's
    frontier interpolated in log L0, then the mean over seeds), with ΔCE there beside it. When
    the L0 ranges do not overlap (a precondition says so) the row still gets a number: the two
    nearest points, GBA's lowest L0 against TopK's highest (or the reverse)."""
    m = matched.set_index("series")
    base = {"claim": "GBA matches TopK's reconstruction-sparsity frontier on LLM activations", "paper": "matches (≈ 1)"}
    note = f"{setup}; GBA {default_variant}; mean over seeds (paper: Qwen2.5-1.5B, 66k latents, 100M tokens)"
    if match.overlap:
        ratio = m.loc["GBA", "fvu"] / m.loc["TopK", "fvu"]
        ours = (f"{ratio:.2f} (GBA {m.loc['GBA', 'fvu']:.3f} vs TopK {m.loc['TopK', 'fvu']:.3f}; ΔCE "
                f"{m.loc['GBA', 'ΔCE nats']:.2f} vs {m.loc['TopK', 'ΔCE nats']:.2f} nats)")
        return base | {"metric": f"FVU ratio GBA / TopK at matched L0 {match.l0:.0f}", "ours": ours,
                       "held": held(ratio <= 1.1, ratio <= 1.5),
                       "note": f"{note}; the L0 ranges overlap from {match.lo:.0f} to {match.hi:.0f}"}
    g, t = spread[spread.series == "GBA"], spread[spread.series == "TopK"]
    low = g.l0.min() > t.l0.max()  # GBA sits above TopK's range in L0
    gp, tp = (g.nsmallest(1, "l0"), t.nlargest(1, "l0")) if low else (g.nlargest(1, "l0"), t.nsmallest(1, "l0"))
    ratio = float(gp.fvu.iloc[0] / tp.fvu.iloc[0])
    return base | {"metric": "FVU ratio GBA / TopK at their nearest L0 points (ranges do not overlap)",
                   "ours": f"{ratio:.2f} (GBA {gp.fvu.iloc[0]:.3f} at L0 {gp.l0.iloc[0]:.0f} vs TopK {tp.fvu.iloc[0]:.3f} "
                           f"at L0 {tp.l0.iloc[0]:.0f})",
                   "held": held(ratio <= 1.1, ratio <= 1.5), "note": note}


def l0_precondition(match: MatchedL0, gates: str) -> dict:
    """The frontier claim's premise: GBA's and TopK's L0 ranges overlap, so FVU can be compared
    at one L0 without extrapolating."""
    return {"precondition": "GBA's and TopK's L0 ranges overlap (in every seed)",
            "measure": "highest of the two lowest L0s, lowest of the two highest",
            "threshold": "lowest-high >= highest-low", "value": f"{match.lo:.1f} .. {match.hi:.1f}",
            "met": "yes" if match.overlap else "no", "gates": gates}


def consistency_claim(cons: pd.DataFrame, picks: dict[str, str], note: str) -> dict:
    """GBA vs TopK on seed consistency@0.9 over all live latents, each at its setting in `picks`
    (nearest the matched L0): "yes" when GBA is higher by more than the larger sd over pairs,
    "partly" within it, "no" when TopK is higher by more."""
    c = cons[cons.subset == "all live"].set_index(["Method", "setting"])
    g, t = c.loc[("GBA", picks["GBA"])], c.loc[("TopK", picks["TopK"])]
    spread = max(g["sd over pairs"], t["sd over pairs"])
    diff = g["consistency@0.9"] - t["consistency@0.9"]
    return {"claim": "GBA is more seed-consistent than TopK", "metric": "consistency@0.9 (all live latents)",
            "paper": "GBA > TopK",
            "ours": f"GBA {g['consistency@0.9']:.4f} ({picks['GBA']}) vs TopK {t['consistency@0.9']:.4f} ({picks['TopK']}); "
                    f"random {g['random floor @0.9']:.4f}",
            "held": "yes" if diff > spread else "partly" if abs(diff) <= spread else "no", "note": note}


def consistency_precondition(cons: pd.DataFrame, picks: dict[str, str], margin: float, gates: str) -> dict:
    """The consistency claim's premise: at the compared settings some method's consistency@0.9
    clears the random-direction floor by `margin` (else both sit at the noise floor and the
    comparison could not have shown a difference)."""
    c = cons[cons.subset == "all live"].set_index(["Method", "setting"])
    best = max(c.loc[(m, s), "consistency@0.9"] for m, s in picks.items())
    floor = float(c["random floor @0.9"].iloc[0])
    return {"precondition": "seed consistency clears the random floor",
            "measure": "higher consistency@0.9 of GBA and TopK at the compared settings, minus the random floor",
            "threshold": f">= {margin:g}", "value": f"{best - floor:.4f}", "met": "yes" if best - floor >= margin else "no",
            "gates": gates}


def claim_numbers(first: int, n: int) -> str:
    """Claims `first` .. `first + n - 1` (1-based) as a preconditions `gates` field."""
    return " ".join(str(i) for i in range(first, first + n))
