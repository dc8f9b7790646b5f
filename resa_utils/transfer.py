"""Paper 2's affine maps between two models' hidden states, `h_T ≈ A h_S + p`, fitted in closed
form by ridge regression from streamed sufficient statistics (the least-squares objective the
paper minimises with AdamW has this minimiser exactly at λ = 0; λ > 0, chosen on a validation
split, only regularises), scored by held-out R² and cosine; and position pairing across two
tokenizers by character offsets at word ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class AffineMap:
    """`y = x @ A.T + p`: source width S to target width T."""

    A_TS: torch.Tensor
    p_T: torch.Tensor
    lam: float = 0.0

    def __call__(self, x_NS: torch.Tensor) -> torch.Tensor:
        x = x_NS.to(self.A_TS.dtype)
        return x @ self.A_TS.T + self.p_T

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        from .atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            save_file({"A_TS": self.A_TS.contiguous(), "p_T": self.p_T.contiguous()}, str(tmp),
                      metadata={"lam": repr(self.lam)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AffineMap":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            lam = float(f.metadata().get("lam", "0"))
            return cls(f.get_tensor("A_TS"), f.get_tensor("p_T"), lam)


class RidgeStats:
    """Sufficient statistics of paired rows (float64), added batch by batch, so the fit never
    holds all activations: sums of x, y, xᵀx and xᵀy."""

    def __init__(self, d_source: int, d_target: int):
        self.n = 0
        self.sx = torch.zeros(d_source, dtype=torch.float64)
        self.sy = torch.zeros(d_target, dtype=torch.float64)
        self.xx = torch.zeros(d_source, d_source, dtype=torch.float64)
        self.xy = torch.zeros(d_source, d_target, dtype=torch.float64)

    def add(self, x_NS: torch.Tensor, y_NT: torch.Tensor) -> "RidgeStats":
        if x_NS.shape[0] != y_NT.shape[0]:
            raise ValueError(f"paired rows differ: {x_NS.shape[0]} source vs {y_NT.shape[0]} target")
        x, y = x_NS.double(), y_NT.double()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.T @ x
        self.xy += x.T @ y
        return self

    def solve(self, lam: float) -> AffineMap:
        """Ridge on centred data (the bias is not penalised): A = Cyx (Cxx + λ I)⁻¹, where the
        covariances are per row, so λ is on the scale of the source's per-dimension variance."""
        if self.n < 2:
            raise ValueError("need at least 2 paired rows to fit an affine map")
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.xx / self.n - torch.outer(mx, mx)
        cxy = self.xy / self.n - torch.outer(mx, my)
        reg = cxx + lam * torch.eye(len(mx), dtype=torch.float64)
        A_ST = torch.linalg.lstsq(reg, cxy).solution if lam == 0 else torch.linalg.solve(reg, cxy)
        A_TS = A_ST.T
        p_T = my - A_TS @ mx
        return AffineMap(A_TS.float(), p_T.float(), lam)


def fit_affine(x_NS: torch.Tensor, y_NT: torch.Tensor, lam: float = 0.0) -> AffineMap:
    """Closed-form ridge fit of `y ≈ A x + p` on paired rows."""
    return RidgeStats(x_NS.shape[1], y_NT.shape[1]).add(x_NS, y_NT).solve(lam)


def r2_score(pred_NT: torch.Tensor, y_NT: torch.Tensor) -> float:
    """1 − SSE / SST, pooled over every dimension (SST around each dimension's mean)."""
    y, pred = y_NT.double(), pred_NT.double()
    sse = ((y - pred) ** 2).sum()
    sst = ((y - y.mean(0)) ** 2).sum()
    return float(1 - sse / sst)


def mean_cosine(pred_NT: torch.Tensor, y_NT: torch.Tensor) -> float:
    """Mean cosine between each predicted row and its true row."""
    return float(torch.nn.functional.cosine_similarity(pred_NT.double(), y_NT.double(), dim=1).mean())


def choose_lambda(stats: RidgeStats, x_val_NS: torch.Tensor, y_val_NT: torch.Tensor,
                  lams: list[float]) -> tuple[AffineMap, list[dict]]:
    """The map whose λ (from `lams`) gives the best validation R², and every λ's scores."""
    rows, best = [], None
    for lam in lams:
        m = stats.solve(lam)
        pred = m(x_val_NS)
        row = {"lam": lam, "r2": r2_score(pred, y_val_NT), "cosine": mean_cosine(pred, y_val_NT)}
        rows.append(row)
        if best is None or row["r2"] > best[0]["r2"]:
            best = (row, m)
    return best[1], rows


def shuffled_stats(x_NS: torch.Tensor, y_NT: torch.Tensor, seed: int = 0) -> RidgeStats:
    """Statistics of deliberately mismatched pairs (targets permuted): the no-relation baseline."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(y_NT.shape[0], generator=g)
    return RidgeStats(x_NS.shape[1], y_NT.shape[1]).add(x_NS, y_NT[perm])


# --------------------------------------------------------------------------- pairing positions


def same_tokenizer(tok_a, tok_b) -> bool:
    """Whether two tokenizers map every string to the same ids (same vocabulary and merges,
    checked on the vocabulary and a probe text)."""
    probe = "Tokenizers agree: 12,345 naïve café → résumé\n\tdef f(x): return x**2"
    return tok_a.get_vocab() == tok_b.get_vocab() and tok_a(probe)["input_ids"] == tok_b(probe)["input_ids"]


_WORD = re.compile(r"\w+", re.UNICODE)


def word_end_pairs(text: str, tok_a, tok_b) -> list[tuple[int, int]]:
    """Token positions `(i_a, i_b)` in `text` tokenized by each tokenizer that both end exactly
    at the end of a word: the pairing of positions across tokenizers by character offsets
    (tokens that straddle a word end in either model are skipped). No special tokens added."""
    ends_a = _token_ends(text, tok_a)
    ends_b = _token_ends(text, tok_b)
    pairs = []
    for m in _WORD.finditer(text):
        e = m.end()
        if e in ends_a and e in ends_b:
            pairs.append((ends_a[e], ends_b[e]))
    return pairs


def _token_ends(text: str, tok) -> dict[int, int]:
    """`{character end offset: token index}` (a fast tokenizer's offset mapping)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    out = {}
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start:
            out[end] = i  # the last token ending there wins (tokens never end twice at one char)
    return out
