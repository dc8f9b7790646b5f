"""ReLU SAE with an L1 penalty on the latents (the 'standard' SAE; unit-norm decoder)."""

from __future__ import annotations

import torch

from .trainer import Trainer


class ReluL1Trainer(Trainer):
    architecture = "standard"

    def loss(self, x_BD: torch.Tensor, stats: bool) -> tuple[torch.Tensor, dict]:
        B = x_BD.shape[0]
        f = self.sae.pre_acts(x_BD).relu()
        x_hat = self.sae.decode(f)
        mse = (x_BD - x_hat).pow(2).sum() / B
        l1 = f.sum() / B  # f >= 0, so this is the L1 norm
        out = {"fired_F": f.detach().amax(0) > 0}
        if stats:
            out.update(fvu=self.batch_fvu(x_BD, x_hat.detach()), l1=l1.detach(),
                       l0=(f.detach() > 0).sum() / B)
        return mse + self.cfg.l1_coefficient * l1, out
