"""Crosscoder trainer (Lindsey et al. 2024), with the settings of Baek & Tegmark's code: one
dictionary over several models' activations of the same tokens, concatenated along the last dim
(`x = [x_1, ..., x_M]`, each `d_model` wide, so `d_in = M · d_model`).

`f = act((x − b_dec) W_enc + b_enc)`, `x̂ = f W_dec + b_dec`. With `crosscoder_activation="relu"`
the loss is `Σ_m ‖x_m − x̂_m‖²` plus `λ Σ_i f_i Σ_m ‖W_dec[i, m]‖₂` (each latent's L1 weighted by
the sum of its per-model decoder norms), λ ramped from 0 over the first `l1_warmup_frac` of
steps; `"topk"` keeps the k largest latents of each token instead, with no penalty;
`"batchtopk"` keeps the k·B largest scores of a batch of B tokens, a latent's score being its
activation times its summed decoder norms (free norms would otherwise buy selection), and is
exported as a `jumprelu` SAE whose per-latent threshold is the running smallest kept score over
that latent's norm, so inference needs no batch. Each model's activations
are scaled so their mean norm is √d_model; decoder blocks start at norm `dec_init_norm` with the
encoder as the decoder's transpose, biases at 0; decoder norms are free (never renormalised).
The export folds the per-model scales in, so the saved SAE (SAELens layout) reads raw
activations; `metadata` holds `n_models` and `d_model`.

The authors' encoder reads x rather than x − b_dec: the two are the same function class
(b_enc absorbs b_dec W_enc); we keep SAELens's convention.
"""

from __future__ import annotations

import math

import torch

from resa_utils.sae.trainer import Trainer


def block_norms(W_dec_FD: torch.Tensor, n_models: int, ord: int = 2) -> torch.Tensor:
    """`[F, M]`: the L`ord` norm of each latent's decoder block for each of the `n_models`
    models (differentiable: the training penalty uses it)."""
    F, D = W_dec_FD.shape
    return torch.linalg.vector_norm(W_dec_FD.view(F, n_models, D // n_models), ord=ord, dim=-1)


class CrosscoderTrainer(Trainer):
    def __init__(self, cfg, d_in: int, device="cpu", metadata: dict | None = None):
        if d_in % cfg.n_models:
            raise ValueError(f"crosscoder input width {d_in} is not a multiple of n_models={cfg.n_models}: "
                             "concatenate one activation of equal width per model")
        self.architecture = {"topk": "topk", "batchtopk": "jumprelu"}.get(cfg.crosscoder_activation, "standard")
        self.kept_score_min = float("nan")  # batchtopk: running smallest kept score (training scale)
        meta = dict(metadata or {}, kind="crosscoder", n_models=cfg.n_models, d_model=d_in // cfg.n_models)
        super().__init__(cfg, d_in, device, meta)

    @property
    def d_model(self) -> int:
        return self.sae.cfg.d_in // self.cfg.n_models

    def fit_input_scale(self, sample_ND: torch.Tensor) -> torch.Tensor:
        """One factor per model (repeated over its dims): its activations get mean norm √d."""
        M, D = self.cfg.n_models, self.d_model
        norms_M = sample_ND.view(-1, M, D).norm(dim=-1).mean(0).clamp_min(1e-12)
        return (math.sqrt(D) / norms_M).repeat_interleave(D).to(self.device)

    @torch.no_grad()
    def init_weights(self, scaled_sample_ND: torch.Tensor, generator: torch.Generator) -> None:
        F, M, D = self.cfg.d_sae, self.cfg.n_models, self.d_model
        w = torch.randn(F, M, D, generator=generator)
        w = w / w.norm(dim=-1, keepdim=True) * self.cfg.dec_init_norm
        self.sae.W_dec.copy_(w.reshape(F, M * D))
        self.sae.W_enc.copy_(self.sae.W_dec.t())
        self.sae.b_enc.zero_()
        self.sae.b_dec.zero_()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Every weight but a `jumprelu` threshold, which is set at export, never trained."""
        return [p for n, p in self.sae.named_parameters() if n != "threshold"]

    def _project_decoder_grad(self) -> None:  # decoder norms are free: the penalty weighs them
        pass

    def _normalize_decoder(self) -> None:
        pass

    def decoder_norms(self) -> torch.Tensor:
        """`[F, M]` L2 norm of each latent's decoder block for each model (in training scale)."""
        return block_norms(self.sae.W_dec, self.cfg.n_models)

    def l1_weight(self) -> float:
        """λ at this step: linear ramp from 0 over the first `l1_warmup_frac` of steps."""
        warm = self.cfg.l1_warmup_frac * self.cfg.n_steps
        return self.cfg.l1_coefficient * (min(1.0, self.step / warm) if warm > 0 else 1.0)

    def loss(self, x_BD: torch.Tensor, stats: bool) -> tuple[torch.Tensor, dict]:
        B, sae = x_BD.shape[0], self.sae
        pre = torch.addmm(sae.b_enc, x_BD - sae.b_dec, sae.W_enc)
        if self.architecture == "topk":
            top = pre.topk(self.cfg.k, dim=-1, sorted=False)
            f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        elif self.cfg.crosscoder_activation == "batchtopk":
            f = self._batch_topk(pre.relu())
        else:
            f = pre.relu()
        x_hat = torch.addmm(sae.b_dec, f, sae.W_dec)
        sq = (x_BD - x_hat).pow(2)
        loss = sq.sum() / B
        l1 = None
        if self.architecture == "standard":
            l1 = (f.sum(0) * self.decoder_norms().sum(1)).sum() / B
            loss = loss + self.l1_weight() * l1
        active = f > 0
        out = {"fired_F": active.any(0)}
        if stats:
            M, D = self.cfg.n_models, self.d_model
            var = (x_BD - x_BD.mean(0)).pow(2).view(B, M, D).sum((0, 2)).clamp_min(1e-12)
            fvu_M = sq.detach().view(B, M, D).sum((0, 2)) / var
            out.update(fvu=fvu_M.mean(), l0=active.sum() / B,
                       **{f"fvu_{m}": fvu_M[m] for m in range(M)},
                       **({"l1": l1.detach()} if l1 is not None else {}))
        return loss, out

    def _batch_topk(self, act_BF: torch.Tensor) -> torch.Tensor:
        """`act_BF` kept at its k·B largest scores (activation x summed decoder norm), and the
        running smallest kept score updated (while training)."""
        score = act_BF * self.decoder_norms().sum(1).detach()
        n_keep = min(self.cfg.k * act_BF.shape[0], score.numel())
        top = score.flatten().topk(n_keep, sorted=False)
        mask = torch.zeros_like(score).flatten().scatter_(0, top.indices, 1.0).view_as(score)
        kept = top.values[top.values > 0]
        if torch.is_grad_enabled() and kept.numel():
            m, low = self.cfg.batchtopk_momentum, float(kept.min().detach())
            self.kept_score_min = low if math.isnan(self.kept_score_min) else m * self.kept_score_min + (1 - m) * low
        return act_BF * mask * (score > 0)

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {}, {"kept_score_min": self.kept_score_min}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        v = state.get("kept_score_min")  # JSON stores nan as null
        self.kept_score_min = float("nan") if v is None else float(v)

    def export(self):
        """The SAE on raw activations; for 'batchtopk', per-latent thresholds equal to the running
        smallest kept score over the latent's summed decoder norm (a score above it ⇔ kept)."""
        norms_F = self.decoder_norms().detach().sum(1).clamp_min(1e-12)  # training scale, before folding
        out = super().export()
        if self.cfg.crosscoder_activation == "batchtopk":
            theta = 0.0 if math.isnan(self.kept_score_min) else self.kept_score_min
            with torch.no_grad():
                out.threshold.copy_((theta / norms_F).to(out.threshold))
        return out
