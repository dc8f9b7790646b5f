"""The one LoRA training path (distillation, rejection sampling, and later SAE-Tuning and SFT):
`peft` adapters trained by transformers' `Trainer`, so checkpoint/resume, gradient
accumulation, logging and multi-GPU `accelerate launch` come from the library. The loss is
next-token CE on response tokens only by default; a method with another loss (Resa's KL)
passes `loss_fn`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


LR_SCHEDULES = ("linear", "constant")
FINETUNES = ("lora", "full")


@dataclass
class LoraTrainConfig:
    finetune: str = "lora"
    """"lora": peft adapters on `targets` (r, alpha, dropout apply); "full": every weight trains,
    through the same Trainer path (checkpoints then hold the whole model and its optimizer)."""
    r: int = 32
    """LoRA rank (Resa: 32)."""
    alpha: int = 128
    """LoRA scale numerator: the update is (alpha / r) B A (Resa: 128)."""
    dropout: float = 0.05
    """Dropout on the LoRA input (Resa: 0.05)."""
    targets: tuple[str, ...] = LORA_TARGETS
    """Module names that get adapters (attention and MLP projections)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    epochs: float = 1.0
    """Passes over the examples (ignored when `max_steps` > 0)."""
    max_steps: int = -1
    """Optimizer steps in all; -1 = from `epochs`."""
    batch_size: int = 4
    """Examples per device step."""
    grad_accum: int = 1
    """Device steps per optimizer step."""
    max_length: int = 512
    """Tokens per example (longer ones are cut at the end)."""
    warmup_ratio: float = 0.03
    """Share of the steps with a linear lr warm-up (in [0, 1)), rounded down to whole steps: 0.03
    of 11 steps is no warm-up. Warm-up step i (0-based) runs at lr (i + 1) / (w + 1), never 0."""
    lr_schedule: str = "linear"
    """After the warm-up: "linear" decays to 0 at the last step, "constant" keeps `lr`."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    """Gradient clipping (Resa: 1.0)."""
    seed: int = 0
    save_steps: int = 50
    """Optimizer steps between checkpoints (resume picks up the last one)."""
    logging_steps: int = 5
    keep_steps: tuple[int, ...] = ()
    """Optimizer steps whose weights are also saved for good as `out_dir/step-<n>` (an early
    checkpoint kept as a model of its own; the rolling checkpoints are pruned)."""

    def __post_init__(self) -> None:
        checks = [(self.r >= 1, f"r={self.r} must be >= 1"), (self.alpha > 0, "alpha must be > 0"),
                  (0 <= self.dropout < 1, f"dropout={self.dropout} must be in [0, 1)"),
                  (self.lr > 0, f"lr={self.lr} must be > 0"),
                  (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
                  (self.max_length >= 2, f"max_length={self.max_length} must be >= 2"),
                  (self.max_steps > 0 or self.epochs > 0, "set epochs > 0 or max_steps > 0"),
                  (0 <= self.warmup_ratio < 1, f"warmup_ratio={self.warmup_ratio} must be in [0, 1)"),
                  (self.lr_schedule in LR_SCHEDULES, f"lr_schedule={self.lr_schedule!r} is not one of {LR_SCHEDULES}"),
                  (self.finetune in FINETUNES, f"finetune={self.finetune!r} is not one of {FINETUNES}"),
                  (all(isinstance(k, int) and k >= 1 for k in self.keep_steps), "keep_steps must be steps >= 1")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"LoraTrainConfig: {msg}")


@dataclass
class LoraResult:
    adapter_dir: Path
    """The trained weights: a peft adapter folder (LoRA), or a `save_pretrained` model folder (full)."""
    history: list[dict] = field(default_factory=list)
    """Trainer log rows: step, loss, learning_rate, grad_norm."""
    seconds: float = 0.0
    tokens: int = 0
    """Tokens processed (all positions, the forward's cost)."""
    flops: float = 0.0
    """Training FLOPs: LoRA 4 · params · tokens, the forward (2NT) plus the backward's activation
    gradients (2NT), as frozen weights get no weight gradients; full fine-tuning 6 · params · tokens."""


def tokenize_examples(tokenizer, examples: list[tuple[str, str]], max_length: int) -> list[dict]:
    """`(prompt, response)` pairs as input ids with labels on response tokens only."""
    rows = []
    for prompt, response in examples:
        p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            r = r + [tokenizer.eos_token_id]
        ids = (p + r)[:max_length]
        labels = ([-100] * len(p) + r)[:max_length]
        if all(x == -100 for x in labels):
            continue  # the prompt alone fills max_length: nothing to learn
        rows.append({"input_ids": ids, "labels": labels})
    if not rows:
        raise ValueError("no training example has a response token within max_length: "
                         "raise max_length or shorten the prompts")
    return rows


def _collate(pad_id: int):
    def collate(rows: list[dict]) -> dict:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding for training
            ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
            labels[i, :len(r["labels"])] = torch.tensor(r["labels"])
            mask[i, :len(r["input_ids"])] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    return collate


def add_lora(model: torch.nn.Module, cfg: LoraTrainConfig):
    """Wrap `model` with fresh LoRA adapters on the `cfg.targets` present in it."""
    from peft import LoraConfig, get_peft_model

    present = sorted({n.split(".")[-1] for n, _ in model.named_modules()} & set(cfg.targets))
    if not present:
        raise ValueError(f"none of the LoRA targets {cfg.targets} is a module of "
                         f"{type(model).__name__}")
    return get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha,
                                            lora_dropout=cfg.dropout, target_modules=present,
                                            task_type="CAUSAL_LM"))


def warmup_steps(cfg: LoraTrainConfig, total_steps: int) -> int:
    """Whole warm-up steps: `warmup_ratio` of `total_steps`, rounded down."""
    return int(cfg.warmup_ratio * total_steps)


def lr_factor(cfg: LoraTrainConfig, total_steps: int):
    """The lr multiplier at each 0-based optimizer step: warm-up step i at (i + 1) / (w + 1), then
    1 (constant) or a linear decay that reaches 0 after the last step. Never 0 at step 0, unlike
    transformers' linear warm-up, which spends a whole step at lr 0."""
    w = warmup_steps(cfg, total_steps)

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / (w + 1)
        if cfg.lr_schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - w))

    return factor


def train_lora(lm, examples: list[tuple[str, str]], cfg: LoraTrainConfig, out_dir: str | Path,
               loss_fn: Callable | None = None, progress: bool = True,
               init_adapter: str | Path | None = None, callbacks: list | None = None,
               rows: list[dict] | None = None, extra_key: dict | None = None) -> LoraResult:
    """Train LoRA adapters on `lm.model` and save them to `out_dir/adapter` (or, with
    `cfg.finetune == "full"`, every weight, saved to `out_dir/model`); checkpoints in
    `out_dir/checkpoints` make a rerun resume (a run finished on the same examples and config
    returns at once; other examples or config start afresh).

    `loss_fn(model, inputs) -> loss` replaces the response-only CE (inputs hold input_ids,
    attention_mask and labels). `init_adapter` starts from a saved adapter of the same rank
    (continued training, e.g. rejection sampling on top of a distilled reasoner). `rows`
    (tokenized `{"input_ids", "labels"}` dicts, e.g. packed chunks) replace `examples`.
    `extra_key` (JSON values) names what else decides the result, e.g. the SAE a loss splices
    in: a finished run is reused only when it matches too. The adapters stay attached to
    `lm.model` afterwards, in eval mode.
    """
    import warnings

    from transformers import Trainer, TrainingArguments

    from resa_utils.core.atomic import read_json, sha256_file, write_json
    from resa_utils.core.sweep import config_key

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # transformers' own

    out_dir = Path(out_dir)
    full = cfg.finetune == "full"
    adapter = out_dir / ("model" if full else "adapter")
    done = out_dir / "result.json"
    rows = rows if rows is not None else tokenize_examples(lm.tokenizer, examples, cfg.max_length)
    if not rows:
        raise ValueError("train_lora got no training rows: the training set is empty")
    torch.manual_seed(cfg.seed)  # the adapters' initialisation depends on cfg alone
    model = lm.model.requires_grad_(True) if full else add_lora(lm.model, cfg)
    init_file = Path(init_adapter) / ("model.safetensors" if full else "adapter_model.safetensors") if init_adapter else None
    key = {"cfg": config_json(cfg), "data": config_key(rows),
           "init": sha256_file(init_file)[:16] if init_file else None, **({"extra": extra_key} if extra_key else {})}
    if done.exists() and {k: read_json(done).get(k) for k in key} == key:
        load_weights(model, adapter, cfg.finetune)
        lm.model = model.eval()
        info = read_json(done)
        return LoraResult(adapter, info["history"], info["seconds"], info["tokens"], info["flops"])
    marker = out_dir / "run_key.json"
    if marker.exists() and read_json(marker) != key:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # another run's checkpoints
        for kept in out_dir.glob("step-*"):
            shutil.rmtree(kept, ignore_errors=True)
    done.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, key)
    if init_adapter:
        load_weights(model, Path(init_adapter), cfg.finetune)

    class _Trainer(Trainer):
        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.lr_scheduler is None:
                from torch.optim.lr_scheduler import LambdaLR

                self.lr_scheduler = LambdaLR(optimizer or self.optimizer, lr_factor(cfg, num_training_steps))
            return self.lr_scheduler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if loss_fn is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = loss_fn(getattr(model, "module", model), inputs)  # unwrapped under DDP
            return (loss, None) if return_outputs else loss

    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
        data_seed=cfg.seed, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=2, logging_steps=cfg.logging_steps, report_to="none",
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
    )
    ckpts = sorted((out_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    prior = read_json(ckpts[-1] / ELAPSED)["seconds"] if ckpts and (ckpts[-1] / ELAPSED).exists() else 0.0
    trainer = _Trainer(model=model, args=args, train_dataset=rows,
                       callbacks=[_elapsed_callback(prior), _keep_callback(out_dir, cfg.keep_steps),
                                  *([_progress_callback(f"{cfg.finetune} {out_dir.name}")] if progress else []),
                                  *(callbacks or [])],
                       data_collator=_collate(lm.tokenizer.pad_token_id))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the bar above shows the loss; curves keep every log
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if ckpts else None)
    seconds = prior + time.perf_counter() - t0  # a resumed training counts its earlier part too
    model.save_pretrained(str(adapter))
    steps = trainer.state.global_step
    tokens = int(sum(len(r["input_ids"]) for r in rows) * steps * cfg.batch_size * cfg.grad_accum
                 / max(1, len(rows)))
    n_params = sum(p.numel() for p in model.parameters())
    history = [{k: v for k, v in row.items() if isinstance(v, (int, float))}
               for row in trainer.state.log_history if "loss" in row]
    result = LoraResult(adapter, history, seconds, tokens, (6.0 if full else 4.0) * n_params * tokens)
    write_json(done, {**key, "history": history, "seconds": seconds,
                      "tokens": tokens, "flops": result.flops})
    lm.model = model.eval()  # Trainer leaves it in train mode (LoRA dropout on)
    return result


ELAPSED = "resa_elapsed.json"


def _elapsed_callback(prior: float):
    """Writes the training seconds so far (`prior`, from earlier runs, included) into each
    checkpoint, so a resumed training reports its whole cost."""
    from transformers import TrainerCallback

    from resa_utils.core.atomic import write_json

    class Elapsed(TrainerCallback):
        def __init__(self):
            self.t0 = time.perf_counter()

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.exists():
                write_json(folder / ELAPSED, {"seconds": prior + time.perf_counter() - self.t0})

    return Elapsed()


def _keep_callback(out_dir: Path, steps: tuple[int, ...]):
    """Saves the weights at each of `steps` (the adapter, or the whole model) to
    `out_dir/step-<n>`, written to a temporary folder first; a resumed run keeps what is there."""
    from transformers import TrainerCallback

    class Keep(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            final = out_dir / f"step-{step}"
            if step not in steps or final.exists() or not state.is_world_process_zero:
                return
            tmp = out_dir / f".step-{step}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            getattr(model, "module", model).save_pretrained(str(tmp))
            tmp.rename(final)

    return Keep()


def _progress_callback(desc: str):
    """Trainer progress through the project's bars (widgets in JupyterLab, text under the runner,
    which mirrors them), with the latest loss."""
    from transformers import TrainerCallback

    from resa_utils.core.progress import PROGRESS_INTERVAL_S, tqdm

    class Progress(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=desc,
                            unit="step", leave=False, mininterval=PROGRESS_INTERVAL_S)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return Progress()


def lora_tokens_per_s(lm, examples: list[tuple[str, str]], cfg: LoraTrainConfig, steps: int = 3) -> dict:
    """Measured LoRA training speed of `lm` on `examples` through `train_lora` (the real path):
    non-padding tokens per second over `steps` optimizer steps after one untimed warm-up."""
    import tempfile
    from dataclasses import replace

    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter())

    cfg = replace(cfg, max_steps=steps + 1, save_steps=10 ** 9, logging_steps=10 ** 9, grad_accum=1)
    rows = tokenize_examples(lm.tokenizer, examples, cfg.max_length)
    per_example = sum(len(r["input_ids"]) for r in rows) / len(rows)
    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        train_lora(lm, examples, cfg, tmp, progress=False, callbacks=[timer])
    seconds = timer.times[-1] - timer.times[0]
    return {"tokens/s": per_example * cfg.batch_size * steps / seconds,
            "tokens_per_example": per_example, "seconds_per_step": seconds / steps}


def load_weights(model, folder: str | Path, finetune: str = "lora") -> None:
    """Copy saved weights into `model`: a peft adapter into its fresh adapters ("lora"), or a
    `save_pretrained` model folder into the whole model ("full"; tied weights may be absent)."""
    if finetune == "lora":
        _load_adapter_weights(model, Path(folder))
    else:
        from resa_utils.lm.weights import load_full_weights

        load_full_weights(model, folder)


def _load_adapter_weights(model, folder: Path) -> None:
    """Copy a saved adapter's weights into `model`'s fresh adapters (same targets and rank)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    except RuntimeError as err:  # shapes differ: another rank or another base
        raise ValueError(f"adapter in {folder} does not fit this model: {str(err)[:300]}") from None
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"adapter in {folder} does not fit this model ({len(missing)} LoRA "
                         f"weights missing, e.g. {missing[0]}): check its base model and rank")


def config_json(cfg: LoraTrainConfig) -> dict:
    """`cfg` as JSON values (tuples as lists): the resume key, the saved config, model metadata."""
    d = asdict(cfg)
    d["targets"], d["keep_steps"] = list(d["targets"]), list(d["keep_steps"])
    return d


# --------------------------------------------------------------------------- command line


def save_examples(path: str | Path, examples: list[tuple[str, str]], cfg: LoraTrainConfig) -> Path:
    """Write `examples` (JSONL of prompt/response) and `cfg` (`<path>.config.json`) for the
    command line below, so a notebook's training stage can be rerun under `accelerate launch`."""
    import json

    from resa_utils.core.atomic import atomic_path, write_json

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for prompt, response in examples:
                f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
    write_json(path.with_suffix(".config.json"), config_json(cfg))
    return path


def main(argv: list[str] | None = None) -> None:
    """`[accelerate launch] python -m resa_utils.lm.lora --model M --examples X.jsonl --out DIR`:
    the same training path from the shell; under `accelerate launch` it runs data-parallel on
    every GPU (Trainer picks up the distributed setup)."""
    import argparse
    import json

    from resa_utils.lm.models import load_model

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--model", required=True, help="registry name, local folder or hub id")
    ap.add_argument("--examples", required=True, help="JSONL with prompt and response fields")
    ap.add_argument("--config", help="LoraTrainConfig JSON (default: <examples>.config.json)")
    ap.add_argument("--out", required=True, help="output folder (adapter/, checkpoints/)")
    ap.add_argument("--init-adapter", help="continue from this saved adapter")
    args = ap.parse_args(argv)
    examples_path = Path(args.examples)
    rows = [json.loads(line) for line in examples_path.read_text().splitlines() if line.strip()]
    cfg_path = Path(args.config) if args.config else examples_path.with_suffix(".config.json")
    fields = json.loads(cfg_path.read_text())
    fields["targets"] = tuple(fields.get("targets", LORA_TARGETS))
    fields["keep_steps"] = tuple(fields.get("keep_steps", ()))
    cfg = LoraTrainConfig(**fields)
    lm = load_model(args.model, device="cpu" if not torch.cuda.is_available() else None)
    res = train_lora(lm, [(r["prompt"], r["response"]) for r in rows], cfg, args.out,
                     init_adapter=args.init_adapter)
    print(f"adapter: {res.adapter_dir} ({res.tokens:,} tokens, {res.seconds:.0f} s)")


if __name__ == "__main__":
    main()
