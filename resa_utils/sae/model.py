"""The SAE used for inference: `f = act(W_enc^T (x - b_dec) + b_enc)`, `x̂ = W_dec^T f + b_dec`,
with act ReLU (`standard`), TopK, or JumpReLU (ReLU zeroed at or below a per-latent `threshold`).

Parameter layout and file names follow SAELens (`W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`,
`cfg.json` + `sae_weights.safetensors`), so `sae_lens.SAE.load_from_disk` reads our folders.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from resa_utils.core.atomic import atomic_path, read_json, write_json
from resa_utils.sae.config import SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


class SAE(nn.Module):
    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        d, f = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d, f))
        self.b_enc = nn.Parameter(torch.zeros(f))
        self.W_dec = nn.Parameter(torch.empty(f, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(f))

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None,
                     data_mean_D: torch.Tensor | None = None) -> "SAE":
        """Unit-norm random decoder rows, encoder = decoder transpose, `b_dec` = data mean."""
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator)
        self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        self.W_enc.copy_(self.W_dec.t())
        self.b_enc.zero_()
        self.b_dec.copy_(data_mean_D if data_mean_D is not None else torch.zeros(self.cfg.d_in))
        return self

    # ------------------------------------------------------------------ forward
    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations `[B, d_sae]` (bias included)."""
        return torch.addmm(self.b_enc, x_BD - self.b_dec, self.W_enc)

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Dense latents `f_BF`."""
        pre = self.pre_acts(x_BD)
        if self.cfg.architecture == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
        if self.cfg.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold)
        return pre.relu()

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_dec, f_BF, self.W_dec)

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Reconstruction `x̂_BD`; works on any leading shape."""
        shape = x_BD.shape
        flat = x_BD.reshape(-1, shape[-1])
        return self.decode(self.encode(flat)).reshape(shape)

    # ------------------------------------------------------------------ transforms
    @torch.no_grad()
    def fold_input_scale(self, scale: "float | torch.Tensor") -> "SAE":
        """Turn an SAE trained on `x * scale` into one on raw `x` with the same latents; `scale`
        is a number or one factor per input dimension (`[d_in]`, e.g. per model in a crosscoder)."""
        s = torch.as_tensor(scale, dtype=self.W_enc.dtype).to(self.W_enc.device)
        self.W_enc.mul_(s.unsqueeze(-1) if s.ndim else s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)
        self.cfg.metadata["input_scale_folded"] = s.tolist() if s.ndim else float(s)
        return self

    # ------------------------------------------------------------------ io
    def save(self, folder: str | Path) -> Path:
        """Write `cfg.json` + `sae_weights.safetensors` (SAELens layout), each atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
        write_json(folder / CFG_FILE, self.cfg.to_dict())
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "SAE":
        folder = Path(folder)
        cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.exists() or not w_path.exists():
            raise FileNotFoundError(f"{folder} is not an SAE folder: it needs {CFG_FILE} and {WEIGHTS_FILE}")
        cfg = SAEConfig.from_dict(read_json(cfg_path))
        try:
            state = load_file(str(w_path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{w_path} is corrupt ({err}): retrain or re-download the SAE") from err
        sae = cls(cfg)
        sae.load_state_dict(state)
        return sae.to(device)
