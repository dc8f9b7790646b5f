"""Paper 4 (Baek & Tegmark 2025): what a crosscoder over a base and a distilled model says about
their differences. Training is `TrainConfig(method="crosscoder")` (`sae/crosscoder.py`); this
module reads a trained crosscoder: per-model decoder norms, the relative norm r_i, and the
model-specific / shared split."""

from __future__ import annotations

import torch

from .sae import SAE
from .sae.crosscoder import block_norms


def n_models(sae: SAE) -> int:
    """How many models a crosscoder reads (from its metadata); 1 for a plain SAE."""
    return int(sae.cfg.metadata.get("n_models", 1))


def decoder_norms(sae: SAE, ord: int = 2) -> torch.Tensor:
    """`[F, M]`: the L`ord` norm of each latent's decoder block for each model, in the raw
    activation scale of that model (the saved crosscoder has the normalisation folded in)."""
    return block_norms(sae.W_dec.detach().float(), n_models(sae), ord)


def relative_norms(sae: SAE, ord: int = 2, scale_M: torch.Tensor | None = None) -> torch.Tensor:
    """`r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖)` for a two-model crosscoder (A = first, B = second):
    ≈0 A-only, ≈0.5 shared, ≈1 B-only. `ord` 2 is the common replications' norm, 1 the
    authors' code. Norms are compared in the training scale (each model's activations at mean
    norm √d) when `scale_M` holds the per-model factors that were folded in (metadata), so a
    model with larger activations does not look more important."""
    if n_models(sae) != 2:
        raise ValueError(f"relative norms need a two-model crosscoder, this one reads {n_models(sae)}")
    norms = decoder_norms(sae, ord)
    if scale_M is None:
        scale_M = folded_scales(sae)
    norms = norms * scale_M.to(norms)
    return norms[:, 1] / (norms[:, 0] + norms[:, 1]).clamp_min(1e-12)


def folded_scales(sae: SAE) -> torch.Tensor:
    """`[M]` per-model input scales folded into the saved crosscoder (ones if none)."""
    M = n_models(sae)
    s = sae.cfg.metadata.get("input_scale_folded")
    if s is None:
        return torch.ones(M)
    s = torch.as_tensor(s, dtype=torch.float32).flatten()
    return s.view(M, -1)[:, 0] if s.numel() > 1 else s.expand(M)


def split_latents(r_F: torch.Tensor, low: float = 0.1, high: float = 0.9) -> dict[str, torch.Tensor]:
    """Index sets by relative norm: first-model-only (r < low), second-model-only (r > high),
    shared (the rest)."""
    if not 0 <= low < high <= 1:
        raise ValueError(f"need 0 <= low ({low}) < high ({high}) <= 1")
    return {"first only": torch.nonzero(r_F < low).flatten(),
            "shared": torch.nonzero((r_F >= low) & (r_F <= high)).flatten(),
            "second only": torch.nonzero(r_F > high).flatten()}


@torch.no_grad()
def ablated_logits(first_lm, second_lm, cc: SAE, hook: str, ids_BT: torch.Tensor,
                   ablate: torch.Tensor | list[int]) -> torch.Tensor:
    """The second model's logits `[B, T, V]` with the crosscoder spliced in at `hook` and the
    latents `ablate` zeroed: the block output becomes `x_2 + (x̂_2' − x̂_2)`, i.e. the
    reconstruction with those latents removed plus the crosscoder's error term, so an empty
    ablation reproduces the clean forward exactly. The encoder reads both models'
    activations of the same tokens (the first model runs up to `hook` once)."""
    from .activations import run_with_cache, splice

    if n_models(cc) != 2:
        raise ValueError(f"ablated_logits needs a two-model crosscoder, this one reads {n_models(cc)}")
    idx = torch.as_tensor(ablate, dtype=torch.long)
    if idx.numel() == 0:  # nothing removed: the error term gives back the clean activations
        return second_lm.model(input_ids=ids_BT, use_cache=False).logits
    x_1 = run_with_cache(first_lm.model, ids_BT, [hook])[hook]
    D = x_1.shape[-1]

    def replace(x_2: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x_1, x_2], -1).reshape(-1, 2 * D).float()
        f = cc.encode(x)
        f_abl = f.clone()
        f_abl[:, idx] = 0
        delta = (cc.decode(f_abl) - cc.decode(f))[:, D:]
        return x_2 + delta.reshape(x_2.shape).to(x_2.dtype)

    with splice(second_lm.model, hook, replace):
        return second_lm.model(input_ids=ids_BT, use_cache=False).logits
