"""Sparse TopK SAE training kernels for the CPU (and any device torch supports).

Only the encoder's forward matmul is dense (2·B·d·F FLOPs). Everything after the top-k
selection touches B·k rows: the decoder is an `embedding_bag`, and the encoder's backward is a
sparse (CSR) matmul, so a step costs about one dense matmul instead of the six of a dense SAE.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def _csr_BF(idx_BK: torch.Tensor, vals_BK: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Sparse `[B, F]` matrix holding `vals` at `idx` (k entries per row)."""
    B, K = idx_BK.shape
    crow = torch.arange(0, B * K + 1, K, device=idx_BK.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, idx_BK.reshape(-1), vals_BK.reshape(-1),
                                       size=(B, n_latents))


class _GatherEncode(torch.autograd.Function):
    """`vals_BK = pre_BF.gather(idx)` where `pre = (x - b_dec) @ W_enc + b_enc` was computed
    without grad; the backward is sparse in the latents."""

    @staticmethod
    def forward(ctx, pre_BF, x_BD, W_enc_DF, b_enc_F, b_dec_D, idx_BK):
        ctx.save_for_backward(x_BD, W_enc_DF, b_dec_D, idx_BK)
        return pre_BF.gather(1, idx_BK)

    @staticmethod
    def backward(ctx, grad_BK):
        x_BD, W_enc_DF, b_dec_D, idx_BK = ctx.saved_tensors
        n_latents = W_enc_DF.shape[1]
        S_BF = _csr_BF(idx_BK, grad_BK.contiguous(), n_latents)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # dense @ CSR writes [D, F] in W_enc's own layout; (S^T x)^T would need a
            # transposing copy in autograd (7 vs 22 ms at B=512, d=640, 8192 latents)
            grad_W_enc = (x_BD - b_dec_D).t().contiguous() @ S_BF
        grad_b_enc = torch.zeros(n_latents, dtype=grad_BK.dtype, device=grad_BK.device)
        grad_b_enc.index_add_(0, idx_BK.reshape(-1), grad_BK.reshape(-1))
        grad_b_dec = -(W_enc_DF @ grad_b_enc)
        return None, None, grad_W_enc, grad_b_enc, grad_b_dec, None


def topk_forward(x_BD: torch.Tensor, W_enc_DF: torch.Tensor, b_enc_F: torch.Tensor,
                 W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor, k: int,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """TopK SAE forward with sparse autograd.

    Returns `(x̂_BD, vals_BK, idx_BK, pre_BF)`; `pre_BF` is detached (for statistics and AuxK).
    """
    with torch.no_grad():
        pre_BF = torch.addmm(b_enc_F, x_BD - b_dec_D, W_enc_DF)
        idx_BK = pre_BF.topk(k, dim=-1, sorted=False).indices
    vals_BK = _GatherEncode.apply(pre_BF, x_BD, W_enc_DF, b_enc_F, b_dec_D, idx_BK).relu()
    x_hat_BD = sparse_decode(idx_BK, vals_BK, W_dec_FD) + b_dec_D
    return x_hat_BD, vals_BK, idx_BK, pre_BF


def gather_encode(pre_BF: torch.Tensor, x_BD: torch.Tensor, W_enc_DF: torch.Tensor,
                  b_enc_F: torch.Tensor, b_dec_D: torch.Tensor, idx_BK: torch.Tensor) -> torch.Tensor:
    """Pre-activations at `idx_BK` with sparse gradients into the encoder (used by AuxK)."""
    return _GatherEncode.apply(pre_BF, x_BD, W_enc_DF, b_enc_F, b_dec_D, idx_BK)


def sparse_decode(idx_BK: torch.Tensor, vals_BK: torch.Tensor, W_dec_FD: torch.Tensor) -> torch.Tensor:
    """`Σ_j vals[b, j] · W_dec[idx[b, j]]` without materialising the dense latents."""
    return F.embedding_bag(idx_BK, W_dec_FD, per_sample_weights=vals_BK, mode="sum")


class _SparseReLU(torch.autograd.Function):
    """ReLU-family SAE forward `x̂ = f W_dec + b_dec` and `Σ f` from pre-activations computed
    without grad, `f = act(pre)` held as a CSR matrix of the active latents; the backward
    touches active entries only (sampled matmul for the latents' grads, dense @ CSR and
    CSR^T @ dense for the weights), so a step costs about one dense matmul when few latents fire."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_DF, b_enc_F, W_dec_FD, b_dec_D, pre_BF, jump: bool):
        active = pre_BF > 0
        idx = active.nonzero()
        vals = pre_BF[active] - (b_enc_F[idx[:, 1]] if jump else 0.0)
        B, n_lat = pre_BF.shape
        crow = torch.zeros(B + 1, dtype=torch.long, device=x_BD.device)
        crow[1:] = torch.cumsum(active.sum(1), 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f_BF = torch.sparse_csr_tensor(crow, idx[:, 1].contiguous(), vals, size=(B, n_lat))
            x_hat = torch.sparse.mm(f_BF, W_dec_FD) + b_dec_D
        ctx.save_for_backward(x_BD, W_enc_DF, W_dec_FD, b_dec_D, f_BF)
        ctx.jump = jump
        return x_hat, vals.sum()

    @staticmethod
    def backward(ctx, grad_xhat_BD, grad_fsum):
        x_BD, W_enc_DF, W_dec_FD, b_dec_D, f_BF = ctx.saved_tensors
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # dL/df at the active entries only: (g W_decᵀ) sampled on f's pattern, plus d(Σf)
            g_f = torch.sparse.sampled_addmm(f_BF, grad_xhat_BD.contiguous(), W_dec_FD.t(),
                                             beta=0.0, alpha=1.0)
            g_vals = g_f.values() + grad_fsum
            g_pre = torch.sparse_csr_tensor(f_BF.crow_indices(), f_BF.col_indices(), g_vals,
                                            size=f_BF.shape)
            grad_W_dec = f_BF.t() @ grad_xhat_BD                        # [F, D]
            grad_W_enc = (x_BD - b_dec_D).t().contiguous() @ g_pre      # [D, F]
        n_lat = W_dec_FD.shape[0]
        g_pre_F = torch.zeros(n_lat, dtype=g_vals.dtype, device=g_vals.device)
        g_pre_F.index_add_(0, f_BF.col_indices(), g_vals)  # Σ_b dL/dpre: b_enc's grad, unless JumpReLU
        grad_b_dec = grad_xhat_BD.sum(0) - W_enc_DF @ g_pre_F
        grad_b_enc = torch.zeros_like(g_pre_F) if ctx.jump else g_pre_F  # f = pre − b_enc: b_enc cancels
        return None, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, None, None


RELU_SPARSE_MAX_ACTIVE = 0.1
"""`relu_forward` takes the sparse path while at most this share of (token, latent) entries is
active, else dense autograd (early L1 training can fire half the latents)."""


def relu_forward(x_BD: torch.Tensor, W_enc_DF: torch.Tensor, b_enc_F: torch.Tensor,
                 W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor, jump: bool = False,
                 sparse: bool = True, max_active: float | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(x̂_BD, Σ f, pre_BF)` of a ReLU SAE, `pre` detached; with `jump` the JumpReLU
    `f = (pre − b_enc)·1[pre > 0]` (the bias gates but does not shrink, so `b_enc` gets no
    gradient through f). The sparse kernel runs when `sparse` and at most `max_active`
    (default `RELU_SPARSE_MAX_ACTIVE`) of the entries fire, else dense autograd; both give the
    same values and gradients. The encoder matmul runs once either way."""
    pre = torch.addmm(b_enc_F, x_BD - b_dec_D, W_enc_DF)  # its graph is used by the dense path only
    limit = RELU_SPARSE_MAX_ACTIVE if max_active is None else max_active
    if sparse and float((pre.detach() > 0).float().mean()) <= limit:
        x_hat, f_sum = _SparseReLU.apply(x_BD, W_enc_DF, b_enc_F, W_dec_FD, b_dec_D, pre.detach(), jump)
        return x_hat, f_sum, pre.detach()
    f = (pre - b_enc_F) * (pre > 0) if jump else pre.relu()
    return f @ W_dec_FD + b_dec_D, f.sum(), pre.detach()
