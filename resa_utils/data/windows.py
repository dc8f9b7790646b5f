"""Offline text: a default corpus present on every Python install, local text/JSONL files,
and `datasets` when a hub is reachable; all chunked into fixed-length token windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch


def token_windows(texts: Iterable[str], tokenizer, seq_len: int, n_windows: int | None = None,
                  add_bos: bool = True) -> torch.Tensor:
    """Concatenate the tokenised documents (EOS between) and cut into `[N, seq_len]` windows.

    With `add_bos`, each window starts with the tokenizer's BOS and holds `seq_len - 1` text
    tokens, as the models saw text in training. Windows never straddle past the end: the tail
    shorter than a window is dropped.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is too short: use at least 2 tokens per window")
    bos = tokenizer.bos_token_id if add_bos else None
    if add_bos and bos is None:
        raise ValueError("tokenizer has no BOS token: pass add_bos=False")
    body = seq_len - (1 if add_bos else 0)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    need = None if n_windows is None else n_windows * body
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if need is not None and len(ids) >= need:
            break
    n = len(ids) // body if n_windows is None else min(n_windows, len(ids) // body)
    if n == 0:
        raise ValueError(
            f"corpus has {len(ids)} tokens, fewer than one window of {body}: lower `seq_len` "
            "or use a bigger corpus"
        )
    out = torch.tensor(ids[: n * body], dtype=torch.long).view(n, body)
    if add_bos:
        out = torch.cat([torch.full((n, 1), bos, dtype=torch.long), out], dim=1)
    return out


# --------------------------------------------------------------------------- document windows


@dataclass
class Windows:
    """Token windows with per-token provenance: `[N, T]` tensors."""

    ids: torch.Tensor
    """Token ids; each window starts with BOS."""
    doc: torch.Tensor
    """Index into `doc_ids` of each token's document; -1 for BOS and separators."""
    pos: torch.Tensor
    """Each token's position in its document (0 = its first token); -1 for BOS and separators."""
    sentence_start: torch.Tensor
    """True at the first token of a sentence."""
    pos_tag: torch.Tensor
    """Index into `corpora.POS_CLASSES` of the word a token belongs to; -1 where untagged."""
    doc_ids: list[str]

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _doc_tokens(doc, tokenizer) -> tuple[list[int], list[bool], list[int]]:
    """Token ids of one document, whether each starts a sentence, and its coarse POS tag."""
    import bisect

    from resa_utils.data.corpora import POS_CLASSES, pos_class

    enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    starts = sorted(doc.sentence_starts)
    word_starts = [a for a, _, _ in doc.words]
    flags, tags, s_i = [], [], 0
    for a, b in offsets:
        while s_i < len(starts) and starts[s_i] < a:
            s_i += 1
        flags.append(s_i < len(starts) and starts[s_i] < max(b, a + 1))
        if flags[-1]:
            s_i += 1
        tag = -1
        if doc.words and b > a:
            j = bisect.bisect_right(word_starts, b - 1) - 1  # the word holding the token's last char
            if j >= 0 and doc.words[j][0] <= b - 1 < doc.words[j][1]:
                tag = POS_CLASSES.index(pos_class(doc.words[j][2]))
        tags.append(tag)
    return ids, flags, tags


def document_windows(docs, tokenizer, seq_len: int, n_windows: int | None = None,
                     mode: str = "pack") -> Windows:
    """Cut documents (`corpora.Document`s) into `[N, seq_len]` windows that start with BOS.

    `mode="pack"`: documents follow each other with EOS between them, so a window may hold the
    end of one document and the start of the next (attention crosses the EOS, as in common SAE
    training); every token keeps its document and position. `mode="drop"`: each window holds
    one document only, and each document's tail shorter than a window is dropped.
    """
    if mode not in ("pack", "drop"):
        raise ValueError(f"mode={mode!r}: use 'pack' or 'drop'")
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is too short: use at least 2 tokens per window")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None:
        raise ValueError("tokenizer has no BOS token: document windows start with BOS")
    body = seq_len - 1
    rows: list[list[tuple[int, int, int, bool, int]]] = []
    stream: list[tuple[int, int, int, bool, int]] = []
    for d, doc in enumerate(docs):
        ids, flags, tags = _doc_tokens(doc, tokenizer)
        toks = [(t, d, p, f, g) for p, (t, f, g) in enumerate(zip(ids, flags, tags))]
        if mode == "drop":
            rows.extend(toks[i:i + body] for i in range(0, len(toks) - body + 1, body))
        else:
            stream.extend(toks + ([(eos, -1, -1, False, -1)] if eos is not None else []))
            while len(stream) >= body:
                rows.append(stream[:body])
                stream = stream[body:]
        if n_windows is not None and len(rows) >= n_windows:
            break
    rows = rows[:n_windows] if n_windows is not None else rows
    if not rows:
        raise ValueError(f"the documents hold fewer tokens than one window of {body}: lower "
                         "`seq_len` or use more documents")
    table = [[(bos, -1, -1, False, -1), *r] for r in rows]

    def as_tensor(k: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([[x[k] for x in r] for r in table], dtype=dtype)

    return Windows(ids=as_tensor(0, torch.long), doc=as_tensor(1, torch.long),
                   pos=as_tensor(2, torch.long), sentence_start=as_tensor(3, torch.bool),
                   pos_tag=as_tensor(4, torch.long), doc_ids=[doc.doc_id for doc in docs])


def split_by_document(docs: list, eval_frac: float, seed: int = 0) -> tuple[list, list]:
    """(train, held-out) documents: a stable hash of (seed, doc_id) puts about `eval_frac` of
    the documents in the held-out split, so no document is in both."""
    import hashlib

    if not 0 < eval_frac < 1:
        raise ValueError(f"eval_frac={eval_frac} must be in (0, 1)")
    train, held = [], []
    for doc in docs:
        h = int(hashlib.sha256(f"{seed}|{doc.doc_id}".encode()).hexdigest()[:8], 16) / 16**8
        (held if h < eval_frac else train).append(doc)
    return train, held


def train_eval_windows(docs: list, tokenizer, seq_len: int, train_tokens: int, eval_tokens: int,
                       eval_frac: float, seed: int = 0) -> tuple[Windows, Windows]:
    """Packed `(train, held-out)` windows: documents split by `split_by_document`, each side
    shuffled (seeds `seed`, `seed + 1`, so corpora mix), and cut into as many windows as hold
    `train_tokens` / `eval_tokens` tokens after BOS (fewer when the documents run out: check
    `len(w) * (seq_len - 1)`)."""
    import math
    import random

    train_docs, held_docs = split_by_document(docs, eval_frac, seed=seed)
    random.Random(seed).shuffle(train_docs)
    random.Random(seed + 1).shuffle(held_docs)
    body = seq_len - 1
    return (document_windows(train_docs, tokenizer, seq_len, n_windows=math.ceil(train_tokens / body)),
            document_windows(held_docs, tokenizer, seq_len, n_windows=math.ceil(eval_tokens / body)))
