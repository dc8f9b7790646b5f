"""Resa's SAE-Tuning (Wang et al. 2025, paper 1): a frozen SAE replaces one block's output with
its reconstruction (no error term), and LoRA adapters are trained through it to match the frozen
target model, `KL(p_target ‖ p_target+LoRA+SAE)` over every token of packed answer-only chunks.
At test time the SAE is removed and the adapter merged. Also: the data packing, the checks that
catch a mismatched SAE or adapter before compute, held-out losses for choosing the lr, the
"reasoning features" of the paper's transparency section, and notebook 01's steps (evaluations,
the SAEs, the tuning runs, the lr rule, the tables, the costs and the comparison with the paper).

Content rows (`lm.content.ContentRule`): the SAEs train and are measured on content rows only, and
every splice (SAE-Tuning's, the held-out losses', the spliced KL's) leaves the block's own output
at the positions the rule leaves out (special tokens, position 0 of each packed chunk, an ordinary
token that acts as an attention sink, and norm outliers), since the SAE never learned them.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from resa_utils.data.tasks import SYSTEM_PROMPT, Problem
from resa_utils.lm.activations import ActivationCache, decoder_layers, parse_hook, resid_hook, run_with_cache, splice
from resa_utils.lm.content import ContentRule, clean_positions, keep_clean
from resa_utils.lm.lora import LoraResult, LoraTrainConfig, train_lora
from resa_utils.methods.distill import ModelEval, accuracy_row, evaluate_model, lift
from resa_utils.sae import SAE, TrainConfig

LOSSES = ("kl", "ce")


RESA_TEXT = "User:\n {question}\n\nAssistant:\n <think> {answer} </think>\n<answer> Answer: {answer}</answer>"
"""The authors' SAE-Tuning text after the system prompt: question and final answer, no steps."""

SFT_RESPONSE = "think: \n{answer}\n answer: {answer}"
"""The authors' SFT control's response (TRL SFT in the chat template, no packing)."""


def tuning_texts(problems: list[Problem], system: str = SYSTEM_PROMPT) -> list[str]:
    """The authors' SAE-Tuning texts: the R1-style system prompt, then `RESA_TEXT`."""
    texts = [RESA_TEXT.format(question=p.question, answer=p.answer) for p in problems]
    return [f"{system}\n\n{t}" for t in texts] if system else texts


def sft_examples(problems: list[Problem], make_prompt: Callable) -> list[tuple[str, str]]:
    """The authors' SFT control: `(chat prompt, "think: \\n{A}\\n answer: {A}")` pairs, the loss
    on the response only, one problem per row (no packing)."""
    return [(make_prompt(p), SFT_RESPONSE.format(answer=p.answer)) for p in problems]


def by_length(problems: list[Problem]) -> list[Problem]:
    """`problems` ordered by question length (stable): a generation batch runs until its longest
    answer ends, so batches of like problems finish sooner. Accuracy does not depend on the order."""
    return sorted(problems, key=lambda p: len(p.question))


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


def rule_key(rule: ContentRule | None) -> dict | None:
    """The content rule as JSON values, for the keys of resumable results (None: no rule)."""
    return None if rule is None else asdict(rule)


@contextmanager
def sae_spliced(model: torch.nn.Module, layer: int, sae: SAE | None, rule: ContentRule | None = None,
                ids_BT: torch.Tensor | None = None, special_ids=(), through_sae: bool = True):
    """Inside the block, decoder block `layer` outputs `sae(output)` (no error term); the SAE's
    own weights are frozen. `through_sae`: gradients flow through the SAE to earlier layers;
    False (the authors' code, the SAE under no_grad): the block's output is cut from the graph,
    so only what comes after the splice trains. `sae=None`: no splice.
    With a content `rule`, the positions it leaves out of the batch `ids_BT` (`special_ids`: a
    tokenizer or token ids; position 0; rows above `max_norm_ratio` times the batch's median norm)
    keep the block's own output (`content.clean_positions`): the SAE never learned them."""
    if sae is None:
        yield
        return
    check_sae_fits(sae, model, layer)
    if rule is not None and rule.enabled and ids_BT is None:
        raise ValueError("a splice under a content rule needs the batch's input_ids (ids_BT) to find the "
                         "positions it leaves clean")
    sae.requires_grad_(False)
    param = next(_base(model).parameters())
    sae.to(device=param.device)

    def recon(acts_BTD: torch.Tensor) -> torch.Tensor:
        return sae(acts_BTD.float()).to(acts_BTD.dtype)

    def recon_content(acts_BTD: torch.Tensor) -> torch.Tensor:
        clean_BT = clean_positions(acts_BTD.detach(), ids_BT.to(acts_BTD.device), special_ids, rule)
        return keep_clean(recon, clean_BT)(acts_BTD)

    fn = recon_content if rule is not None and rule.enabled else recon

    def cut(acts_BTD: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fn(acts_BTD.detach())

    with splice(_base(model), resid_hook(layer), fn if through_sae else cut):
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


def kl_loss_fn(layer: int, sae: SAE | None, rule: ContentRule | None = None, special_ids=(),
               through_sae: bool = True):
    """Resa's loss for `train_lora`: the teacher is the same model with its adapter disabled and no
    splice, run in the same step without grad; the student has the adapter on and the SAE spliced
    (leaving the positions `rule` leaves out clean, and `through_sae` as in `sae_spliced`)."""

    def loss_fn(model, inputs: dict) -> torch.Tensor:
        ids, am = inputs["input_ids"], inputs.get("attention_mask")
        with torch.no_grad(), _adapter_off(model):
            teacher = model(input_ids=ids, attention_mask=am).logits
        with sae_spliced(model, layer, sae, rule, ids, special_ids, through_sae):
            student = model(input_ids=ids, attention_mask=am).logits
        return kl_to_teacher(student, teacher, am)

    return loss_fn


def ce_loss_fn(layer: int, sae: SAE | None, rule: ContentRule | None = None, special_ids=()):
    """Next-token CE on every token, with the SAE spliced (or plain LoRA SFT for `sae=None`)."""

    def loss_fn(model, inputs: dict) -> torch.Tensor:
        with sae_spliced(model, layer, sae, rule, inputs["input_ids"], special_ids):
            return model(**inputs).loss

    return loss_fn


def sae_tune(lm, chunks_NT: torch.Tensor, cfg: LoraTrainConfig, out_dir: str | Path,
             sae: SAE | None, layer: int, loss: str = "kl", progress: bool = True,
             rule: ContentRule | None = ContentRule(), through_sae: bool = False) -> LoraResult:
    """Train LoRA on `lm` through the spliced `sae` (None: no splice) with Resa's KL or CE; the
    adapter is saved in `out_dir/adapter` and stays attached (unmerged). Checkpointed and
    resumable as every `train_lora` run. `result.flops` adds the KL teacher's forward (2NT).
    The splice leaves the positions the content `rule` leaves out clean (None: it covers every
    position); with an SAE the rule is part of the run's key, so a run under another rule is not
    reused. `through_sae` (the KL only): False, the authors' setting, trains only the LoRA after
    the splice; True lets the gradient through the SAE to every block."""
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: use one of {LOSSES}")
    if sae is not None:
        check_sae_fits(sae, lm.model, layer)
        n_layers = len(decoder_layers(_base(lm.model)))
        if loss == "kl" and not through_sae and layer == n_layers - 1:
            raise ValueError(f"layer={layer} is the last block: with the splice under no_grad (through_sae=False) "
                             "no adapter comes after it, so nothing would train; pick an earlier block")
    else:
        check_layer(lm.model, layer)
    fn = (kl_loss_fn(layer, sae, rule, lm.tokenizer, through_sae) if loss == "kl"
          else ce_loss_fn(layer, sae, rule, lm.tokenizer))
    extra = {"model": weights_fingerprint(lm.model), "loss": loss, "layer": layer,
             "sae": None if sae is None else weights_fingerprint(sae),
             **({} if sae is None else {"content_rule": rule_key(rule), "through_sae": through_sae})}
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
                 batch_size: int = 4, rule: ContentRule | None = ContentRule()) -> float:
    """The training objective on held-out chunks (adapter on, SAE spliced, the positions `rule`
    leaves out clean), the stated criterion for the lr sweep: mean KL to the adapter-off, unspliced
    model, or mean next-token CE. On a plain model (no adapter) the KL is the SAE's spliced KL:
    nats per token that replacing the block's output with the reconstruction costs."""
    fn = (kl_loss_fn if loss == "kl" else ce_loss_fn)(layer, sae, rule, lm.tokenizer)
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


# --------------------------------------------------------------------------- the notebook's steps


@dataclass
class Evaluator:
    """Greedy evaluations of models on the first problems of one held-out set, each resumable in
    the sweep file `sweep_path(f"eval_{label}")` and keyed by the exact weights it read."""

    problems: list[Problem]
    make_prompt: Callable
    sweep_path: Callable[[str], Path]
    """Names a sweep file (`Run.sweep_path`)."""
    setup: dict
    """What else keys the batches (seed, task, difficulty, max_new_tokens)."""
    max_new_tokens: int
    batch_size: int
    record: Callable[..., None] | None = None
    """Called with each model's `<label>/pass@1` and `<label>/mean_tokens` (`Run.record`)."""
    done: dict[str, ModelEval] = field(default_factory=dict)
    """Every evaluation so far, by label, in the order they ran."""

    def __call__(self, label: str, lm, n: int | None = None, verbose: bool = True) -> ModelEval:
        """Evaluate `lm` on the first `n` problems (all for None); recorded and kept in `done`."""
        setup = {**self.setup, "weights": weights_fingerprint(lm.model)}
        ev = evaluate_model(lm, label, self.problems[:n], self.make_prompt, self.sweep_path(f"eval_{label}"),
                            setup, self.max_new_tokens, self.batch_size)
        self.done[label] = ev
        if self.record is not None:
            self.record(**{f"{label}/pass@1": ev.row["pass@1"], f"{label}/mean_tokens": ev.row["mean tokens"]})
        if verbose:
            print(ev.summary())
        return ev


def harvest(folder: Path, lm, chunks_NT: torch.Tensor, heldout_NT: torch.Tensor,
            hooks: list[str]) -> tuple[tuple[ActivationCache, ActivationCache], float]:
    """`((train cache, held-out cache), seconds of the training cache's build)`: `lm`'s activations
    at `hooks` over the SAE chunks and the held-out chunks, in `<folder>_train` / `<folder>_eval`."""
    folder = Path(folder)
    t0 = time.perf_counter()
    train = ActivationCache.build(folder.with_name(folder.name + "_train"), lm, chunks_NT, hooks)
    seconds = time.perf_counter() - t0
    return (train, ActivationCache.build(folder.with_name(folder.name + "_eval"), lm, heldout_NT, hooks)), seconds


@dataclass
class TrainedSAEs:
    """The SAEs of the notebook, by `(model, hook)`, and their sweep rows (fvu, l0, dead_frac, seconds)."""

    rows: pd.DataFrame
    saes: dict[tuple[str, str], SAE]


def train_saes(sweep_path: Path, caches: dict[str, tuple[ActivationCache, ActivationCache]],
               hooks: dict[str, list[str]], cfg: TrainConfig, sae_dir: Path,
               rule: ContentRule | None = ContentRule()) -> TrainedSAEs:
    """One TopK SAE per model and hook (`hooks[model]`) on that model's cached activations,
    resumable as sweep rows in `sweep_path`; a row whose saved SAE is gone is trained again.
    Training and the held-out fvu / l0 / dead_frac read the content rows of `rule` (None: every
    row); the rule is in each row's config, so a row trained under another rule is not reused."""
    from functools import partial

    from resa_utils.core.sweep import config_key, run_sweep
    from resa_utils.sae.train import CacheJob, train_cache_job

    jobs, configs = {}, []
    for who, hks in hooks.items():
        train, held = caches[who]
        for h in hks:
            c = {"model": who, "hook": h, "cfg": vars(cfg), "data": train.manifest["fingerprint"],
                 "content_rule": rule_key(rule)}
            jobs[config_key(c)] = CacheJob(str(train.folder), str(held.folder), h, cfg,
                                           str(Path(sae_dir) / f"sae_{who}_{h}_{config_key(c)[:12]}"), {"model": who},
                                           rule=rule)
            configs.append(c)
    save_dirs = {(c["model"], c["hook"]): jobs[config_key(c)].save_dir for c in configs}

    def saved(row: dict) -> bool:
        return (Path(save_dirs.get((row["model"], row["hook"]), Path(sae_dir) / "none")) / "cfg.json").exists()

    rows = run_sweep(sweep_path, configs, partial(train_cache_job, jobs=jobs), desc="SAEs", valid=saved)
    return TrainedSAEs(rows, {(c["model"], c["hook"]): SAE.load(jobs[config_key(c)].save_dir) for c in configs})


RULE_OFF = ContentRule(enabled=False)
"""The content rule turned off: every position spliced, every row read."""


@torch.no_grad()
def spliced_kl(lm, chunks_NT: torch.Tensor, layer: int, sae: SAE, rules: dict[str, ContentRule | None],
               batch_size: int = 4) -> dict[str, float]:
    """`{name: mean KL(p_clean ‖ p_spliced)}` in nats per token over `chunks_NT`: `sae` replaces block
    `layer`'s output of the plain model `lm`, leaving clean the positions each of `rules` leaves
    out (`sae_spliced`). One clean pass per batch serves every rule."""
    totals, n = {name: 0.0 for name in rules}, 0
    for a in range(0, chunks_NT.shape[0], batch_size):
        ids = chunks_NT[a:a + batch_size].to(lm.device)
        clean = lm.model(input_ids=ids).logits
        for name, rule in rules.items():
            with sae_spliced(lm.model, layer, sae, rule, ids, lm.tokenizer):
                totals[name] += float(kl_to_teacher(lm.model(input_ids=ids).logits, clean)) * ids.numel()
        n += ids.numel()
    return {name: t / max(n, 1) for name, t in totals.items()}


def reasoning_feature_table(saes: dict[int, SAE], acts_by_layer: dict[int, torch.Tensor],
                            is_tag_T: torch.Tensor, ids_T: torch.Tensor | None = None, special_ids=(),
                            rule: ContentRule | None = None) -> pd.DataFrame:
    """Per layer, the count of reasoning features (`reasoning_features`) of that layer's SAE on the
    prompt's activations `acts_by_layer[layer]` `[T, D]`; the first token (an attention sink) is
    skipped, and with a content `rule` (and the prompt's `ids_T`) every position it leaves out at
    that layer (special tokens, norm outliers: rows the SAE never learned)."""
    if rule is not None and rule.enabled and ids_T is None:
        raise ValueError("a reasoning-feature count under a content rule needs the prompt's ids (ids_T)")
    rows = []
    for layer, sae in saes.items():
        acts_TD = acts_by_layer[layer].float().cpu()
        skip_T = torch.zeros_like(is_tag_T)
        if rule is not None and rule.enabled:
            skip_T = clean_positions(acts_TD[None], ids_T.cpu()[None], special_ids, rule)[0]
        skip_T[0] = True
        lat_TF = sae.encode(acts_TD)
        feats = reasoning_features(lat_TF, is_tag_T, skip_T)
        rows.append({"layer": layer, "reasoning features": len(feats),
                     "latents active at tags": int((lat_TF[is_tag_T] > 0).any(0).sum()), "features": feats.tolist()[:20]})
    return pd.DataFrame(rows)


@dataclass
class NoopCheck:
    """The KL run without the SAE: its largest loss, largest |LoRA B| and largest logit change."""

    steps: int
    max_loss: float
    b_max: float
    logit_change: float

    @property
    def holds(self) -> bool:
        """The adapter never moved and the merged model's logits are the target's, exactly."""
        return self.logit_change == 0 and self.b_max == 0


def noop_check(lm, chunks_NT: torch.Tensor, probe_NT: torch.Tensor, cfg: LoraTrainConfig,
               out_dir: Path, layer: int) -> NoopCheck:
    """Train `lm` with Resa's KL and nothing spliced in (student = teacher), merge, and measure how
    far the adapter and the logits on `probe_NT` moved: the objective's no-op, shown."""
    with torch.no_grad():
        clean_NTV = lm.model(input_ids=probe_NT).logits
    res = sae_tune(lm, chunks_NT, replace(cfg, logging_steps=1), out_dir, None, layer, "kl")  # every step's loss
    b_max = max(float(p.detach().abs().max()) for n, p in lm.model.named_parameters() if "lora_B" in n)
    merge_adapter(lm)
    with torch.no_grad():
        diff = float((lm.model(input_ids=probe_NT).logits - clean_NTV).abs().max())
    return NoopCheck(cfg.max_steps, max(r["loss"] for r in res.history), b_max, diff)


def per_layer_table(answers: dict[int, pd.DataFrame], features: pd.DataFrame) -> pd.DataFrame:
    """Per sweep layer, SAE-Tuning's pass@1 with its Wilson interval (from graded `answers`) beside
    the layer's reasoning-feature count."""
    counts = features.set_index("layer")["reasoning features"]
    rows = []
    for layer, df in answers.items():
        r = accuracy_row(f"block {layer}", df)
        rows.append({"layer": layer, "pass@1": r["pass@1"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                     "reasoning features": int(counts.loc[layer])})
    return pd.DataFrame(rows)


def harvest_flops(n_params: int, deepest_layer: int, n_layers: int, n_tokens: int) -> float:
    """Forward FLOPs of a harvest that stops after block `deepest_layer`: 2·N·T times the share of blocks run."""
    return 2.0 * n_params * (deepest_layer + 1) / n_layers * n_tokens


def sae_train_flops(d_model: int, d_sae: int, n_tokens: int) -> float:
    """FLOPs of training a dense-encoder SAE: 6·d·F·T (forward and backward of encoder and decoder)."""
    return 6.0 * d_model * d_sae * n_tokens


def examples_text(shown: pd.DataFrame, problems: list[Problem], width: int = 400) -> str:
    """`distill.example_outputs` for reading: each question with every model's output (cut at `width` characters)."""
    by_uid = {p.uid: p for p in problems}
    out = []
    for uid, grp in shown.groupby("uid", sort=False):
        out.append("=" * 100 + f" \n{by_uid[uid].question}   (answer {by_uid[uid].answer})")
        for r in grp.itertuples():
            out.append(f"--- {r.model} ({'correct' if r.correct else 'wrong'}):\n{r.output.strip()[:width]}")
    return "\n".join(out)


# --------------------------------------------------------------------------- ours vs the paper


def ci_text(row: dict) -> str:
    """`pass@1 [ci_low, ci_high]` to three decimals."""
    return f"{row['pass@1']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"




# --------------------------------------------------------------------------- tuning runs


ARMS = ("sae", "sft")
"""Notebook 01's trained arms: "sae", SAE-Tuning (Resa's KL through the spliced SAE, on the packed
chunks); "sft", the authors' SFT control (CE on `sft_examples`, no SAE)."""


def tune_config(r: int, alpha: float, lr: float, steps: int, batch_size: int, max_length: int, seed: int,
                keep: tuple[int, ...] = ()) -> LoraTrainConfig:
    """The authors' schedule: a constant `lr` from the first step (no warm-up, no decay), LoRA
    dropout 0.05, clipping at 1.0, `steps` optimizer steps; the weights after each of `keep`
    (below `steps`) are kept as models of their own."""
    return LoraTrainConfig(r=r, alpha=alpha, dropout=0.05, lr=lr, max_steps=steps, batch_size=batch_size,
                           max_length=max_length, seed=seed, warmup_ratio=0.0, lr_schedule="constant",
                           save_steps=max(1, min(50, steps)), logging_steps=1,
                           keep_steps=tuple(sorted(k for k in keep if 0 < k < steps)))


def run_label(arm: str, lr: float, seed: int, steps: int, layer: int) -> str:
    """A run's folder name: arm, block (SAE-Tuning only), lr, seed and steps."""
    where = f"_L{layer}" if arm == "sae" else ""
    return f"{arm}{where}_lr{lr:g}_seed{seed}_steps{steps}"


@dataclass
class Tuning:
    """Notebook 01's LoRA runs on the target (`ARMS`), each at a constant lr, checkpointed and
    resumable (a finished run is reused); the kept checkpoints are models of their own."""

    target: str
    """The model every run starts from (a `load_model` name)."""
    chunks_NT: torch.Tensor
    """SAE-Tuning's packed chunks `[N, T]`."""
    sft_rows: list[tuple[str, str]]
    """The SFT control's `(prompt, response)` examples."""
    work_dir: Path
    """Run `label` keeps its adapter and checkpoints in `work_dir / label`."""
    r: int
    alpha: float
    batch_size: int
    """Chunks (SAE-Tuning) or examples (SFT) per optimizer step."""
    max_length: int
    """Tokens per SAE-Tuning row (the chunk length)."""
    sft_max_length: int = 512
    """Tokens per SFT example (one problem each, no packing: none is cut at this length here)."""
    rule: ContentRule | None = ContentRule()
    """The content rule of every splice: the positions it leaves out keep the block's output."""
    through_sae: bool = False
    """False (the authors' code): the SAE runs under no_grad, so only the LoRA after the splice trains."""
    runs: dict[str, tuple[LoraResult, int]] = field(default_factory=dict)
    """Each run's result and its number of steps, by label."""

    def train(self, arm: str, lr: float, steps: int, seed: int = 0, keep: tuple[int, ...] = (),
              sae: SAE | None = None, layer: int = -1, progress: bool = True) -> str:
        """Train (or reuse) one run of `arm`; returns its label (`run_label`)."""
        from resa_utils.lm.models import load_model

        if arm not in ARMS:
            raise ValueError(f"arm={arm!r}: use one of {ARMS}")
        if arm == "sae" and sae is None:
            raise ValueError("SAE-Tuning needs the SAE it splices in (sae=None)")
        label = run_label(arm, lr, seed, steps, layer)
        lm = load_model(self.target)
        length = self.max_length if arm == "sae" else self.sft_max_length
        cfg = tune_config(self.r, self.alpha, lr, steps, self.batch_size, length, seed, keep)
        out = Path(self.work_dir) / label
        if arm == "sae":
            res = sae_tune(lm, self.chunks_NT, cfg, out, sae, layer, "kl", progress, self.rule, self.through_sae)
        else:
            res = train_lora(lm, self.sft_rows, cfg, out, progress=progress)
        self.runs[label] = (res, steps)
        return label

    def weights(self, label: str, step: int) -> Path:
        """The adapter folder of run `label` after `step` optimizer steps (a kept checkpoint, or the
        final adapter)."""
        res, steps = self.runs[label]
        folder = res.adapter_dir if step == steps else Path(self.work_dir) / label / f"step-{step}"
        if not folder.exists():
            raise FileNotFoundError(f"run {label} kept no weights at step {step} (kept: its last step "
                                    f"{steps} and the keep steps it was trained with)")
        return folder

    def tuned(self, label: str, step: int):
        """The target with run `label`'s adapter at `step` merged in: the plain tuned model."""
        from resa_utils.lm.models import load_model

        return attach_merged(load_model(self.target), self.weights(label, step))


# --------------------------------------------------------------------------- measures of a tuned model


def trace_batch(tokenizer, prompts: list[str], outputs: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(ids_BT, attention_BT, mask_BT)`: each prompt with its output, right-padded; `mask_BT` marks
    the positions whose next token is an output token (where a model's own answer is read)."""
    rows, marks = [], []
    for p, o in zip(prompts, outputs, strict=True):
        pi = tokenizer(p)["input_ids"]
        oi = tokenizer(o, add_special_tokens=False)["input_ids"]
        rows.append(pi + oi)
        marks.append([0] * (len(pi) - 1) + [1] * len(oi) + [0])
    if not rows or not any(any(m) for m in marks):
        raise ValueError("trace_batch got no output tokens: evaluate a model first")
    n = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    attn, mask = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, marks)):
        ids[i, :len(r)], attn[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1, torch.tensor(m, dtype=torch.bool)
    return ids, attn, mask


@torch.no_grad()
def pair_kl(teacher: torch.nn.Module, student: torch.nn.Module, ids_BT: torch.Tensor,
            attention_BT: torch.Tensor | None = None, mask_BT: torch.Tensor | None = None,
            splice: tuple | None = None, batch_size: int = 8) -> float:
    """Mean `KL(p_teacher ‖ p_student)` in nats per position of `mask_BT` (every attended position
    for None). `splice = (layer, sae, rule, special_ids)` splices the SAE into the student (as
    SAE-Tuning does), making this the training objective of a tuned model."""
    attn = torch.ones_like(ids_BT) if attention_BT is None else attention_BT
    mask = attn.bool() if mask_BT is None else mask_BT & attn.bool()
    device = next(student.parameters()).device
    total, n = 0.0, 0
    for a in range(0, ids_BT.shape[0], batch_size):
        ids, am, m = (t[a:a + batch_size].to(device) for t in (ids_BT, attn, mask))
        log_t = teacher(input_ids=ids, attention_mask=am).logits.float().log_softmax(-1)
        ctx = sae_spliced(student, splice[0], splice[1], splice[2], ids, splice[3]) if splice else nullcontext()
        with ctx:
            log_s = student(input_ids=ids, attention_mask=am).logits.float().log_softmax(-1)
        kl_BT = (log_t.exp() * (log_t - log_s)).sum(-1)
        total += float(kl_BT[m].sum())
        n += int(m.sum())
    return total / max(n, 1)


@torch.no_grad()
def sae_quality(lm, sae: SAE, layer: int, chunks_NT: torch.Tensor, rule: ContentRule | None,
                batch_size: int = 8) -> dict:
    """How well `sae` stands in for block `layer` of `lm` on `chunks_NT`: `fvu` over the content
    rows (`rule`), `spliced KL` (nats per token, KL of the clean model to the spliced one, the
    positions the rule leaves out kept clean) and the share of rows the rule `left out`."""
    from resa_utils.sae.metrics import fvu

    hook = resid_hook(layer)
    xs, n_rows = [], 0
    for a in range(0, chunks_NT.shape[0], batch_size):
        ids = chunks_NT[a:a + batch_size].to(lm.device)
        acts = run_with_cache(lm.model, ids, [hook])[hook].float()
        keep = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        if rule is not None and rule.enabled:
            keep = ~clean_positions(acts, ids, lm.tokenizer, rule)
        xs.append(acts[keep].cpu())
        n_rows += ids.numel()
    x_ND = torch.cat(xs)
    kl = pair_kl(lm.model, lm.model, chunks_NT, splice=(layer, sae, rule, lm.tokenizer), batch_size=batch_size)
    return {"fvu": fvu(x_ND, sae(x_ND)), "spliced KL": kl, "left out": 1 - len(x_ND) / max(n_rows, 1)}


@torch.no_grad()
def change_norms(tuned: torch.nn.Module, target: torch.nn.Module) -> dict[str, float]:
    """The Frobenius norm of each matrix's change from `target` to `tuned` (the weights a merged
    adapter moved; untouched ones are left out)."""
    base = dict(target.named_parameters())
    return {n: float((p - base[n]).norm()) for n, p in tuned.named_parameters()
            if p.ndim == 2 and not torch.equal(p, base[n])}


@torch.no_grad()
def random_change(model: torch.nn.Module, norms: dict[str, float], rank: int, seed: int) -> torch.nn.Module:
    """Adds to each matrix named in `norms` a random rank-`rank` change (a Gaussian `B A`) scaled
    to that norm: a LoRA-shaped change as large as a trained one, module by module, in a random
    direction. In place; returns `model`."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for name in sorted(norms):
        w = params[name]
        d = torch.randn(w.shape[0], rank, generator=g) @ torch.randn(rank, w.shape[1], generator=g)
        w += (d * (norms[name] / d.norm())).to(device=w.device, dtype=w.dtype)
    return model


def random_change_kls(teacher: torch.nn.Module, student: torch.nn.Module, norms: dict[str, float], rank: int,
                      seeds: list[int], batch: tuple[torch.Tensor, ...]) -> list[float]:
    """The null of a change's damage: `pair_kl(teacher, student + random_change(seed), *batch)`
    for each seed, `student`'s weights restored after each."""
    params = dict(student.named_parameters())
    saved = {n: params[n].detach().clone() for n in norms}
    out = []
    for s in seeds:
        random_change(student, norms, rank, s)
        out.append(pair_kl(teacher, student, *batch))
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)
    return out


def null_share(value: float, null: list[float]) -> float:
    """The share of null draws at or below `value` (0: below every draw)."""
    return sum(v <= value for v in null) / max(len(null), 1)


def checkpoint_row(arm: str, lr: float, step: int, dev: dict, damage_kl: float, spliced: float, seed: int = 0) -> dict:
    """One point of the lr x step grid: dev pass@1 with its interval (SAE removed, adapter merged),
    the damage `KL(target ‖ tuned)` on the target's own dev traces, and the training objective
    `KL(target ‖ tuned + SAE)` on held-out chunks."""
    return {"arm": arm, "lr": lr, "seed": seed, "step": step, "dev pass@1": dev["pass@1"], "dev ci_low": dev["ci_low"],
            "dev ci_high": dev["ci_high"], "dev lenient": dev["lenient pass@1"], "damage KL": damage_kl, "spliced KL": spliced}


def choose_point(grid: pd.DataFrame, arm: str) -> dict:
    """The rule fixed before the run: among `arm`'s checkpoints, the highest dev pass@1; ties go
    to the smaller lr, then the earlier step (the smaller change)."""
    rows = grid[(grid.arm == arm) & (grid.step > 0)]
    if rows.empty:
        raise ValueError(f"the grid has no checkpoint of arm {arm!r}")
    return rows.sort_values(["dev pass@1", "lr", "step"], ascending=[False, True, True]).iloc[0].to_dict()


def mcnemar_table(answers: dict[str, pd.DataFrame], ref: str = "target") -> pd.DataFrame:
    """Each model's graded answers against `ref`'s on the same problems (paired by uid): pass@1 of
    both, the points between them, the discordant counts and the exact McNemar p, strict and lenient."""
    from resa_utils.core.stats import mcnemar

    base = answers[ref].set_index("uid")
    rows = []
    for name, df in answers.items():
        if name == ref:
            continue
        d = df.set_index("uid").loc[base.index]
        row = {"model": name, "n": len(d)}
        for col, tag in (("correct", ""), ("lenient", "lenient ")):
            m = mcnemar(d[col], base[col])
            row.update({f"{tag}pass@1": d[col].mean(), f"{tag}{ref} pass@1": base[col].mean(),
                        f"{tag}points": 100 * (d[col].mean() - base[col].mean()),
                        f"{tag}only model": m["a_only"], f"{tag}only {ref}": m["b_only"], f"{tag}p": m["p"]})
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- cost


def source_extra_cost(costs00: Path | None, source_meta: dict, target_meta: dict) -> tuple[float, float]:
    """What making the source from the target cost, `(wall s, FLOPs)`: notebook 00's distillation
    of the source (its `costs.csv` row `distill seed <s> ...`) times the share of its steps after
    the target's checkpoint. NaN without that table or the two models' registry facts."""
    nan = (float("nan"), float("nan"))
    total = source_meta.get("train", {}).get("total_steps")
    step, seed = target_meta.get("step"), source_meta.get("seed")
    if costs00 is None or not Path(costs00).exists() or not total or step is None or seed is None:
        return nan
    costs = pd.read_csv(costs00)
    row = costs[costs.stage.str.startswith(f"distill seed {seed}")]
    if row.empty:
        return nan
    share = (total - step) / total
    return float(row["wall s"].iloc[0]) * share, float(row.FLOPs.iloc[0]) * share


def cost_table(extra: tuple[float, float], parts: dict[str, tuple[float, float]]) -> tuple[pd.DataFrame, float, float]:
    """The cost table (the source's extra training, then SAE-Tuning's `parts` `{stage: (wall s,
    FLOPs)}`) and the ratios source's extra training / SAE-Tuning's sum, wall-clock and FLOPs."""
    rows = [{"stage": "source's extra training (notebook 00: distillation after the target's checkpoint)",
             "wall s": extra[0], "FLOPs": extra[1]}]
    rows += [{"stage": k, "wall s": s, "FLOPs": f} for k, (s, f) in parts.items()]
    s, f = sum(v[0] for v in parts.values()), sum(v[1] for v in parts.values())
    return pd.DataFrame(rows), extra[0] / s, extra[1] / f


# --------------------------------------------------------------------------- premises and claims


@dataclass
class Bars:
    """The bars fixed in the parameters cell before the run."""

    min_gap: float = 10.0
    """Points of pass@1 the source must lead the target by, with disjoint 95% intervals."""
    max_fvu: float = 0.2
    """The SAE's fraction of variance unexplained on content rows of evaluation traces, at most."""
    max_spliced_kl: float = 0.5
    """Nats per token that splicing the SAE into the target costs on evaluation traces, at most."""
    alpha: float = 0.05
    """The level of the paired McNemar tests."""


def gap_from_00(preconditions00: Path | None) -> dict | None:
    """Notebook 00's measured premise "the source beats the target on the dev split" (`value`,
    `met`), or None without its table."""
    if preconditions00 is None or not Path(preconditions00).exists():
        return None
    df = pd.read_csv(preconditions00)
    row = df[df.precondition.str.startswith("the source beats the target")]
    return None if row.empty else {"value": float(row.value.iloc[0]), "met": row.met.iloc[0] == "yes"}


CLAIMS = ("lift", "share of source", "target SAE", "SFT below target", "no-op", "per layer", "portability", "cost")
"""The comparison's claims in order (their numbers, from 1, are what preconditions gate)."""


def _gate(*names: str) -> str:
    return " ".join(str(CLAIMS.index(n) + 1) for n in names)


def preconditions(gap00: dict | None, test_gap: dict, quality: dict, bars: Bars) -> list[dict]:
    """Notebook 01's premises: the source is stronger (notebook 00's dev split, and this notebook's
    test split), and the source's SAE stands in for the target's block on evaluation traces."""
    transfer = _gate("lift", "share of source", "per layer")
    g = float("nan") if gap00 is None else gap00["value"]
    return [
        {"precondition": "the source beats the target (notebook 00's dev split)", "measure": "points (disjoint 95% CI)",
         "threshold": f">= {bars.min_gap:g}", "value": g, "met": "yes" if gap00 and gap00["met"] and g >= bars.min_gap else "no",
         "gates": transfer},
        {"precondition": "the source beats the target (this notebook's test split)", "measure": "points (disjoint 95% CI)",
         "threshold": f">= {bars.min_gap:g}", "value": test_gap["points"],
         "met": "yes" if test_gap["disjoint"] and test_gap["points"] >= bars.min_gap else "no", "gates": _gate("share of source")},
        {"precondition": "the source's SAE reconstructs the target's evaluation traces", "measure": "FVU on content rows",
         "threshold": f"<= {bars.max_fvu:g}", "value": quality["fvu"], "met": "yes" if quality["fvu"] <= bars.max_fvu else "no",
         "gates": transfer},
        {"precondition": "splicing the SAE into the target costs little on evaluation traces", "measure": "spliced KL (nats/token)",
         "threshold": f"<= {bars.max_spliced_kl:g}", "value": quality["spliced KL"],
         "met": "yes" if quality["spliced KL"] <= bars.max_spliced_kl else "no", "gates": transfer},
    ]


def _paired_held(points: list[float], ps: list[float], alpha: float, sign: int = 1) -> str:
    """"yes": every seed moves in the claimed direction (`sign`) with McNemar p < alpha; "partly":
    every seed in that direction, not all significant; else "no"."""
    right = [sign * p > 0 for p in points]
    if all(right) and all(p < alpha for p in ps):
        return "yes"
    return "partly" if all(right) else "no"


def paper_comparison(acc: dict[str, dict], mcn: pd.DataFrame, *, headline: list[str], sft: str, chosen: dict,
                     noop: NoopCheck, corr: dict, by_layer: pd.DataFrame, ratio: tuple[float, float],
                     null: dict, bars: Bars, n_test: int) -> list[dict]:
    """The paper's claims against ours (`CLAIMS` order). `acc`: accuracy rows by model name;
    `mcn`: `mcnemar_table`; `headline`: the SAE-Tuning models (one per training seed); `chosen`:
    the grid's choice per arm; `null`: the damage KL of the headline against its random null."""
    m = mcn.set_index("model")
    pts = [float(m.loc[h, "points"]) for h in headline]
    ps = [float(m.loc[h, "p"]) for h in headline]
    tuned = sum(acc[h]["pass@1"] for h in headline) / len(headline)
    src = acc["source"]["pass@1"]
    s_pts, s_p = float(m.loc[sft, "lenient points"]), float(m.loc[sft, "lenient p"])
    c, cs = chosen["sae"], chosen["sft"]
    seeds = ", ".join(f"{h}: {ci_text(acc[h])}, {p_:+.1f} points, McNemar p = {q:.3g}" for h, p_, q in zip(headline, pts, ps))
    counts = by_layer["reasoning features"]
    few = corr["n"] < 4 or counts.nunique() < 2
    return [
        {"claim": "SAE-Tuning lifts the target (Resa-STILL 47.28 vs R1-Distill 41.18)", "metric": "pass@1 points (tuned - target), seed 0",
         "paper": 6.1, "ours": round(pts[0], 1), "held": _paired_held(pts, ps, bars.alpha),
         "note": f"target {ci_text(acc['target'])}; {seeds}; n = {n_test}; lr {c['lr']:g}, step {int(c['step'])} chosen on dev accuracy "
                 f"(the paper chose on its test benchmarks); 'yes' = every seed higher with McNemar p < {bars.alpha:g}; "
                 f"its damage KL on the target's traces ({null['value']:.3g}) is above {100 * null['share']:.0f}% of {null['n']} random "
                 f"LoRA-shaped changes of the same per-module norm"},
        {"claim": "SAE-Tuning reaches ~98% of the source's accuracy (Resa-STILL 47.28 / Tina 48.16)",
         "metric": "tuned pass@1 as % of the source's (mean over seeds)", "paper": 98.2,
         "ours": round(100 * tuned / src, 1) if src else float("nan"), "held": "yes" if src and tuned >= 0.95 * src else "no",
         "note": f"source {ci_text(acc['source'])}; 'yes' at >= 95%"},
        {"claim": "an SAE trained on the target itself works as well (48.06 vs 47.28)", "metric": "pass@1 points (target SAE - source SAE)",
         "paper": 0.8, "ours": float("nan"), "held": "not tested", "note": "not run in this profile (its budget goes to seeds, the lr grid and the controls)"},
        {"claim": "SFT on the same answer-only data falls below the target (39.00 vs 41.18)", "metric": "lenient pass@1 points (SFT - target)",
         "paper": -2.2, "ours": round(s_pts, 1), "held": _paired_held([s_pts], [s_p], bars.alpha, sign=-1),
         "note": f"the authors' SFT format ('think: ... answer: ...') has no <answer> tag, so lenient grading (the last number); "
                 f"strict {float(m.loc[sft, 'points']):+.1f} points; McNemar p = {s_p:.3g}; lr {cs['lr']:g}, step {int(cs['step'])} chosen on dev"},
        {"claim": "the KL objective without the SAE is a no-op (why SFT is the control)", "metric": "largest |logit change| after training",
         "paper": 0.0, "ours": noop.logit_change, "held": "yes" if noop.holds else "no",
         "note": f"{noop.steps} steps; largest loss {noop.max_loss:g}, largest |LoRA B| {noop.b_max:g}"},
        {"claim": "per layer, the count of reasoning features does not predict SAE-Tuning accuracy", "metric": "Spearman rho over layers",
         "paper": float("nan"), "ours": round(corr["rho"], 2), "held": "not tested" if few else ("yes" if corr["low"] <= 0 <= corr["high"] else "no"),
         "note": f"blocks {by_layer.layer.tolist()}, counts {counts.tolist()}, pass@1 {[round(v, 3) for v in by_layer['pass@1']]}; "
                 f"{corr['n']} layers give no interval ('not tested'); the paper compares the two curves, not a correlation"},
        {"claim": "an adapter trained through a sibling model works on the target (47.86 vs 47.28)", "metric": "pass@1 points (ported - tuned directly)",
         "paper": 0.6, "ours": float("nan"), "held": "not tested", "note": "not run in this profile (its budget goes to seeds, the lr grid and the controls)"},
        {"claim": "SAE-Tuning costs >2000x less than the RL that made the source", "metric": "source's extra training / SAE-Tuning side (FLOPs)",
         "paper": 2000.0, "ours": round(ratio[1], 2), "held": "not tested",
         "note": f"wall-clock {ratio[0]:.2f}x; our source's extra training is more distillation steps, not RL: not comparable"},
    ]
