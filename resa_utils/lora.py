"""The one LoRA training path (distillation, rejection sampling, and later SAE-Tuning and SFT):
`peft` adapters trained by transformers' `Trainer`, so checkpoint/resume, gradient
accumulation, logging and multi-GPU `accelerate launch` come from the library. The loss is
next-token CE on response tokens only by default; a method with another loss (Resa's KL)
passes `loss_fn`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraTrainConfig:
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
    """Share of the steps with a linear lr warm-up (in [0, 1))."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    """Gradient clipping (Resa: 1.0)."""
    seed: int = 0
    save_steps: int = 50
    """Optimizer steps between checkpoints (resume picks up the last one)."""
    logging_steps: int = 5

    def __post_init__(self) -> None:
        checks = [(self.r >= 1, f"r={self.r} must be >= 1"), (self.alpha > 0, "alpha must be > 0"),
                  (0 <= self.dropout < 1, f"dropout={self.dropout} must be in [0, 1)"),
                  (self.lr > 0, f"lr={self.lr} must be > 0"),
                  (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
                  (self.max_length >= 2, f"max_length={self.max_length} must be >= 2"),
                  (self.max_steps > 0 or self.epochs > 0, "set epochs > 0 or max_steps > 0")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"LoraTrainConfig: {msg}")


@dataclass
class LoraResult:
    adapter_dir: Path
    history: list[dict] = field(default_factory=list)
    """Trainer log rows: step, loss, learning_rate, grad_norm."""
    seconds: float = 0.0
    tokens: int = 0
    """Tokens processed (all positions, the forward's cost)."""
    flops: float = 0.0
    """Training FLOPs, 4 · model params · tokens: the forward (2NT) plus the backward's
    activation gradients (2NT); the frozen weights get no weight gradients."""


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


def train_lora(lm, examples: list[tuple[str, str]], cfg: LoraTrainConfig, out_dir: str | Path,
               loss_fn: Callable | None = None, progress: bool = True) -> LoraResult:
    """Train LoRA adapters on `lm.model` and save them to `out_dir/adapter`; checkpoints in
    `out_dir/checkpoints` make a rerun resume (a finished run returns at once).

    `loss_fn(model, inputs) -> loss` replaces the response-only CE (inputs hold input_ids,
    attention_mask and labels). The adapters stay attached to `lm.model` afterwards.
    """
    from transformers import Trainer, TrainingArguments

    from .atomic import read_json, write_json

    out_dir = Path(out_dir)
    adapter = out_dir / "adapter"
    done = out_dir / "result.json"
    rows = tokenize_examples(lm.tokenizer, examples, cfg.max_length)
    model = add_lora(lm.model, cfg)
    if done.exists() and read_json(done).get("cfg") == _cfg_json(cfg):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(adapter / "adapter_model.safetensors")))
        lm.model = model
        info = read_json(done)
        return LoraResult(adapter, info["history"], info["seconds"], info["tokens"], info["flops"])

    class _Trainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if loss_fn is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = loss_fn(model, inputs)
            return (loss, None) if return_outputs else loss

    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
        data_seed=cfg.seed, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=2, logging_steps=cfg.logging_steps, report_to="none",
        disable_tqdm=not progress, remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
    )
    trainer = _Trainer(model=model, args=args, train_dataset=rows,
                       data_collator=_collate(lm.tokenizer.pad_token_id))
    resume = any((out_dir / "checkpoints").glob("checkpoint-*"))
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - t0
    model.save_pretrained(str(adapter))
    steps = trainer.state.global_step
    tokens = int(sum(len(r["input_ids"]) for r in rows) * steps * cfg.batch_size * cfg.grad_accum
                 / max(1, len(rows)))
    n_params = sum(p.numel() for p in model.parameters())
    history = [{k: v for k, v in row.items() if isinstance(v, (int, float))}
               for row in trainer.state.log_history if "loss" in row]
    result = LoraResult(adapter, history, seconds, tokens, 4.0 * n_params * tokens)
    write_json(done, {"cfg": _cfg_json(cfg), "history": history, "seconds": seconds,
                      "tokens": tokens, "flops": result.flops})
    lm.model = model
    return result


def _cfg_json(cfg: LoraTrainConfig) -> dict:
    d = asdict(cfg)
    d["targets"] = list(d["targets"])
    return d
