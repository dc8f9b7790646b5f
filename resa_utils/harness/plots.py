"""Every notebook figure, in one style: a seaborn whitegrid theme, the colour-blind palette,
axis labels with units, a title that says what is compared, legends outside the data, and n
and intervals where they are shown.

Generic helpers come first; below them one section per notebook holds the figures that only
that notebook draws. A figure function takes tidy DataFrames (one row per point) and returns
the matplotlib Figure; the notebook saves it with `run.save_figure`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.ticker import LogLocator, NullFormatter

if TYPE_CHECKING:
    import pandas as pd

PALETTE = "colorblind"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def use_style() -> None:
    """The one style: seaborn whitegrid, notebook context, colour-blind palette, readable sizes."""
    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
    plt.rcParams.update({"figure.dpi": 100, "axes.titlesize": 11, "axes.labelsize": 10,
                         "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 8.5,
                         "legend.frameon": True, "legend.framealpha": 0.9,
                         "figure.titlesize": 12})


def colors(names: Iterable[str]) -> dict[str, tuple]:
    """A fixed colour per name, in the palette's order (the same name keeps its colour across a
    notebook's figures when the same list is passed)."""
    names = list(dict.fromkeys(names))
    return dict(zip(names, sns.color_palette(PALETTE, max(len(names), 1))))


def markers(names: Iterable[str]) -> dict[str, str]:
    names = list(dict.fromkeys(names))
    return {n: MARKERS[i % len(MARKERS)] for i, n in enumerate(names)}


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.6, height: float = 3.6,
           **kw) -> tuple[plt.Figure, np.ndarray]:
    """A figure of `nrows x ncols` panels, each `width x height` inches; axes always a flat array."""
    use_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
    return fig, axes.ravel()


def label(ax, x: str, y: str, title: str | None = None) -> None:
    """Axis labels (with units, e.g. 'training tokens', 'ΔCE (nats)') and a panel title."""
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title)


def log_axis(ax, axis: str = "x", base: float = 10) -> None:
    """A log axis whose ticks never crowd and never vanish (call it after plotting): labelled
    powers of `base` over two decades or more; 1, 2 and 5 per decade over a shorter span (a KL
    from 0.24 to 0.13 still gets labels). Minor ticks stay unlabelled."""
    from matplotlib.ticker import StrMethodFormatter

    getattr(ax, f"set_{axis}scale")("log", base=base)
    which = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    if lo > 0 and hi / lo < base ** 2:
        which.set_major_locator(LogLocator(base=base, subs=(1.0, 2.0, 5.0), numticks=8))
        which.set_major_formatter(StrMethodFormatter("{x:g}"))
    else:
        which.set_major_locator(LogLocator(base=base, numticks=6))
    which.set_minor_formatter(NullFormatter())


def legend_outside(ax, title: str | None = None, **kw) -> None:
    """The legend to the right of the panel, where it cannot cover data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.02, 1),
                  borderaxespad=0, **kw)


def legend_below(fig, ax, ncol: int = 4, **kw) -> None:
    """One legend for the whole figure, under the panels (for many series)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
                   frameon=False, **kw)


def rotate_ticks(ax, degrees: float = 30, axis: str = "x") -> None:
    """Tilt tick labels (right-aligned) so long category names do not overlap."""
    for t in (ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()):
        t.set_rotation(degrees)
        t.set_horizontalalignment("right" if axis == "x" else "center")


def title(fig, text: str, n: int | str | None = None) -> None:
    """The figure's title: what is compared, and n when it is one number for the whole figure."""
    fig.suptitle(text + (f" (n = {n})" if n is not None else ""), y=1.02)
    fig.tight_layout()


def interval_bars(ax, labels: Sequence[str], values: Sequence[float], lo: Sequence[float],
                  hi: Sequence[float], color=None, annotate: str | None = "{:.1f}") -> None:
    """Bars with asymmetric interval whiskers (`lo`, `hi` are the interval's ends, not widths)."""
    values, lo, hi = (np.asarray(v, dtype=float) for v in (values, lo, hi))
    xs = np.arange(len(labels))
    ax.bar(xs, values, color=color, yerr=[values - lo, hi - values], capsize=3)
    ax.set_xticks(xs, labels)
    if annotate:
        for x, v in zip(xs, values):
            ax.annotate(annotate.format(v), (x, v), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")


def reference_line(ax, value: float, text: str, axis: str = "y", **kw) -> None:
    """A dashed reference line, labelled in the legend (so no dashed line goes unexplained)."""
    style = {"color": "0.35", "ls": "--", "lw": 1.0, **kw}
    (ax.axhline if axis == "y" else ax.axvline)(value, label=text, **style)


# =========================================================================== 00_reasoning_models

def short_names(names) -> list[str]:
    """Model names without the base's name they all start with (`smollm2-135m-instruct-reasoner-x2`
    -> `reasoner-x2`), so labels fit; the base keeps its name."""
    names = [str(n) for n in names]
    pool = [n for n in names if "-reasoner" in n]
    if not pool:
        return names
    prefix = pool[0][:pool[0].index("-reasoner") + 1]
    return [n[len(prefix):] if n.startswith(prefix) else n for n in names]


def reasoning_models(acc: "pd.DataFrame", behaviour: "pd.DataFrame", curves: "pd.DataFrame", task: str) -> plt.Figure:
    """Notebook 00's headline: each model's held-out pass@1 (strict and lenient, Wilson 95%), each
    reflection phrase per sampled answer against the teacher's rate, and the training curves.
    `acc`: one `distill.accuracy_row` per model; `behaviour`: `distill.behaviour_rows`;
    `curves`: `distill.training_curves` (training, step, loss)."""
    fig, axes = figure(3, width=4.6, height=3.8)
    acc, behaviour = acc.assign(model=short_names(acc.model)), behaviour.copy()
    if len(behaviour):
        behaviour["model"] = short_names(behaviour.model)
    curves = curves.assign(training=short_names(curves.training)) if len(curves) else curves
    ax, ys = axes[0], np.arange(len(acc))
    grading = colors(["strict", "lenient"])
    for j, (key, name) in enumerate((("", "strict"), ("lenient ", "lenient"))):
        x = acc[f"{key}pass@1"].to_numpy(float)
        err = [x - acc[f"{key}ci_low"].to_numpy(float), acc[f"{key}ci_high"].to_numpy(float) - x]
        ax.errorbar(x, ys + 0.15 * (2 * j - 1), xerr=err, fmt="o", capsize=3, color=grading[name], label=name)
    ax.set_yticks(ys, acc.model)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    label(ax, "held-out pass@1 (fraction correct)", "model", "accuracy (Wilson 95% intervals)")
    legend_outside(ax, "grading")
    sampled = behaviour[behaviour.decoding == "sampled"] if len(behaviour) else behaviour
    if len(sampled):  # the trained reasoners only: the scaled models have a panel of their own
        sampled = sampled[~sampled.model.str.contains(r"x\d", regex=True)]
    if len(sampled):
        sns.barplot(sampled, x="phrase", y="per answer", hue="model", errorbar=None, ax=axes[1], palette=PALETTE)
        teacher = sampled.drop_duplicates("phrase")
        axes[1].scatter(teacher.phrase, teacher["teacher per trace"], marker="_", s=900, color="black", zorder=3,
                        label="teacher (per trace)")
    axes[1].set_ylim(bottom=0)
    rotate_ticks(axes[1])
    label(axes[1], "reflection phrase", "count per answer (sampled, T=1)", "phrases vs the teacher's")
    legend_outside(axes[1], "model")
    for name, rows in curves.groupby("training", sort=False):
        axes[2].plot(rows.step, rows.loss, label=name)
    if curves.empty:
        axes[2].text(0.5, 0.5, "no loss logged\n(fewer steps than\nlogging_steps)", ha="center",
                     va="center", transform=axes[2].transAxes, color="0.4", fontsize=9)
    label(axes[2], "optimizer step", "train loss (nats/token, response only)", "distillation curves")
    legend_outside(axes[2], "training")
    title(fig, f"base vs distilled reasoners on {task}", n=int(acc["n"].max()) if len(acc) else None)
    return fig


def reasoning_representation(reps: "pd.DataFrame", dose: "pd.DataFrame", block: int) -> plt.Figure:
    """How far each model's residual stream moved from the base's (median same-token cosine per
    block; solid: reasoning text, dashed: English), and the dose-response of the scaled models
    against the scale: pass@1, the cosine at `block`, and the phrases per sampled answer.
    `reps`: `distill.representation_table`; `dose`: `distill.dose_table`."""
    fig, axes = figure(4, width=4.2, height=3.8)
    reps = reps.assign(model=short_names(reps.model))
    col = colors(dict.fromkeys(reps.model))
    for (m, text), rows in reps.groupby(["model", "text"], sort=False):
        axes[0].plot(rows.block, rows["median cos"], ls="-" if text == "reasoning" else "--", color=col[m],
                     label=m if text == "reasoning" else None)
    axes[0].axvline(block, color="0.6", lw=0.8)
    label(axes[0], "block", "median same-token cosine with the base", "residual stream vs the base")
    axes[0].text(0.02, 0.02, "solid: reasoning text\ndashed: English", transform=axes[0].transAxes, fontsize=8, color="0.3")
    legend_outside(axes[0], "model")
    x = dose.scale.to_numpy(float)
    y = dose["pass@1"].to_numpy(float)
    axes[1].errorbar(x, y, yerr=[y - dose.ci_low.to_numpy(float), dose.ci_high.to_numpy(float) - y], fmt="o-", capsize=3)
    axes[1].set_ylim(0, 1)
    label(axes[1], "scale s: base + s (reasoner - base)", "test pass@1 (greedy)", "dose: accuracy")
    for c in [c for c in dose if c.startswith("median cos")]:
        axes[2].plot(x, dose[c], "o-", label=c.replace("median cos ", "").strip("()"))
    label(axes[2], "scale s", f"median same-token cosine, block {block}", "dose: representation")
    legend_outside(axes[2], "text")
    for c in [c for c in dose if c.endswith(" / answer")]:
        axes[3].plot(x, dose[c], "s-", label=c.replace(" / answer", ""))
    axes[3].set_ylim(bottom=0)
    label(axes[3], "scale s", "count per sampled answer (T=1)", "dose: reflection phrases")
    legend_outside(axes[3], "phrase")
    title(fig, "how far the distillation moved the model", n=int(dose["n"].max()) if len(dose) else None)
    return fig


# =========================================================================== 01_resa_sae_tuning

def sae_tuning(grid: "pd.DataFrame", acc: "pd.DataFrame", chosen: dict, task: str, difficulty: int) -> plt.Figure:
    """Notebook 01's headline. Dev pass@1 against tuning steps, per arm and lr (`grid`:
    `sae_tuning.checkpoint_row`s, step 0 = the target), with the chosen points circled; the
    damage KL(target ‖ tuned) and the spliced objective along training; test pass@1 of every
    model (`acc`: model, n, pass@1, ci_low, ci_high)."""
    import pandas as pd

    fig, axes = figure(ncols=3, width=5.2, height=3.8)
    arms = {"sae": ("SAE-Tuning", "-"), "sft": ("SFT control", "--")}
    lrs = sorted(set(grid.lr.dropna()))
    col = colors([f"lr {v:g}" for v in lrs])
    start = grid[grid.step == 0]
    for arm, (name, ls) in arms.items():
        for lr in lrs:
            rows = grid[(grid.arm == arm) & (grid.lr == lr) & (grid.step > 0)]
            if rows.empty:
                continue
            rows = pd.concat([start.assign(lr=lr), rows]).sort_values("step")
            c = col[f"lr {lr:g}"]
            axes[0].plot(rows.step, rows["dev pass@1"], ls=ls, marker="o", color=c, label=f"{name}, lr {lr:g}")
            axes[1].plot(rows.step, rows["damage KL"].clip(lower=1e-6), ls=ls, marker="o", color=c, label=f"{name}, lr {lr:g}")
            if arm == "sae":
                axes[1].plot(rows.step, rows["spliced KL"], ls=":", marker="x", color=c, label=f"{name} + SAE (objective), lr {lr:g}")
        pick = chosen.get(arm)
        if pick:
            axes[0].plot([pick["step"]], [pick["dev pass@1"]], "o", ms=14, mfc="none", mec="k", label=f"chosen: {name}")
    label(axes[0], "optimizer step", "dev pass@1 (SAE removed)", "choosing lr and step on dev")
    legend_outside(axes[0])
    log_axis(axes[1], "y")
    label(axes[1], "optimizer step", "KL (nats/token)", "damage KL(target ‖ tuned), target's traces;\nthe spliced objective, held-out chunks")
    legend_outside(axes[1])
    ax = axes[2]
    ys = np.arange(len(acc))[::-1]
    ax.errorbar(acc["pass@1"], ys, xerr=[acc["pass@1"] - acc.ci_low, acc.ci_high - acc["pass@1"]], fmt="o", capsize=4,
                label="pass@1 (Wilson 95%)")
    reference_line(ax, float(acc.set_index("model").loc["target", "pass@1"]), "target", axis="x")
    ax.set_yticks(ys, acc.model)
    ax.set_xlim(0, 1)
    label(ax, "test pass@1", "", f"every model (n = {int(acc.n.iloc[0])})")
    legend_outside(ax)
    title(fig, f"SAE-Tuning against its controls, {task} difficulty {difficulty}")
    return fig


# =========================================================================== 02_lrt_affine_transfer

def lrt_maps(maps_df: "pd.DataFrame", pair: str) -> plt.Figure:
    """Notebook 02's maps of one model pair: held-out R² and mean cosine of every (source block,
    target block) map, and each source block's best target block (by R²) against the same
    relative depth. `maps_df`: `transfer.fit_pair_maps(...).table`."""
    from resa_utils.methods.transfer import best_target_blocks

    fig, axes = figure(3, width=5.0, height=4.2)
    for ax, col, name in zip(axes[:2], ["r2", "cosine"], ["R²", "mean cosine"]):
        piv = maps_df.pivot(index="source_layer", columns="target_layer", values=col)
        sns.heatmap(piv, ax=ax, cmap="viridis", vmin=min(0, float(piv.min().min())), vmax=1,
                    cbar_kws={"label": f"held-out {name} (1 = exact)"})
        ax.invert_yaxis()
        label(ax, "target block (index)", "source block (index)", f"held-out {name}")
    best = best_target_blocks(maps_df)
    ax = axes[2]
    ax.plot([0, 1], [0, 1], ls="--", color="0.35", lw=1.0, label="same relative depth")
    ax.plot(best.source_depth, best.target_depth, "o-", label="best target block (R²)")
    label(ax, "source relative depth (0 = first block, 1 = last)", "target relative depth (0 = first, 1 = last)",
          "best target block per source block")
    legend_outside(ax)
    title(fig, f"{pair}: affine maps at every studied block pair, held-out R² and cosine",
          n=f"{int(maps_df.n_test.iloc[0]):,} test positions" if len(maps_df) else None)
    return fig


def lrt_dose_response(dose: "pd.DataFrame", tokens: dict[str, tuple[str, str]], vectors: list[str],
                      model: str, block: int) -> plt.Figure:
    """Notebook 02's steering: per behaviour (one panel each, `tokens[behaviour]` = (y+, y−)), the
    mean logit difference of the held-out prompts against α for each vector, with 95% intervals.
    `dose`: `steering.dose_response` (with its `diffs`, whose length is the n shown)."""
    fig, axes = figure(len(tokens), width=4.0, height=3.4)
    col, mark = colors(vectors), markers(vectors)
    for ax, (n, (pos, neg)) in zip(axes, tokens.items()):
        for v in vectors:
            d = dose[(dose.behaviour == n) & (dose.vector == v)]
            ax.errorbar(d.alpha, d["mean"], yerr=d.ci, label=v, color=col[v], marker=mark[v], ms=4, capsize=2)
        reference_line(ax, 0.0, "equal logits")
        label(ax, "α (× mean last-token norm)", "Logit(y+) − Logit(y−) (nats)", f"{n}: {pos.strip()!r} vs {neg.strip()!r}")
    legend_outside(axes[-1], "vector")
    n = len(dose.diffs.iloc[0]) if "diffs" in dose and len(dose) else None
    title(fig, f"Steering {model} at block {block}: native vs transferred vs random (mean, 95% CI)",
          n=None if n is None else f"{n} held-out prompts per behaviour")
    return fig



def lrt_null(slopes: "pd.DataFrame", names: list[str], model: str, alpha: float) -> plt.Figure:
    """Notebook 02's null: per behaviour (one panel each), the slopes of the null vectors (one dot
    each, a row per group: random directions, label-shuffled source vectors through A, other
    behaviours' A v) and a line for each vector of `names` (native, carried, random), all as
    multiples of the native slope. `slopes`: `steering.one_sided_slopes` at `alpha`."""
    from resa_utils.methods.steering import null_group

    behaviours = list(dict.fromkeys(slopes.behaviour))
    fig, axes = figure(len(behaviours), width=4.0, height=3.2)
    col = colors(names)
    for ax, n in zip(axes, behaviours):
        d = slopes[slopes.behaviour == n]
        nat = float(d[d.vector == "native"].slope.iloc[0]) if (d.vector == "native").any() else 1.0
        unit = nat if nat != 0 else 1.0
        null = d[d.vector.map(null_group) != ""]
        groups = sorted(set(null.vector.map(null_group)))
        for i, g in enumerate(groups):
            x = null[null.vector.map(null_group) == g].slope / unit
            ax.plot(x, [i] * len(x), "o", color="0.45", alpha=0.6, ms=4)
        for v in names:
            if (d.vector == v).any():
                ax.axvline(float(d[d.vector == v].slope.iloc[0]) / unit, color=col[v], lw=1.6, label=v)
        ax.set_yticks(range(len(groups)), [f"null: {g}" for g in groups])
        ax.set_ylim(-0.7, len(groups) - 0.3)
        label(ax, "slope / native slope", "", f"{n}")
    legend_outside(axes[-1], "vector")
    title(fig, f"Steering {model}: each vector's slope (α 0 -> {alpha:g}) among null directions' slopes",
          n=f"{len(null)} null vectors per behaviour" if len(behaviours) else None)
    return fig


# =========================================================================== 03_dense_latents

DENSE_GROUPS = ("random init", "sparse", "dense")
"""Notebook 03's latent groups, in the order that fixes their colours."""


def _hist_proxy(ax, color, text: str) -> None:
    """A legend entry for a histogram series that a panel lacks (an empty rectangle at the origin)."""
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((0, 0), 0, 0, color=color, alpha=0.55, label=text))


def dense_density(rates, dense_threshold: float, n_tokens: "int | dict") -> plt.Figure:
    """Notebook 03: each layer's histogram of latent firing rates (`dense.rates_frame`: layer,
    latent, firing rate, dense), log-log, latents that never fire left out, the dense threshold marked.
    `n_tokens`: the held-out tokens the rates were read on, or `{layer: tokens}` (content rows differ by layer)."""
    layers = list(dict.fromkeys(rates["layer"]))
    if isinstance(n_tokens, dict):
        lo, hi = min(n_tokens.values()), max(n_tokens.values())
        n_text = f"{lo:,} tokens" if lo == hi else f"{lo:,}-{hi:,} tokens by layer"
    else:
        n_text = f"{n_tokens:,} tokens"
    fig, axes = figure(len(layers), width=3.4, height=3.0, sharey=True)
    bins = np.logspace(-5, 0, 51)
    for i, (ax, L) in enumerate(zip(axes, layers)):
        part = rates[rates["layer"] == L]
        ax.hist(part.loc[part["firing rate"] > 0, "firing rate"], bins=bins, color=colors(["latents"])["latents"])
        log_axis(ax, "x")
        log_axis(ax, "y")
        reference_line(ax, dense_threshold, f"dense: > {dense_threshold:.0%} of tokens", axis="x", color="tab:red")
        label(ax, "firing rate (share of held-out tokens)", "latents" if i == 0 else "",
              f"layer {L}: {int(part['dense'].sum())} dense")
    legend_outside(axes[-1])
    title(fig, "Latent firing rates on held-out tokens, by layer", n=n_text)
    return fig


def dense_antipodality(scores, antipodal_threshold: float) -> plt.Figure:
    """Notebook 03: each layer's distribution of the antipodality score s (`dense.Antipodality.scores`:
    layer, group, s) for dense latents, random sparse latents and the random initialisation."""
    layers = list(dict.fromkeys(scores["layer"]))
    col = colors(DENSE_GROUPS)
    fig, axes = figure(len(layers), width=3.4, height=3.2, sharey=True)
    bins = np.linspace(-0.2, 1, 49)
    for i, (ax, L) in enumerate(zip(axes, layers)):
        counts = []
        for g in DENSE_GROUPS:
            v = scores.loc[(scores["layer"] == L) & (scores["group"] == g), "s"]
            counts.append(f"{len(v)} {g}")
            if len(v):
                ax.hist(v, bins=bins, density=True, alpha=0.55, color=col[g], label=g)
            elif ax is axes[-1]:
                _hist_proxy(ax, col[g], g)
        reference_line(ax, antipodal_threshold, f"antipodal: s > {antipodal_threshold}", axis="x")
        label(ax, "antipodality score s", "density (per unit s)" if i == 0 else "", f"layer {L}\n" + ", ".join(counts))
    legend_outside(axes[-1])
    title(fig, "Antipodality score: dense latents vs random sparse latents vs random initialisation")
    return fig


def dense_convergence(conv, epochs: int, layer: int) -> plt.Figure:
    """Notebook 03: the probe layer's SAEs along training (`dense.convergence_table`: seed, epochs,
    fvu, train_fvu, dense, antipodal share, seed match, ΔCE), one line per seed, log2 epochs,
    the main run's epochs marked."""
    seeds = sorted(conv["seed"].unique())
    col = colors([f"seed {s}" for s in seeds])
    panels = [("dense latents", "dense"), ("FVU: held-out (solid), train (dotted)", "fvu"),
              ("held-out ΔCE (nats)", "ΔCE nats"), ("share of dense latents", "antipodal share (dense)")]
    fig, axes = figure(2, nrows=2, width=4.0, height=3.0)
    for ax, (ylab, c) in zip(axes, panels):
        for s in seeds:
            part = conv[conv["seed"] == s].sort_values("epochs")
            ax.plot(part["epochs"], part[c], marker="o", color=col[f"seed {s}"],
                    label=f"seed {s}" + (": antipodal (s above threshold)" if c.startswith("antipodal") else ""))
            if c == "fvu":
                ax.plot(part["epochs"], part["train_fvu"], ls=":", marker=".", color=col[f"seed {s}"], label=f"seed {s} train")
            if c.startswith("antipodal"):
                ax.plot(part["epochs"], part["seed match (dense)"], ls="--", marker="s", color=col[f"seed {s}"],
                        label=f"seed {s}: counterpart in the other seed")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(conv["epochs"].unique()), [str(int(e)) for e in sorted(conv["epochs"].unique())])
        reference_line(ax, epochs, f"main run: {epochs} epochs", axis="x", color="tab:red")
        label(ax, "epochs over the training rows", ylab)
    legend_outside(axes[1])
    legend_outside(axes[3])
    title(fig, f"Convergence at layer {layer}: two seeds scored after each number of epochs")
    return fig


def dense_ablate_retrain(abl, dense_threshold: float, d_sae: int) -> plt.Figure:
    """Notebook 03: dense latents of the original SAE and of the SAEs retrained after projecting out
    the dense span or an equal-dimension random sparse span (`dense.ablation_table`), per layer and seed."""
    cols = ["dense (original)", "dense after dense-span ablation", "dense after control ablation"]
    col = colors(["original", "dense-span", "control"])
    fig, axes = figure(1, width=4.8 + 1.2 * len(abl), height=3.4)  # room for the legend on the right
    by = abl.assign(run=[f"L{int(r.layer)} seed {int(r.seed)}" for r in abl.itertuples()]) if "seed" in abl else abl.assign(run=abl["layer"])
    by.set_index("run")[cols].plot.bar(ax=axes[0], rot=0, color=list(col.values()))
    label(axes[0], "layer and seed", f"latents firing on > {dense_threshold:.0%} of tokens")
    legend_outside(axes[0])
    title(fig, "Ablate and retrain: dense latents before and after", n=f"{d_sae} latents per SAE")
    return fig


def dense_taxonomy(shares, names: Sequence[str]) -> plt.Figure:
    """Notebook 03: the labels of dense latents per layer beside those of as many random sparse latents
    (`dense.label_shares`: stacked share, a latent with several labels split evenly)."""
    col = colors(names)
    fig, axes = figure(2, width=5.2, height=3.6, sharey=True)
    for i, (ax, g) in enumerate(zip(axes, ["dense", "random sparse"])):
        part = shares[shares["group"] == g]
        piv = part.pivot(index="layer", columns="label", values="stacked share").reindex(columns=list(names))
        if len(piv):
            piv.plot.bar(stacked=True, ax=ax, rot=0, legend=False, color=[col[n] for n in names])
        n = int(part.groupby("layer")["n"].first().sum()) if len(part) else 0
        label(ax, "layer", "share of latents (several labels split evenly)" if i == 0 else "", f"{g} latents (n = {n})")
    legend_outside(axes[-1], "label")
    title(fig, "Labels per layer: dense latents vs the same number of random sparse latents")
    return fig


# =========================================================================== 04_distill_crosscoders

def crosscoder_relative_norms(r: "pd.DataFrame", r_low: float, r_high: float, models: str) -> plt.Figure:
    """Notebook 04's relative decoder norms: one histogram of the live latents' r per norm (`r`:
    `crosscoder.relative_norm_frame`, columns norm, latent, r), log counts, with the base-only and
    reasoner-only thresholds as dashed lines labelled in the legend."""
    norms = list(dict.fromkeys(r.norm))
    fig, axes = figure(len(norms), width=4.6, height=3.4, sharey=True)
    for ax, norm in zip(axes, norms):
        part = r[r.norm == norm]
        ax.hist(part.r.to_numpy(float), bins=np.linspace(0, 1, 51), color=colors(["latents"])["latents"], label="live latents")
        reference_line(ax, r_low, f"base-only below r = {r_low}", axis="x")
        reference_line(ax, r_high, f"reasoner-only above r = {r_high}", axis="x", color="0.6")
        log_axis(ax, "y")
        label(ax, f"relative norm r ({norm})", "latents (count)", f"{norm} norms of the decoder rows: {len(part)} live latents")
    legend_outside(axes[-1])
    title(fig, f"Relative decoder norm of each live latent (0 = base only, 0.5 = shared, 1 = reasoner only)\n{models}")
    return fig


def _log_position(value: float, grid: np.ndarray) -> float:
    """Where `value` falls among a log-spaced grid's cell indices (clipped to its ends)."""
    return float(np.interp(np.log10(value), np.log10(grid), np.arange(len(grid))))


def crosscoder_detection_map(maps: dict[str, "pd.DataFrame"], change: dict, models: str) -> plt.Figure:
    """Notebook 04's calibration: per crosscoder, the share of planted reasoner-only directions
    recovered (r > 0.9 and cos > 0.9) over frequency x size (`maps`: `crosscoder_calibration.detection_map`,
    index freq, columns amp), each cell's share written in it, with the real pair's change marked
    (`change`: freq, amp_median, optional amp_q90 as a bar to the right). A change off the grid is
    drawn as an open star at the grid's edge, its true place written beside it."""
    fig, axes = figure(len(maps), width=3.8, height=3.6, gridspec_kw={"wspace": 0.3})
    for k, (ax, (name, m)) in enumerate(zip(axes, maps.items())):
        grid = m.to_numpy(float)
        ax.grid(False)
        im = ax.imshow(grid, origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=8, color="black" if v > 0.5 else "white")
        amps, freqs = m.columns.to_numpy(float), m.index.to_numpy(float)
        fx, fy = _log_position(change["amp_median"], amps), _log_position(change["freq"], freqs)
        off = not (amps.min() <= change["amp_median"] <= amps.max() and freqs.min() <= change["freq"] <= freqs.max())
        if change.get("amp_q90"):
            ax.plot([fx, _log_position(change["amp_q90"], amps)], [fy, fy], color="red", lw=1.5, label="its 90th percentile size")
        ax.scatter([fx], [fy], marker="*", s=240, facecolor="none" if off else "red", edgecolor="red", linewidth=1.5,
                   label="the real reasoner's change (median size)" + (", off the grid" if off else ""), zorder=3)
        if off:
            ax.annotate(f"real: {change['freq']:.2g} of rows,\nsize {change['amp_median']:.2g}", (fx, fy),
                        xytext=(4, -14), textcoords="offset points", fontsize=8, color="white", va="top",
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": "black", "alpha": 0.6, "linewidth": 0})
        ax.set_xticks(range(len(amps)), [f"{a:g}" for a in amps])
        ax.set_yticks(range(len(freqs)), [f"{f:g}" for f in freqs])
        label(ax, "planted size (x mean norm)", "planted frequency (share of rows)" if k == 0 else "",
              f"{name}: recovered")
    fig.colorbar(im, ax=list(axes), label="share recovered", shrink=0.85)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.45, -0.02), ncol=2, fontsize=8)
    fig.suptitle(f"Detection floor: planted reasoner-only directions recovered with r > 0.9 and cos > 0.9\n{models}", y=1.08)
    return fig


def crosscoder_dose(r: "pd.DataFrame", dist: "pd.DataFrame", thresholds: Sequence[float]) -> plt.Figure:
    """Notebook 04's dose-response: the live latents' relative norm per model (`r`: model, r) and
    the counts over each threshold against the model (`dist`: `crosscoder_scoring.r_distribution`)."""
    fig, axes = figure(2, width=4.8, height=3.4)
    models = list(dist.index)
    col = colors(models)
    for m in models:
        axes[0].hist(r.r[r.model == m].to_numpy(float), bins=np.linspace(0, 1, 51), histtype="step", color=col[m], label=m)
    log_axis(axes[0], "y")
    label(axes[0], "relative norm r (L2)", "live latents (count)", "r of every live latent")
    legend_outside(axes[0], "reasoner")
    for t in thresholds:
        axes[1].plot(range(len(models)), dist[f"n r>{t}"].to_numpy(float), marker="o", label=f"r > {t}")
    axes[1].set_xticks(range(len(models)), models)
    label(axes[1], "reasoner (distillation scale)", "live latents over the threshold (count)", "counts against the dose")
    legend_outside(axes[1])
    title(fig, "Relative norms against the distillation's scale (base + s (reasoner - base))")
    return fig


def crosscoder_geometry(points: "pd.DataFrame", cos: "pd.DataFrame", models: str) -> plt.Figure:
    """Notebook 04's geometry: the same tokens in both models on the top two principal components
    (`points`: model, PC 1, PC 2; the reasoning words marked), and the cosine between a token's two
    activations on the answers and on English (`cos`: tokens, cos), zoomed to the bulk (0.1 % of
    tokens fall left of the axis)."""
    fig, axes = figure(2, width=5.2, height=4.0)
    col = colors(["base", "reasoner"])
    for model, part in points.groupby("model", sort=False):
        style = {"s": 12, "color": "black", "marker": "x"} if model not in col else {"s": 3, "alpha": 0.3, "color": col[model]}
        axes[0].scatter(part["PC 1"], part["PC 2"], label=model, **style)
    label(axes[0], "PC 1 (activation units, each model at mean norm √d)", "PC 2 (same units)", "the same tokens in both models")
    legend_outside(axes[0], markerscale=3)
    lo = float(cos.cos.quantile(0.001))
    groups = ["answers", "English"]
    axes[1].hist([cos.cos[cos.tokens == g].clip(lower=lo).to_numpy(float) for g in groups], bins=np.linspace(lo, 1, 81),
                 label=groups, density=True, color=[colors(groups)[g] for g in groups])
    label(axes[1], "cosine between a token's base and reasoner activations", "density (per unit cosine)",
          "how far apart the two models put a token")
    legend_outside(axes[1], "tokens")
    title(fig, f"Held-out tokens in both models, {models}", n=f"{len(cos):,} tokens")
    return fig


def crosscoder_ablation(table: "pd.DataFrame", n_ablate: int, n_control_draws: int, pool_note: str) -> plt.Figure:
    """Notebook 04's token-logit ablation: per category, the fall of the word's logit and of its
    log-probability when its latents are zeroed (95 % intervals over occurrences) beside the random
    draws' (`table`: `crosscoder.ablation_table`)."""
    fig, axes = figure(2, width=4.8, height=3.4)
    xs = np.arange(len(table))
    col = colors(["category latents", "random"])
    for ax, (what, err, ctrl, ctrl_label) in zip(axes, (("logit fall (category latents)", "± 95%", "logit fall (random, mean of draws)", "mean"),
                                                       ("log-prob fall (category latents)", "lp ± 95%", "log-prob fall (random, max of draws)", "max"))):
        ax.bar(xs - 0.2, table[what], 0.4, yerr=table[err], capsize=3, color=col["category latents"], label="category latents")
        ax.bar(xs + 0.2, table[ctrl], 0.4, color=col["random"], label=f"random ({ctrl_label} of {n_control_draws} draws)")
        ax.set_xticks(xs, table.category)
        rotate_ticks(ax, 20)
        unit = "logit" if what.startswith("logit") else "log-probability"
        label(ax, "category", f"fall of the word's {unit} (nats)", f"{unit} of the word where it is predicted")
        legend_outside(ax)
    title(fig, f"Zeroing {n_ablate} latents of a category vs as many random ones (pool: {pool_note})",
          n=f"{int(table.occurrences.sum())} occurrences" if len(table) else None)
    return fig


def crosscoder_steering(table: "pd.DataFrame", n_random_dirs: int, models: str) -> plt.Figure:
    """Notebook 04's steering: mean answer length, "Wait" per answer and accuracy against the scale,
    one line per direction from the unsteered answers at scale 0 (`table`: `crosscoder.steering_table`);
    the random directions dashed and grey, one legend entry for all of them."""
    import pandas as pd

    fig, axes = figure(3, width=4.2, height=3.4)
    base = table[table.direction == "none"]
    dirs = [d for d in dict.fromkeys(table.direction) if d != "none"]
    col = colors([d for d in dirs if not d.startswith("random")])
    first_random = next((d for d in dirs if d.startswith("random")), None)
    for vec in dirs:
        part = pd.concat([base.assign(direction=vec), table[table.direction == vec]]).sort_values("scale (× mean norm)")
        x = part["scale (× mean norm)"].astype(float)
        style = ({"ls": "--", "color": "0.5", "alpha": 0.8, "label": f"random ({n_random_dirs} draws)" if vec == first_random else "_random"}
                 if vec.startswith("random") else {"color": col[vec], "label": vec})
        for ax, (colname, err) in zip(axes, (("length", "length ±95%"), ("Wait", "Wait ±95%"))):
            ax.errorbar(x, part[colname].astype(float), yerr=part[err].astype(float), marker="o", capsize=3, **style)
        y = part["accuracy"].astype(float)
        axes[2].errorbar(x, y, yerr=[y - part["acc low"].astype(float), part["acc high"].astype(float) - y], marker="o", capsize=3, **style)
    for ax, (y, t) in zip(axes, (("mean generated tokens (tokens)", "answer length (95% CI)"), ("'Wait' per answer (count)", "self-checks (95% CI)"),
                                 ("accuracy (fraction correct)", "accuracy (Wilson 95%)"))):
        label(ax, "scale (× mean activation norm)", y, t)
    legend_outside(axes[-1], "direction")
    title(fig, f"Steering {models}", n=f"{int(base.n.iloc[0])} held-out problems" if len(base) else None)
    return fig



# =========================================================================== 05_gba_recovery

_GBA_NAMES = ("TopK", "L1", "GBA")
"""Notebook 05's methods, in the order that fixes their colours and markers."""


def _count_text(n: float) -> str:
    """A sample count as a short tick label: 250k, 1M, 4M."""
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else f"{n:g}"


def _sample_ticks(ax, samples: Sequence[float], most: int = 4) -> None:
    """A log x axis labelled at no more than `most` of the probe points (the last always)."""
    log_axis(ax, "x")
    samples = sorted(set(samples))
    step = -(-len(samples) // most)
    ticks = samples[::-1][::step][::-1]
    ax.set_xticks(ticks, [_count_text(t) for t in ticks])


def gba_recovery_curves(summary, panels: dict[str, str], title_text: str) -> plt.Figure:
    """Notebook 05: each metric along training (`recovery.curve_summary`: series, samples, mean,
    sd), one panel per metric; probe points shifted a little per method so error bars stay apart."""
    col, mk = colors(_GBA_NAMES), markers(_GBA_NAMES)
    shift = {n: 1 + 0.06 * (i - (len(_GBA_NAMES) - 1) / 2) for i, n in enumerate(_GBA_NAMES)}
    fig, axes = figure(ncols=len(panels), width=4.1, height=3.8)
    for i, (ax, (metric, panel_title)) in enumerate(zip(axes, panels.items())):
        for series, part in summary[summary.metric == metric].groupby("series", sort=False):
            name, tuned = part.Method.iloc[0], part.which.iloc[0] == "tuned"
            ax.errorbar(part.samples * shift[name], part["mean"], yerr=part.sd, color=col[name], marker=mk[name],
                        ls="-" if tuned else "--", ms=5, capsize=2, lw=1.4, label=series)
        _sample_ticks(ax, summary.samples)
        label(ax, "training samples", "mean ± sd over seeds" if i == 0 else "", panel_title)
        if metric.startswith(("recovery", "firing")):  # shares and correlations: the same 0-1 axis
            ax.set_ylim(-0.03, 1.03)
    legend_outside(axes[-1])
    title(fig, title_text)
    return fig


def gba_sensitivity(bars, ylabel: str, title_text: str) -> plt.Figure:
    """Notebook 05: each method's settings as grouped bars (`recovery.sensitivity_bars`: mean ±
    sd per metric, tick text), wrong GBA ladders hatched with red tick labels."""
    names = [n for n in _GBA_NAMES if n in set(bars.Method)]
    widths = [bars[bars.Method == n].setting_label.nunique() for n in names]
    fig, axes = figure(ncols=len(names), width=17 / 3, height=4.4, sharey=True,
                       gridspec_kw={"width_ratios": widths})
    for i, (ax, name) in enumerate(zip(axes, names)):
        part = bars[bars.Method == name]
        order, metrics = list(dict.fromkeys(part.setting_label)), list(dict.fromkeys(part.metric))
        xs, blues = np.arange(len(order)), sns.color_palette("Blues", len(metrics))
        for j, metric in enumerate(metrics):
            b = part[part.metric == metric].set_index("setting_label").loc[order]
            ax.bar(xs + (j - (len(metrics) - 1) / 2) * 0.2, b["mean"], 0.2, yerr=b.sd, capsize=2, label=b.bar.iloc[0],
                   color="0.7" if metric.startswith("recovery_all") else blues[j])
        first = part.drop_duplicates("setting_label").set_index("setting_label").loc[order]
        ax.set_xticks(xs, first.tick, fontsize=7.5)
        rotate_ticks(ax, 20)
        for x, tick, wrong in zip(xs, ax.get_xticklabels(), first.wrong):
            if wrong:
                tick.set_color("firebrick")
                ax.axvspan(x - 0.45, x + 0.45, color="firebrick", alpha=0.08, hatch="//")
        label(ax, "setting (FVU, L0: means over seeds)", ylabel if i == 0 else "", name)
        ax.set_ylim(0, 1.05)
    legend_outside(axes[-1])
    title(fig, title_text)
    return fig


def gba_progress(summary, marks: dict, title_text: str) -> plt.Figure:
    """Notebook 05: live recovery@0.9 against optimisation progress (Σ lr), one panel per method
    (`recovery.progress_summary`: Method, series, progress, mean, sd, peak, final), one line per
    series with a ± sd band, its peak starred and its final value ringed, and the paper's
    numbers (`marks`: method -> [(value, text)]) as dashed lines across the curves."""
    names = [n for n in _GBA_NAMES if n in set(summary.Method)]
    series = list(dict.fromkeys(summary.series))
    col = dict(zip(series, sns.color_palette("tab10", len(series))))
    fig, axes = figure(ncols=len(names), width=4.4, height=3.9, sharey=True)
    for i, (ax, name) in enumerate(zip(axes, names)):
        for s, part in summary[summary.Method == name].groupby("series", sort=False):
            part = part.sort_values("progress")
            ax.plot(part.progress, part["mean"], color=col[s], marker=".", lw=1.4, label=s)
            ax.fill_between(part.progress, part["mean"] - part.sd, part["mean"] + part.sd, color=col[s], alpha=0.12, lw=0)
            pk, fin = part[part.peak], part[part.final]
            ax.plot(pk.progress, pk["mean"], marker="*", ms=11, color=col[s], ls="none")
            ax.plot(fin.progress, fin["mean"], marker="o", ms=8, mfc="none", mew=1.5, color=col[s], ls="none")
        for value, text in marks.get(name, []):
            reference_line(ax, value, text, color="0.2", lw=1.0, ls="--")
        log_axis(ax, "x")
        label(ax, "optimisation progress Σ lr", "live recovery τ 0.9 (mean ± sd)" if i == 0 else "", name)
        ax.set_ylim(-0.03, 1.08)
    handles = {s: plt.Line2D([], [], color=col[s], lw=1.4) for s in series}
    handles |= {text: plt.Line2D([], [], color="0.2", lw=1.0, ls="--") for n in names for _, text in marks.get(n, [])}
    handles |= {"peak": plt.Line2D([], [], marker="*", ms=11, color="0.3", ls="none"),
                "final (the rule)": plt.Line2D([], [], marker="o", ms=8, mfc="none", color="0.3", ls="none")}
    axes[-1].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    title(fig, title_text)
    return fig


def gba_frontier(spread, matched_l0: float, title_text: str) -> plt.Figure:
    """Notebook 05: held-out FVU against L0, one line per method or GBA variant through each
    setting's mean over seeds (`recovery.frontier_spread`: series, Method, default, l0, fvu and
    their sd) with ± sd bars, and the matched L0 where GBA and TopK are compared (NaN: none)."""
    from matplotlib.ticker import ScalarFormatter

    col, mk = colors(_GBA_NAMES), markers(_GBA_NAMES)
    fig, (ax,) = figure(width=7.5, height=4.6)
    for series, part in spread.groupby("series", sort=False):
        part = part.sort_values("l0")
        name, default = part.Method.iloc[0], bool(part.default.iloc[0])
        ax.errorbar(part.l0, part.fvu, xerr=part.l0_sd, yerr=part.fvu_sd, marker=mk[name], color=col[name],
                    ls="-" if default else ":", mfc=None if default else "white", capsize=3, label=series)
    if matched_l0 == matched_l0:
        reference_line(ax, matched_l0, f"matched L0 {matched_l0:.0f}", axis="x", color="0.3", lw=0.8, ls=":")
    log_axis(ax, "x", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    label(ax, "L0 (active latents per held-out token)", "held-out FVU")
    legend_outside(ax)
    title(fig, title_text)
    return fig


def gba_consistency(cosines, floor: Sequence[float], title_text: str) -> plt.Figure:
    """Notebook 05: the cumulative distribution of best-match decoder cosines in another seed
    (`cosines`: Method, subset, cos), one panel per latent subset, against random directions."""
    col = colors(_GBA_NAMES)
    subsets = list(dict.fromkeys(cosines.subset))
    fig, axes = figure(ncols=len(subsets), width=5.5, height=3.8, sharey=True)
    fv = np.sort(np.asarray(floor, dtype=float))
    for i, (ax, subset) in enumerate(zip(axes, subsets)):
        for name, part in cosines[cosines.subset == subset].groupby("Method", sort=False):
            v = np.sort(part.cos.values)
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), color=col[name], label=name)
        ax.plot(fv, np.arange(1, len(fv) + 1) / len(fv), color="0.5", ls="--", label="random directions")
        reference_line(ax, 0.9, "cosine 0.9", axis="x", color="0.3", lw=0.8, ls=":")
        label(ax, "best-match decoder cosine in another seed", "cumulative share of latents" if i == 0 else "",
              f"{subset} latents")
    legend_outside(axes[-1])
    title(fig, title_text)
    return fig
