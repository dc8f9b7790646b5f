"""Shared set-up: an isolated cache/results/W&B folder per test session, tiny random models, and
the notebooks as nbval tests.

With `--nbval-lax` (as `make test` runs), every notebook is copied into `tests/_smoke_notebooks/`
with its `smoke` profile written into its parameters cell, and nbval runs each code cell of each
copy as a test item (`tests/_smoke_notebooks/05_gba_recovery.ipynb::Cell 4`), on the project's
kernel `resa`. Those items are marked `slow`, so `pytest -m "not slow"` is the fast unit loop.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

SMOKE_DIR = Path(__file__).parent / "_smoke_notebooks"
_ENV_KEYS = ("RESA_RESULTS_DIR", "RESA_CACHE_DIR", "WANDB_MODE", "WANDB_DIR", "HF_HUB_OFFLINE",
             "RESA_PROGRESS", "RESA_PROFILE")
_saved: dict[str, str | None] = {}


def pytest_configure(config):
    """Results, W&B and the activation/SAE caches go to a temp folder, so no state leaks in from
    earlier runs (the notebooks' kernels inherit it too); only the converted real models and the
    fetched corpora (slow to rebuild) are shared, by links. The hub is off: nothing waits on network time-outs."""
    from resa_utils.core.paths import cache_dir

    root = Path(tempfile.mkdtemp(prefix="resa-tests-"))
    config._resa_tmp = root
    (root / "cache").mkdir()
    for shared in ("models", "corpora"):  # converted models and fetched corpora: slow to rebuild
        (cache_dir() / shared).mkdir(parents=True, exist_ok=True)
        (root / "cache" / shared).symlink_to(cache_dir() / shared, target_is_directory=True)
    _saved.update({k: os.environ.get(k) for k in _ENV_KEYS})
    os.environ.update({"RESA_CACHE_DIR": str(root / "cache"), "RESA_RESULTS_DIR": str(root / "results"),
                       "WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb"),
                       "HF_HUB_OFFLINE": "1", "RESA_PROGRESS": "text", "RESA_PROFILE": "smoke"})
    if getattr(config.option, "nbval_lax", False) or getattr(config.option, "nbval", False):
        write_smoke_notebooks()


def pytest_unconfigure(config):
    for k, v in _saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(getattr(config, "_resa_tmp", ""), ignore_errors=True)


def write_smoke_notebooks() -> list[Path]:
    """Copies of every notebook with the smoke profile's values appended to its parameters cell
    (so the copy's cells line up with the original's)."""
    import nbformat
    from papermill.translators import translate_parameters

    from resa_utils.harness import run
    from resa_utils.harness.tracking import parameters_cell

    shutil.rmtree(SMOKE_DIR, ignore_errors=True)
    SMOKE_DIR.mkdir()
    out = []
    for name in run.list_notebooks():
        nb = nbformat.read(str(run.notebooks_dir() / f"{name}.ipynb"), as_version=4)
        params = run.load_params("smoke", name)
        cell = nb.cells[parameters_cell(nb)]
        cell.source += "\n" + translate_parameters("python", "python", params,
                                                   "# smoke profile (written by tests/conftest.py)")
        path = SMOKE_DIR / f"{name}.ipynb"
        nbformat.write(nb, str(path))
        out.append(path)
    return out


def pytest_collection_modifyitems(config, items):
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_lm():
    from resa_utils.lm.models import load_model

    return load_model("tiny-gemma3", device="cpu")


@pytest.fixture(scope="session")
def tiny_windows(tiny_lm):
    from resa_utils.data.corpora import load_texts
    from resa_utils.data.windows import token_windows

    return token_windows(load_texts(), tiny_lm.tokenizer, 32, n_windows=24)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
