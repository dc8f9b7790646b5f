"""Paper 2's affine maps between two models' hidden states, `h_T ≈ A h_S + p`, fitted in closed
form by ridge regression from streamed sufficient statistics (the least-squares objective the
paper minimises with AdamW has this minimiser exactly at λ = 0; λ > 0, chosen on a validation
split, only regularises), scored by held-out R² and cosine on content rows (the pairs that a
`ContentRule` keeps in both models at every studied block); position pairing across two
tokenizers by character offsets at word ends; notebook 02's steps over a model pair (harvest,
maps at every layer pair, steering vectors carried across) and its paper-comparison rules.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from resa_utils.lm.content import ContentRule

if TYPE_CHECKING:
    import pandas as pd


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

        from resa_utils.core.atomic import atomic_path

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
    """Sufficient statistics of paired rows, added batch by batch, so the fit never holds all
    activations: sums of x, y, xᵀx and xᵀy, accumulated in float64. Rows are shifted by the
    first batch's means before the products (exact for the covariances, and it keeps float32
    products accurate when hidden states have large means), and each batch's products run in
    `dtype` (float32 is ~10x faster than float64 on CPU)."""

    def __init__(self, d_source: int, d_target: int, dtype: torch.dtype = torch.float64):
        self.n = 0
        self.dtype = dtype
        self.cx = torch.zeros(d_source, dtype=torch.float64)  # the shifts
        self.cy = torch.zeros(d_target, dtype=torch.float64)
        self.sx = torch.zeros(d_source, dtype=torch.float64)
        self.sy = torch.zeros(d_target, dtype=torch.float64)
        self.xx = torch.zeros(d_source, d_source, dtype=torch.float64)
        self.xy = torch.zeros(d_source, d_target, dtype=torch.float64)

    def add(self, x_NS: torch.Tensor, y_NT: torch.Tensor, chunk: int = 8192) -> "RidgeStats":
        if x_NS.shape[0] != y_NT.shape[0]:
            raise ValueError(f"paired rows differ: {x_NS.shape[0]} source vs {y_NT.shape[0]} target")
        if self.n == 0 and x_NS.shape[0]:
            self.cx, self.cy = self._shift(x_NS), self._shift(y_NT)
        self.n += x_NS.shape[0]
        return self._accumulate(x_NS, y_NT, chunk, source=True)

    def _accumulate(self, x_NS: torch.Tensor, y_NT: torch.Tensor, chunk: int, source: bool) -> "RidgeStats":
        """Adds the shifted rows' sums and products chunk by chunk; the source-only terms (Σx, xᵀx)
        only when `source`."""
        for a in range(0, x_NS.shape[0], chunk):
            x, y = self._shifted(x_NS[a:a + chunk], self.cx), self._shifted(y_NT[a:a + chunk], self.cy)
            if source:
                self.sx += x.sum(0).double()
                self.xx += (x.T @ x).double()
            self.sy += y.sum(0).double()
            self.xy += (x.T @ y).double()
        return self

    def _shifted(self, rows_ND: torch.Tensor, shift_D: torch.Tensor) -> torch.Tensor:
        """Rows minus the shift, in `dtype`: shifted in `dtype` when the rows are no wider (exact
        for the rounded shift of `_shift`), else in the rows' own precision first."""
        if rows_ND.dtype.itemsize > self.dtype.itemsize:
            return (rows_ND - shift_D.to(rows_ND.dtype)).to(self.dtype)
        return rows_ND.to(self.dtype) - shift_D.to(self.dtype)

    def _shift(self, rows_ND: torch.Tensor) -> torch.Tensor:
        """The rows' mean, rounded to `dtype` so that shifting in `dtype` shifts by exactly it."""
        return rows_ND.double().mean(0).to(self.dtype).double()

    def with_targets(self, y_NT: torch.Tensor, x_NS: torch.Tensor, chunk: int = 8192) -> "RidgeStats":
        """A copy sharing this object's source statistics (xᵀx needs computing once per source
        layer), with the target sums recomputed for new targets `y_NT` paired with the same `x_NS`."""
        if x_NS.shape[0] != self.n or y_NT.shape[0] != self.n:
            raise ValueError(f"with_targets needs the same {self.n} paired rows, got "
                             f"{x_NS.shape[0]} source and {y_NT.shape[0]} target rows")
        out = RidgeStats(len(self.sx), y_NT.shape[1], self.dtype)
        out.n, out.cx, out.sx, out.xx = self.n, self.cx.clone(), self.sx.clone(), self.xx.clone()
        out.cy = out._shift(y_NT)
        return out._accumulate(x_NS, y_NT, chunk, source=False)

    def solve(self, lam: float, relative: bool = False) -> AffineMap:
        """Ridge on centred data (the bias is not penalised): A = Cyx (Cxx + λ I)⁻¹, where the
        covariances are per row, so λ is on the scale of the source's per-dimension variance;
        with `relative`, λ is a multiple of that mean variance (tr Cxx / S)."""
        if self.n < 2:
            raise ValueError("need at least 2 paired rows to fit an affine map")
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.xx / self.n - torch.outer(mx, mx)
        cxy = self.xy / self.n - torch.outer(mx, my)
        scale = float(torch.diagonal(cxx).mean()) if relative else 1.0
        reg = cxx + lam * scale * torch.eye(len(mx), dtype=torch.float64)
        A_ST = torch.linalg.lstsq(reg, cxy).solution if lam == 0 else torch.linalg.solve(reg, cxy)
        A_TS = A_ST.T
        p_T = (my + self.cy) - A_TS @ (mx + self.cx)
        return AffineMap(A_TS.float(), p_T.float(), lam)


def fit_affine(x_NS: torch.Tensor, y_NT: torch.Tensor, lam: float = 0.0) -> AffineMap:
    """Closed-form ridge fit of `y ≈ A x + p` on paired rows."""
    return RidgeStats(x_NS.shape[1], y_NT.shape[1]).add(x_NS, y_NT).solve(lam)


def r2_score(pred_NT: torch.Tensor, y_NT: torch.Tensor) -> float:
    """1 − SSE / SST, pooled over every dimension (SST around each dimension's mean)."""
    y, pred = y_NT.float(), pred_NT.float()  # float32 terms, float64 sums: 4x faster than all float64
    sse = (y - pred).pow_(2).sum(dtype=torch.float64)
    sst = (y - y.mean(0, dtype=torch.float64).float()).pow_(2).sum(dtype=torch.float64)
    return float(1 - sse / sst)


def mean_cosine(pred_NT: torch.Tensor, y_NT: torch.Tensor) -> float:
    """Mean cosine between each predicted row and its true row."""
    return float(torch.nn.functional.cosine_similarity(pred_NT.float(), y_NT.float(), dim=1).double().mean())


def choose_lambda(stats: RidgeStats, x_val_NS: torch.Tensor, y_val_NT: torch.Tensor,
                  lams: list[float], relative: bool = False) -> tuple[AffineMap, list[dict]]:
    """The map whose λ (from `lams`) gives the best validation R², and every λ's scores."""
    rows, best = [], None
    for lam in lams:
        m = stats.solve(lam, relative)
        pred = m(x_val_NS)
        row = {"lam": lam, "r2": r2_score(pred, y_val_NT), "cosine": mean_cosine(pred, y_val_NT)}
        rows.append(row)
        if best is None or row["r2"] > best[0]["r2"]:
            best = (row, m)
    return best[1], rows


def shuffled_stats(x_NS: torch.Tensor, y_NT: torch.Tensor, seed: int = 0,
                   dtype: torch.dtype = torch.float64) -> RidgeStats:
    """Statistics of deliberately mismatched pairs (targets permuted): the no-relation baseline."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(y_NT.shape[0], generator=g)
    return RidgeStats(x_NS.shape[1], y_NT.shape[1], dtype).add(x_NS, y_NT[perm])


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


@dataclass
class PairedWindows:
    """The same texts as token windows for two models, and which harvested rows pair up.

    Rows follow `ActivationCache.build(..., drop_bos=True)`: window w's token i (counting text
    tokens, after any BOS) is row `w * rows_per_window + i` of that model's harvest.
    """

    source_ids: torch.Tensor
    """`[N, T_s]` (right-padded where texts are shorter: causal models never look ahead)."""
    target_ids: torch.Tensor
    source_rows: torch.Tensor
    """`[P]` paired rows of the source harvest ..."""
    target_rows: torch.Tensor
    """... and of the target harvest."""
    window: torch.Tensor
    """`[P]` the window of each pair (splits are by window, so no text is in two splits)."""
    mode: str
    target_bos: int = 0
    """leading BOS columns of `target_ids` (rows count text tokens after them)"""

    def target_tokens(self) -> torch.Tensor:
        """`[P]` the target model's token id at each paired row (for the token-identity baseline)."""
        return self.target_ids[:, self.target_bos:].reshape(-1)[self.target_rows]


def _with_bos(tok, ids: list[int], length: int) -> tuple[list[int], int]:
    bos = tok.bos_token_id
    head = [bos] if bos is not None else []
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    row = head + ids
    return row + [pad] * (length - len(row)), len(head)


def paired_windows(texts, tok_s, tok_t, seq_len: int, n_windows: int, mode: str = "tokens") -> PairedWindows:
    """`n_windows` windows of `seq_len` source tokens cut from `texts` (EOS between texts).

    `mode="tokens"`: one tokenizer, so both models get the same windows and every position pairs
    with itself (refused for two tokenizers). `mode="word_end"`: each window's text is decoded
    (EOS separators become a blank line, so neither model reads the other's special token as
    text) and tokenized by each model, and positions pair where both models' tokens end at the
    same word end (`word_end_pairs`); other positions are left out. In both modes the EOS
    separators between documents are left out of the pairs: they are not text, and attention
    sinks there can carry outsized activations that would dominate a pooled fit.
    """
    if mode not in ("tokens", "word_end"):
        raise ValueError(f"pairing mode {mode!r}: use 'tokens' (one tokenizer) or 'word_end'")
    if mode == "tokens" and not same_tokenizer(tok_s, tok_t):
        raise ValueError("the two models tokenize differently, so tokens cannot pair one to one: "
                         "use the 'word_end' pairing (positions matched by character offsets)")
    from resa_utils.data.windows import token_windows

    has_bos = tok_s.bos_token_id is not None
    win = token_windows(texts, tok_s, seq_len, n_windows, add_bos=has_bos)
    body = win[:, 1:] if has_bos else win
    eos = tok_s.eos_token_id
    if mode == "tokens":
        n, T = body.shape
        rows = torch.arange(n * T)
        rows = rows[body.reshape(-1) != eos] if eos is not None else rows
        return PairedWindows(win, win.clone(), rows, rows.clone(), rows // T, mode, int(has_bos))
    s_rows, t_rows, w_idx, s_ids, t_ids = [], [], [], [], []
    for w, ids in enumerate(body.tolist()):
        pieces, cur = [], []
        for t in ids:
            if t == eos:
                pieces.append(cur)
                cur = []
            else:
                cur.append(t)
        text = "\n\n".join(tok_s.decode(piece) for piece in pieces + [cur])
        s_ids.append(tok_s(text, add_special_tokens=False)["input_ids"])
        t_ids.append(tok_t(text, add_special_tokens=False)["input_ids"])
        pairs = word_end_pairs(text, tok_s, tok_t)
        s_rows.append([i for i, _ in pairs]); t_rows.append([j for _, j in pairs]); w_idx.append(w)
    bos_s, bos_t = int(tok_s.bos_token_id is not None), int(tok_t.bos_token_id is not None)
    Ts, Tt = max(map(len, s_ids)) + bos_s, max(map(len, t_ids)) + bos_t
    S = torch.tensor([_with_bos(tok_s, ids, Ts)[0] for ids in s_ids])
    Tg = torch.tensor([_with_bos(tok_t, ids, Tt)[0] for ids in t_ids])
    rs, rt, ww = [], [], []
    for w, a, b in zip(w_idx, s_rows, t_rows):
        rs += [w * (Ts - bos_s) + i for i in a]
        rt += [w * (Tt - bos_t) + j for j in b]
        ww += [w] * len(a)
    return PairedWindows(S, Tg, torch.tensor(rs, dtype=torch.long), torch.tensor(rt, dtype=torch.long),
                         torch.tensor(ww, dtype=torch.long), mode, bos_t)



# --------------------------------------------------------------------------- every layer pair


def window_splits(n_windows: int, val_frac: float, test_frac: float, seed: int) -> torch.Tensor:
    """`split_N` for each window: 0 train, 1 validation, 2 test (a seeded shuffle of windows)."""
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac={val_frac} and test_frac={test_frac} must be in (0, 1) with sum < 1")
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = max(1, round(n_windows * val_frac)), max(1, round(n_windows * test_frac))
    if n_val + n_test >= n_windows:
        raise ValueError(f"{n_windows} windows are too few to split into train / validation / test")
    split = torch.zeros(n_windows, dtype=torch.long)
    split[order[:n_val]] = 1
    split[order[n_val:n_val + n_test]] = 2
    return split


def relative_depth(layer: int, n_layers: int) -> float:
    """Block index as a share of the depth: 0 for the first block, 1 for the last."""
    return layer / max(1, n_layers - 1)


def matched_layer(layer: int, n_source: int, candidates: list[int], n_target: int) -> int:
    """The candidate target block whose relative depth is nearest the source block's."""
    r = relative_depth(layer, n_source)
    return min(candidates, key=lambda t: (abs(relative_depth(t, n_target) - r), t))


def fit_layer_maps(load_source, load_target, pw: PairedWindows, source_layers: list[int],
                   target_layers: list[int], n_source: int, n_target: int, lams: list[float],
                   split_W: torch.Tensor, keep=(), shuffled=(), seed: int = 0,
                   progress: bool = True, rows_P: torch.Tensor | None = None,
                   tokens_P: torch.Tensor | None = None) -> tuple[list[dict], dict]:
    """Ridge maps for every (source, target) layer pair, λ (relative to the source's mean
    variance) chosen on the validation windows, scored on the test windows. `rows_P`: `[P]` bool,
    the pairs that enter (None: all), the same for training, validation, test and the shuffled
    baseline (see `HarvestedPair.content_mask`).

    `load_source(l)` / `load_target(l)` return a model's harvested `acts_ND` at block l (rows as
    in `pw`); only one target layer is held at a time. Returns `(rows, maps)`: one row per pair
    (R² pooled over dimensions, `r2_dim` the unweighted mean of the per-dimension R², mean cosine,
    chosen λ, `sse_w` / `sst_w` the test windows' sums behind the pooled R² for a bootstrap over
    windows (`window_r2`), for pairs in `shuffled` the shuffled-pairs baseline's test R² at the
    same λ, and with `tokens_P` (the target token of each pair) `token_r2`: the held-out R² of
    predicting the target block from the token alone, by its mean training state), and the
    fitted `AffineMap` of each pair in `keep`.
    """
    from resa_utils.core.progress import tqdm

    part = split_W[pw.window]
    use = torch.ones(len(part), dtype=torch.bool) if rows_P is None else torch.as_tensor(rows_P, dtype=torch.bool)
    if use.shape != part.shape:
        raise ValueError(f"the row mask has {use.numel()} entries, the pairing {part.numel()} pairs")
    tr, va, te = (part == 0) & use, (part == 1) & use, (part == 2) & use
    for i, (what, m) in enumerate((("training", tr), ("validation", va), ("test", te))):
        if int(m.sum()) < 2:
            raise ValueError(f"{int(m.sum())} {what} pairs are left of {int((part == i).sum())} (the row mask leaves "
                             "out the rest): harvest more tokens, or check the content-row rule")
    xs = {}  # per source layer: its (train, validation, test) rows, split once
    for s in source_layers:
        x = load_source(s)[pw.source_rows]
        xs[s] = (x[tr], x[va], x[te])
    base = {s: RidgeStats(xs[s][0].shape[1], 1, torch.float32).add(xs[s][0], torch.zeros(int(tr.sum()), 1))
            for s in source_layers}
    rows, maps = [], {}
    _, win_te = torch.unique(pw.window[te], return_inverse=True)  # each test pair's test window, 0..W-1
    bar = tqdm(total=len(source_layers) * len(target_layers), desc="layer maps", unit="pair",
               disable=not progress, leave=False)
    for t in target_layers:
        y = load_target(t)[pw.target_rows]
        y_tr, y_va, y_te = y[tr], y[va], y[te]
        y_te32 = y_te.float()
        dev_te = y_te32 - y_te32.mean(0, dtype=torch.float64).float()
        sst_d = dev_te.pow(2).sum(0, dtype=torch.float64)
        sst_w = _per_window(dev_te.pow(2).sum(1, dtype=torch.float64), win_te)
        tok_r2 = None if tokens_P is None else token_identity_r2(tokens_P[tr], y_tr, tokens_P[te], y_te)
        for s in source_layers:
            x_tr, x_va, x_te = xs[s]
            stats = base[s].with_targets(y_tr, x_tr)
            m, scores = choose_lambda(stats, x_va, y_va, lams, relative=True)
            pred = m(x_te)
            err = (y_te32 - pred.float()).pow_(2)
            ok = sst_d > 0
            row = {"source_layer": s, "target_layer": t, "source_depth": relative_depth(s, n_source),
                   "target_depth": relative_depth(t, n_target), "lam": m.lam,
                   "val_r2": max(r["r2"] for r in scores), "r2": r2_score(pred, y_te),
                   "r2_dim": float((1 - err.sum(0, dtype=torch.float64)[ok] / sst_d[ok]).mean()),
                   "cosine": mean_cosine(pred, y_te), "n_train": int(tr.sum()), "n_test": int(te.sum()),
                   "sse_w": _per_window(err.sum(1, dtype=torch.float64), win_te).tolist(), "sst_w": sst_w.tolist()}
            if tok_r2 is not None:
                row["token_r2"] = tok_r2
            if (s, t) in shuffled:
                sm = shuffled_stats(x_tr, y_tr, seed, torch.float32).solve(m.lam, relative=True)
                pred_sm = sm(x_te)
                row["shuffled_r2"] = r2_score(pred_sm, y_te)
                row["shuffled_cosine"] = mean_cosine(pred_sm, y_te)
            if (s, t) in keep:
                maps[(s, t)] = m
            rows.append(row)
            bar.update(1)
    bar.close()
    return rows, maps


def _per_window(v_N: torch.Tensor, win_N: torch.Tensor) -> torch.Tensor:
    """Sums of `v_N` per window index (0..max)."""
    return torch.zeros(int(win_N.max()) + 1 if len(win_N) else 0, dtype=torch.float64).index_add_(0, win_N, v_N.double())


def token_identity_r2(tok_tr: torch.Tensor, y_tr_NT: torch.Tensor, tok_te: torch.Tensor, y_te_NT: torch.Tensor) -> float:
    """Held-out R² of the token-identity baseline: each test row predicted by the mean training
    state of its token (the mean of all training rows for tokens training never saw)."""
    uniq, inv = torch.unique(tok_tr, return_inverse=True)
    sums = torch.zeros(len(uniq), y_tr_NT.shape[1], dtype=torch.float64).index_add_(0, inv, y_tr_NT.double())
    means = (sums / torch.bincount(inv, minlength=len(uniq)).clamp(min=1)[:, None].double()).float()
    pos = torch.searchsorted(uniq, tok_te).clamp(max=len(uniq) - 1)
    seen = uniq[pos] == tok_te
    pred = torch.where(seen[:, None], means[pos], y_tr_NT.double().mean(0).float()[None, :])
    return r2_score(pred, y_te_NT)


def window_r2(sse_w, sst_w, idx=None) -> float:
    """Pooled R² from per-window sums, over the windows `idx` (a bootstrap resample; None: all).
    The total is around the full test mean, so a resample's R² is a ratio estimate."""
    import numpy as np

    sse, sst = np.asarray(sse_w, dtype=float), np.asarray(sst_w, dtype=float)
    if idx is not None:
        sse, sst = sse[idx], sst[idx]
    return float(1 - sse.sum() / sst.sum())


# --------------------------------------------------------------------------- harvesting a pair


def studied_layers(n_layers: int, stride: int, extra: Iterable[int] = ()) -> list[int]:
    """The blocks harvested: every `stride`-th block, the last block and `extra` (e.g. the
    steering block), sorted."""
    return sorted(set(range(0, n_layers, stride)) | {n_layers - 1} | set(extra))


def steering_blocks(n_source: int, n_target: int, source_layer: int = -1,
                    target_layer: int = -1) -> tuple[int, int]:
    """`(source block, target block)` of the steering vectors: -1 picks the source's middle block
    and the target block at the same relative depth."""
    src = source_layer if source_layer >= 0 else n_source // 2
    tgt = target_layer if target_layer >= 0 else round(relative_depth(src, n_source) * (n_target - 1))
    return src, tgt


@dataclass
class HarvestedPair:
    """Both models' hidden states on the same windows (activation caches on disk) and what the
    maps need: the pairing, the studied blocks, each model's depth, and harvest speeds."""

    pw: PairedWindows
    layers_s: list[int]
    layers_t: list[int]
    n_s: int
    n_t: int
    key: str
    """the harvest's config key (names the caches and sweep files)"""
    cache_s: object
    cache_t: object
    speeds: dict
    """per model: seconds, tokens/s and parameters of its harvest (NaN where a cache was reused)"""

    def speed_rows(self, pair: str) -> list[dict]:
        """One row per model: the harvest speed table's rows for this pair."""
        return [{"pair": pair, "model": m, "tokens/s": v["tokens/s"], "seconds": v["seconds"], "params": v["params"]}
                for m, v in self.speeds.items()]

    def hooks(self) -> tuple[list[str], list[str]]:
        """The studied blocks' hooks: `(source hooks, target hooks)`."""
        from resa_utils.lm.activations import resid_hook

        return [resid_hook(l) for l in self.layers_s], [resid_hook(l) for l in self.layers_t]

    def content_mask(self, rule: ContentRule = ContentRule()) -> torch.Tensor:
        """`[P]` bool over the paired positions: both rows are content rows of their model (not a
        special token, not position 0 of a window, norm within `rule.max_norm_ratio` times that
        hook's median, judged per model at each studied block) at every studied block, so every
        layer pair's map is fitted and scored on the same rows of both models. All True with the
        rule off."""
        from resa_utils.lm.activations import content_rows

        keep = []
        for cache, hooks in zip((self.cache_s, self.cache_t), self.hooks()):
            k = torch.ones(cache.n_tokens, dtype=torch.bool)
            for h in hooks:
                kept, _ = content_rows(cache, h, rule)
                k &= torch.cat([s["keep"] for s in kept.manifest["shards"]])
            keep.append(k)
        return keep[0][self.pw.source_rows] & keep[1][self.pw.target_rows]

    def left_out(self, rule: ContentRule = ContentRule(), name: str = "") -> "pd.DataFrame":
        """`activations.left_out_table` of both caches at their studied blocks, each cache named
        `<name>/<model>` (the harvest's record, reused for the default rule)."""
        import pandas as pd

        from resa_utils.lm.activations import left_out_table

        model = {"source": self.cache_s.manifest.get("model", "source"), "target": self.cache_t.manifest.get("model", "target")}
        return pd.concat([left_out_table({f"{name}/{model[role]}" if name else model[role]: cache}, hooks, rule)
                          for role, cache, hooks in zip(model, (self.cache_s, self.cache_t), self.hooks())],
                         ignore_index=True)


def harvest_pair(texts: list[str], src: str, tgt: str, mode: str, *, corpus: str, seq_len: int,
                 n_windows: int, layer_stride: int, act_root: Path, sweep_path: Callable[[str], Path],
                 extra_src: Iterable[int] = (), extra_tgt: Iterable[int] = ()) -> HarvestedPair:
    """Harvest the studied blocks of both models over the same windows, one model loaded at a
    time, into bfloat16 activation caches under `act_root` (reused when complete); each
    harvest is a sweep row in `sweep_path(name)`, so a finished one is not redone."""
    import gc
    import time

    from resa_utils.core.sweep import config_key, run_sweep
    from resa_utils.lm.activations import ActivationCache, resid_hook
    from resa_utils.lm.models import load_model, load_tokenizer, model_n_layers

    tok_s, tok_t = load_tokenizer(src), load_tokenizer(tgt)
    if tok_s is None or tok_t is None:  # not converted yet: loading converts and caches them
        tok_s, tok_t = tok_s or load_model(src).tokenizer, tok_t or load_model(tgt).tokenizer
    n_s, n_t = model_n_layers(src), model_n_layers(tgt)
    pw = paired_windows(texts, tok_s, tok_t, seq_len, n_windows, mode)
    layers_s, layers_t = studied_layers(n_s, layer_stride, extra_src), studied_layers(n_t, layer_stride, extra_tgt)
    key = config_key({"src": src, "tgt": tgt, "mode": mode, "corpus": corpus, "seq_len": seq_len, "n": n_windows,
                      "ls": layers_s, "lt": layers_t, "dtype": "bfloat16", "pairs": 2,
                      "positions": 1})  # pairs 2: EOS separators left out; positions 1: shards record each row's position verdict
    speeds, caches = {}, {}
    for role, name, ids, layers in (("source", src, pw.source_ids, layers_s), ("target", tgt, pw.target_ids, layers_t)):
        folder = act_root / f"{name.replace('/', '--')}_{key}"

        def row(_c, name=name, ids=ids, layers=layers, folder=folder):
            if ActivationCache.is_complete(folder):  # reused from an earlier run: nothing measured here
                return {"seconds": float("nan"), "tokens/s": float("nan"), "params": float("nan"), "reused cache": True}
            lm = load_model(name)
            t0 = time.perf_counter()
            ActivationCache.build(folder, lm, ids, [resid_hook(l) for l in layers], dtype=torch.bfloat16)
            s = time.perf_counter() - t0
            return {"seconds": s, "tokens/s": ids.numel() / s, "params": sum(p.numel() for p in lm.model.parameters())}

        def done(_r, folder=folder):
            return ActivationCache.is_complete(folder)

        speeds[name] = run_sweep(sweep_path(f"harvest_{role}_{key}"), [{"model": name, "key": key}], row,
                                 desc=f"harvest {name}", valid=done).iloc[0].to_dict()
        caches[role] = ActivationCache(folder)
        gc.collect()  # the model is gone before the next one loads
    return HarvestedPair(pw, layers_s, layers_t, n_s, n_t, key, caches["source"], caches["target"], speeds)


# --------------------------------------------------------------------------- maps of a pair


@dataclass
class PairMaps:
    """Every studied layer pair's map scores (`table`, with `matched` marking each source block's
    nearest-relative-depth target block) and the fitted maps kept (`maps[(s, t)]`)."""

    table: "pd.DataFrame"
    maps: dict
    pairs: int = 0
    """paired positions of the harvest"""
    content_pairs: int = 0
    """of those, the ones the content-row rule keeps (`HarvestedPair.content_mask`): the maps' rows"""
    window_sums: dict | None = None
    """per layer pair: the test windows' (SSE, SST) sums behind its R² (`window_r2`)"""

    def depth_gap_interval(self, n_boot: int, seed: int, level: float = 0.95) -> dict:
        """The depth gap (`depth_gap` of `best_target_blocks`) with a bootstrap interval over test
        windows (the same resample for every layer pair), and how often each source block's best
        target block is its matched one."""
        import numpy as np

        if not self.window_sums:
            raise ValueError("no test-window sums: fit the maps with fit_pair_maps")
        df = self.table
        n_w = len(next(iter(self.window_sums.values()))[0])
        gen = np.random.default_rng(seed)
        gaps, same = [], []
        for _ in range(n_boot):
            idx = gen.integers(0, n_w, n_w)
            r2 = [window_r2(*self.window_sums[(s, t)], idx) for s, t in zip(df.source_layer, df.target_layer)]
            best = best_target_blocks(df.assign(r2=r2))
            gaps.append(depth_gap(best))
            same.append(float(best.matched.mean()))
        lo, hi = np.percentile(gaps, [50 * (1 - level), 50 * (1 + level)])
        return {"gap": depth_gap(best_target_blocks(df)), "low": float(lo), "high": float(hi),
                "best is matched": float(np.mean(same)), "n_boot": n_boot, "test windows": n_w}


def fit_pair_maps(pair: HarvestedPair, name: str, *, lambdas: list[float], val_frac: float,
                  test_frac: float, seed: int, map_dir: Path, sweep_path: Callable[[str], Path],
                  keep: Iterable[tuple[int, int]] = (), rule: ContentRule = ContentRule()) -> PairMaps:
    """`fit_layer_maps` over a harvested pair (windows split by `window_splits`), the shuffled
    baseline at each source block's matched target block; one sweep row (`sweep_path('maps_<name>')`),
    with the maps in `keep` saved under `map_dir` (the row is redone if they are gone). Only the
    pairs `rule` keeps on both sides enter (`HarvestedPair.content_mask`: training, validation,
    test and the shuffled baseline alike); the rule is in the sweep config and the maps' file
    names, so maps fitted under another rule are never reused."""
    import pandas as pd

    from resa_utils.core.sweep import config_key, run_sweep
    from resa_utils.lm.activations import resid_hook

    keep = list(keep)
    splits = window_splits(pair.pw.source_ids.shape[0], val_frac, test_frac, seed)
    content_rule = asdict(rule)
    fit_key = config_key({"pair": name, "key": pair.key, "lambdas": lambdas, "val_frac": val_frac,
                          "test_frac": test_frac, "seed": seed, "content_rule": content_rule,
                          "stats": 2})  # stats 2: per-dimension R², test-window sums, token-identity baseline

    def map_path(s: int, t: int) -> Path:
        return map_dir / f"{name}_{fit_key}_{s}_{t}.safetensors"

    matched = {(s, matched_layer(s, pair.n_s, pair.layers_t, pair.n_t)) for s in pair.layers_s}

    def row(_c):
        use = pair.content_mask(rule)
        rows, maps = fit_layer_maps(lambda l: pair.cache_s.load(resid_hook(l), verify=False),
                                    lambda l: pair.cache_t.load(resid_hook(l), verify=False),
                                    pair.pw, pair.layers_s, pair.layers_t, pair.n_s, pair.n_t, lambdas,
                                    splits, keep=set(keep), shuffled=matched, seed=seed, rows_P=use,
                                    tokens_P=pair.pw.target_tokens())
        for (s, t), m in maps.items():
            m.save(map_path(s, t))
        return {"rows": rows, "pairs": int(use.numel()), "content_pairs": int(use.sum())}

    def has_maps(_r) -> bool:
        return all(map_path(s, t).exists() for s, t in keep)

    out = run_sweep(sweep_path(f"maps_{name}"), [{"fit": fit_key, "content_rule": content_rule}], row,
                    desc=f"maps {name}", valid=has_maps).iloc[0]
    df = pd.DataFrame(out["rows"])
    df["matched"] = [(s, t) in matched for s, t in zip(df.source_layer, df.target_layer)]
    sums = {(s, t): (a, b) for s, t, a, b in zip(df.source_layer, df.target_layer, df.sse_w, df.sst_w)}
    return PairMaps(df.drop(columns=["sse_w", "sst_w"]), {(s, t): AffineMap.load(map_path(s, t)) for s, t in keep},
                    int(out["pairs"]), int(out["content_pairs"]), sums)


def best_target_blocks(maps_df: "pd.DataFrame") -> "pd.DataFrame":
    """Each source block's row with the highest held-out R² (its best target block)."""
    return maps_df.loc[maps_df.groupby("source_layer").r2.idxmax()]


def depth_gap(best_df: "pd.DataFrame") -> float:
    """Mean |relative depth of the best target block − relative depth of its source block|."""
    return float((best_df.target_depth - best_df.source_depth).abs().mean())


def over_block0(maps_df: "pd.DataFrame") -> "pd.DataFrame":
    """The matched rows (one per source block, by source block) with `r2 over block 0`: the gain
    over the map from source block 0 (next to the embeddings: a token-identity baseline) to the
    same target block."""
    tok0 = maps_df[maps_df.source_layer == 0].set_index("target_layer").r2
    m = maps_df[maps_df.matched].sort_values("source_layer").copy()
    m["r2 over block 0"] = m.r2 - m.target_layer.map(tok0)
    if "token_r2" in m:
        m["r2 over tokens"] = m.r2 - m.token_r2
    return m


def matched_r2_mean(matched_df: "pd.DataFrame", col: str = "r2") -> float:
    """The mean of `col` over the matched rows of source blocks > 0 (block 0 sits next to the
    embeddings): the one matched-R² mean the claim, the record and the text all use."""
    return float(matched_df[matched_df.source_layer > 0][col].mean())


# --------------------------------------------------------------------------- vectors carried across


def bias_name(c: float) -> str:
    """The name of `A v + c p` (c = 0 is `A v`, c = 1 the paper's `A v + p`)."""
    return "A v" if c == 0 else "A v + p" if c == 1 else f"A v + {c:g} p"


def carried_vectors(native: dict[str, torch.Tensor], source: dict[str, torch.Tensor], amap: AffineMap,
                    seed: int, bias_scales: Iterable[float] = (), adamw: AffineMap | None = None,
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """Per behaviour (in `native`'s order, i-th seeded `seed + i`): the target's own vector, the
    source vector carried across as `Av + p` (the paper) and `Av` (bias-free), a random
    direction of the native norm (the control), `A v + c p` for each other c of `bias_scales`,
    and with `adamw` the same vector carried by that map ('AdamW: A v + p', 'AdamW: A v')."""
    from resa_utils.methods.steering import random_like

    out = {}
    for i, name in enumerate(native):
        v = source[name]
        Av = v @ amap.A_TS.T
        out[name] = {"native": native[name], "A v + p": Av + amap.p_T, "A v": Av,
                     "random": random_like(native[name], seed + i)}
        out[name].update({bias_name(c): Av + c * amap.p_T for c in bias_scales if c not in (0, 1)})
        if adamw is not None:
            out[name].update({"AdamW: A v + p": adamw(v[None])[0], "AdamW: A v": v @ adamw.A_TS.T})
    return out


def bias_table(source: dict[str, torch.Tensor], maps: dict[str, AffineMap], scales: Iterable[float],
               native: dict[str, torch.Tensor]) -> "pd.DataFrame":
    """One row per (behaviour, map, c): ‖p‖, ‖A v‖, ‖A v + c p‖ and the cosines of `A v + c p`
    with p, with `A v` and with the native vector: how much of the carried vector is the bias."""
    import pandas as pd

    def cos(a, b):
        return float(torch.cosine_similarity(a, b, dim=0)) if a.norm() > 0 and b.norm() > 0 else float("nan")

    rows = []
    for name, v in source.items():
        for label, m in maps.items():
            Av = v @ m.A_TS.T
            for c in scales:
                w = Av + c * m.p_T
                rows.append({"behaviour": name, "map": label, "c": c, "|p|": float(m.p_T.norm()), "|A v|": float(Av.norm()),
                             "|A v + c p|": float(w.norm()), "cos(A v + c p, p)": cos(w, m.p_T),
                             "cos(A v + c p, A v)": cos(w, Av), "cos(A v + c p, native)": cos(w, native[name])})
    return pd.DataFrame(rows)


def null_vectors(caa_source: dict, amap: AffineMap, native: dict[str, torch.Tensor], n_random: int,
                 n_shuffled: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per behaviour, the null vectors its slopes are placed among (`steering.null_percentiles`):
    `n_random` random directions, `n_shuffled` label-shuffled source CAA vectors carried across
    as `A v` (`steering.label_shuffled_vectors`), and every other behaviour's `A v` (the
    cross-behaviour matrix). Named `null random i`, `null shuffled i`, `null cross <behaviour>`."""
    from resa_utils.methods.steering import label_shuffled_vectors, random_like

    out = {}
    for i, name in enumerate(native):
        d = {f"null random {k}": random_like(native[name], 1000 * (seed + 1) + 100 * i + k) for k in range(n_random)}
        d.update({f"null shuffled {k}": v @ amap.A_TS.T
                  for k, v in enumerate(label_shuffled_vectors(caa_source[name], n_shuffled, seed + i))})
        d.update({f"null cross {other}": caa_source[other].v_D @ amap.A_TS.T for other in native if other != name})
        out[name] = d
    return out


def fit_adamw(x_NS: torch.Tensor, y_NT: torch.Tensor, *, lr: float, batch_rows: int, steps: int, seed: int,
              weight_decay: float = 0.01) -> tuple[AffineMap, dict]:
    """The paper's fit: `nn.Linear` (PyTorch's default initialisation) trained by AdamW on the mean
    squared error for `steps` steps of `batch_rows` rows, reshuffling at each pass over the rows.
    Each Adam step moves an entry by about `lr` whatever the batch, so lr × steps bounds how far the
    bias can leave its initial value. Returns the map and what the budget did: steps, passes, the
    final loss, ‖p‖ at the start and end, and the largest change of any weight or bias entry."""
    import torch.nn.functional as F

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lin = torch.nn.Linear(x_NS.shape[1], y_NT.shape[1])
    w0, p0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    done, loss, perm, at = 0, torch.tensor(float("nan")), torch.randperm(len(x_NS), generator=g), 0
    while done < steps:
        if at >= len(x_NS):
            perm, at = torch.randperm(len(x_NS), generator=g), 0
        idx = perm[at:at + batch_rows]
        at += batch_rows
        loss = F.mse_loss(lin(x_NS[idx].float()), y_NT[idx].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
    A, p = lin.weight.detach().clone(), lin.bias.detach().clone()
    moved = max(float((A - w0).abs().max()), float((p - p0).abs().max()))
    return AffineMap(A, p, float("nan")), {"steps": done, "passes": done * batch_rows / len(x_NS), "final loss": float(loss.detach()),
                                           "|p| at start": float(p0.norm()), "|p|": float(p.norm()), "largest change": moved}


def adamw_pair_map(pair: HarvestedPair, s: int, t: int, *, lr: float, batch_rows: int, steps: int,
                   val_frac: float, test_frac: float, seed: int, map_dir: Path, sweep_path: Callable[[str], Path],
                   rule: ContentRule = ContentRule()) -> tuple[AffineMap, dict]:
    """`fit_adamw` on block s → block t of a harvested pair, on the same training rows as the ridge
    maps (`window_splits`, the content rule), `steps` steps of `batch_rows` paired rows; scored on
    the same test rows. One sweep row (`sweep_path('adamw')`), the map saved under `map_dir`."""
    from resa_utils.core.sweep import config_key, run_sweep
    from resa_utils.lm.activations import resid_hook

    n_win = pair.pw.source_ids.shape[0]
    cfg = {"key": pair.key, "s": s, "t": t, "lr": lr, "batch_rows": batch_rows, "steps": steps, "val_frac": val_frac,
           "test_frac": test_frac, "seed": seed, "content_rule": asdict(rule)}
    path = map_dir / f"adamw_{config_key(cfg)}.safetensors"

    def row(_c):
        part = window_splits(n_win, val_frac, test_frac, seed)[pair.pw.window]
        use = pair.content_mask(rule)
        x = pair.cache_s.load(resid_hook(s), verify=False)[pair.pw.source_rows]
        y = pair.cache_t.load(resid_hook(t), verify=False)[pair.pw.target_rows]
        tr, te = (part == 0) & use, (part == 2) & use
        m, info = fit_adamw(x[tr], y[tr], lr=lr, batch_rows=batch_rows, steps=steps, seed=seed)
        m.save(path)
        pred = m(x[te])
        return {**info, "r2": r2_score(pred, y[te]), "cosine": mean_cosine(pred, y[te]), "batch rows": batch_rows}

    out = run_sweep(sweep_path("adamw"), [cfg], row, desc="AdamW map", valid=lambda _r: path.exists()).iloc[0]
    info = {k: out[k] for k in ("steps", "passes", "final loss", "|p| at start", "|p|", "largest change", "r2", "cosine", "batch rows")}
    return AffineMap.load(path), info


def vector_cosines(vectors: dict[str, dict[str, torch.Tensor]], scale: dict[str, float]) -> "pd.DataFrame":
    """One row per behaviour: the cosine of each other vector with the native one, and the mean
    last-token norm (the unit of α)."""
    import pandas as pd

    return pd.DataFrame([{"behaviour": n, **{f"cos(native, {k})": float(torch.cosine_similarity(v["native"], v[k], dim=0))
                                             for k in v if k != "native"}, "mean norm": scale[n]}
                         for n, v in vectors.items()])


# --------------------------------------------------------------------------- ours vs the paper


def affine_claim(matched_df: "pd.DataFrame", claim: str, pair_name: str, paper: str) -> dict:
    """Paper-comparison row for affine relatedness: 'yes' when the mean matched R² over source
    blocks > 0 is at least 0.5 and every such block beats its shuffled baseline by 0.1."""
    deep = matched_df[matched_df.source_layer > 0]  # block 0 sits next to the token embeddings: left out of the mean
    beats = bool((deep.r2 > deep.shuffled_r2 + 0.1).all())
    tok = f"; token identity {deep.token_r2.mean():.2f}" if "token_r2" in deep else ""
    dim = f"; per-dimension R² {deep.r2_dim.mean():.2f}" if "r2_dim" in deep else ""
    return {"claim": claim, "metric": "held-out R² at matched relative depth, mean over source blocks > 0 (shuffled pairs; gain over the block-0 map)",
            "paper": paper, "ours": f"{matched_r2_mean(matched_df):.2f} (shuffled {deep.shuffled_r2.mean():.2f}; "
                                   f"{deep['r2 over block 0'].mean():+.2f} over block 0{tok}{dim})",
            "held": "yes" if deep.r2.mean() >= 0.5 and beats else "partly" if beats else "no",
            "note": f"'yes' = mean R² >= 0.5 and every block beats its shuffled baseline by 0.1; the block-0 map and the "
                    f"token-identity baseline (each token's mean training state) are the harder baselines; R² is pooled over "
                    f"dimensions, the per-dimension R² is its unweighted mean over dimensions; {pair_name}"}


def depth_claim(gap: dict, paper_layers: str = "") -> dict:
    """Paper-comparison row for 'best target block at similar relative depth' from
    `PairMaps.depth_gap_interval`: 'yes' when the mean depth gap and its interval's upper end
    are at most 0.15, 'partly' when the gap is at most 0.3."""
    return {"claim": "the best-mapped target block lies at a similar relative depth",
            "metric": "mean |relative depth gap| of each source block's best target block [95% bootstrap over test windows]",
            "paper": paper_layers or "layers of similar relative depth",
            "ours": f"{gap['gap']:.2f} [{gap['low']:.2f}, {gap['high']:.2f}]",
            "held": "yes" if gap["gap"] <= 0.15 and gap["high"] <= 0.15 else "partly" if gap["gap"] <= 0.3 else "no",
            "note": f"'yes' = gap and interval's upper end at most 0.15; the best block is the matched one in "
                    f"{gap['best is matched']:.0%} of resamples (a flat R² surface moves it); {gap['test windows']} test windows"}


def paper_layers_text(layer_s: int, n_s: int, layer_t: int, n_t: int) -> str:
    """The paper's layer pair as blocks of each model with their relative depths."""
    return (f"blocks {layer_s} of {n_s} -> {layer_t} of {n_t} (relative depth {relative_depth(layer_s, n_s):.2f} -> "
            f"{relative_depth(layer_t, n_t):.2f}: not equal)")


TRANSFER_R = 0.73
"""The lower end of the paper's band of per-task mean r."""
NULL_PERCENTILE = 95.0
"""A slope 'steers beyond the null' above this percentile of the null slopes."""


def transfer_claim(summary: "pd.DataFrame", null_pct: "pd.DataFrame", behaviour: str, vector: str, claim: str,
                   paper: str) -> dict:
    """Paper-comparison row for one carried vector on one behaviour, from `steering.paper_summary`
    (the paper's per-α r across prompts and per-sample MSE against the native vector) and
    `steering.null_percentiles` (its slope among the null's). 'yes' when the paper's mean r is at
    least 0.73, the slope is above the null's 95th percentile and at least half the native slope;
    'partly' when only the slope conditions hold; 'no' otherwise. The r alone passes random
    directions too (prompts differ more than steering moves them), hence the slope conditions."""
    ps = summary.set_index(["behaviour", "vector"])
    nu = null_pct.set_index(["behaviour", "vector"])
    r, q = ps.loc[(behaviour, vector)], nu.loc[(behaviour, vector)]
    rr = ps.loc[(behaviour, "random")] if (behaviour, "random") in ps.index else None
    strong = bool(q["percentile"] > NULL_PERCENTILE and q["slope ratio"] >= 0.5)
    rand = (f"; random direction: r {rr['r mean']:.2f}, MSE {rr['mse mean']:.2f}" if rr is not None else "")
    return {"claim": claim, "metric": "per-α Pearson r across held-out prompts vs native, mean over α [min, max]; MSE; "
                                      "slope ratio and percentile among null slopes",
            "paper": paper,
            "ours": f"r {r['r mean']:.2f} [{r['r min']:.2f}, {r['r max']:.2f}], MSE {r['mse mean']:.2f}; slope ratio "
                    f"{q['slope ratio']:.2f}, percentile {q['percentile']:.0f} of {int(q['null n'])} null slopes",
            "held": "yes" if r["r mean"] >= TRANSFER_R and strong else "partly" if strong else "no",
            "note": f"'yes' = mean r >= {TRANSFER_R} and slope above the null's {NULL_PERCENTILE:.0f}th percentile and at "
                    f"least half the native slope ('partly': the slope conditions only){rand}"}


def random_control_claim(null_pct: "pd.DataFrame") -> dict:
    """Paper-comparison row for the random control: 'yes' when the random directions' slopes (the
    5th to 95th percentile of the null's random group, not of the shuffled or cross-behaviour
    vectors) stay within a quarter of the native slope, on average."""
    nat = null_pct[null_pct.vector == "native"]
    reach = float((nat[["null p5 (random)", "null p95 (random)"]].abs().max(axis=1) / nat.slope.abs().clip(lower=1e-9)).mean())
    return {"claim": "random directions of equal norm do not steer the behaviour",
            "metric": "largest |5th or 95th percentile| of the null slopes / |native slope| (mean over behaviours)",
            "paper": "control", "ours": f"{reach:.2f}", "held": "yes" if reach <= 0.25 else "partly" if reach <= 0.5 else "no",
            "note": "'yes' = at most 0.25; the random directions of the null only (its label-shuffled and "
                    "other-behaviour vectors are not random controls)"}


def adamw_claim(info: dict, bias_df: "pd.DataFrame", null_pct: "pd.DataFrame", behaviours: list[str]) -> dict:
    """Row for the bias check: the map fitted as in the paper (AdamW, `info` from `adamw_pair_map`)
    keeps p near its initial value, so its `A v + p` points along its `A v`. 'yes' when the mean
    cosine of AdamW's `A v + p` with its `A v` (c = 1, `bias_table`) is at least 0.9."""
    b = bias_df[(bias_df["map"] == "AdamW") & (bias_df.c == 1) & bias_df.behaviour.isin(behaviours)]
    ridge = bias_df[(bias_df["map"] == "ridge") & (bias_df.c == 1) & bias_df.behaviour.isin(behaviours)]
    cos = float(b["cos(A v + c p, A v)"].mean())
    q = null_pct[(null_pct.vector == "AdamW: A v + p") & null_pct.behaviour.isin(behaviours)]
    return {"claim": "(check) fitted as in the paper (AdamW), the bias stays small and A v + p keeps the direction of A v",
            "metric": "cos(A v + p, A v) of the AdamW map, mean over behaviours (ridge map beside it)",
            "paper": "AdamW lr 1e-4, about 2.2k steps", "ours": f"{cos:.2f} (ridge {ridge['cos(A v + c p, A v)'].mean():.2f})",
            "held": "yes" if cos >= 0.9 else "partly" if cos >= 0.5 else "no",
            "note": f"'yes' = at least 0.9; {int(info['steps'])} AdamW steps of {int(info['batch rows'])} rows ({info['passes']:.0f} passes), |p| "
                    f"{info['|p| at start']:.2f} -> {info['|p|']:.2f} (ridge {ridge['|p|'].mean():.1f}), largest entry change "
                    f"{info['largest change']:.3f}, held-out R² {info['r2']:.2f}; its A v + p slope ratio "
                    f"{q['slope ratio'].mean():.2f} (mean), percentile {q['percentile'].mean():.0f}"}


def source_preconditions(source_slopes: "pd.DataFrame", behaviours: list[str], threshold: float,
                         gates: dict[str, list[int]], model: str) -> list[dict]:
    """Preconditions rows: each behaviour's native vector must steer the source model itself (the
    least-squares slope of its dose-response there, `steering.slopes`, at least `threshold`);
    each row gates that behaviour's transfer claims (`gates[behaviour]`, 1-based claim numbers)."""
    sl = source_slopes[source_slopes.vector == "native"].set_index("behaviour").slope
    return [{"precondition": f"{n}: the source vector steers {model} itself",
             "measure": "slope of Logit(y+) - Logit(y-) per unit α in the source model", "threshold": threshold,
             "value": round(float(sl[n]), 3), "met": "yes" if float(sl[n]) >= threshold else "no",
             "gates": " ".join(str(g) for g in gates.get(n, []))} for n in behaviours]


def steering_claims(summary: "pd.DataFrame", null_pct: "pd.DataFrame", behaviours: list[str], first: int) -> tuple[list[dict], dict]:
    """The per-behaviour transfer rows (`A v + p`, the paper's, then `A v`) and, per behaviour, the
    1-based numbers those rows will have when they start at claim number `first`."""
    rows, gates = [], {}
    for n in behaviours:
        gates[n] = [first + len(rows), first + len(rows) + 1]
        rows.append(transfer_claim(summary, null_pct, n, "A v + p", f"{n}: the transferred A v + p steers like the native vector",
                                   "mean r 0.73 to 0.98 per task"))
        rows.append(transfer_claim(summary, null_pct, n, "A v", f"{n}: (not in the paper) the bias-free A v steers like the native vector",
                                   "not measured"))
    return rows, gates
