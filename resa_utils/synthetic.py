"""Synthetic sparse superposition data with known features, and feature-recovery scoring
(paper 5's toy model): `x = Σ_{i∈S} h_i v_i`, n unit features in d dims, s-sparse h ≥ 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SyntheticConfig:
    n_features: int = 128
    """Number of true features n (n > d puts them in superposition)."""
    d: int = 42
    """Ambient dimension."""
    sparsities: tuple[int, ...] = (3, 20)
    """Active features per sample; samples are split equally among these values (paper: 3, 20)."""
    coef_low: float = 0.0
    """Non-zero coefficients h_i ~ Uniform(coef_low, coef_high)."""
    coef_high: float = 1.0
    n_samples: int = 200_000
    seed: int = 0

    def __post_init__(self) -> None:
        self.sparsities = tuple(int(s) for s in self.sparsities)
        if not all(1 <= s <= self.n_features for s in self.sparsities) or not self.sparsities:
            raise ValueError(
                f"sparsities={self.sparsities} must each be in 1..n_features={self.n_features}")
        if self.d < 1 or self.n_features < 1:
            raise ValueError(f"d={self.d} and n_features={self.n_features} must be positive")
        if not 0 <= self.coef_low < self.coef_high:
            raise ValueError(f"need 0 <= coef_low ({self.coef_low}) < coef_high ({self.coef_high})")


def make_features(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """`[n, d]` i.i.d. Gaussian directions normalised to unit length."""
    v = torch.randn(n, d, generator=generator)
    return v / v.norm(dim=1, keepdim=True)


def sample_codes(cfg: SyntheticConfig, generator: torch.Generator) -> torch.Tensor:
    """`h_NF`: each row has exactly s non-zeros at uniformly random features (every feature is
    equally frequent), values ~ Uniform(coef_low, coef_high)."""
    n, N = cfg.n_features, cfg.n_samples
    h = torch.zeros(N, n)
    splits = torch.tensor_split(torch.arange(N), len(cfg.sparsities))
    for rows, s in zip(splits, cfg.sparsities):
        support = torch.rand(len(rows), n, generator=generator).argsort(dim=1)[:, :s]
        vals = cfg.coef_low + (cfg.coef_high - cfg.coef_low) * torch.rand(len(rows), s,
                                                                          generator=generator)
        h[rows.unsqueeze(1), support] = vals
    return h[torch.randperm(N, generator=generator)]


def make_dataset(cfg: SyntheticConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(x_ND, features_FD)`."""
    gen = torch.Generator().manual_seed(cfg.seed)
    features = make_features(cfg.n_features, cfg.d, gen)
    return sample_codes(cfg, gen) @ features, features


def max_cosines(true_FD: torch.Tensor, learned_MD: torch.Tensor) -> torch.Tensor:
    """For each true feature, the best cosine with any learned direction: `[F]`."""
    a = true_FD / true_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    learned_MD = learned_MD.to(true_FD.device)
    b = learned_MD / learned_MD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (a @ b.t()).max(dim=1).values


def recovery_rate(true_FD: torch.Tensor, learned_MD: torch.Tensor,
                  thresholds: tuple[float, ...] = (0.8, 0.9, 0.95, 0.99)) -> dict[float, float]:
    """Feature Recovery Rate: share of true features matched by a learned decoder direction at
    cosine ≥ τ, for each τ."""
    best = max_cosines(true_FD, learned_MD)
    return {float(t): float((best >= t).float().mean()) for t in thresholds}
