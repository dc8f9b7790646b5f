"""Group Bias Adaptation (Chen et al. 2025): a ReLU SAE trained on reconstruction alone, whose
encoder biases get no gradient but are steered toward per-group target firing frequencies.

Latents are split at random into K groups with targets on a geometric ladder p_1 > ... > p_K.
Every `gba_interval` steps, from the pre-activations (bias included) buffered since the last
update, each latent m of group k with firing frequency p_m and max pre-activation r_m gets
`b_m <- max(b_m - γ r_m, -1)` if p_m > p_k, or `b_m <- min(b_m + γ s̄_k, 0)` if p_m < ε,
with s̄_k the mean positive r in its group. Biases stay in [-1, 0]; the centred inputs have unit mean norm.
Group assignment and ε are not fixed by the paper's text we could read: both are parameters.
With `gba_activation="jumprelu"` the bias only gates: a latent outputs w·x where w·x + b > 0
(secondary sources describe the ICLR version this way); the export is a SAELens JumpReLU SAE
with threshold −b and no encoder bias.
"""

from __future__ import annotations

import torch

from resa_utils.sae.config import SAEConfig
from resa_utils.sae.kernels import relu_forward
from resa_utils.sae.model import SAE
from resa_utils.sae.topk import SPARSE_MIN_LATENTS
from resa_utils.sae.trainer import Trainer


class GBATrainer(Trainer):
    architecture = "standard"

    def setup(self, sample_ND: torch.Tensor) -> None:
        # tied mode: per-latent output scale a_m (the paper's model), trained by gradient
        self.out_scale_F = torch.nn.Parameter(torch.ones(self.cfg.d_sae, device=self.device))
        super().setup(sample_ND)
        cfg, F = self.cfg, self.cfg.d_sae
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        perm = torch.randperm(F, generator=gen)
        self.group_F = torch.empty(F, dtype=torch.long)
        self.group_F[perm] = torch.arange(F) * cfg.gba_groups // F
        self.group_F = self.group_F.to(self.device)
        self.targets_K = torch.logspace(torch.log10(torch.tensor(cfg.gba_p_high)),
                                        torch.log10(torch.tensor(cfg.gba_p_low)),
                                        cfg.gba_groups).to(self.device)
        self._reset_buffer()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        frozen = {"b_enc", "W_enc"} if self.cfg.gba_tied else {"b_enc"}
        if not self.cfg.gba_train_b_dec:
            frozen.add("b_dec")
        for name in frozen:
            getattr(self.sae, name).requires_grad_(False)
        params = [p for n, p in self.sae.named_parameters() if n not in frozen]
        return params + ([self.out_scale_F] if self.cfg.gba_tied else [])

    def export(self) -> SAE:
        """Untie for inference (W_enc = unit directions, W_dec rows = a_m · direction) and, for
        JumpReLU, move the bias into the threshold (folding the input scale leaves the
        pre-activations, hence the threshold, unchanged)."""
        out = super().export()
        if self.cfg.gba_tied:
            with torch.no_grad():
                unit = self.sae.W_dec.detach().cpu()
                out.W_enc.copy_(unit.t() * self.input_scale)
                out.W_dec.copy_(unit * self.out_scale_F.detach().cpu()[:, None] / self.input_scale)
        if self.cfg.gba_activation == "jumprelu":
            jump = SAE(SAEConfig.from_dict({**out.cfg.to_dict(), "architecture": "jumprelu"}))
            with torch.no_grad():
                for name in ("W_enc", "W_dec", "b_dec"):
                    getattr(jump, name).copy_(getattr(out, name))
                jump.threshold.copy_(-out.b_enc)
                jump.b_enc.zero_()
            out = jump
        return out

    def _reset_buffer(self) -> None:
        F = self.cfg.d_sae
        self.fire_count_F = torch.zeros(F, device=self.device)
        self.max_pre_F = torch.full((F,), float("-inf"), device=self.device)
        self.buffered_tokens = 0

    def loss(self, x_BD: torch.Tensor, stats: bool) -> tuple[torch.Tensor, dict]:
        B, sae, tied = x_BD.shape[0], self.sae, self.cfg.gba_tied
        W_enc = sae.W_dec.t() if tied else sae.W_enc
        W_dec = sae.W_dec * self.out_scale_F[:, None] if tied else sae.W_dec  # tied: f·a_m decoded
        x_hat, _, pre = relu_forward(x_BD, W_enc, sae.b_enc, W_dec, sae.b_dec,
                                     jump=self.cfg.gba_activation == "jumprelu",
                                     sparse=self.cfg.d_sae >= SPARSE_MIN_LATENTS)
        mse = (x_BD - x_hat).pow(2).sum() / B
        with torch.no_grad():
            active = pre > 0
            fires_F = active.sum(0, dtype=torch.float32)
            self.fire_count_F += fires_F
            torch.maximum(self.max_pre_F, pre.amax(0), out=self.max_pre_F)
            self.buffered_tokens += B
        out = {"fired_F": fires_F > 0}
        if stats:
            out.update(fvu=self.batch_fvu(x_BD, x_hat.detach()), l0=fires_F.sum() / B)
        return mse, out

    def after_step(self, stats: dict) -> None:
        if (self.step + 1) % self.cfg.gba_interval == 0:
            self.adapt_biases()

    @torch.no_grad()
    def adapt_biases(self) -> None:
        """One GBA bias update from the buffered statistics, then clear the buffer."""
        cfg = self.cfg
        p_F = self.fire_count_F / max(self.buffered_tokens, 1)
        r_F = self.max_pre_F
        target_F = self.targets_K[self.group_F]
        pos = (r_F > 0).float()
        group_sum = torch.zeros(cfg.gba_groups, device=self.device).index_add_(
            0, self.group_F, r_F.clamp_min(0))
        group_n = torch.zeros(cfg.gba_groups, device=self.device).index_add_(0, self.group_F, pos)
        global_mean = r_F.clamp_min(0).sum() / pos.sum().clamp_min(1)
        s_bar_K = torch.where(group_n > 0, group_sum / group_n.clamp_min(1),
                              global_mean if pos.sum() > 0 else torch.tensor(1.0, device=self.device))
        b = self.sae.b_enc
        too_often = p_F > target_F
        nearly_dead = (p_F < cfg.gba_eps) & ~too_often
        lowered = torch.clamp(b - cfg.gba_gamma * r_F.clamp_min(0), min=-1.0)
        raised = torch.clamp(b + cfg.gba_gamma * s_bar_K[self.group_F], max=0.0)
        b.copy_(torch.where(too_often, lowered, torch.where(nearly_dead, raised, b)))
        self._reset_buffer()

    def extra_state(self):
        return ({"group_F": self.group_F, "fire_count_F": self.fire_count_F,
                 "out_scale_F": self.out_scale_F.detach(),
                 "max_pre_F": self.max_pre_F}, {"buffered_tokens": self.buffered_tokens})

    def load_extra_state(self, tensors, state) -> None:
        self.group_F = tensors["group_F"].to(self.device)
        with torch.no_grad():
            self.out_scale_F.copy_(tensors["out_scale_F"])
        self.fire_count_F = tensors["fire_count_F"].to(self.device)
        self.max_pre_F = tensors["max_pre_F"].to(self.device)
        self.buffered_tokens = state["buffered_tokens"]
