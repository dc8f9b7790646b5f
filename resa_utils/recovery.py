"""Paper 5's experiments as functions: feature recovery on synthetic data, and the
reconstruction-sparsity frontier and seed consistency on real activations."""

from __future__ import annotations

import torch

from .sae import SAE, TrainConfig, evaluate_sae, train_sae
from .sae.train import train_and_evaluate  # noqa: F401  (notebook 05 imports it from here)
from .synthetic import SyntheticConfig, make_dataset, max_cosines, recovery_rate

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


def pairwise_consistency(saes: list[SAE], thresholds: tuple[float, ...] = (0.9, 0.7),
                         eval_ND: torch.Tensor | None = None) -> dict[str, float]:
    """Seed consistency over ordered pairs (A, B) of SAEs: the share of A's latents (alive on
    `eval_ND`, if given) whose best decoder match in B has cosine > τ, averaged over pairs,
    for each τ; plus the median best-match cosine."""
    shares: dict[float, list[float]] = {t: [] for t in thresholds}
    medians = []
    for i, a in enumerate(saes):
        dec_a = a.W_dec.detach()
        if eval_ND is not None:
            dec_a = dec_a[evaluate_sae(a, eval_ND)["density"] > 0]
        for j, b in enumerate(saes):
            if i == j:
                continue
            best = max_cosines(dec_a, b.W_dec.detach())
            medians.append(float(best.median()))
            for t in thresholds:
                shares[t].append(float((best > t).float().mean()))
    nan = float("nan")
    out = {f"consistency@{t}": sum(v) / len(v) if v else nan for t, v in shares.items()}
    out["median_max_cos"] = sum(medians) / len(medians) if medians else nan
    return out
