"""Capture residual-stream / MLP-out activations with forward hooks, and keep them in a
resumable on-disk cache (safetensors shards + JSON manifest) that serves shuffled batches.

Hook names follow TransformerLens: ``blocks.{l}.hook_resid_post`` is decoder block l's output
(HF ``hidden_states[l + 1]``), ``blocks.{l}.hook_mlp_out`` is the output of block l's `mlp`
module (for Gemma 2/3 that is before the post-feedforward norm, unlike TransformerLens).
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from resa_utils.core.atomic import atomic_path, read_json, sha256_file, write_json
from resa_utils.core.progress import PROGRESS_INTERVAL_S, tqdm
from resa_utils.lm.content import (POSITION_KEY, ContentRule, LeftOut, _block_norms, _Variance,
                                   content_positions, norm_ok)

if TYPE_CHECKING:
    import pandas as pd

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|mlp_out)$")


@dataclass(frozen=True)
class HookPoint:
    layer: int
    kind: str  # "resid_post" or "mlp_out"

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.kind}"


def resid_hook(layer: int) -> str:
    return HookPoint(layer, "resid_post").name


def parse_hook(name: str, n_layers: int | None = None) -> HookPoint:
    """Parse and validate a hook name against the model's depth."""
    m = _HOOK_RE.match(str(name))
    if not m:
        raise ValueError(
            f"hook {name!r} is not understood: use 'blocks.<layer>.hook_resid_post' or "
            "'blocks.<layer>.hook_mlp_out'"
        )
    hp = HookPoint(int(m.group(1)), m.group(2))
    if n_layers is not None and not 0 <= hp.layer < n_layers:
        raise ValueError(
            f"layer {hp.layer} in hook {name!r} is out of range: the model has {n_layers} "
            f"layers, so use 0..{n_layers - 1}"
        )
    return hp


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks of a HF causal LM (Llama/Gemma/Qwen-style `model.layers`)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no `model.layers`: unsupported architecture")
    return layers


def _module_for(model: torch.nn.Module, hp: HookPoint) -> torch.nn.Module:
    block = decoder_layers(model)[hp.layer]
    return block if hp.kind == "resid_post" else block.mlp


def _first(out):
    return out[0] if isinstance(out, tuple) else out


class _StopForward(Exception):
    """Raised by a hook once the last needed layer has run, to skip the rest of the model."""


@torch.no_grad()
def run_with_cache(model: torch.nn.Module, input_ids_BT: torch.Tensor, hooks: list[str],
                   attention_mask_BT: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Run the model only as far as the deepest hook; return `{hook: acts_BTD}`."""
    n_layers = len(decoder_layers(model))
    points = [parse_hook(h, n_layers) for h in hooks]
    last = max(points, key=lambda p: (p.layer, p.kind == "resid_post"))
    cache: dict[str, torch.Tensor] = {}
    handles = []

    def make(hp: HookPoint):
        def hook(_mod, _inp, out):
            cache[hp.name] = _first(out).detach()
            if hp == last:
                raise _StopForward

        return hook

    for hp in points:
        handles.append(_module_for(model, hp).register_forward_hook(make(hp)))
    try:
        model(input_ids=input_ids_BT, attention_mask=attention_mask_BT, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return cache


@contextmanager
def splice(model: torch.nn.Module, hook: str, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Replace the output at `hook` by `fn(acts_BTD)` for every forward inside the block."""
    hp = parse_hook(hook, len(decoder_layers(model)))

    def replace(_mod, _inp, out):
        if isinstance(out, tuple):
            return (fn(out[0]),) + tuple(out[1:])
        return fn(out)

    handle = _module_for(model, hp).register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def token_mask(input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor | None,
               bos_id: int | None, drop_bos: bool) -> torch.Tensor:
    """Bool mask of the positions that enter the data: real (non-pad) tokens, minus the BOS
    at each row's first real position when `drop_bos`."""
    mask = (torch.ones_like(input_ids_BT, dtype=torch.bool) if attention_mask_BT is None
            else attention_mask_BT.bool())
    if drop_bos and bos_id is not None:
        first = mask.float().argmax(dim=1)
        rows = torch.arange(input_ids_BT.shape[0])
        is_bos = input_ids_BT[rows, first] == bos_id
        mask[rows[is_bos], first[is_bos]] = False
    return mask


def check_finite(acts: torch.Tensor, what: str) -> None:
    if not torch.isfinite(acts).all():
        bad = (~torch.isfinite(acts)).sum().item()
        raise ValueError(
            f"{bad} NaN/inf values in {what}: the model likely overflowed in its dtype; "
            "load it with dtype='float32', or drop the offending inputs"
        )


@torch.no_grad()
def harvest(lm, windows_NT: torch.Tensor, hooks: list[str], batch_size: int = 8,
            drop_bos: bool = True, attention_mask_NT: torch.Tensor | None = None,
            progress: bool = True) -> dict[str, torch.Tensor]:
    """Activations of all non-pad tokens of `windows_NT` at `hooks`, in memory: `{hook: acts_ND}`."""
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for acts in _iter_batches(lm, windows_NT, hooks, batch_size, drop_bos, attention_mask_NT,
                              progress, start=0):
        for h in hooks:
            out[h].append(acts[h])
    return {h: torch.cat(v) for h, v in out.items()}


def _iter_batches(lm, windows_NT, hooks, batch_size, drop_bos, attention_mask_NT, progress,
                  start: int, stop: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    stop = windows_NT.shape[0] if stop is None else stop
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    special = getattr(lm.tokenizer, "all_special_ids", [])
    bar = tqdm(total=stop - start, unit="win", desc="harvest", disable=not progress, leave=False,
               mininterval=PROGRESS_INTERVAL_S)
    for a in range(start, stop, batch_size):
        b = min(a + batch_size, stop)
        ids = windows_NT[a:b].to(lm.device)
        am = None if attention_mask_NT is None else attention_mask_NT[a:b].to(lm.device)
        cache = run_with_cache(lm.model, ids, hooks, am)
        keep = token_mask(ids, am, bos, drop_bos)
        result = {POSITION_KEY: content_positions(ids, special)[keep].cpu()}
        for h in hooks:
            acts = cache[h][keep].float().cpu()
            check_finite(acts, f"{h} of windows {a}-{b}")
            result[h] = acts
        bar.update(b - a)
        yield result
    bar.close()


STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_range(tensors: dict[str, torch.Tensor], dtype: torch.dtype, start: int) -> None:
    """Refuse to store values the storage type cannot hold (float16 overflows to inf above
    65504, which residual streams with massive activations reach, e.g. Gemma 3's)."""
    if dtype == torch.float32:
        return
    limit = torch.finfo(dtype).max
    for h, t in tensors.items():
        big = float(t.abs().max()) if t.numel() else 0.0
        if big > limit:
            raise ValueError(
                f"activations at {h} (windows from {start}) reach {big:.4g}, beyond {dtype}'s "
                f"range ({limit:.4g}): store them as bfloat16 (16 bits with float32's range) or "
                "float32"
            )


@dataclass
class _ShardJob:
    """What a worker needs to write shards of one cache (the model travels once per worker)."""

    folder: Path
    lm: object
    windows_NT: torch.Tensor
    hooks: list[str]
    batch_size: int
    drop_bos: bool
    dtype: torch.dtype
    windows_per_shard: int

    def __call__(self, a: int, b: int) -> dict:
        """Harvest windows `a:b` into one shard file (atomically); return its manifest entry."""
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in [*self.hooks, POSITION_KEY]}
        for acts in _iter_batches(self.lm, self.windows_NT, self.hooks, self.batch_size,
                                  self.drop_bos, None, False, start=a, stop=b):
            for h in parts:
                parts[h].append(acts[h])
        tensors = {h: torch.cat(parts[h]) for h in self.hooks}
        _check_range(tensors, self.dtype, a)
        tensors = {h: t.to(self.dtype).contiguous() for h, t in tensors.items()}
        tensors[POSITION_KEY] = torch.cat(parts[POSITION_KEY]).to(torch.bool).contiguous()
        name = f"shard_{a // self.windows_per_shard:05d}.safetensors"
        with atomic_path(self.folder / name) as tmp:
            save_file(tensors, str(tmp))
        return {"file": name, "start": a, "stop": b, "n_tokens": int(tensors[self.hooks[0]].shape[0]),
                "sha256": sha256_file(self.folder / name), "bytes": (self.folder / name).stat().st_size}


_WORKER_JOB: _ShardJob | None = None


def _init_shard_worker(job: _ShardJob, threads: int) -> None:
    global _WORKER_JOB
    from resa_utils.core.perf import tune_allocator

    torch.set_num_threads(threads)
    tune_allocator()
    _WORKER_JOB = job


def _shard_in_worker(span: tuple[int, int]) -> dict:
    with torch.no_grad():
        return _WORKER_JOB(*span)


def _run_shards(job: _ShardJob, spans: list[tuple[int, int]], workers: int) -> Iterator[dict]:
    """Manifest entries of the shards at `spans` as they finish, in this process or in
    `workers` spawned ones."""
    if workers <= 1 or len(spans) <= 1:
        with torch.no_grad():
            for a, b in spans:
                yield job(a, b)
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = min(workers, len(spans))
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_shard_worker, initargs=(job, threads))
    try:
        for f in as_completed([pool.submit(_shard_in_worker, span) for span in spans]):
            yield f.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class ActivationCache:
    """On-disk activations: `manifest.json` + `shard_XXXXX.safetensors`, one tensor per hook.

    `build` writes shards of `windows_per_shard` windows each, every shard and then the manifest
    atomically, so a killed harvest resumes at the first missing shard. `dtype` (float32,
    float16 or bfloat16) is the storage type: 16 bits halve the disk; reads return float32.
    float16 keeps 3 more mantissa bits than bfloat16 but overflows above 65504 (refused).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest_path = self.folder / "manifest.json"
        if not self.manifest_path.exists():
            raise FileNotFoundError(f"no activation cache at {self.folder}: run ActivationCache.build")
        self.manifest = read_json(self.manifest_path)
        self._verified: dict[str, tuple[int, ...]] = {}  # shard file -> its `_file_stamp` when hashed OK

    @staticmethod
    def is_complete(folder: str | Path) -> bool:
        """Whether `folder` holds a finished cache (a killed or absent build is not)."""
        manifest_path = Path(folder) / "manifest.json"
        return manifest_path.exists() and bool(read_json(manifest_path).get("complete", False))

    # ------------------------------------------------------------------ writing
    @classmethod
    def build(cls, folder: str | Path, lm, windows_NT: torch.Tensor, hooks: list[str],
              batch_size: int = 8, windows_per_shard: int = 64, drop_bos: bool = True,
              progress: bool = True, dtype: torch.dtype = torch.float32,
              workers: int = 1, content_rule: ContentRule | None = ContentRule()) -> "ActivationCache":
        """Harvest `windows_NT` at `hooks` into `folder` (resuming a killed build). `workers > 1`
        runs shards in that many spawned processes, each with its share of the CPU threads and
        its own copy of the model: on 2 cores a small model's forward gains about 1.3x (gemma-3-270m:
        657 vs 491 tok/s), since its norms, attention and activations scale worse over threads
        than its matmuls. Shards, manifest and values are the same as with one worker.
        The manifest records, per hook, what `content_rule` leaves out (`left_out`, see
        `content_rows`); every row is stored, so the rule can be changed or turned off later."""
        folder = Path(folder)
        for h in hooks:
            parse_hook(h, lm.n_layers)  # validate before any compute
        if dtype not in STORAGE_DTYPES.values():
            raise ValueError(f"storage dtype {dtype} is not one of {sorted(STORAGE_DTYPES)}")
        fp = _fingerprint(lm.name, windows_NT, hooks, drop_bos)
        if dtype != torch.float32:  # float32 caches keep their old fingerprints
            fp = hashlib.sha256(f"{fp}|{dtype}".encode()).hexdigest()[:16]
        manifest_path = folder / "manifest.json"
        if manifest_path.exists():
            manifest = read_json(manifest_path)
            if manifest.get("fingerprint") != fp:
                raise ValueError(
                    f"activation cache {folder} was built from other inputs (model, windows, hooks "
                    "or drop_bos differ): delete the folder or pass another `cache_dir`"
                )
        else:
            manifest = {"fingerprint": fp, "model": lm.name, "hooks": list(hooks),
                        "d_model": lm.d_model, "n_windows": int(windows_NT.shape[0]),
                        "seq_len": int(windows_NT.shape[1]), "drop_bos": drop_bos,
                        "windows_per_shard": windows_per_shard, "shards": [], "complete": False,
                        "dtype": str(dtype).removeprefix("torch.")}
        damaged = _damaged_shards(folder, manifest["shards"])
        if damaged:  # truncated, corrupt or missing: re-harvest those, keep the rest
            names = ", ".join(s["file"] for s in damaged)
            print(f"activation cache {folder}: re-harvesting damaged shard(s) {names}", flush=True)
            manifest["shards"] = [s for s in manifest["shards"] if s not in damaged]
            manifest["complete"] = False
            manifest.pop("left_out", None)
            write_json(manifest_path, manifest)
        wps = manifest["windows_per_shard"]
        done = {s["start"] for s in manifest["shards"]}
        n = windows_NT.shape[0]
        todo = [(a, min(a + wps, n)) for a in range(0, n, wps) if a not in done]
        bar = tqdm(total=n, initial=n - sum(b - a for a, b in todo), unit="win",
                   desc=f"harvest {lm.name}", disable=not progress, mininterval=PROGRESS_INTERVAL_S)
        job = _ShardJob(folder, lm, windows_NT, list(hooks), batch_size, drop_bos, dtype, wps)
        for shard in _run_shards(job, todo, workers):
            manifest["shards"].append(shard)
            manifest["shards"].sort(key=lambda s: s["start"])
            write_json(manifest_path, manifest)
            bar.update(shard["stop"] - shard["start"])
        bar.close()
        manifest["complete"] = True
        manifest["n_tokens"] = sum(s["n_tokens"] for s in manifest["shards"])
        write_json(manifest_path, manifest)
        cache = cls(folder)
        if content_rule is not None and set(manifest.get("left_out", {})) != set(hooks):
            manifest["left_out"] = {h: content_rows(cache, h, content_rule)[1].as_row() for h in hooks}
            write_json(manifest_path, manifest)
            cache = cls(folder)
        return cache

    def left_out(self, hook: str) -> dict | None:
        """What the harvest's content rule left out at `hook` (a `LeftOut.as_row()`), if recorded."""
        return self.manifest.get("left_out", {}).get(hook)

    # ------------------------------------------------------------------ reading
    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    def check_hook(self, hook: str) -> None:
        if hook not in self.hooks:
            raise ValueError(f"hook {hook!r} is not in the cache {self.folder}: it has {self.hooks}")

    def read_shard(self, shard: dict, hook: str, verify: bool = True) -> torch.Tensor:
        path = self.folder / shard["file"]
        problem = None
        if not path.exists():
            problem = "is missing"
        elif verify and (stamp := _file_stamp(path)) != self._verified.get(shard["file"]):
            if sha256_file(path) != shard["sha256"]:
                problem = "is corrupt or truncated (sha256 mismatch)"
            else:  # hashed once per cache object: a shard holds every hook, read once per hook
                self._verified[shard["file"]] = stamp
        if problem is None:
            try:  # read this hook's tensor only, not every hook's in the shard
                with safe_open(str(path), framework="pt") as fh:
                    acts = fh.get_tensor(hook).float()
            except (SafetensorError, OSError) as err:
                problem = f"cannot be read ({err})"
        if problem is not None:
            self._mark_damaged(shard)
            raise ValueError(
                f"activation shard {path} {problem}: rerun the harvest (the notebook, or "
                "ActivationCache.build with the same inputs), which re-harvests damaged shards and "
                "keeps the finished ones"
            )
        return acts

    def _mark_damaged(self, shard: dict) -> None:
        """Flag `shard` in the manifest, so the next `build` re-harvests it."""
        for s in self.manifest["shards"]:
            if s["file"] == shard["file"]:
                s["damaged"] = True
        if self.manifest_path.exists():
            write_json(self.manifest_path, self.manifest)

    def read_positions(self, shard: dict) -> torch.Tensor:
        """`[n]` bool per row of `shard`: its position passes the content rule (not a special token,
        not position 0). A cache harvested before the rule existed has no such record: all True."""
        with safe_open(str(self.folder / shard["file"]), framework="pt") as fh:
            if POSITION_KEY in fh.keys():
                return fh.get_tensor(POSITION_KEY).bool()
        return torch.ones(shard["n_tokens"], dtype=torch.bool)

    def load(self, hook: str, verify: bool = True) -> torch.Tensor:
        """All activations at `hook`, in corpus order: `acts_ND`."""
        self.check_hook(hook)
        return torch.cat([self.read_shard(s, hook, verify) for s in self.manifest["shards"]])

    def batches(self, hook: str, batch_size: int, seed: int = 0, epochs: int = 1,
                buffer_tokens: int = 1 << 20) -> Iterator[torch.Tensor]:
        """Shuffled `[batch_size, D]` batches: shards in random order, mixed in a buffer of about
        `buffer_tokens` tokens; the last partial batch of each epoch is dropped."""
        self.check_hook(hook)
        gen = torch.Generator().manual_seed(seed)
        shards = self.manifest["shards"]
        for _ in range(epochs):
            buf: list[torch.Tensor] = []
            held = 0
            order = torch.randperm(len(shards), generator=gen).tolist()
            for i, idx in enumerate(order):
                part = self.read_shard(shards[idx], hook)
                buf.append(part)
                held += part.shape[0]
                if held < buffer_tokens and i < len(order) - 1:
                    continue
                pool = torch.cat(buf)
                pool = pool[torch.randperm(pool.shape[0], generator=gen)]
                n_full = pool.shape[0] // batch_size
                for j in range(n_full):
                    yield pool[j * batch_size:(j + 1) * batch_size]
                rest = pool[n_full * batch_size:]
                buf, held = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)


class PairedCache:
    """Two caches of the same tokens, one per model, read as one: each row is `[x_a, x_b]`
    (`[N, d_a + d_b]`), so a crosscoder trains from it like an SAE from one cache
    (`train_sae(data=(paired, PairedCache.HOOK))`). Shards are paired in order: both caches must
    come from the same windows with the same shard size."""

    HOOK = "paired"

    def __init__(self, a: ActivationCache, hook_a: str, b: ActivationCache, hook_b: str):
        a.check_hook(hook_a)
        b.check_hook(hook_b)
        sa, sb = a.manifest["shards"], b.manifest["shards"]
        if [s["n_tokens"] for s in sa] != [s["n_tokens"] for s in sb]:  # shard by shard, so totals too
            raise ValueError(f"paired caches hold different tokens: {a.folder} has {a.n_tokens:,} in "
                             f"{len(sa)} shards, {b.folder} {b.n_tokens:,} in {len(sb)}: harvest both "
                             "models from the same windows with the same windows_per_shard")
        self.a, self.b, self.hook_a, self.hook_b = a, b, hook_a, hook_b
        self.manifest = {"shards": [{"pair": (x, y), "n_tokens": x["n_tokens"]} for x, y in zip(sa, sb)]}

    @property
    def n_tokens(self) -> int:
        return self.a.n_tokens

    @property
    def hooks(self) -> list[str]:
        return [self.HOOK]

    def check_hook(self, hook: str) -> None:
        if hook != self.HOOK:
            raise ValueError(f"a PairedCache has one hook, {self.HOOK!r}, not {hook!r}")

    def read_shard(self, shard: dict, hook: str, verify: bool = True) -> torch.Tensor:
        self.check_hook(hook)
        x, y = shard["pair"]
        return torch.cat([self.a.read_shard(x, self.hook_a, verify), self.b.read_shard(y, self.hook_b, verify)], 1)

    def read_positions(self, shard: dict) -> torch.Tensor:
        x, y = shard["pair"]
        return self.a.read_positions(x) & self.b.read_positions(y)

    def load(self, hook: str = HOOK, verify: bool = True) -> torch.Tensor:
        return torch.cat([self.read_shard(s, hook, verify) for s in self.manifest["shards"]])

    batches = ActivationCache.batches


class KeptRows:
    """A cache (or `PairedCache`) read with some rows left out, same reading interface:
    `keep_N` is a bool per row in corpus order. Used to keep special tokens' attention-sink
    activations (norms hundreds of times the typical one) out of a dictionary's data."""

    def __init__(self, cache, keep_N: torch.Tensor):
        keep_N = torch.as_tensor(keep_N, dtype=torch.bool).flatten()
        if keep_N.numel() != cache.n_tokens:
            raise ValueError(f"the row mask has {keep_N.numel():,} entries, the cache {cache.n_tokens:,} rows: "
                             "build it from the same windows the cache was harvested from")
        self.cache, shards, start = cache, [], 0
        for s in cache.manifest["shards"]:
            k = keep_N[start:start + s["n_tokens"]]
            shards.append({"inner": s, "keep": k, "n_tokens": int(k.sum())})
            start += s["n_tokens"]
        self.manifest = {"shards": shards}

    @property
    def n_tokens(self) -> int:
        return sum(s["n_tokens"] for s in self.manifest["shards"])

    @property
    def hooks(self) -> list[str]:
        return self.cache.hooks

    def check_hook(self, hook: str) -> None:
        self.cache.check_hook(hook)

    def read_shard(self, shard: dict, hook: str, verify: bool = True) -> torch.Tensor:
        return self.cache.read_shard(shard["inner"], hook, verify)[shard["keep"]]

    def read_positions(self, shard: dict) -> torch.Tensor:
        return self.cache.read_positions(shard["inner"])[shard["keep"]]

    def load(self, hook: str, verify: bool = True) -> torch.Tensor:
        self.check_hook(hook)
        return torch.cat([self.read_shard(s, hook, verify) for s in self.manifest["shards"]])

    batches = ActivationCache.batches


def content_rows(cache, hook: str, rule: ContentRule = ContentRule(), n_blocks: int = 1
                 ) -> tuple["KeptRows", LeftOut]:
    """The cache's content rows at `hook` (`KeptRows`, the same reading interface) and what the
    rule left out, with its share of the centred variance. Two passes over the shards: norms (and
    each block's median over rows the position rule keeps), then the variance sums. `n_blocks`:
    equal-width blocks with their own medians (2 for a `PairedCache`)."""
    cache.check_hook(hook)
    shards = cache.manifest["shards"]
    if not rule.enabled:
        keep = torch.ones(cache.n_tokens, dtype=torch.bool)
        return KeptRows(cache, keep), LeftOut(hook, cache.n_tokens, 0, 0, float("nan"),
                                              rule.max_norm_ratio, 0.0, 0.0, 0.0)
    pos = [cache.read_positions(s) for s in shards]
    norms = [_block_norms(cache.read_shard(s, hook), n_blocks) for s in shards]
    pos_N, norms_NB = torch.cat(pos), torch.cat(norms)
    medians = norms_NB[pos_N].median(0).values if pos_N.any() else torch.full((n_blocks,), float("inf"))
    ok_N = norm_ok(norms_NB, medians, rule)
    var, start = _Variance(), 0
    for s in shards:
        x = cache.read_shard(s, hook)
        p, ok = pos_N[start:start + x.shape[0]], ok_N[start:start + x.shape[0]]
        for group, m in (("position", ~p), ("norm", p & ~ok), ("kept", p & ok)):
            var.add(group, x[m])
        start += x.shape[0]
    sh = var.shares()
    left = LeftOut(hook, int(pos_N.numel()), int((~pos_N).sum()), int((pos_N & ~ok_N).sum()),
                   float(medians[0]), rule.max_norm_ratio, sh["position"] + sh["norm"], sh["position"],
                   sh["norm"])
    return KeptRows(cache, pos_N & ok_N), left


def left_out_table(caches: dict, hooks: list[str], rule: ContentRule = ContentRule()) -> "pd.DataFrame":
    """What `rule` leaves out of each `{name: cache}` at each hook: one `LeftOut.as_row()` per
    (cache, hook), with the cache's name; the harvest's record is reused when `rule` is the default."""
    import pandas as pd

    rows = []
    for name, cache in caches.items():
        for hook in hooks:
            rec = cache.left_out(hook) if rule == ContentRule() and hasattr(cache, "left_out") else None
            rows.append({"cache": name, **(rec or content_rows(cache, hook, rule)[1].as_row())})
    return pd.DataFrame(rows)


def _damaged_shards(folder: Path, shards: list[dict]) -> list[dict]:
    """Manifest entries to re-harvest: the file is missing, or of another size than recorded
    (truncated), or a read found its SHA256 wrong (`damaged`); shards recorded without a size
    (older caches) are hashed instead. Cheap for a finished cache: sizes only."""
    out = []
    for s in shards:
        path = folder / s["file"]
        if s.get("damaged") or not path.exists():
            out.append(s)
        elif "bytes" in s:
            if path.stat().st_size != s["bytes"]:
                out.append(s)
        elif sha256_file(path) != s["sha256"]:
            out.append(s)
    return out


def _file_stamp(path: Path) -> tuple[int, ...]:
    """Changes whenever the file's contents may have (taken before hashing it): inode, size and
    both timestamps (ctime cannot be set back by copying tools, unlike mtime)."""
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _fingerprint(model: str, windows_NT: torch.Tensor, hooks: list[str], drop_bos: bool) -> str:
    digest = hashlib.sha256()
    digest.update(f"{model}|{sorted(hooks)}|{drop_bos}|{tuple(windows_NT.shape)}".encode())
    digest.update(windows_NT.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def harvest_splits(folder: str | Path, lm, splits: dict[str, torch.Tensor], hooks: list[str],
                   dtype: torch.dtype = torch.bfloat16,
                   batch_size: int = 8, workers: int = 1) -> tuple[dict[str, ActivationCache], dict]:
    """One `ActivationCache` per split (`folder/<split>`, e.g. train and eval windows), built,
    resumed or reused. Returns the caches and `{tokens, seconds, tokens/s}` for the tokens this
    call harvested (`tokens/s` NaN when everything was already cached: no throughput claimed).
    `workers`: processes per build (see `ActivationCache.build`)."""
    import time

    folder = Path(folder)
    before = {s: _cached_tokens(folder / s) for s in splits}
    t0 = time.perf_counter()
    caches = {s: ActivationCache.build(folder / s, lm, ids, hooks, batch_size=batch_size, dtype=dtype,
                                     workers=workers)
              for s, ids in splits.items()}
    seconds = time.perf_counter() - t0
    new = sum(caches[s].n_tokens - before[s] for s in splits)
    return caches, {"tokens": new, "seconds": seconds,
                    "tokens/s": new / seconds if new else float("nan")}


def _cached_tokens(folder: Path) -> int:
    """Tokens already in a (possibly unfinished) cache at `folder`; 0 if there is none."""
    path = folder / "manifest.json"
    return sum(s["n_tokens"] for s in read_json(path)["shards"]) if path.exists() else 0
