"""Paper 5's experiments as functions: feature recovery on synthetic data, and the
reconstruction-sparsity frontier and seed consistency on real activations."""

from __future__ import annotations

from pathlib import Path

import torch

from .sae import SAE, TrainConfig, evaluate_sae, train_sae
from .synthetic import SyntheticConfig, make_dataset, recovery_rate, seed_consistency

THRESHOLDS = (0.8, 0.9, 0.95, 0.99)


def synthetic_recovery(syn: SyntheticConfig, train: TrainConfig,
                       thresholds: tuple[float, ...] = THRESHOLDS) -> dict:
    """Train one SAE on synthetic data; return recovery at each τ plus FVU, L0, dead fraction."""
    x_ND, features = make_dataset(syn)
    result = train_sae(x_ND, train, progress=False)
    ev = evaluate_sae(result.sae, x_ND[:20_000])
    rec = recovery_rate(features, result.sae.W_dec.detach(), thresholds)
    return {**{f"recovery@{t}": r for t, r in rec.items()}, "fvu": ev["fvu"], "l0": ev["l0"],
            "dead_frac": ev["dead_frac"], "seconds": result.seconds}


def train_and_evaluate(train_ND: torch.Tensor, eval_ND: torch.Tensor, cfg: TrainConfig,
                       metadata: dict | None = None,
                       checkpoint_dir: str | Path | None = None) -> tuple[SAE, dict]:
    """Train on `train_ND` (resuming from `checkpoint_dir` if given), evaluate on held-out
    `eval_ND`: `(sae, metrics row)`."""
    result = train_sae(train_ND, cfg, metadata=metadata, progress=True, checkpoint_dir=checkpoint_dir)
    ev = evaluate_sae(result.sae, eval_ND)
    return result.sae, {"fvu": ev["fvu"], "l0": ev["l0"], "dead_frac": ev["dead_frac"],
                        "tokens_per_s": result.tokens_per_s, "seconds": result.seconds}


def pairwise_consistency(saes: list[SAE], threshold: float = 0.9,
                         eval_ND: torch.Tensor | None = None) -> float:
    """Mean over ordered seed pairs of the share of A's (alive, if `eval_ND`) latents whose best
    decoder match in B has cosine > `threshold`."""
    scores = []
    for i, a in enumerate(saes):
        alive = None
        if eval_ND is not None:
            alive = evaluate_sae(a, eval_ND)["density"] > 0
        for j, b in enumerate(saes):
            if i != j:
                scores.append(seed_consistency(a.W_dec.detach(), b.W_dec.detach(), threshold, alive))
    return float(sum(scores) / len(scores)) if scores else float("nan")
