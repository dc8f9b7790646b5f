"""Synthetic sparse superposition data with known features, and feature-recovery scoring
(paper 5's toy model): `x = Σ_{i∈S} h_i v_i`, n unit features in d dims, s-sparse h ≥ 0."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


FEATURE_STREAM = 0x5EED_0F_FEA7
"""Offset of the synthetic data's generator seed. `SAE.init_weights` draws its decoder as
`randn(d_sae, d)` from `manual_seed(seed)`, exactly as `make_features` draws the features: with a
shared seed the first n decoder rows *were* the true features, and "recovery" measured how long
training kept them (seen in notebook 05's toy, where starting at the truth changed nothing)."""


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
    """Draws the features and the codes."""
    feature_stream: int = FEATURE_STREAM
    """Offset added to `seed` for the data's generator, so that an SAE trained with the same integer
    seed does not start at the true features. A field, so it is in every sweep key: rows measured
    before the offset existed are never reused."""

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
        # the s smallest of n uniforms, in ascending order: argsort's first s, without the full sort
        support = torch.rand(len(rows), n, generator=generator).topk(s, dim=1, largest=False).indices
        vals = cfg.coef_low + (cfg.coef_high - cfg.coef_low) * torch.rand(len(rows), s,
                                                                          generator=generator)
        h[rows.unsqueeze(1), support] = vals
    return h[torch.randperm(N, generator=generator)]


def make_dataset(cfg: SyntheticConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(x_ND, features_FD)`."""
    x, features, _ = make_dataset_with_codes(cfg)
    return x, features


def make_dataset_with_codes(cfg: SyntheticConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return `(x_ND, features_FD, codes_NF)` (the codes hold N·n floats; for a held-out set
    on the same features use `fresh_samples`)."""
    gen = torch.Generator().manual_seed(cfg.seed + cfg.feature_stream)
    features = make_features(cfg.n_features, cfg.d, gen)
    codes = sample_codes(cfg, gen)
    return codes @ features, features, codes


def fresh_samples(cfg: SyntheticConfig, features_FD: torch.Tensor, n_samples: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x_ND, codes_NF)`: new samples of the same features from an independent generator (a
    held-out set for firing-based matches; `cfg.seed` would redraw the features too)."""
    gen = torch.Generator().manual_seed(seed)
    codes = sample_codes(replace(cfg, n_samples=n_samples), gen)
    return codes @ features_FD, codes


def cosines(true_FD: torch.Tensor, learned_MD: torch.Tensor) -> torch.Tensor:
    """Cosine of every true feature with every learned direction: `[F, M]` (on `true_FD`'s device)."""
    a = true_FD / true_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    learned_MD = learned_MD.to(true_FD.device)
    b = learned_MD / learned_MD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.t()


def max_cosines(true_FD: torch.Tensor, learned_MD: torch.Tensor) -> torch.Tensor:
    """For each true feature, the best cosine with any learned direction: `[F]`."""
    return cosines(true_FD, learned_MD).max(dim=1).values


def recovery_rate(true_FD: torch.Tensor, learned_MD: torch.Tensor,
                  thresholds: tuple[float, ...] = (0.8, 0.9, 0.95, 0.99),
                  alive_M: torch.Tensor | None = None) -> dict[float, float]:
    """Feature Recovery Rate: share of true features matched by a learned decoder direction at
    cosine ≥ τ, for each τ. With `alive_M` (a mask), only latents that fire count: a dead
    latent's decoder row can sit on a feature without ever reconstructing it."""
    if alive_M is not None:
        learned_MD = learned_MD[alive_M.to(learned_MD.device)]
        if learned_MD.shape[0] == 0:
            return {float(t): 0.0 for t in thresholds}
    best = max_cosines(true_FD, learned_MD)
    return {float(t): float((best >= t).float().mean()) for t in thresholds}


def matched_firing_corr(true_FD: torch.Tensor, learned_MD: torch.Tensor, codes_NF: torch.Tensor,
                        latents_NM: torch.Tensor) -> torch.Tensor:
    """For each true feature, the Pearson correlation between its coefficient `h_i` and the
    activation of the latent whose decoder row matches it best (by cosine, among latents that
    fire on these samples): `[F]`, 0 where no latent fires. A decoder match that does not also
    track its feature's coefficient has learned a direction, not the feature."""
    alive = (latents_NM > 0).any(0)
    corr = torch.zeros(true_FD.shape[0])
    if not alive.any():
        return corr
    idx_alive = torch.nonzero(alive).flatten()
    best = idx_alive[cosines(true_FD, learned_MD[idx_alive.to(learned_MD.device)]).argmax(dim=1).cpu()]
    h = codes_NF.double().cpu()
    h = h - h.mean(0)
    f = latents_NM[:, best.to(latents_NM.device)].double().cpu()
    f = f - f.mean(0)
    denom = (h.norm(dim=0) * f.norm(dim=0)).clamp_min(1e-12)
    return ((h * f).sum(0) / denom).float()
