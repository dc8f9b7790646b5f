"""Models registered by name on top of a registry base (notebook 00's `<base>-reasoner`, its
early checkpoint, second seed and scaled variants): kept in the cache, loaded by `load_model`,
and checked against their base before loading. Three kinds:

- "lora": a peft adapter (`adapter_config.json`, `adapter_model.safetensors`), merged on load;
- "full": every weight (`model.safetensors`, from `save_pretrained` after full fine-tuning);
- "scaled": no weights, only a registered source and a scale: loaded as
  base + scale * (source - base), a dose-response of the change a fine-tune made.

Each folder `$RESA_CACHE_DIR/adapters/<name>/` also holds `resa_adapter.json` (kind, base name,
the base's config facts, provenance and headline metrics).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from resa_utils.core.atomic import publish, read_json, write_json

META = "resa_adapter.json"
_MADE_BY_00 = r"-reasoner(?:-early|-seed\d+|-x\d+(?:\.\d+)?)?$"
"""Names notebook 00 registers: `<base>-reasoner`, `-reasoner-early`, `-reasoner-seed<k>`,
`-reasoner-x<scale>`."""
KINDS = ("lora", "full", "scaled")


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


def kind_of(name: str) -> str:
    """"lora", "full" or "scaled" (folders registered before kinds existed are LoRA)."""
    return read_json(adapter_path(name) / META).get("kind", "lora")


def register_adapter(name: str, lm, adapter_src: str | Path, info: dict | None = None) -> Path:
    """Copy the trained weights in `adapter_src` (on `lm`, the base) into the cache as `name`: a
    peft adapter folder ("lora") or a `save_pretrained` model folder ("full", full fine-tuning),
    recording the kind and the base's name and shape facts; replaces an earlier `name` atomically."""
    from resa_utils.lm.registry import REGISTRY

    if name in REGISTRY:
        raise ValueError(f"{name!r} is a registry model: pick another name for the adapter")
    adapter_src = Path(adapter_src)
    if (adapter_src / "adapter_config.json").exists():
        kind, files = "lora", ("adapter_config.json", "adapter_model.safetensors")
    elif (adapter_src / "model.safetensors").exists():
        kind, files = "full", ("model.safetensors",)
    else:
        raise ValueError(f"{adapter_src} holds neither a peft adapter (adapter_config.json) nor a "
                         "saved model (model.safetensors)")
    base = getattr(lm, "base_name", None) or lm.name
    final = adapter_path(name)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in files:
        shutil.copy2(adapter_src / f, tmp / f)
    write_json(tmp / META, {"name": name, "kind": kind, "base": base, "base_facts": _base_facts(lm.model),
                            **(info or {})})
    publish(tmp, final)
    return final


def register_scaled(name: str, source: str, scale: float, info: dict | None = None) -> Path:
    """Register `name` as base + `scale` * (`source` - base), with `source` a registered model of
    any kind: a dose-response of the change a distillation made (nothing but the recipe is stored;
    `load_model` computes the weights). Refuses a non-finite or negative scale."""
    import math

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
    write_json(tmp / META, {**meta, "name": name, "kind": "scaled", "scaled_from": source,
                            "scale": float(scale), **(info or {})})
    publish(tmp, final)
    return final


@torch.no_grad()
def scale_change(model: torch.nn.Module, source: torch.nn.Module, scale: float) -> None:
    """In place: every weight of `model` (the base) becomes base + scale * (source - base)."""
    src = dict(source.named_parameters(remove_duplicate=False))
    for n, p in model.named_parameters():  # a tied weight is visited once: its twin follows
        p.add_(src[n].to(p.dtype) - p, alpha=scale)


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
    """Load the registered weights in `folder` onto `lm` (checked against its base): a LoRA
    adapter merged into the weights by default (plain model, inference speed), else as a
    trainable peft model; a full model's weights replace the base's. ("scaled" models need their
    source: `models.load_model` builds them.)"""
    from peft import PeftModel

    folder = Path(folder)
    meta = check_adapter(folder, lm)
    kind = meta.get("kind", "lora")
    if kind == "scaled":
        raise ValueError(f"{meta['name']!r} is a scaled model: load it with load_model({meta['name']!r})")
    if kind == "full":
        from resa_utils.lm.weights import load_full_weights

        load_full_weights(lm.model, folder)
    else:
        model = PeftModel.from_pretrained(lm.model, str(folder), is_trainable=not merge)
        lm.model = model.merge_and_unload() if merge else model
    lm.model.eval()
    lm.base_name = meta["base"]
    lm.name = meta["name"]
    return lm


def missing_hint(name: str) -> str | None:
    """For a name notebook 00 would register but has not yet: how to make it (hub ids, with a
    '/', pass through to the hub instead)."""
    import re

    if "/" in name:
        return None
    m = re.search(_MADE_BY_00, name)
    if m is None:
        return None
    return (f"{name!r} is made by notebook 00 and is not in the cache yet: run "
            f"`python -m resa_utils.harness.run 00 -p base_model={name[:m.start()]}` (or "
            "`make reproduce`, which runs notebook 00 first)")
