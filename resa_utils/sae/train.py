"""`train_sae`: one entry point for every method, with progress, checkpoints and resume."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from resa_utils.core.progress import PROGRESS_INTERVAL_S, tqdm
from resa_utils.lm.activations import check_finite
from resa_utils.lm.models import default_device
from resa_utils.lm.content import ContentRule
from resa_utils.sae.config import TrainConfig
from resa_utils.sae.crosscoder import CrosscoderTrainer
from resa_utils.sae.gba import GBATrainer
from resa_utils.sae.metrics import evaluate_sae
from resa_utils.sae.model import SAE
from resa_utils.sae.relu_l1 import ReluL1Trainer
from resa_utils.sae.topk import TopKTrainer
from resa_utils.sae.trainer import Trainer, batch_stream, first_rows

TRAINERS: dict[str, type[Trainer]] = {
    "topk": TopKTrainer,
    "relu_l1": ReluL1Trainer,
    "gba": GBATrainer,
    "crosscoder": CrosscoderTrainer,
}


@dataclass
class TrainResult:
    sae: SAE
    """The trained SAE, reading raw activations (input scale folded in)."""
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    """Training wall-clock of this call, probes excluded."""
    tokens_per_s: float = 0.0
    probes: list[dict] = field(default_factory=list)
    """Rows scored by `probe` along training, each with `step` and `tokens`."""


def make_trainer(cfg: TrainConfig, d_in: int, device="cpu", metadata: dict | None = None) -> Trainer:
    return TRAINERS[cfg.method](cfg, d_in, device=device, metadata=metadata)


def train_sae(data, cfg: TrainConfig, device: str | torch.device | None = None,
              checkpoint_dir: str | Path | None = None, metadata: dict | None = None,
              progress: bool = True, probe: Callable[[SAE], dict] | None = None,
              probe_tokens: tuple[int, ...] = (), rule: ContentRule | None = ContentRule(),
              init: Callable[[Trainer], None] | None = None) -> TrainResult:
    """Train an SAE on `data`: an `acts_ND` tensor or an `(ActivationCache, hook)` pair.

    A raw cache (`ActivationCache` or `PairedCache`) is read through the content `rule`
    (`activations.content_rows`: no special tokens, no window starts, no massive-norm rows);
    `rule=None` reads every row. A tensor or a `KeptRows` is taken as already chosen.

    With `checkpoint_dir`, state is saved every `cfg.checkpoint_every` steps and at the end,
    and a rerun resumes from the last checkpoint (a finished run returns at once).
    `device` defaults to CUDA when present, else CPU. With `probe`, the SAE as exported so far
    is scored by `probe(sae) -> {metric: float}` at the first step reaching each of
    `probe_tokens` training tokens (and at the end); the rows are checkpointed with the run and
    returned as `TrainResult.probes`, so a curve along training needs one run, not one per length.
    `init(trainer)`, if given, runs once after the trainer's own set-up and before any resume or
    step: it may overwrite weights (a decoder started at known features) or freeze a parameter
    (`requires_grad_(False)`: Adam then leaves it as it is).
    """
    device = device if device is not None else default_device()
    data = with_content_rows(data, rule)
    sample = first_rows(data, 16_384)
    if sample.ndim != 2 or sample.shape[0] == 0:
        raise ValueError(f"data must be [n_tokens, d] activations, got shape {tuple(sample.shape)}")
    check_finite(sample, "the SAE training data")
    trainer = make_trainer(cfg, sample.shape[1], device, metadata)
    trainer.setup(sample)
    if init is not None:
        init(trainer)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and trainer.load_checkpoint(ckpt):
        print(f"[resa_utils] resuming {cfg.method} SAE at step {trainer.step}/{cfg.n_steps}")
    stream = batch_stream(data, cfg.batch_size, cfg.seed, trainer.step)
    bar = tqdm(total=cfg.n_steps, initial=trainer.step, desc=f"train {cfg.method}",
               disable=not progress, leave=False, mininterval=PROGRESS_INTERVAL_S)
    t0, start_step, probe_s = time.perf_counter(), trainer.step, 0.0
    while trainer.step < cfg.n_steps:
        x = next(stream)
        if trainer.step == start_step:
            check_finite(x, "the first training batch")
        log_now = (trainer.step + 1) % cfg.log_every == 0 or trainer.step + 1 == cfg.n_steps
        stats = trainer.train_step(x, stats=log_now)
        bar.update(1)
        if log_now:
            stats = {k: float(v) for k, v in stats.items()}
            stats.update(step=trainer.step, tokens=trainer.step * cfg.batch_size,
                         dead_frac=trainer.dead_fraction(), lr=trainer.opt.param_groups[0]["lr"])
            trainer.history.append(stats)
            bar.set_postfix(fvu=f"{stats['fvu']:.3f}", l0=f"{stats['l0']:.1f}")
            if not torch.isfinite(torch.tensor(stats["loss"])):
                raise FloatingPointError(
                    f"loss became {stats['loss']} at step {trainer.step}: lower lr (now {trainer.lr:g})")
        if probe is not None and _probe_due(trainer.step, cfg, probe_tokens):
            tp = time.perf_counter()
            row = {k: float(v) for k, v in probe(trainer.export()).items()}
            if {"step", "tokens"} & row.keys():
                raise ValueError(f"probe metrics may not be named 'step' or 'tokens' (got {sorted(row)})")
            trainer.probes.append({"step": trainer.step, "tokens": trainer.step * cfg.batch_size, **row})
            probe_s += time.perf_counter() - tp
        if ckpt is not None and (trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.n_steps):
            trainer.save_checkpoint(ckpt)
    bar.close()
    seconds = time.perf_counter() - t0 - probe_s
    done = (trainer.step - start_step) * cfg.batch_size
    return TrainResult(sae=trainer.export(), history=trainer.history, seconds=seconds,
                       tokens_per_s=done / seconds if seconds > 0 else 0.0, probes=trainer.probes)


def with_content_rows(data, rule: ContentRule | None):
    """`data` with a raw cache's rows chosen by `rule` (see `train_sae`); anything else unchanged."""
    from resa_utils.lm.activations import ActivationCache, PairedCache, content_rows

    if rule is None or isinstance(data, torch.Tensor) or not isinstance(data[0], (ActivationCache, PairedCache)):
        return data
    cache, hook = data
    n_blocks = 2 if isinstance(cache, PairedCache) else 1
    return content_rows(cache, hook, rule, n_blocks)[0], hook


def _probe_due(step: int, cfg: TrainConfig, probe_tokens: tuple[int, ...]) -> bool:
    """True at the first step whose token count reaches one of `probe_tokens`, and at the end."""
    if step == cfg.n_steps:
        return True
    now, before = step * cfg.batch_size, (step - 1) * cfg.batch_size
    return any(before < t <= now for t in probe_tokens)


def train_and_evaluate(train_ND: torch.Tensor, eval_ND: torch.Tensor, cfg: TrainConfig,
                       save_dir: str | Path, metadata: dict | None = None,
                       device=None) -> tuple[SAE, dict]:
    """Train on `train_ND`, save the SAE to `save_dir`, evaluate on held-out `eval_ND`:
    `(sae, metrics row)`, the row with the training curve. Resumes from `<save_dir>.ckpt` if a
    run was killed, and removes it once the SAE is saved."""
    save_dir = Path(save_dir)
    ckpt = save_dir.with_name(save_dir.name + ".ckpt")
    result = train_sae(train_ND, cfg, metadata=metadata, progress=True, checkpoint_dir=ckpt,
                       device=device)
    result.sae.save(save_dir)
    shutil.rmtree(ckpt, ignore_errors=True)
    ev = evaluate_sae(result.sae, eval_ND)
    return result.sae, {"fvu": ev["fvu"], "l0": ev["l0"], "dead_frac": ev["dead_frac"],
                        "tokens_per_s": result.tokens_per_s, "seconds": result.seconds,
                        "curve": result.history}


@dataclass
class CacheJob:
    """An SAE trained and evaluated from activation caches: a picklable spec, so
    `run_sweep(workers=N)` can run several in spawned processes (see `train_cache_job`)."""

    train_dir: str
    """`ActivationCache` folder of the training tokens."""
    eval_dir: str
    """`ActivationCache` folder of the held-out tokens."""
    hook: str
    cfg: TrainConfig
    save_dir: str
    metadata: dict = field(default_factory=dict)
    in_ram: bool = True
    """Load the training tokens into RAM (else stream them from disk, shard by shard)."""
    basis_file: str | None = None
    """safetensors file whose `basis` (orthonormal rows) is projected out of both sets first
    (needs `in_ram`)."""
    density_thresholds: tuple[float, ...] = ()
    """Firing rates whose held-out counts the row reports as `dense@t`."""
    rule: ContentRule | None = ContentRule()
    """Content rows of both caches (`activations.content_rows`); None: every row. Put it in the
    sweep config too, so rows trained under another rule are not reused."""


def train_cache_job(config: dict, jobs: dict[str, CacheJob]) -> dict:
    """Train and evaluate `jobs[config_key(config)]` (`train_and_evaluate`'s row, plus the
    `dense@t` counts). Module-level, so `run_sweep(..., partial(train_cache_job, jobs=jobs),
    workers=N)` can run it in worker processes."""
    from safetensors.torch import load_file

    from resa_utils.core.sweep import config_key
    from resa_utils.lm.activations import ActivationCache

    job = jobs[config_key(config)]
    train_data, _ = with_content_rows((ActivationCache(job.train_dir), job.hook), job.rule)
    eval_data, _ = with_content_rows((ActivationCache(job.eval_dir), job.hook), job.rule)
    eval_acts = eval_data.load(job.hook)
    data = train_data.load(job.hook) if job.in_ram else (train_data, job.hook)
    if job.basis_file is not None:
        if not job.in_ram:
            raise ValueError("a CacheJob with basis_file needs in_ram=True (the projection is applied in RAM)")
        basis = load_file(job.basis_file)["basis"]
        data, eval_acts = _project_out(data, basis), _project_out(eval_acts, basis)
    sae, row = train_and_evaluate(data, eval_acts, job.cfg, job.save_dir, metadata=job.metadata)
    del data
    if job.density_thresholds:
        rates = evaluate_sae(sae, eval_acts)["density"]
        row.update({f"dense@{t}": int((rates > t).sum()) for t in job.density_thresholds})
    return row


def _project_out(acts_ND: torch.Tensor, basis_RD: torch.Tensor) -> torch.Tensor:
    """The activations without their component in the span of the orthonormal rows `basis_RD`."""
    if basis_RD.shape[0] == 0:
        return acts_ND
    q = basis_RD.to(acts_ND.dtype)
    return acts_ND - (acts_ND @ q.T) @ q
