"""Models registered by name as a registry base plus a LoRA adapter (notebook 00's
`<base>-reasoner` and `<base>-reasoner-rft`): kept in the cache, loaded by `load_model` as the
base with the adapter merged in, and checked against their base before loading.

Layout: `$RESA_CACHE_DIR/adapters/<name>/` holds peft's `adapter_config.json` and
`adapter_model.safetensors`, plus `resa_adapter.json` (base name, the base's config facts,
provenance and headline metrics).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from resa_utils.core.atomic import publish, read_json, write_json

META = "resa_adapter.json"
SUFFIXES = ("-reasoner", "-reasoner-rft")
"""Names notebook 00 registers (`<base><suffix>`)."""


def adapters_root() -> Path:
    from resa_utils.core.paths import cache_dir

    return cache_dir() / "adapters"


def adapter_path(name: str) -> Path:
    return adapters_root() / name


def registered() -> list[str]:
    """Names of the adapter models present in the cache."""
    root = adapters_root()
    return sorted(p.name for p in root.iterdir() if (p / META).exists()) if root.exists() else []


def is_registered(name: str) -> bool:
    return (adapter_path(name) / META).exists()


def base_of(name: str) -> str:
    """The registry base model an adapter model is built on."""
    return read_json(adapter_path(name) / META)["base"]


def _base_facts(model) -> dict:
    c = model.config
    return {"model_type": c.model_type, "n_layers": int(c.num_hidden_layers),
            "d_model": int(c.hidden_size), "vocab": int(c.vocab_size)}


def register_adapter(name: str, lm, adapter_src: str | Path, info: dict | None = None) -> Path:
    """Copy the peft adapter in `adapter_src` (trained on `lm`, the base) into the cache as
    `name`, recording the base's name and shape facts; replaces an earlier `name` atomically."""
    from resa_utils.lm.registry import REGISTRY

    if name in REGISTRY:
        raise ValueError(f"{name!r} is a registry model: pick another name for the adapter")
    adapter_src = Path(adapter_src)
    if not (adapter_src / "adapter_config.json").exists():
        raise ValueError(f"{adapter_src} holds no peft adapter (adapter_config.json)")
    base = getattr(lm, "base_name", None) or lm.name
    final = adapter_path(name)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(adapter_src / f, tmp / f)
    write_json(tmp / META, {"name": name, "base": base, "base_facts": _base_facts(lm.model),
                            **(info or {})})
    publish(tmp, final)
    return final


def register_scaled(name: str, source: str, scale: float, info: dict | None = None) -> Path:
    """Register `name` as the registered adapter `source` with its weight change scaled by `scale`
    (every LoRA B multiplied by `scale`, so the merged model is base + scale * (B A) * alpha / r):
    a dose-response of the change a distillation made. Refuses a non-finite or negative scale."""
    import math

    from safetensors.torch import load_file, save_file

    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale={scale!r} must be a finite number >= 0")
    src = adapter_path(source)
    if not (src / META).exists():
        raise ValueError(f"{source!r} is not a registered adapter model: register it first")
    meta = read_json(src / META)
    final = adapter_path(name)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(src / "adapter_config.json", tmp / "adapter_config.json")
    weights = load_file(str(src / "adapter_model.safetensors"))
    scaled = {k: (v * scale if "lora_B" in k else v).contiguous() for k, v in weights.items()}
    if not any("lora_B" in k for k in weights):
        raise ValueError(f"{source!r} has no lora_B weights to scale")
    save_file(scaled, str(tmp / "adapter_model.safetensors"))
    write_json(tmp / META, {**meta, "name": name, "scaled_from": source, "scale": float(scale),
                            **(info or {})})
    publish(tmp, final)
    return final


def check_adapter(folder: Path, lm) -> dict:
    """The adapter's metadata, after checking it was trained on `lm`'s base model (by name and
    by config shape); a mismatch names both models."""
    meta = read_json(Path(folder) / META)
    base = getattr(lm, "base_name", None) or lm.name
    facts = _base_facts(lm.model)
    if meta["base"] != base or meta.get("base_facts", facts) != facts:
        raise ValueError(
            f"adapter {meta['name']!r} was trained on base model {meta['base']!r} "
            f"({meta.get('base_facts')}), not on {base!r} ({facts}): load it with "
            f"load_model({meta['name']!r}), or rerun notebook 00 with base_model={base!r}")
    return meta


def attach_adapter(lm, folder: str | Path, merge: bool = True):
    """Load the adapter in `folder` onto `lm` (checked against its base): merged into the
    weights by default (plain model, inference speed), else as a trainable peft model."""
    from peft import PeftModel

    folder = Path(folder)
    meta = check_adapter(folder, lm)
    model = PeftModel.from_pretrained(lm.model, str(folder), is_trainable=not merge)
    lm.model = model.merge_and_unload() if merge else model
    lm.model.eval()
    lm.base_name = meta["base"]
    lm.name = meta["name"]
    return lm


def missing_hint(name: str) -> str | None:
    """For a name notebook 00 would register but has not yet: how to make it (hub ids, with a
    '/', pass through to the hub instead)."""
    if "/" in name:
        return None
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return (f"{name!r} is made by notebook 00 and is not in the cache yet: run "
                    f"`python -m resa_utils.harness.run 00 -p base_model={name[:-len(suffix)]}` (or "
                    "`make reproduce`, which runs notebook 00 first)")
    return None
