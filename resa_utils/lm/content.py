"""The content-row rule: which activation rows enter a dictionary's training data and its metrics.

Left out: special tokens (BOS, EOS, pad, chat markers), position 0 of every window whether or
not it is BOS (packed chunks and Qwen windows start on an ordinary token that still acts as an
attention sink), and rows whose norm exceeds `max_norm_ratio` times the hook's median norm
(massive activations). Such rows are rare but carry most of the centred variance in small
models (gemma-3-270m block 9: 0.15% of rows above 10x the median carry 53% of it; SmolLM2-135M
block 12's position 0 has norm ~23,400 against a median of 138), so a squared-error objective
and its FVU would be about them. A splice leaves these positions clean (`clean_positions`).
Every use reports what it left out (`LeftOut`): the share of rows and of the centred variance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

POSITION_KEY = "content_position"
"""Per-row bool tensor in each activation shard: the position passes the rule's position part."""


@dataclass(frozen=True)
class ContentRule:
    """Which rows count as content. `ContentRule(enabled=False)` keeps every harvested row, so a
    notebook can show what the rule changes."""

    enabled: bool = True
    """False: every row is content (the rule off)."""
    max_norm_ratio: float = 10.0
    """A row whose norm exceeds this multiple of its hook's median norm (over rows that pass the
    position rule) is left out. Must be finite and > 1."""

    def __post_init__(self) -> None:
        r = self.max_norm_ratio
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r) or r <= 1:
            raise ValueError(f"content rule: max_norm_ratio={r!r} must be a finite number > 1 (a "
                             "multiple of the hook's median norm; 10 is the default)")


@dataclass
class LeftOut:
    """What the rule left out of one hook's rows, and how much of the centred variance that was."""

    hook: str
    rows: int
    """Rows before the rule."""
    by_position: int
    """Rows left out as special tokens or window starts."""
    by_norm: int
    """Rows left out as norm outliers (among those the position rule kept)."""
    median_norm: float
    """Median row norm over the rows the position rule kept (per block for paired caches: the first)."""
    max_norm_ratio: float
    variance_share: float
    """Share of the centred variance, sum over rows of ||x - mean||^2 (mean over all rows), carried by
    the left-out rows."""
    position_variance_share: float
    norm_variance_share: float

    @property
    def kept(self) -> int:
        return self.rows - self.by_position - self.by_norm

    @property
    def row_share(self) -> float:
        return (self.by_position + self.by_norm) / max(1, self.rows)

    def as_row(self) -> dict:
        """A table row: counts, shares of rows and of the centred variance."""
        return {**asdict(self), "kept": self.kept, "row_share": self.row_share}

    def summary(self) -> str:
        return (f"{self.hook}: left out {self.by_position + self.by_norm:,} of {self.rows:,} rows "
                f"({100 * self.row_share:.2f}%: {self.by_position:,} special/first, {self.by_norm:,} above "
                f"{self.max_norm_ratio:g}x the median norm {self.median_norm:.3g}), carrying "
                f"{100 * self.variance_share:.1f}% of the centred variance")


def content_positions(ids_NT: torch.Tensor, special_ids) -> torch.Tensor:
    """`[N, T]` bool: positions that are not special tokens and not position 0 of their window.
    `special_ids`: a tokenizer (its `all_special_ids`) or an iterable of token ids."""
    ids = getattr(special_ids, "all_special_ids", special_ids)
    special = torch.tensor(sorted(set(int(i) for i in ids if i is not None)), dtype=ids_NT.dtype,
                           device=ids_NT.device)
    keep = ~torch.isin(ids_NT, special)
    keep[:, 0] = False
    return keep


def _block_norms(x_ND: torch.Tensor, n_blocks: int) -> torch.Tensor:
    return x_ND.float().view(x_ND.shape[0], n_blocks, -1).norm(dim=-1)


def norm_ok(norms_NB: torch.Tensor, medians_B: torch.Tensor, rule: ContentRule) -> torch.Tensor:
    """`[N]` bool: every block's norm within `max_norm_ratio` times that block's median."""
    return (norms_NB <= rule.max_norm_ratio * medians_B).all(1)


class _Variance:
    """Centred sums of squares of row groups, from per-group sums (two numbers and a vector each)."""

    def __init__(self):
        self.n, self.sum, self.sq = {}, {}, {}

    def add(self, group: str, x_ND: torch.Tensor) -> None:
        x = x_ND.double()
        self.n[group] = self.n.get(group, 0) + x.shape[0]
        self.sum[group] = self.sum.get(group, 0) + x.sum(0)
        self.sq[group] = self.sq.get(group, 0.0) + float(x.pow(2).sum())

    def shares(self) -> dict[str, float]:
        n = sum(self.n.values())
        if n == 0:
            return {g: 0.0 for g in self.n}
        mu = sum(self.sum.values()) / n
        ss = {g: self.sq[g] - 2 * float(mu @ self.sum[g]) + self.n[g] * float(mu @ mu)
              if self.n[g] else 0.0 for g in self.n}
        total = sum(ss.values())
        return {g: (v / total if total > 0 else 0.0) for g, v in ss.items()}


def select_rows(x_ND: torch.Tensor, position_ok_N: torch.Tensor | None = None,
                rule: ContentRule = ContentRule(), hook: str = "", n_blocks: int = 1,
                ) -> tuple[torch.Tensor, LeftOut]:
    """In memory: `[N]` bool of the content rows of `x_ND` and what was left out.
    `position_ok_N`: the position part of the rule per row (None: every position passes)."""
    n = x_ND.shape[0]
    pos = torch.ones(n, dtype=torch.bool) if position_ok_N is None else position_ok_N.bool().cpu().flatten()
    if pos.numel() != n:
        raise ValueError(f"position mask has {pos.numel()} rows, the activations {n}")
    if not rule.enabled:
        keep = torch.ones(n, dtype=torch.bool)
        return keep, LeftOut(hook, n, 0, 0, float("nan"), rule.max_norm_ratio, 0.0, 0.0, 0.0)
    norms = _block_norms(x_ND.cpu(), n_blocks)
    medians = norms[pos].median(0).values if pos.any() else torch.full((n_blocks,), float("inf"))
    ok_norm = norm_ok(norms, medians, rule)
    keep = pos & ok_norm
    var = _Variance()
    for group, m in (("position", ~pos), ("norm", pos & ~ok_norm), ("kept", keep)):
        var.add(group, x_ND.cpu()[m])
    sh = var.shares()
    return keep, LeftOut(hook, n, int((~pos).sum()), int((pos & ~ok_norm).sum()), float(medians[0]),
                         rule.max_norm_ratio, sh["position"] + sh["norm"], sh["position"], sh["norm"])


def clean_positions(acts_BTD: torch.Tensor, ids_BT: torch.Tensor, special_ids, rule: ContentRule,
                    median_norm: float | None = None) -> torch.Tensor:
    """`[B, T]` bool: where a splice must leave the clean activation (special tokens, position 0,
    and rows above `max_norm_ratio` times `median_norm`; without one, the batch's own median over
    the other positions). With the rule off, nothing is kept clean."""
    if not rule.enabled:
        return torch.zeros(ids_BT.shape, dtype=torch.bool, device=ids_BT.device)
    pos = content_positions(ids_BT, special_ids)
    norms = acts_BTD.float().norm(dim=-1)
    med = median_norm if median_norm is not None else (
        float(norms[pos].median()) if pos.any() else float("inf"))
    return ~pos | (norms > rule.max_norm_ratio * med)


def keep_clean(fn, clean_BT: torch.Tensor):
    """A splice function that applies `fn` except at `clean_BT`, where the activation stays."""
    return lambda acts: torch.where(clean_BT[..., None], acts, fn(acts))
