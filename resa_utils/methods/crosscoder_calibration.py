"""Plant-and-recover calibration of a two-model crosscoder: add known directions to the second
model's (the reasoner's) block of paired activations at chosen frequencies and sizes, train on
the planted rows, and ask which planted directions come back as a latent that only the reasoner
uses (reasoner-block cosine >= 0.9 and relative norm r >= 0.9). `change_scale` places the real
reasoner's change on the same map, so "no reasoner-only latent" can be read against "a planted
feature of that frequency and size would have been found".

Rows are `x_ND = [x_base, x_reasoner]` (each `d_model` wide); amplitudes are in units of the mean
norm of the reasoner block over all rows (`unit`), the same unit in `plant` and `change_scale`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from resa_utils.sae import SAE

if TYPE_CHECKING:
    import pandas as pd


def plant_grid(freqs: list[float], amps: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(freqs_P, amps_P)`, one planted direction per (freq, amp) cell, freq outer (row-major)."""
    f = torch.as_tensor(freqs, dtype=torch.float64).flatten()
    a = torch.as_tensor(amps, dtype=torch.float64).flatten()
    return f.repeat_interleave(len(a)), a.repeat(len(f))


def planted_directions(n: int, d: int, seed: int) -> torch.Tensor:
    """`dirs_PD` `[n, d]`: orthonormal rows, the QR of a seeded Gaussian."""
    if not 1 <= n <= d:
        raise ValueError(f"need 1 <= n ({n}) <= d ({d}): at most d orthonormal directions fit in d dims "
                         "(plant fewer cells, or plant them over several runs)")
    q, r = torch.linalg.qr(torch.randn(d, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))  # unique: positive diag(R)
    return q.t().contiguous().float()


@dataclass
class Planted:
    """Paired rows with known directions added to the reasoner block."""

    x_ND: torch.Tensor
    """`[N, 2D]` the planted rows, in the input's dtype (the input itself when `inplace`)."""
    dirs_PD: torch.Tensor
    """`[P, D]` orthonormal planted directions (float32), in the reasoner's coordinates."""
    mask_PN: torch.Tensor
    """`[P, N]` bool: the rows each direction was added to."""
    freqs_P: torch.Tensor
    """`[P]` target share of all N rows that get each direction."""
    amps_P: torch.Tensor
    """`[P]` each direction's size, in units of `unit` (times c ~ U(0.5, 1.5) per row)."""
    unit: float
    """Mean norm of the reasoner block over all rows before planting."""


def _reasoner_unit(x_ND: torch.Tensor, d_model: int, chunk: int) -> float:
    """Mean L2 norm of the reasoner block `x_ND[:, D:2D]` over all rows (float32 math, chunked)."""
    total = 0.0
    for a in range(0, x_ND.shape[0], chunk):
        total += float(x_ND[a:a + chunk, d_model:].float().norm(dim=1).double().sum())
    return total / max(1, x_ND.shape[0])


def _check_rows(x_ND: torch.Tensor, d_model: int, chunk: int) -> None:
    if x_ND.ndim != 2 or x_ND.shape[1] != 2 * d_model:
        raise ValueError(f"x_ND has shape {tuple(x_ND.shape)}: need [N, 2*d_model] = [N, {2 * d_model}] "
                         "(base and reasoner activations concatenated)")
    if x_ND.shape[0] == 0:
        raise ValueError("x_ND has no rows")
    if not x_ND.is_floating_point():
        raise ValueError(f"x_ND has dtype {x_ND.dtype}: need a floating-point tensor")
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")


def plant(x_ND: torch.Tensor, d_model: int, freqs_P: torch.Tensor | list[float], amps_P: torch.Tensor | list[float],
          seed: int, where_N: torch.Tensor | None = None, inplace: bool = False, chunk: int = 65536) -> Planted:
    """Add `amps_P[p] · unit · c · dirs_PD[p]` (c ~ U(0.5, 1.5)) to the reasoner block of each row
    drawn for direction p with probability `freqs_P[p]` (among `where_N` rows only, if given).

    With `where_N`, a row there is drawn with probability `freq · N / where_N.sum()` (capped at 1),
    so a frequency stays a share of all rows; a cap that binds by more than 1 % is an error.
    Directions come from `seed`, rows and c from `seed + 1`. Float32 math over `chunk` rows at a
    time, written back in x_ND's dtype; `inplace=True` modifies `x_ND` itself (no copy)."""
    _check_rows(x_ND, d_model, chunk)
    N = x_ND.shape[0]
    freqs = torch.as_tensor(freqs_P, dtype=torch.float64).flatten()
    amps = torch.as_tensor(amps_P, dtype=torch.float64).flatten()
    if len(freqs) != len(amps) or len(freqs) == 0:
        raise ValueError(f"freqs_P ({len(freqs)}) and amps_P ({len(amps)}) need the same, non-zero length")
    if not bool(((freqs > 0) & (freqs <= 1)).all()):
        raise ValueError(f"every frequency must be in (0, 1], got {freqs.tolist()}")
    if not bool(((amps > 0) & torch.isfinite(amps)).all()):
        raise ValueError(f"every amplitude must be > 0 and finite, got {amps.tolist()}")
    probs = freqs.clone()
    if where_N is not None:
        where_N = torch.as_tensor(where_N).cpu()
        if where_N.dtype != torch.bool or where_N.shape != (N,):
            raise ValueError(f"where_N must be a bool tensor of shape ({N},), got {where_N.dtype} {tuple(where_N.shape)}")
        n_where = int(where_N.sum())
        if n_where == 0:
            raise ValueError("where_N selects no row")
        probs = freqs * N / n_where
        if bool((probs > 1.01).any()):
            raise ValueError(f"where_N holds {n_where} of {N} rows ({n_where / N:.4g}): frequencies "
                             f"{freqs[probs > 1.01].tolist()} of all rows cannot be reached inside it")
        probs = probs.clamp(max=1.0)
    P = len(freqs)
    dirs = planted_directions(P, d_model, seed)
    unit = _reasoner_unit(x_ND, d_model, chunk)
    if not unit > 0 or not math.isfinite(unit):
        raise ValueError(f"the reasoner block's mean norm is {unit}: amplitudes are in units of it")
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.zeros(P, N, dtype=torch.bool)
    rows_P, c_P = [], []
    for p in range(P):  # one [N] draw per direction: the same rows whatever `chunk` is
        mask[p] = torch.rand(N, generator=g) < float(probs[p])
        if where_N is not None:
            mask[p] &= where_N
        rows_P.append(torch.nonzero(mask[p]).flatten())
        c_P.append(torch.rand(len(rows_P[-1]), generator=g) + 0.5)
    vec_PD = dirs * (amps * unit).float()[:, None]
    out = x_ND if inplace else x_ND.clone()
    for a in range(0, N, chunk):
        b = min(N, a + chunk)
        coef = torch.zeros(b - a, P)
        for p in range(P):
            lo, hi = torch.searchsorted(rows_P[p], torch.tensor([a, b])).tolist()
            coef[rows_P[p][lo:hi] - a, p] = c_P[p][lo:hi]
        hit = torch.nonzero(coef.any(1)).flatten()
        if len(hit) == 0:
            continue
        idx = (hit + a).to(out.device)
        moved = out[idx, d_model:].float() + (coef[hit] @ vec_PD).to(out.device)
        out[idx, d_model:] = moved.to(out.dtype)
    return Planted(out, dirs, mask, freqs, amps, unit)


def recovery(cc: SAE, planted: Planted, r_F: torch.Tensor, live_F: torch.Tensor, cos_min: float = 0.9,
             r_min: float = 0.9) -> "pd.DataFrame":
    """One row per planted direction: the live latent (`live_F` `[F]`) whose reasoner decoder block
    (`W_dec[:, D:2D]`) has the highest (signed) cosine with it, that cosine and its `r_F` `[F]`;
    `found` (cos >= cos_min), `recovered` (found and r >= r_min)."""
    import pandas as pd

    D = planted.dirs_PD.shape[1]
    W = cc.W_dec.detach().float().cpu()
    if W.shape[1] != 2 * D:
        raise ValueError(f"the crosscoder's decoder is {W.shape[1]} wide: need 2*D = {2 * D} for directions of width {D}")
    F = W.shape[0]
    r_F, live_F = torch.as_tensor(r_F).float().cpu(), torch.as_tensor(live_F).bool().cpu()
    if r_F.shape != (F,) or live_F.shape != (F,):
        raise ValueError(f"r_F {tuple(r_F.shape)} and live_F {tuple(live_F.shape)} must both be [{F}]")
    dirs = torch.nn.functional.normalize(planted.dirs_PD.float().cpu(), dim=1)
    cos_PF = dirs @ torch.nn.functional.normalize(W[:, D:], dim=1).t()
    P = len(dirs)
    if live_F.any():
        cos, latent = cos_PF.masked_fill(~live_F, -math.inf).max(1)
        r = r_F[latent]
    else:
        cos, latent, r = torch.full((P,), math.nan), torch.full((P,), -1, dtype=torch.long), torch.full((P,), math.nan)
    found = cos >= cos_min  # NaN compares False
    return pd.DataFrame({"freq": planted.freqs_P.double().tolist(), "amp": planted.amps_P.double().tolist(),
                         "latent": latent.tolist(), "cos": cos.tolist(), "r": r.tolist(), "found": found.tolist(),
                         "recovered": (found & (r >= r_min)).tolist()})


def detection_map(rec: "pd.DataFrame", value: str = "recovered") -> "pd.DataFrame":
    """Mean of `value` per cell: index freq, columns amp (rows of several seeds average)."""
    if value not in rec.columns:
        raise ValueError(f"{value!r} is not a column of the recovery frame ({list(rec.columns)})")
    return rec.assign(**{value: rec[value].astype(float)}).pivot_table(index="freq", columns="amp", values=value,
                                                                     aggfunc="mean", dropna=False)


def change_scale(x_ND: torch.Tensor, d_model: int, reasoning_N: torch.Tensor, chunk: int = 65536) -> dict:
    """Where the real change sits on the map: `freq` = share of reasoning rows; `amp_median`,
    `amp_q90` = quantiles of ‖x_R − x_B‖ / unit over them (`amp_median_english` over the rest)."""
    _check_rows(x_ND, d_model, chunk)
    N = x_ND.shape[0]
    reasoning_N = torch.as_tensor(reasoning_N).cpu()
    if reasoning_N.dtype != torch.bool or reasoning_N.shape != (N,):
        raise ValueError(f"reasoning_N must be a bool tensor of shape ({N},), got {reasoning_N.dtype} "
                         f"{tuple(reasoning_N.shape)}")
    unit = _reasoner_unit(x_ND, d_model, chunk)
    if not unit > 0 or not math.isfinite(unit):
        raise ValueError(f"the reasoner block's mean norm is {unit}: amplitudes are in units of it")
    diff = torch.cat([(x_ND[a:a + chunk, d_model:].float() - x_ND[a:a + chunk, :d_model].float()).norm(dim=1).cpu()
                      for a in range(0, N, chunk)]).double().numpy() / unit
    mask = reasoning_N.numpy()

    def q(v: np.ndarray, p: float) -> float:
        return float(np.quantile(v, p)) if len(v) else math.nan

    return {"freq": float(mask.mean()), "amp_median": q(diff[mask], 0.5), "amp_q90": q(diff[mask], 0.9),
            "amp_median_english": q(diff[~mask], 0.5), "unit": unit, "n_reasoning": int(mask.sum())}


def recovery_near(rec: "pd.DataFrame", freq: float, amp: float) -> dict:
    """The planted cells nearest to (freq, amp) in log10 distance over both axes (ties kept): their
    `recovered_share` over all their rows, the row count `n` and the `cells` `[(f, a), ...]`."""
    if not (freq > 0 and amp > 0 and math.isfinite(freq) and math.isfinite(amp)):
        raise ValueError(f"freq ({freq}) and amp ({amp}) must be positive and finite: the distance is in log10")
    if len(rec) == 0:
        raise ValueError("the recovery frame has no rows")
    cells = rec[["freq", "amp"]].drop_duplicates()
    dist = np.hypot(np.log10(cells.freq.to_numpy(float)) - math.log10(freq),
                    np.log10(cells.amp.to_numpy(float)) - math.log10(amp))
    near = cells[np.isclose(dist, dist.min(), rtol=1e-9, atol=1e-12)]
    chosen = sorted((float(f), float(a)) for f, a in zip(near.freq, near.amp))
    keep = set(zip(near.freq, near.amp))
    rows = rec[[cell in keep for cell in zip(rec.freq, rec.amp)]]
    return {"recovered_share": float(rows.recovered.astype(float).mean()), "n": int(len(rows)), "cells": chosen}


@torch.no_grad()
def live_on_planted(cc: SAE, planted: Planted, per_direction: int = 256) -> torch.Tensor:
    """`[F]` latents that fire on some planted row (up to `per_direction` rows of each direction):
    the planted directions are only in the training rows, so liveness on held-out rows would
    call their latents dead."""
    rows = torch.cat([torch.nonzero(m).flatten()[:per_direction] for m in planted.mask_PN]).unique()
    x = planted.x_ND[rows].float()
    return (cc.encode(x) > 0).any(0) if len(rows) else torch.zeros(cc.cfg.d_sae, dtype=torch.bool)
