"""Shared fixtures: an isolated cache/results folder per session and tiny random models."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    """Results, W&B and the activation/SAE caches go to a temp folder, so no state leaks in from
    earlier runs; only the converted real models (slow to rebuild) are shared, by a link."""
    from resa_utils.models import cache_dir

    root = tmp_path_factory.mktemp("resa")
    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    (root / "cache").mkdir()
    (root / "cache" / "models").symlink_to(models, target_is_directory=True)
    old = {k: os.environ.get(k) for k in ("RESA_RESULTS_DIR", "RESA_CACHE_DIR", "WANDB_MODE", "WANDB_DIR")}
    os.environ["RESA_CACHE_DIR"] = str(root / "cache")
    os.environ["RESA_RESULTS_DIR"] = str(root / "results")
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_DIR"] = str(root / "wandb")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_lm():
    from resa_utils.models import load_model

    return load_model("tiny-gemma3", device="cpu")


@pytest.fixture(scope="session")
def tiny_windows(tiny_lm):
    from resa_utils.data import load_texts, token_windows

    return token_windows(load_texts(), tiny_lm.tokenizer, 32, n_windows=24)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
