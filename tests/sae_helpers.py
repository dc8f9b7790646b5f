"""SAEs built by hand for tests: given decoder rows, the encoder their transpose."""

from __future__ import annotations

import torch


def relu_sae(W_dec_FD: torch.Tensor, b_enc_F: torch.Tensor | None = None, b_dec_D: torch.Tensor | None = None):
    """A ReLU SAE with these decoder rows, encoder = decoder transpose, biases zero unless given."""
    from resa_utils.sae import SAE, SAEConfig

    F, D = W_dec_FD.shape
    sae = SAE(SAEConfig(d_in=D, d_sae=F)).init_weights()
    with torch.no_grad():
        sae.W_dec.copy_(W_dec_FD)
        sae.W_enc.copy_(W_dec_FD.T)
        sae.b_enc.copy_(torch.zeros(F) if b_enc_F is None else b_enc_F)
        sae.b_dec.copy_(torch.zeros(D) if b_dec_D is None else b_dec_D)
    return sae
