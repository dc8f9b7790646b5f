"""Paper 4 (Baek & Tegmark 2025): scoring a trained crosscoder's latents the authors' way, and the
null distributions the claims are judged against.

The authors (`david-baek/deepseek-diff`) call the top 100 of 32,768 latents by relative norm r
"distill-specific" (the top ~0.3 %) and ablate from a pool of r > 0.5, where our first scoring used
a fixed cut r > 0.9. This module gives that scoring (`authors_scoring`), each latent's share of its
activation mass on the answer tokens (`answer_mass_share`), a permutation test of a Spearman
correlation over latents (`spearman_null`), summaries of an effect against random draws
(`null_percentile`, `null_summary`), and the dose-response table over reasoner variants
(`r_distribution`, `monotone`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from resa_utils.core.stats import _ranks

if TYPE_CHECKING:
    import pandas as pd


def _n_top(top_share: float, n_live: int) -> int:
    """How many latents the authors' top set holds: `max(1, round(top_share · n_live))` (Python's
    `round`, halves to even), never more than the live ones (0 when none lives)."""
    return min(n_live, max(1, round(top_share * n_live)))


def authors_scoring(r_F: torch.Tensor, live_F: torch.Tensor, top_share: float = 0.003,
                    pool_r: float = 0.5) -> dict:
    """The authors' reading of the relative norms `r_F` `[F]` over the live latents `live_F` (bool
    `[F]`; dead ones and a NaN r never count): `top`, the `n_top = max(1, round(top_share ·
    n_live))` live latents of largest r (LongTensor of latent ids, by descending r, ties by lower
    id; their "distill-specific" set), `top_r_min` (the smallest r in it, NaN if empty); `pool`
    (bool `[F]`: live and r > `pool_r`, their ablation pool), `n_pool`, `pool_share` (of the live
    latents) and `n_live`."""
    if not 0 < top_share <= 1:
        raise ValueError(f"top_share={top_share}: need 0 < top_share <= 1")
    r = r_F.detach().double().flatten()
    live = live_F.detach().bool().flatten()
    if r.shape != live.shape:
        raise ValueError(f"r_F has {r.numel()} latents, live_F {live.numel()}")
    cand = torch.nonzero(live & ~torch.isnan(r)).flatten()
    n_live = int(live.sum())
    order = torch.sort(r[cand], descending=True, stable=True).indices
    top = cand[order[:_n_top(top_share, len(cand))]]
    pool = live & (r > pool_r)
    n_pool = int(pool.sum())
    return {"top": top.long(), "top_r_min": float(r[top].min()) if len(top) else float("nan"), "n_top": len(top),
            "pool": pool, "n_pool": n_pool, "pool_share": n_pool / n_live if n_live else float("nan"),
            "n_live": n_live}


@torch.no_grad()
def answer_mass_share(acts_NF: torch.Tensor, is_answer_N: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """`[F]` float64: each latent's share of its activation mass (the sum of its activations,
    negatives clipped to 0 as in `latent_categories`) over the rows `[N]` where `is_answer_N` is
    True; NaN for a latent with no mass. Reads `chunk` rows at a time (one float32 copy of a chunk,
    sums kept in float64), so `acts_NF` may be large and in any float dtype."""
    N, F = acts_NF.shape
    mask = torch.as_tensor(is_answer_N).flatten()
    if mask.dtype != torch.bool or mask.numel() != N:
        raise ValueError(f"is_answer_N must be bool [N={N}], got {mask.dtype} [{mask.numel()}]")
    sums = torch.zeros(2, F, dtype=torch.float64)  # [answer mass, total mass]
    for a in range(0, N, chunk):
        x = acts_NF[a:a + chunk].float().clamp_min(0)
        w = torch.stack([mask[a:a + chunk].float(), torch.ones(len(x))])  # [2, rows]
        sums += (w @ x).double()
    total = sums[1]
    share = sums[0] / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, share, torch.full_like(share, float("nan")))


def _unit_centred(v: torch.Tensor) -> torch.Tensor:
    """`v` minus its mean, at norm 1 (all zeros for a constant `v`)."""
    v = v - v.mean()
    n = v.norm()
    return v / n if n > 0 else torch.zeros_like(v)


@torch.no_grad()
def spearman_null(x_F: torch.Tensor, y_F: torch.Tensor, mask_F: torch.Tensor, n_perm: int = 1000, seed: int = 0,
                  chunk: int = 256) -> dict:
    """Spearman rho of `x_F` and `y_F` (`[F]` each) over the latents in `mask_F` (bool `[F]`) whose x
    and y are finite, with a permutation null: y shuffled among those latents `n_perm` times.
    Permutation k is the k-th `torch.randperm(n, generator=torch.Generator().manual_seed(seed))`.
    Both are ranked once (average ranks on ties); the Spearman of permuted ranks is the Pearson of
    ranks, so every permutation's rho is one row of a matrix product, `chunk` permutations at a
    time. Returns `rho`, `n`, `p_greater` ((1 + #null >= rho) / (1 + n_perm)), `p_two_sided` (the
    same with |.|), `null_q025`, `null_q975`, `percentile` (of rho in the null, `null_percentile`)
    and `null` (the `[n_perm]` null draws). rho is NaN, and so are the rest, with fewer than 3
    latents or a constant x or y."""
    x, y = x_F.detach().double().flatten(), y_F.detach().double().flatten()
    sel = mask_F.detach().bool().flatten() & torch.isfinite(x) & torch.isfinite(y)
    n = int(sel.sum())
    nan = float("nan")
    out = {"rho": nan, "n": n, "p_greater": nan, "p_two_sided": nan, "null_q025": nan, "null_q975": nan,
           "percentile": nan, "null": torch.zeros(0, dtype=torch.float64)}
    if n < 3:
        return out
    zx, zy = _unit_centred(_ranks(x[sel])), _unit_centred(_ranks(y[sel]))
    if not (zx.any() and zy.any()):
        return out
    rho = float(zx @ zy)
    g = torch.Generator().manual_seed(seed)
    null = torch.empty(n_perm, dtype=torch.float64)
    for a in range(0, n_perm, chunk):
        perms = torch.stack([torch.randperm(n, generator=g) for _ in range(min(chunk, n_perm - a))])  # [c, n]
        null[a:a + len(perms)] = zy[perms] @ zx
    eps = 1e-12  # a permutation that gives rho back exactly must count despite rounding
    out.update(rho=rho, null=null,
               p_greater=(1 + int((null >= rho - eps).sum())) / (1 + n_perm),
               p_two_sided=(1 + int((null.abs() >= abs(rho) - eps).sum())) / (1 + n_perm),
               percentile=null_percentile(rho, null))
    if n_perm:
        out["null_q025"], out["null_q975"] = torch.quantile(null, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return out


def _finite_draws(null) -> np.ndarray:
    """A null sample as a flat float64 array, NaN draws dropped."""
    if isinstance(null, torch.Tensor):
        null = null.detach().cpu().double().numpy()
    a = np.asarray(null, dtype=float).ravel()
    return a[~np.isnan(a)]


def null_percentile(value: float, null) -> float:
    """The percentile (0–100) of `value` within the null sample `null` (tensor, array or list; NaN
    draws dropped): 100 · (#below + ½ · #equal) / #draws, so ties count half (mid-rank). NaN when
    the sample is empty or `value` is NaN."""
    a = _finite_draws(null)
    value = float(value)
    if len(a) == 0 or math.isnan(value):
        return float("nan")
    return 100.0 * (float((a < value).sum()) + 0.5 * float((a == value).sum())) / len(a)


def null_summary(value: float, null, higher_is_effect: bool = True) -> dict:
    """An effect (an ablation's fall, a steering shift) against its null draws (>= 20 random latent
    sets or directions; NaN draws dropped): `value`, `null_mean`, `null_q05`, `null_q95`,
    `null_min`, `null_max`, `percentile` (`null_percentile`), `n_null`, and `beats_all`: `value`
    strictly beyond every draw in the effect's direction (above the max when `higher_is_effect`,
    below the min otherwise); False with no draw or a NaN value."""
    a = _finite_draws(null)
    value = float(value)
    nan = float("nan")
    empty = len(a) == 0
    beats = (not empty and not math.isnan(value)
             and (value > a.max() if higher_is_effect else value < a.min()))
    return {"value": value, "null_mean": nan if empty else float(a.mean()),
            "null_q05": nan if empty else float(np.quantile(a, 0.05)),
            "null_q95": nan if empty else float(np.quantile(a, 0.95)),
            "null_min": nan if empty else float(a.min()), "null_max": nan if empty else float(a.max()),
            "percentile": null_percentile(value, a), "n_null": int(len(a)), "beats_all": bool(beats)}


def r_distribution(r_by_model: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   thresholds: Sequence[float] = (0.5, 0.7, 0.9), top_share: float = 0.003) -> "pd.DataFrame":
    """The dose-response table: one row per reasoner variant (`r_by_model`: `{name: (r_F [F],
    live_F bool [F])}`, rows in the dict's order, index `model`), over its live latents: `live`,
    `r q05`, `r median`, `r q95`, `r max` (linear-interpolated quantiles, NaN without a live
    latent), `n r>t` for each threshold t (e.g. `n r>0.5`), and `top r min` (the smallest r in the
    authors' top set, `authors_scoring`)."""
    import pandas as pd

    rows = []
    for name, (r_F, live_F) in r_by_model.items():
        live = live_F.detach().bool().flatten()
        r = r_F.detach().double().flatten()[live]
        r = r[~torch.isnan(r)]
        q = (torch.quantile(r, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist() if len(r)
             else [float("nan")] * 3)
        row = {"model": name, "live": int(live.sum()), "r q05": q[0], "r median": q[1], "r q95": q[2],
               "r max": float(r.max()) if len(r) else float("nan")}
        row.update({f"n r>{t}": int((r > t).sum()) for t in thresholds})
        row["top r min"] = authors_scoring(r_F, live_F, top_share=top_share)["top_r_min"]
        rows.append(row)
    cols = ["model", "live", "r q05", "r median", "r q95", "r max", *[f"n r>{t}" for t in thresholds], "top r min"]
    return pd.DataFrame(rows, columns=cols).set_index("model")


def monotone(values: Sequence[float], tol: float = 0.0) -> str:
    """The shape of a dose-response series, judged by its successive steps: "flat" when every step
    is within `tol` of 0 (also for fewer than two values), "increasing" when none falls by more
    than `tol`, "decreasing" when none rises by more than `tol` (non-strict both), else "mixed"
    (also whenever a value is NaN)."""
    if tol < 0:
        raise ValueError(f"tol={tol}: need tol >= 0")
    v = [float(x) for x in values]
    if any(math.isnan(x) for x in v):
        return "mixed"
    d = [b - a for a, b in zip(v, v[1:])]
    if all(abs(s) <= tol for s in d):
        return "flat"
    if all(s >= -tol for s in d):
        return "increasing"
    if all(s <= tol for s in d):
        return "decreasing"
    return "mixed"
