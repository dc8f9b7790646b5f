"""ReLU SAE with an L1 penalty on the latents (the 'standard' SAE; unit-norm decoder)."""

from __future__ import annotations

import torch

from resa_utils.sae.kernels import relu_forward
from resa_utils.sae.topk import SPARSE_MIN_LATENTS
from resa_utils.sae.trainer import Trainer


class ReluL1Trainer(Trainer):
    architecture = "standard"

    def loss(self, x_BD: torch.Tensor, stats: bool) -> tuple[torch.Tensor, dict]:
        B, sae = x_BD.shape[0], self.sae
        x_hat, f_sum, pre = relu_forward(x_BD, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec,
                                         sparse=self.cfg.d_sae >= SPARSE_MIN_LATENTS)
        mse = (x_BD - x_hat).pow(2).sum() / B
        l1 = f_sum / B  # f >= 0, so this is the L1 norm
        active = pre > 0
        out = {"fired_F": active.any(0)}
        if stats:
            out.update(fvu=self.batch_fvu(x_BD, x_hat.detach()), l1=l1.detach(), l0=active.sum() / B)
        return mse + self.cfg.l1_coefficient * l1, out
