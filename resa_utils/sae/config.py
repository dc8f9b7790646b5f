"""SAE configs: `SAEConfig` describes a trained SAE (SAELens field names, so SAELens loads our
files); `TrainConfig` holds the knobs of one training run, for every method."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

ARCHITECTURES = ("standard", "topk", "jumprelu")
"""Inference architectures (SAELens names): `standard` = ReLU (L1 and GBA train it), `topk`,
`jumprelu` = ReLU zeroed at or below a per-latent threshold (GBA with `gba_activation="jumprelu"`)."""

METHODS = ("topk", "relu_l1", "gba", "crosscoder")
"""Training methods; each has one trainer class (registry: `resa_utils.sae.train.TRAINERS`)."""


@dataclass
class SAEConfig:
    d_in: int
    """Width of the activations the SAE reads."""
    d_sae: int
    """Number of latents."""
    architecture: str = "standard"
    """'standard' (ReLU), 'topk' or 'jumprelu' (ReLU(pre) · 1[pre > threshold])."""
    k: int | None = None
    """Active latents per token (topk only)."""
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    """Encode `x - b_dec` rather than `x` (always True here; kept for SAELens)."""
    normalize_activations: str = "none"
    """Input scaling is folded into the weights at the end of training, so always 'none'."""
    reshape_activations: str = "none"
    rescale_acts_by_decoder_norm: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance: model_name, hook_name, method, trainer settings, input_scale."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} unknown: use one of {ARCHITECTURES}")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(f"d_in={self.d_in} and d_sae={self.d_sae} must both be positive")
        if self.architecture == "topk":
            if self.k is None or not 0 < self.k <= self.d_sae:
                raise ValueError(
                    f"k={self.k} must be in 1..d_sae={self.d_sae}: lower k or widen the SAE"
                )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.architecture != "topk":
            out.pop("k")
            out.pop("rescale_acts_by_decoder_norm")
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainConfig:
    method: str = "topk"
    """'topk' (with AuxK), 'relu_l1' (L1 penalty), 'gba' (group bias adaptation, no penalty) or
    'crosscoder' (one dictionary over several models' concatenated activations)."""
    d_sae: int = 4096
    """Number of latents."""
    k: int = 32
    """TopK: active latents per token."""
    l1_coefficient: float = 1e-3
    """relu_l1: weight of the L1 penalty on latent activations (in the normalised input space)."""
    aux_k: int | None = None
    """TopK: latents used by the AuxK dead-latent loss, capped at the number of dead latents;
    None = d_in // 2, the heuristic of Gao et al. (App. B.1) that sparsify also uses."""
    aux_coefficient: float = 1 / 32
    """TopK: weight of the AuxK loss (Gao et al. 2024); 0 turns it off (as Resa's code does)."""
    dead_tokens: int = 200_000
    """A latent that has not fired for this many training tokens counts as dead (AuxK)."""
    gba_groups: int = 10
    """GBA: number of latent groups K."""
    gba_p_high: float = 0.1
    """GBA: target firing frequency of the first group (p_1)."""
    gba_p_low: float = 0.001
    """GBA: target firing frequency of the last group (p_K); the ladder is geometric."""
    gba_gamma: float = 0.01
    """GBA: bias step size γ."""
    gba_interval: int = 50
    """GBA: steps between bias updates; the statistics are buffered over those steps."""
    gba_tied: bool = True
    """GBA: encoder = decoder transpose (the paper's model: unit-norm w_m read and write, so
    pre-activations stay O(1) and biases in [-1, 0] can control firing); False = untied."""
    gba_train_b_dec: bool = False
    """GBA: train the pre-bias b_dec by gradient. Off by default: it stays at the data mean,
    since a trained b_dec drifts (norm 0.2 -> 5.5 in our toy runs) and lets latents escape the
    [-1, 0] bias range, so frequencies stop following their targets."""
    gba_eps: float = 1e-6
    """GBA: a latent firing on a smaller share of buffered tokens counts as nearly dead."""
    gba_activation: str = "relu"
    """GBA: 'relu' outputs relu(w·x + b); 'jumprelu' outputs w·x where w·x + b > 0, else 0 (the
    bias gates without shrinking), exported as a SAELens `jumprelu` SAE with threshold −b."""
    n_models: int = 2
    """Crosscoder: models whose activations of the same tokens are concatenated along the last
    dim (equal widths, d_in = n_models · d_model)."""
    crosscoder_activation: str = "relu"
    """Crosscoder: 'relu' with the decoder-norm-weighted L1 penalty (`l1_coefficient`, the
    authors' λ = 2), 'topk' (`k` latents per token, no penalty) or 'batchtopk' (`k` x batch
    latents per batch, chosen by activation times summed decoder norm, no penalty; exported as
    a `jumprelu` SAE whose thresholds are the running minimum kept score; Minder et al. 2025)."""
    batchtopk_momentum: float = 0.99
    """Crosscoder 'batchtopk': weight of the old value in the running estimate of the smallest
    kept score (the inference threshold)."""
    l1_warmup_frac: float = 0.05
    """Crosscoder: share of the first steps over which the L1 coefficient ramps up from 0."""
    dec_init_norm: float = 0.08
    """Crosscoder: initial norm of each latent's decoder block for each model."""
    lr: float | None = None
    """Adam learning rate; None = sparsify's width-scaled 2e-4 / sqrt(d_sae / 16384)."""
    lr_decay_frac: float = 0.2
    """Share of the final steps over which the lr decays linearly to 0 (0 = constant lr)."""
    batch_size: int = 512
    """Tokens per step."""
    n_tokens: int = 1_000_000
    """Training tokens in all (epochs over the data as needed)."""
    normalize_inputs: bool = True
    """Scale inputs so the centred data has unit mean norm while training (the SAE reads
    x - b_dec, b_dec starting at the data mean); the scale is folded into the saved weights."""
    seed: int = 0
    checkpoint_every: int = 500
    """Steps between checkpoints when a checkpoint folder is given."""
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} unknown: use one of {METHODS}")
        checks = [
            (self.d_sae > 0, f"d_sae={self.d_sae} must be positive"),
            (self.batch_size > 0, f"batch_size={self.batch_size} must be positive"),
            (self.n_tokens >= self.batch_size,
             f"n_tokens={self.n_tokens} is less than one batch of {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"lr={self.lr} must be positive (or None)"),
            (0 <= self.lr_decay_frac <= 1, f"lr_decay_frac={self.lr_decay_frac} must be in [0, 1]"),
            (self.log_every >= 1, f"log_every={self.log_every} must be >= 1"),
            (self.checkpoint_every >= 1, f"checkpoint_every={self.checkpoint_every} must be >= 1"),
            (self.dead_tokens >= 1, f"dead_tokens={self.dead_tokens} must be >= 1"),
        ]
        if self.method == "topk":
            checks += [
                (0 < self.k <= self.d_sae,
                 f"k={self.k} must be in 1..d_sae={self.d_sae}: lower k or raise d_sae"),
                (self.aux_k is None or self.aux_k >= 1, f"aux_k={self.aux_k} must be >= 1 (or None)"),
                (self.aux_coefficient >= 0, f"aux_coefficient={self.aux_coefficient} must be >= 0"),
            ]
        if self.method == "relu_l1":
            checks.append((self.l1_coefficient >= 0,
                           f"l1_coefficient={self.l1_coefficient} must be >= 0"))
        if self.method == "gba":
            checks += [
                (1 <= self.gba_groups <= self.d_sae,
                 f"gba_groups={self.gba_groups} must be in 1..d_sae={self.d_sae}"),
                (1 >= self.gba_p_high >= self.gba_p_low > 0,
                 f"need 1 >= gba_p_high ({self.gba_p_high}) >= gba_p_low ({self.gba_p_low}) > 0"),
                (self.gba_interval >= 1, f"gba_interval={self.gba_interval} must be >= 1"),
                (self.gba_gamma > 0, f"gba_gamma={self.gba_gamma} must be > 0"),
                (0 <= self.gba_eps < self.gba_p_low,
                 f"gba_eps={self.gba_eps} must be in [0, gba_p_low={self.gba_p_low})"),
                (self.gba_activation in ("relu", "jumprelu"),
                 f"gba_activation={self.gba_activation!r} must be 'relu' or 'jumprelu'"),
            ]
        if self.method == "crosscoder":
            checks += [
                (self.n_models >= 1, f"n_models={self.n_models} must be >= 1"),
                (self.crosscoder_activation in ("relu", "topk", "batchtopk"),
                 f"crosscoder_activation={self.crosscoder_activation!r} must be 'relu', 'topk' or 'batchtopk'"),
                (0 <= self.batchtopk_momentum < 1, f"batchtopk_momentum={self.batchtopk_momentum} must be in [0, 1)"),
                (0 <= self.l1_warmup_frac <= 1, f"l1_warmup_frac={self.l1_warmup_frac} must be in [0, 1]"),
                (self.dec_init_norm > 0, f"dec_init_norm={self.dec_init_norm} must be > 0"),
                (self.l1_coefficient >= 0, f"l1_coefficient={self.l1_coefficient} must be >= 0"),
                (self.crosscoder_activation == "relu" or 0 < self.k <= self.d_sae,
                 f"k={self.k} must be in 1..d_sae={self.d_sae}: lower k or raise d_sae"),
            ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

    @property
    def n_steps(self) -> int:
        return self.n_tokens // self.batch_size
