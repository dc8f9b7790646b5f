"""Resumable sweeps: each finished configuration's result row is appended to a JSONL file at
once, so a killed notebook reruns only what had not finished. A finished sweep leaves the file
holding exactly its own rows."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from resa_utils.core.atomic import atomic_path
from resa_utils.core.progress import PROGRESS_INTERVAL_S, tqdm


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
              desc: str = "sweep", valid: Callable[[dict], bool] | None = None,
              workers: int = 1) -> pd.DataFrame:
    """Run `fn(config)` for each config not already in `path`; return every row as a DataFrame
    (config columns + result columns), in `configs` order. A stored row for which
    `valid(row)` is False (say, its SAE weights are gone from the cache) is computed again; a
    stored row of any other config is neither checked nor kept.

    `workers > 1` runs configs in that many processes, each with its share of the CPU threads
    (for many small jobs that cannot use every core alone); `fn` must then be a module-level
    function (picklable), and rows are stored as they finish."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [config_key(c) for c in configs]
    wanted = set(keys)
    # only the rows of these configs are read, so `valid` never sees another layout's row (say, a
    # committed earlier design's sweep that a run's staging starts from); the rest are compacted away
    done = {k: row for k, row in read_rows(path).items() if k in wanted and (valid is None or valid(row))}
    _end_with_newline(path)
    todo = [(k, c) for k, c in zip(keys, configs) if k not in done]
    results = _in_workers(fn, todo, workers) if workers > 1 and len(todo) > 1 else \
        ((k, c, fn(c)) for k, c in todo)
    for key, config, out in tqdm(results, total=len(todo), desc=desc, unit="run",
                                 mininterval=PROGRESS_INTERVAL_S):
        row = {**config, **out, "_key": key}
        line = json.dumps(row, sort_keys=True, default=str)
        with open(path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        done[key] = row
    _compact(path, [done[k] for k in keys])
    return pd.DataFrame([done[k] for k in keys]).drop(columns="_key", errors="ignore")


def _in_workers(fn: Callable[[dict], dict], todo: list[tuple[str, dict]],
                workers: int) -> Iterator[tuple[str, dict, dict]]:
    """`(key, config, fn(config))` as each finishes, from `workers` spawned processes."""
    try:
        pickle.dumps(fn)
    except Exception as e:
        raise TypeError(f"run_sweep(workers={workers}) needs a module-level function, not {fn!r}: "
                        "move it into a module or use workers=1") from e
    cores = os.cpu_count() or 1
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(max(1, cores // workers),))
    try:
        futures = {pool.submit(_with_threads, fn, c, n): (k, c)
                   for (k, c), n in zip(todo, task_threads(len(todo), workers, cores))}
        for f in as_completed(futures):
            k, c = futures[f]
            yield k, c, f.result()
    except BaseException:
        # Ctrl-C (or a failed job): stop the running jobs now. JupyterLab's interrupt reaches the
        # kernel only, and shutdown() would wait for them (an SAE: half an hour), then leave them
        # running as orphans if the kernel is killed meanwhile
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def task_threads(n_tasks: int, workers: int, cores: int) -> list[int]:
    """CPU threads for each of `n_tasks` run in order by `workers` processes: a core share per
    worker, except that the last round's tasks, when fewer than `workers` remain, share all the
    cores (one lone job at 1 of 2 threads would leave half the machine idle)."""
    full = n_tasks - n_tasks % workers
    tail = n_tasks - full
    return [max(1, cores // workers) if i < full else max(1, cores // tail) for i in range(n_tasks)]


def _with_threads(fn: Callable[[dict], dict], config: dict, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    return fn(config)


def _worker_init(threads: int) -> None:
    import torch

    from resa_utils.core.perf import tune_allocator

    torch.set_num_threads(threads)
    tune_allocator()


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
