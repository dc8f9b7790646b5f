"""TopK SAE (Gao et al. 2024): loss is the batch FVU (as in sparsify) plus the AuxK dead-latent
loss, the FVU of the main residual's reconstruction by the top dead latents (as in Gao et al.)."""

from __future__ import annotations

import torch

from resa_utils.sae.kernels import gather_encode, sparse_decode, topk_forward
from resa_utils.sae.trainer import Trainer

SPARSE_MIN_LATENTS = 1024
"""From this width on, the sparse kernels beat dense autograd on CPU (measured: ~3x slower
than dense at 512 latents, d=42; ~4x faster at 8192 latents, d=640)."""

AUX_DENSE_MAX_RATIO = 8
"""AuxK runs dense over the dead latents alone while they number at most this many times
`aux_k`, else sparse over all latents. Its sparse path gathers `B·aux_k` decoder rows four
times (fwd, two bwd, encoder grad), memory-bound; the dense one costs 6·B·d·n_dead FLOPs
(measured at d=640, B=512, aux_k=320: ~80 ms sparse vs ~20 ms dense at 1000 dead)."""


class TopKTrainer(Trainer):
    architecture = "topk"

    @property
    def sparse(self) -> bool:
        return self.cfg.d_sae >= SPARSE_MIN_LATENTS

    def loss(self, x_BD: torch.Tensor, stats: bool) -> tuple[torch.Tensor, dict]:
        sae, k = self.sae, self.cfg.k
        if self.sparse:
            x_hat, vals, idx, pre = topk_forward(x_BD, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, k)
        else:
            pre = sae.pre_acts(x_BD)
            top = pre.topk(k, dim=-1, sorted=False)
            vals, idx = top.values.relu(), top.indices
            x_hat = sparse_decode(idx, vals, sae.W_dec) + sae.b_dec
        fvu = self.batch_fvu(x_BD, x_hat)
        loss = fvu
        aux = self._auxk_loss(x_BD, x_hat, pre)
        if aux is not None:
            loss = loss + self.cfg.aux_coefficient * aux
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x_BD.device)
        fired[idx[vals > 0]] = True
        out = {"fired_F": fired}
        if stats:
            out.update(fvu=fvu.detach(), l0=(vals.detach() > 0).sum() / x_BD.shape[0],
                       auxk=aux.detach() if aux is not None else torch.zeros(()))
        return loss, out

    def _auxk_loss(self, x_BD, x_hat_BD, pre_BF) -> torch.Tensor | None:
        """Fit the main reconstruction's residual with the top `aux_k` dead latents."""
        if self.cfg.aux_coefficient <= 0:
            return None
        dead = self.tokens_since_fired >= self.cfg.dead_tokens
        n_dead = int(dead.sum())
        if n_dead == 0:
            return None
        sae = self.sae
        aux_k = self.sae.cfg.d_in // 2 if self.cfg.aux_k is None else self.cfg.aux_k
        k_aux = min(aux_k, n_dead)
        err = (x_BD - x_hat_BD).detach()
        if self.sparse and n_dead <= AUX_DENSE_MAX_RATIO * aux_k:
            return self.batch_fvu(err, self._dense_dead_decode(x_BD, dead, k_aux))
        idx = pre_BF.detach().masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False).indices
        if self.sparse:
            vals = gather_encode(pre_BF, x_BD, sae.W_enc, sae.b_enc, sae.b_dec, idx)
        else:
            vals = pre_BF.gather(1, idx)
        return self.batch_fvu(err, sparse_decode(idx, vals.relu(), sae.W_dec))

    def _dense_dead_decode(self, x_BD: torch.Tensor, dead_F: torch.Tensor, k_aux: int) -> torch.Tensor:
        """AuxK reconstruction by the top `k_aux` dead latents, with dense matmuls restricted to
        the dead columns (`[B, n_dead]`); the sparse path's value and gradients, up to rounding
        (which can break a near-tie in the top-k_aux)."""
        sae = self.sae
        dead_N = dead_F.nonzero().squeeze(1)
        pre_BN = torch.addmm(sae.b_enc[dead_N], x_BD - sae.b_dec, sae.W_enc[:, dead_N])
        top = pre_BN.topk(k_aux, dim=-1, sorted=False)
        acts_BN = torch.zeros_like(pre_BN).scatter(1, top.indices, top.values.relu())
        return acts_BN @ sae.W_dec[dead_N]
