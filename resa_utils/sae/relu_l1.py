"""ReLU SAE with an L1 penalty on the latents (the 'standard' SAE; unit-norm decoder)."""

from __future__ import annotations

import torch

from .trainer import Trainer


class ReluL1Trainer(Trainer):
    architecture = "standard"

    def loss(self, x_BD: torch.Tensor) -> tuple[torch.Tensor, dict]:
        f = self.sae.pre_acts(x_BD).relu()
        x_hat = self.sae.decode(f)
        mse = (x_BD - x_hat).pow(2).sum(1).mean()
        l1 = f.sum(1).mean()
        active = f > 0
        return mse + self.cfg.l1_coefficient * l1, {
            "fvu": float(self.batch_fvu(x_BD, x_hat.detach())),
            "l0": float(active.sum(1).float().mean()),
            "l1": float(l1.detach()),
            "fired_F": active.any(0),
        }
