"""Whole-model weights saved by `save_pretrained` (full fine-tuning), copied into a live model:
the one loader both the training path (`lora`) and the registered models (`adapters`) use."""

from __future__ import annotations

from pathlib import Path

import torch


def load_full_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Copy `folder/model.safetensors` into `model` (same architecture); a tied weight (the LM
    head sharing the embeddings) may be absent from the file, since its twin brings it."""
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / "model.safetensors"))
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = sorted(set(state) - set(params) - {n for n, _ in model.named_buffers()})
    if unknown:
        raise ValueError(f"weights in {folder} do not fit this model: {len(unknown)} unknown, e.g. {unknown[0]}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same names, other shapes
        raise ValueError(f"weights in {folder} do not fit this model: {str(err)[:300]}") from None
    loaded = {id(params[k]) for k in state if k in params}
    missing = [k for k in result.missing_keys if k in params and id(params[k]) not in loaded]
    if missing:
        raise ValueError(f"weights in {folder} do not fit this model ({len(missing)} missing, e.g. {missing[0]})")
