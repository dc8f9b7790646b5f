"""Experiment tracking: one `start_run(notebook, params)` that opens a W&B run (offline unless
the user chose another `WANDB_MODE`) and mirrors everything under `results/<notebook>/`:
`metrics.json`, `figures/*.png` and `tables/*.csv`, each written atomically."""

from __future__ import annotations

import math
import os
import platform
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .atomic import atomic_path, write_json

RESULTS_ENV = "RESA_RESULTS_DIR"


def repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding `pyproject.toml`; else cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "resa_utils").is_dir():
            return folder
    return here


def results_root() -> Path:
    """$RESA_RESULTS_DIR, else `<repo>/results`."""
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else repo_root() / "results"


class Run:
    """A W&B run plus its mirror folder `results/<notebook>/`."""

    def __init__(self, notebook: str, params: dict, out_dir: Path, wandb_run=None):
        self.notebook = notebook
        self.params = dict(params)
        self.out_dir = out_dir
        self.wandb = wandb_run
        self.metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------ logging
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log scalars to W&B (a time series when `step` is given)."""
        if self.wandb is not None:
            self.wandb.log(_scalars(metrics), step=step)

    def record(self, **metrics: Any) -> None:
        """Add final metrics: kept for `metrics.json` and set on the W&B summary."""
        self.metrics.update(metrics)
        if self.wandb is not None:
            for key, value in _scalars(_flatten(metrics)).items():
                self.wandb.summary[key] = value
        self._write_metrics(status="running")

    def save_figure(self, fig, name: str, dpi: int = 120) -> Path:
        """Save `fig` as `figures/<name>.png` and log it to W&B."""
        path = self.out_dir / "figures" / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        if self.wandb is not None:
            import wandb

            self.wandb.log({f"figures/{name}": wandb.Image(str(path))})
        return path

    def save_table(self, df, name: str) -> Path:
        """Save a pandas DataFrame as `tables/<name>.csv` and log it as a W&B table."""
        path = self.out_dir / "tables" / f"{name}.csv"
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
        if self.wandb is not None:
            import wandb

            self.wandb.log({f"tables/{name}": wandb.Table(dataframe=df.reset_index(drop=True))})
        return path

    def log_sae(self, sae, name: str, folder: Path | None = None) -> Path:
        """Save an SAE (cfg.json + sae_weights.safetensors) and log it as a W&B artifact.

        Weights go to `folder` (default: the W&B run's files, not `results/`, to keep it small).
        """
        from .models import cache_dir

        base = folder or (Path(self.wandb.dir) if self.wandb is not None
                          else cache_dir() / "saes" / self.notebook)
        path = sae.save(Path(base) / "saes" / name)
        if self.wandb is not None:
            import wandb

            art = wandb.Artifact(name=f"{self.notebook}-{name}".replace("/", "-"), type="sae",
                                 metadata={k: v for k, v in sae.cfg.to_dict().items()
                                           if k != "metadata"})
            art.add_dir(str(path))
            self.wandb.log_artifact(art)
        return path

    # ------------------------------------------------------------------ closing
    def _write_metrics(self, status: str) -> Path:
        payload = {
            "notebook": self.notebook,
            "status": status,
            "params": self.params,
            "metrics": self.metrics,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "wandb": None if self.wandb is None else {
                "mode": os.environ.get("WANDB_MODE", "offline"), "id": self.wandb.id,
                "dir": str(self.wandb.dir), "project": self.wandb.project},
        }
        return write_json(self.out_dir / "metrics.json", payload)

    def finish(self) -> Path:
        """Write the final `metrics.json` and close the W&B run."""
        path = self._write_metrics(status="finished")
        if self.wandb is not None:
            self.wandb.finish()
        return path


_PARAM_TYPES = (bool, int, float, str, list, tuple, dict, type(None))


def notebook_params(namespace: dict) -> dict:
    """The parameters a notebook ran with: the plain-valued globals defined so far (call it
    right after the parameters cell), leaving out IPython's own (`In`, `Out`, `_...`)."""
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and k not in ("In", "Out") and isinstance(v, _PARAM_TYPES)}


def start_run(notebook: str, params: dict, project: str = "resa-replications",
              out_dir: str | Path | None = None) -> Run:
    """Open a W&B run for `notebook` (offline by default; `WANDB_MODE` decides otherwise) and
    the results folder `results/<notebook>/`. Never waits on the network in offline mode."""
    out = Path(out_dir) if out_dir is not None else results_root() / notebook
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    wandb_run = None
    if os.environ["WANDB_MODE"] != "disabled":
        try:
            import wandb

            # W&B writes under <dir>/wandb/: by default <repo>/wandb/offline-run-*
            wandb_dir = Path(os.environ.get("WANDB_DIR", repo_root()))
            wandb_dir.mkdir(parents=True, exist_ok=True)
            wandb_run = wandb.init(project=project, name=notebook, group=notebook,
                                   config=_flatten(params), dir=str(wandb_dir), reinit="finish_previous")
        except Exception as err:  # tracking must never stop the science
            warnings.warn(f"W&B unavailable ({type(err).__name__}: {err}); logging to "
                          f"{out} only", stacklevel=2)
    return Run(notebook, params, out, wandb_run)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


def _scalars(d: dict) -> dict:
    """Keep the entries W&B can plot as numbers or short strings."""
    out = {}
    for key, value in d.items():
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()
        if isinstance(value, (int, str)):  # bool is an int
            out[key] = value
        elif isinstance(value, float):
            out[key] = value if math.isfinite(value) else str(value)
    return out
