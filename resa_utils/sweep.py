"""Resumable sweeps: each finished configuration's result row is appended to a JSONL file at
once, so a killed notebook reruns only what had not finished. A finished sweep leaves the file
holding exactly its own rows."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from .atomic import atomic_path
from .progress import PROGRESS_INTERVAL_S, tqdm


def config_key(config: dict) -> str:
    """Stable short hash of a JSON-serialisable configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_rows(path: str | Path) -> dict[str, dict]:
    """Finished rows by key; a torn last line (killed mid-write) is ignored."""
    rows: dict[str, dict] = {}
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["_key"]] = row
    return rows


def run_sweep(path: str | Path, configs: list[dict], fn: Callable[[dict], dict],
              desc: str = "sweep", valid: Callable[[dict], bool] | None = None) -> pd.DataFrame:
    """Run `fn(config)` for each config not already in `path`; return every row as a DataFrame
    (config columns + result columns), in `configs` order. A stored row for which
    `valid(row)` is False (say, its SAE weights are gone from the cache) is computed again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_rows(path)
    if valid is not None:
        done = {k: row for k, row in done.items() if valid(row)}
    _end_with_newline(path)
    keys = [config_key(c) for c in configs]
    todo = [(k, c) for k, c in zip(keys, configs) if k not in done]
    for key, config in tqdm(todo, desc=desc, unit="run", mininterval=PROGRESS_INTERVAL_S):
        row = {**config, **fn(config), "_key": key}
        line = json.dumps(row, sort_keys=True, default=str)
        with open(path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        done[key] = row
    _compact(path, [done[k] for k in keys])
    return pd.DataFrame([done[k] for k in keys]).drop(columns="_key", errors="ignore")


def _compact(path: Path, rows: list[dict]) -> None:
    """Rewrite the file with exactly this sweep's rows (stale or superseded rows go), atomically."""
    text = "".join(json.dumps(row, sort_keys=True, default=str) + "\n" for row in rows)
    if path.read_text() != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text)


def _end_with_newline(path: Path) -> None:
    """After a write torn by a kill, start the next row on a fresh line."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
