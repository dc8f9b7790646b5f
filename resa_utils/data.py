"""Offline text: a default corpus present on every Python install, local text/JSONL files,
and `datasets` when a hub is reachable; all chunked into fixed-length token windows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

DEFAULT_CORPUS = "pydoc"


def corpus_names() -> list[str]:
    """The corpora `load_texts` knows by name (besides local paths and `datasets` names)."""
    return [DEFAULT_CORPUS]


def default_corpus_texts() -> list[str]:
    """English prose of Python's bundled documentation (`pydoc_data.topics`), ~465k chars.

    Ships with CPython on every machine, so notebooks run with no download. One entry per topic,
    sorted by topic name so the order never changes between Python builds of one version.
    """
    from pydoc_data.topics import topics

    return [topics[key].strip() for key in sorted(topics) if topics[key].strip()]


def load_texts(source: str = DEFAULT_CORPUS, text_field: str = "text", split: str = "train",
               max_docs: int | None = None) -> list[str]:
    """Documents from `source`:

    - ``"pydoc"``: the bundled default corpus;
    - a ``.txt`` file (documents separated by blank lines) or ``.jsonl`` file (field `text_field`);
    - a folder: every .txt / .jsonl file in it, sorted;
    - anything else: a `datasets` name (needs network or a local datasets cache).
    """
    if source == DEFAULT_CORPUS:
        texts = default_corpus_texts()
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl"))
            texts = [t for f in files for t in _read_file(f, text_field)]
        elif path.exists():
            texts = _read_file(path, text_field)
        else:
            texts = _load_hf_dataset(source, text_field, split, max_docs)
    texts = [t for t in texts if t.strip()]
    if max_docs is not None:
        texts = texts[:max_docs]
    if not texts:
        raise ValueError(
            f"corpus {source!r} is empty: point `corpus` at a non-empty .txt/.jsonl file or "
            f"folder, or use the default {DEFAULT_CORPUS!r}"
        )
    return texts


def _read_file(path: Path, text_field: str) -> list[str]:
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if text_field not in row:
                raise ValueError(
                    f"{path}:{n} has no field {text_field!r}: set `text_field` to one of {list(row)}"
                )
            out.append(str(row[text_field]))
        return out
    return path.read_text().split("\n\n")


def _load_hf_dataset(name: str, text_field: str, split: str, max_docs: int | None) -> list[str]:
    try:
        import datasets
    except ImportError as err:
        raise ValueError(
            f"corpus {name!r} is neither 'pydoc' nor an existing file/folder, and `datasets` is "
            "not installed to fetch it from a hub"
        ) from err
    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as err:  # network or name errors: say what to do instead
        raise ValueError(
            f"could not load dataset {name!r} ({type(err).__name__}: {err}). Offline? Use "
            "corpus='pydoc' or a local .txt/.jsonl path"
        ) from err
    out = []
    for row in ds:
        out.append(str(row[text_field]))
        if max_docs is not None and len(out) >= max_docs:
            break
    return out


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
