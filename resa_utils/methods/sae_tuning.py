"""Resa's SAE-Tuning (Wang et al. 2025, paper 1): a frozen SAE replaces one block's output with
its reconstruction (no error term), and LoRA adapters are trained through it to match the frozen
target model, `KL(p_target ‖ p_target+LoRA+SAE)` over every token of packed answer-only chunks.
At test time the SAE is removed and the adapter merged. Also: the data packing, the checks that
catch a mismatched SAE or adapter before compute, held-out losses for choosing the lr, and the
"reasoning features" of the paper's transparency section.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from resa_utils.data.tasks import SYSTEM_PROMPT, Problem, answer_only
from resa_utils.lm.activations import decoder_layers, resid_hook, splice
from resa_utils.lm.lora import LoraResult, LoraTrainConfig, train_lora
from resa_utils.sae import SAE

LOSSES = ("kl", "ce")


def tuning_texts(problems: list[Problem], system: str = SYSTEM_PROMPT) -> list[str]:
    """Resa's training texts: the R1-style system prompt, then question and final answer in the
    answer-only template (no reasoning steps)."""
    return [f"{system}\n\n{answer_only(p)}" if system else answer_only(p) for p in problems]


def pack_chunks(tokenizer, texts: list[str], length: int) -> torch.Tensor:
    """`texts` tokenized, joined with EOS after each and cut into full chunks `[N, length]`
    (the remainder is dropped): Resa's packing, with no loss masking."""
    if length < 2:
        raise ValueError(f"chunk length={length} must be >= 2")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=True)["input_ids"] + ([eos] if eos is not None else [])
    n = len(ids) // length
    if n == 0:
        raise ValueError(f"{len(texts)} texts give {len(ids)} tokens, less than one chunk of "
                         f"{length}: use more problems or shorter chunks")
    return torch.tensor(ids[: n * length]).view(n, length)


def chunk_rows(chunks_NT: torch.Tensor) -> list[dict]:
    """Chunks as `train_lora` rows; labels on every token (CE) and ignored by the KL."""
    if chunks_NT.ndim != 2 or chunks_NT.shape[0] == 0:
        raise ValueError(f"the training set is empty (chunks of shape {tuple(chunks_NT.shape)}): "
                         "use more problems or shorter chunks")
    return [{"input_ids": r.tolist(), "labels": r.tolist()} for r in chunks_NT]


def check_layer(model: torch.nn.Module, layer: int) -> None:
    """Refuse a block index out of range for `model`."""
    n_layers = len(decoder_layers(_base(model)))
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer} is out of range: the model has {n_layers} blocks (0..{n_layers - 1})")


def check_sae_fits(sae: SAE, model: torch.nn.Module, layer: int) -> None:
    """Refuse an SAE whose width differs from the model's hidden size, or a layer out of range."""
    check_layer(model, layer)
    d = int(_base(model).config.hidden_size)
    if sae.cfg.d_in != d:
        raise ValueError(f"the SAE reads d_in={sae.cfg.d_in} but the model's hidden size is {d}: "
                         "train the SAE on this model family's residual stream")


def _base(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def sae_spliced(model: torch.nn.Module, layer: int, sae: SAE | None):
    """Inside the block, decoder block `layer` outputs `sae(output)` (no error term); the SAE's
    own weights are frozen, gradients flow through it to earlier layers. `sae=None`: no splice."""
    if sae is None:
        yield
        return
    check_sae_fits(sae, model, layer)
    sae.requires_grad_(False)
    param = next(_base(model).parameters())
    sae.to(device=param.device)

    def recon(acts_BTD: torch.Tensor) -> torch.Tensor:
        return sae(acts_BTD.float()).to(acts_BTD.dtype)

    with splice(_base(model), resid_hook(layer), recon):
        yield


class _TeacherKL(torch.autograd.Function):
    """Mean `KL(p_teacher ‖ p_student)` over weighted tokens, with the exact analytic gradient
    `softmax(student) − p_teacher` (per token weight): it is exactly zero where the two logits are
    equal, so a student that matches its teacher gets no update at all. (Autograd through
    `log_softmax` leaves ~1e-9 of rounding there, which Adam scales up to lr-sized steps.)"""

    @staticmethod
    def forward(ctx, student_BTV, teacher_BTV, weight_BT):
        log_s, log_t = student_BTV.float().log_softmax(-1), teacher_BTV.float().log_softmax(-1)
        p_t = log_t.exp()
        kl_BT = (p_t * (log_t - log_s)).sum(-1)
        ctx.save_for_backward(log_s, p_t, weight_BT)
        ctx.dtype = student_BTV.dtype
        return (kl_BT * weight_BT).sum()

    @staticmethod
    def backward(ctx, grad):
        log_s, p_t, w = ctx.saved_tensors
        g = (log_s.exp() - p_t) * (w * grad).unsqueeze(-1)
        return g.to(ctx.dtype), None, None


def kl_to_teacher(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor,
                  mask_BT: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (unmasked) tokens of `KL(p_teacher ‖ p_student)` in nats; no gradient reaches
    the teacher, and none reaches a student equal to it."""
    shape = student_logits_BTV.shape[:-1]
    m = torch.ones(shape) if mask_BT is None else mask_BT.float()
    m = m.to(student_logits_BTV.device)
    return _TeacherKL.apply(student_logits_BTV, teacher_logits_BTV.detach(), m / m.sum().clamp_min(1))


def _adapter_off(model: torch.nn.Module):
    """The teacher's context: the peft adapter disabled (nothing to do for a plain model)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


def kl_loss_fn(layer: int, sae: SAE | None):
    """Resa's loss for `train_lora`: the teacher is the same model with its adapter disabled and no
    splice, run in the same step without grad; the student has the adapter on and the SAE spliced."""

    def loss_fn(model, inputs: dict) -> torch.Tensor:
        ids, am = inputs["input_ids"], inputs.get("attention_mask")
        with torch.no_grad(), _adapter_off(model):
            teacher = model(input_ids=ids, attention_mask=am).logits
        with sae_spliced(model, layer, sae):
            student = model(input_ids=ids, attention_mask=am).logits
        return kl_to_teacher(student, teacher, am)

    return loss_fn


def ce_loss_fn(layer: int, sae: SAE | None):
    """Next-token CE on every token, with the SAE spliced (or plain LoRA SFT for `sae=None`)."""

    def loss_fn(model, inputs: dict) -> torch.Tensor:
        with sae_spliced(model, layer, sae):
            return model(**inputs).loss

    return loss_fn


def sae_tune(lm, chunks_NT: torch.Tensor, cfg: LoraTrainConfig, out_dir: str | Path,
             sae: SAE | None, layer: int, loss: str = "kl", progress: bool = True) -> LoraResult:
    """Train LoRA on `lm` through the spliced `sae` (None: no splice) with Resa's KL or CE; the
    adapter is saved in `out_dir/adapter` and stays attached (unmerged). Checkpointed and
    resumable as every `train_lora` run. `result.flops` adds the KL teacher's forward (2NT)."""
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: use one of {LOSSES}")
    if sae is not None:
        check_sae_fits(sae, lm.model, layer)
    else:
        check_layer(lm.model, layer)
    fn = (kl_loss_fn if loss == "kl" else ce_loss_fn)(layer, sae)
    extra = {"model": weights_fingerprint(lm.model), "loss": loss, "layer": layer,
             "sae": None if sae is None else weights_fingerprint(sae)}
    res = train_lora(lm, [], cfg, out_dir, loss_fn=fn, progress=progress, rows=chunk_rows(chunks_NT),
                     extra_key=extra)
    if loss == "kl":
        n_params = sum(p.numel() for p in lm.model.parameters())
        res.flops += 2.0 * n_params * res.tokens
    return res


@torch.no_grad()
def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short SHA-256 of every parameter and buffer (names, shapes and values): what keys a
    training or an evaluation to the exact weights it read, so a cached result is never reused
    for other weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def merge_adapter(lm):
    """Remove the peft wrapper, folding the adapter into the weights (the plain tuned model)."""
    if hasattr(lm.model, "merge_and_unload"):
        lm.model = lm.model.merge_and_unload()
    lm.model.eval()
    return lm


def check_adapter_fits(model: torch.nn.Module, adapter_dir: str | Path) -> dict:
    """The adapter's config, after checking every adapted module exists in `model` with the
    shapes the adapter expects; a mismatch names the module and both shapes."""
    from safetensors import safe_open

    folder = Path(adapter_dir)
    cfg_path, w_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.exists() or not w_path.exists():
        raise FileNotFoundError(f"{folder} is not a peft adapter folder (adapter_config.json + adapter_model.safetensors)")
    modules = dict(_base(model).named_modules())
    with safe_open(str(w_path), "pt") as f:
        for key in f.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            name = key.split(".lora_")[0].removeprefix("base_model.model.")
            mod = modules.get(name)
            if mod is None or not hasattr(mod, "in_features"):
                raise ValueError(f"adapter {folder.name!r} adapts {name!r}, which {type(_base(model)).__name__} "
                                 "does not have: it was trained on another architecture")
            shape = tuple(f.get_slice(key).get_shape())
            want = mod.in_features if ".lora_A." in key else mod.out_features
            got = shape[1] if ".lora_A." in key else shape[0]
            if got != want:
                raise ValueError(f"adapter {folder.name!r} expects {name} with {got} features where the model "
                                 f"has {want}: it was trained on another model size")
    return json.loads(cfg_path.read_text())


def attach_merged(lm, adapter_dir: str | Path):
    """`lm` with the adapter in `adapter_dir` (checked to fit) merged into its weights."""
    from peft import PeftModel

    check_adapter_fits(lm.model, adapter_dir)
    lm.model = PeftModel.from_pretrained(lm.model, str(adapter_dir)).merge_and_unload().eval()
    return lm


@torch.no_grad()
def heldout_loss(lm, chunks_NT: torch.Tensor, layer: int, sae: SAE | None, loss: str = "kl",
                 batch_size: int = 4) -> float:
    """The training objective on held-out chunks (adapter on, SAE spliced), the stated criterion
    for the lr sweep: mean KL to the adapter-off, unspliced model, or mean next-token CE."""
    fn = (kl_loss_fn if loss == "kl" else ce_loss_fn)(layer, sae)
    total, n = 0.0, 0
    for a in range(0, chunks_NT.shape[0], batch_size):
        ids = chunks_NT[a:a + batch_size].to(lm.device)
        value = fn(lm.model, {"input_ids": ids, "labels": ids})
        total += float(value) * ids.shape[0]
        n += ids.shape[0]
    return total / max(n, 1)


def tag_mask(tokenizer, text: str, tags: tuple[str, ...] = ("<think>", "</think>")) -> tuple[torch.Tensor, torch.Tensor]:
    """`(ids_T, is_tag_T)`: `text` tokenized (with the tokenizer's special tokens) and which tokens
    overlap an occurrence of one of `tags` (a tag may span several tokens)."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    spans = []
    for tag in tags:
        start = text.find(tag)
        while start >= 0:
            spans.append((start, start + len(tag)))
            start = text.find(tag, start + 1)
    if not spans:
        raise ValueError(f"the text contains none of the tags {tags}")
    is_tag = [any(a < e and b > s for s, e in spans) and b > a for a, b in enc["offset_mapping"]]
    return torch.tensor(enc["input_ids"]), torch.tensor(is_tag)


def reasoning_features(latents_TF: torch.Tensor, is_tag_T: torch.Tensor,
                       ignore_T: torch.Tensor | None = None) -> torch.Tensor:
    """Resa's "reasoning features": latents active at a tag token and at no other token of the
    prompt (positions in `ignore_T`, e.g. BOS, are skipped). Returns their indices."""
    active = latents_TF > 0
    keep = torch.ones_like(is_tag_T) if ignore_T is None else ~ignore_T
    at_tag = active[is_tag_T & keep].any(0)
    elsewhere = active[~is_tag_T & keep].any(0)
    return (at_tag & ~elsewhere).nonzero().flatten()


def spearman_interval(x: list[float], y: list[float], z: float = 1.96) -> dict:
    """Spearman's rho with a Fisher-z interval (se = sqrt(1.06 / (n - 3)), Fieller et al. 1957);
    the interval is NaN below 4 points."""
    import math

    from resa_utils.core.stats import spearman

    n = len(x)
    rho = spearman(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
    if n < 4:
        return {"rho": rho, "low": float("nan"), "high": float("nan"), "n": n}
    r = max(min(rho, 0.999999), -0.999999)
    se = math.sqrt(1.06 / (n - 3))
    return {"rho": rho, "low": math.tanh(math.atanh(r) - z * se), "high": math.tanh(math.atanh(r) + z * se), "n": n}
