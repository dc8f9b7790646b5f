"""Experiment tracking: `start_run(notebook, params)` opens a W&B run (offline unless the user
chose another `WANDB_MODE`) and a results folder for the run's profile.

Results by profile: only the reference profile (`cpu`) writes the committed folder
`results/<notebook>/`; every other profile writes `results/<profile>/<notebook>/` (git-ignored).
A run writes into a staging folder, `results/.staging/<profile>/<notebook>/`, which replaces the
published folder only when the notebook calls `Run.finish()`; a failed or interrupted run keeps
its partial output there (git-ignored) and the next run of that notebook and profile resumes
from it. Every file is written atomically.
"""

from __future__ import annotations

import ast
import atexit
import math
import os
import platform
import shutil
import subprocess
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from resa_utils.core.atomic import atomic_path, publish, read_json, write_json

RESULTS_ENV = "RESA_RESULTS_DIR"
NOTEBOOKS_ENV = "RESA_NOTEBOOKS_DIR"
PROFILE_ENV = "RESA_PROFILE"
REFERENCE_PROFILE = "cpu"
"""The profile whose finished runs replace the committed results in `results/<notebook>/`."""
CUSTOM_PROFILE = "custom"
"""Label of a run whose parameters differ from its profile's (edited in JupyterLab, say)."""
STAGING = ".staging"
RUNNER_LOCK_ENV = "RESA_RUNNER_LOCK"
"""Set by the runner in its kernel's environment: the lock file it holds for this run. A kernel
started by the runner leaves the lock and the publishing to it, and ends its W&B run as soon as
a cell fails (papermill stops there)."""
COMPARISON_COLUMNS = ["claim", "metric", "paper", "ours", "held", "note"]
HELD_VALUES = ("yes", "partly", "no", "not tested")
PRECONDITION_COLUMNS = ["precondition", "measure", "threshold", "value", "met", "gates"]
"""`tables/preconditions.csv`: what a claim's test needs to hold first (the source really is
stronger, the SAE is good enough to splice, ...); `met` is yes / no; `gates` lists, space-separated,
the 1-based rows of `paper_comparison.csv` that need it."""


def repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding `pyproject.toml`; else cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "resa_utils").is_dir():
            return folder
    return here


def notebooks_dir() -> Path:
    """$RESA_NOTEBOOKS_DIR (tests), else `<repo>/notebooks`: the notebooks and `params/`."""
    env = os.environ.get(NOTEBOOKS_ENV)
    return Path(env).expanduser() if env else repo_root() / "notebooks"


def results_root() -> Path:
    """$RESA_RESULTS_DIR, else `<repo>/results`."""
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else repo_root() / "results"


def results_dir(notebook: str, profile: str = REFERENCE_PROFILE) -> Path:
    """Published results of `notebook` under `profile`: `results/<notebook>/` for the reference
    profile, `results/<profile>/<notebook>/` for the others."""
    root = results_root()
    return root / notebook if profile == REFERENCE_PROFILE else root / profile / notebook


def staging_dir(notebook: str, profile: str = REFERENCE_PROFILE) -> Path:
    """Where an unfinished run of `notebook` under `profile` writes (git-ignored)."""
    return results_root() / STAGING / profile / notebook


def lock_path(notebook: str, profile: str = REFERENCE_PROFILE) -> Path:
    """The lock file of runs of `notebook` under `profile`: `results/.staging/<profile>/<notebook>.lock`."""
    return results_root() / STAGING / profile / f"{notebook}.lock"


# --------------------------------------------------------------------------- one run at a time


class RunBusy(RuntimeError):
    """Another live process runs the same notebook and profile; the message names it."""


class RunLock:
    """One run per notebook and profile: an exclusive `flock` on `lock_path(notebook, profile)`,
    whose file records the holder (PID, host, start time, command).

    The kernel drops a `flock` when its process dies, however it dies, so a lock file left by a
    killed run is stale: the next run takes it over (`self.stale` then describes the dead
    holder). Where the file system has no `flock`, a recorded holder counts as alive while its
    PID runs on this host."""

    def __init__(self, notebook: str, profile: str):
        self.notebook, self.profile = notebook, profile
        self.path = lock_path(notebook, profile)
        self.fd: int | None = None
        self.stale: dict | None = None

    def acquire(self) -> "RunLock":
        import fcntl
        import json
        import socket
        import sys

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunBusy(self.busy_message(holder)) from None
            except OSError:  # no flock on this file system: trust a live PID on this host
                holder = _read_holder(fd)
                if holder and _alive(holder):
                    os.close(fd)
                    raise RunBusy(self.busy_message(holder)) from None
            try:  # the holder may have removed the file between our open and our flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        self.stale = previous if previous and previous.get("pid") != os.getpid() else None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv) or sys.executable}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self.fd = fd
        return self

    def busy_message(self, holder: dict | None) -> str:
        holder = holder or {}
        who = (f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
               f"{holder.get('started', '?')} (`{holder.get('command', '?')}`)")
        return (f"{self.notebook} (profile {self.profile}) is already running: {who}. Wait for it "
                f"or stop it (kill {holder.get('pid', 'PID')}); if that process is gone, delete "
                f"the stale lock {self.path}")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()  # while still holding it, so nobody locks a file about to vanish
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict | None:
    import json

    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the recorded holder still runs (only decidable on this host; elsewhere: yes)."""
    import socket

    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def publish_folder(stage: Path, final: Path) -> None:
    """Replace `final` by `stage` so that a reader sees either the whole old folder or the whole
    new one: one atomic exchange of the two names (Linux `renameat2(RENAME_EXCHANGE)`), then the
    old folder (now at `stage`) is deleted. Where the exchange is unsupported, two renames
    (`core.atomic.publish`), during which `final` is briefly absent, never half-written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and _exchange(stage, final):
        shutil.rmtree(stage, ignore_errors=True)
        return
    publish(stage, final)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the paths `a` and `b`; False where the OS or file system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def check_writable(folder: Path, what: str, fix: str) -> None:
    """Refuse at once, in one line, a folder this run cannot write into (created if missing)."""
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".resa-write-check-"):
            pass
    except OSError as err:
        raise PermissionError(f"{what} {folder} is not writable ({err.strerror or err}): {fix}") from None


def wandb_dir() -> Path:
    """The folder W&B writes its runs under (`<dir>/wandb/offline-run-*`): $WANDB_DIR, else the repo."""
    return Path(os.environ.get("WANDB_DIR") or repo_root()).expanduser()


# --------------------------------------------------------------------------- provenance


def git_state(root: Path | None = None) -> dict:
    """`{"sha", "dirty"}` of the repository (sha 'unknown' outside git)."""
    root = root or repo_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        # content, not stat: a notebook JupyterLab re-saved (outputs, kernel metadata) compares
        # equal through the notebooks' clean filter (harness/nbclean.py), where `git status` can
        # still list it until the index is refreshed
        # (refreshing the index first: else a fresh checkout's notebooks go through the filter
        # on every call)
        subprocess.run(["git", "update-index", "-q", "--refresh"], cwd=root, capture_output=True, timeout=60)
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root,
                              capture_output=True, timeout=60)
        return {"sha": sha, "dirty": diff.returncode != 0}
    except (OSError, subprocess.SubprocessError):
        return {"sha": "unknown", "dirty": None}


def versions() -> dict:
    """Versions of the libraries a result depends on."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "resa_utils", "wandb", "sae-lens", "peft"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def model_hashes(params: dict) -> dict:
    """SHA256 of the weight files behind every registry model named in `params`."""
    from resa_utils.lm.registry import REGISTRY

    out = {}
    for key, value in params.items():
        names = value if isinstance(value, (list, tuple)) else [value]
        for name in names:
            if isinstance(name, str) and name in REGISTRY and REGISTRY[name].sha256:
                out[name] = REGISTRY[name].sha256
    return out


def parameters_cell(nb) -> int:
    """Index in `nb.cells` of the cell tagged `parameters` (papermill's convention)."""
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.metadata.get("tags", []):
            return i
    raise ValueError("the notebook has no cell tagged `parameters`")


def reference_params(notebook: str, profile: str) -> dict | None:
    """The parameters a run of `notebook` under `profile` has: the parameters cell's defaults
    overridden by `notebooks/params/<profile>/<notebook>.yaml`; None if either is unreadable."""
    import nbformat
    import yaml

    nb_dir = notebooks_dir()
    try:
        nb = nbformat.read(str(nb_dir / f"{notebook}.ipynb"), as_version=4)
        cell = nb.cells[parameters_cell(nb)]
        out = {}
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                out[node.targets[0].id] = ast.literal_eval(node.value)
        path = nb_dir / "params" / profile / f"{notebook}.yaml"
        out.update(yaml.safe_load(path.read_text()) or {})
        return out
    except (OSError, ValueError, SyntaxError):
        return None


def effective_profile(notebook: str, params: dict) -> str:
    """The run's profile label: `params['profile']` (else $RESA_PROFILE, else `cpu`), or
    `custom` when the parameters differ from that profile's, so an edited interactive run
    never replaces a profile's results."""
    profile = str(params.get("profile") or os.environ.get(PROFILE_ENV) or REFERENCE_PROFILE)
    ref = reference_params(notebook, profile)
    if ref is None:
        return profile
    ours = {k: v for k, v in params.items() if k != "profile"}
    differ = sorted(k for k in ours if k not in ref or _norm(ours[k]) != _norm(ref[k]))
    if differ:
        warnings.warn(f"{notebook}: parameters {differ} differ from profile {profile!r}, so this "
                      f"run is labelled {CUSTOM_PROFILE!r} and writes to "
                      f"{results_dir(notebook, CUSTOM_PROFILE)}", stacklevel=3)
        return CUSTOM_PROFILE
    return profile


def slug(name: str) -> str:
    """A file-name-safe form of a result's name: letters, digits, `.`, `_` and `-` kept, every
    other run of characters one `_` (`eval_target + SAE (src)` -> `eval_target_SAE_src`)."""
    import re

    out = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_")
    if not out:
        raise ValueError(f"result name {name!r} has no letter or digit to name a file with")
    return out


_GREEK = {"λ": "lambda", "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "eps",
          "η": "eta", "θ": "theta", "μ": "mu", "ρ": "rho", "σ": "sigma", "τ": "tau"}


def wandb_key(name: Any) -> str:
    """A W&B-safe key part: W&B reads `.` as nesting, so a decimal point becomes `p` and every
    other run of characters outside letters, digits, `_` and `-` one `_` (Greek letters are
    spelt out): `jumprelu_0.1` -> `jumprelu_0p1`, `λ=0.01` -> `lambda_0p01`."""
    import re

    text = str(name)
    for letter, latin in _GREEK.items():
        text = text.replace(letter, latin)
    text = re.sub(r"\.(?=\d)", "p", text)
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "_"


def wandb_keys(names: list) -> dict:
    """`{name: wandb_key(name)}`, made unique by a numeric suffix where two names collide."""
    out, used = {}, set()
    for name in names:
        key, n = wandb_key(name), 2
        while key in used:
            key, n = f"{wandb_key(name)}_{n}", n + 1
        out[name] = key
        used.add(key)
    return out


def _norm(value: Any) -> Any:
    """Tuples and lists compare equal (YAML gives lists, a notebook may write tuples)."""
    return [_norm(v) for v in value] if isinstance(value, (list, tuple)) else value


# --------------------------------------------------------------------------- the run


def _earlier_parts(stage: Path) -> list[float]:
    """The wall-clock seconds of each earlier session of a resumed run, from its staged
    `metrics.json` (empty for a fresh run), so `runtime_s` is the whole run, not its last part."""
    old = read_metrics(stage) if stage.is_dir() else None
    if not old or not old.get("runtime_s"):
        return []
    return [float(x) for x in old.get("runtime_parts_s") or [old["runtime_s"]]]


class Run:
    """A W&B run plus its results folder (staged until `finish`)."""

    def __init__(self, notebook: str, params: dict, profile: str, wandb_run=None):
        self.notebook = notebook
        self.params = dict(params)
        self.profile = profile
        self.final_dir = results_dir(notebook, profile)
        self.out_dir = staging_dir(notebook, profile)
        self.wandb = wandb_run
        self.lock: RunLock | None = None
        self.metrics: dict[str, Any] = {}
        self.status = "running"
        self.error: str | None = None
        self._sweeps_used: set[str] = set()  # file names handed out by sweep_path(); the rest are pruned at finish
        self.earlier_parts_s = _earlier_parts(self.out_dir)  # a resumed run's earlier sessions (seconds each)
        self.started = datetime.now(timezone.utc)
        self.provenance = {"profile": profile, "git": git_state(), "versions": versions(),
                           "model_sha256": model_hashes(params)}

    # ------------------------------------------------------------------ folders
    @property
    def sweep_dir(self) -> Path:
        """Resumable sweep rows (JSONL) of this run."""
        return self.out_dir / "sweeps"

    def sweep_path(self, name: str) -> Path:
        """`sweeps/<slug(name)>.jsonl`: the resumable rows of one sweep."""
        path = self.sweep_dir / f"{slug(name)}.jsonl"
        self._sweeps_used.add(path.name)
        return path

    def _prune_sweeps(self) -> None:
        """Delete the sweep files this run never asked for (rows of an earlier design or setting,
        copied from the published folder to be reused), so the published sweeps are this run's."""
        for f in self.sweep_dir.glob("*.jsonl"):
            if f.name not in self._sweeps_used:
                f.unlink()

    def cache_dir(self, kind: str) -> Path:
        """A cache folder for large artefacts of this notebook and profile (e.g. `saes`)."""
        from resa_utils.core.paths import cache_dir

        return cache_dir() / kind / self.profile / self.notebook

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
        self._write_metrics()

    def log_curves(self, group: str, curves: dict[str, list[dict]]) -> Path | None:
        """Training curves `{training name: [{step, loss, ...}, ...]}`: each as W&B line series
        against its own step (`curves/<group>/<name>/<metric>`, every part made a safe W&B key by
        `wandb_key`: `lr0.001` -> `lr0p001`), kept out of the W&B summary, and all in
        `curves/<group>.csv` under their unchanged training names."""
        import pandas as pd

        frames = [pd.DataFrame(rows).assign(training=name) for name, rows in curves.items() if rows]
        if not frames:
            return None
        df = pd.concat(frames, ignore_index=True)
        df = df[["training"] + [c for c in df.columns if c != "training"]]
        path = self.out_dir / "curves" / f"{slug(group)}.csv"
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
        if self.wandb is not None:
            base = "/".join(wandb_key(part) for part in ["curves", *str(group).split("/")])
            for name, key in wandb_keys(list(curves)).items():
                prefix = f"{base}/{key}"
                # summary="none": a curve's last point is not a result, so it stays out of the summary
                self.wandb.define_metric(f"{prefix}/step", summary="none")
                self.wandb.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step", summary="none")
                for row in curves[name]:
                    self.wandb.log({f"{prefix}/{wandb_key(k)}": v for k, v in _scalars(row).items()})
        return path

    def save_figure(self, fig, name: str, dpi: int = 120) -> Path:
        """Save `fig` as `figures/<name>.png` and log it to W&B."""
        path = self.out_dir / "figures" / f"{slug(name)}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        if self.wandb is not None:
            import wandb

            self.wandb.log({f"figures/{name}": wandb.Image(str(path))})
        return path

    def save_table(self, df, name: str) -> Path:
        """Save a pandas DataFrame as `tables/<name>.csv` and log it as a W&B table."""
        path = self.out_dir / "tables" / f"{slug(name)}.csv"
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
        if self.wandb is not None:
            import wandb

            self.wandb.log({f"tables/{name}": wandb.Table(dataframe=df.reset_index(drop=True))})
        return path

    def save_preconditions(self, rows: list[dict]):
        """Write `tables/preconditions.csv` (PRECONDITION_COLUMNS; measured before the claims they
        gate, with thresholds fixed as parameters); `save_paper_comparison` then gates by it."""
        df = preconditions_frame(rows)
        self.preconditions = df
        self.save_table(df, "preconditions")
        return df

    def save_paper_comparison(self, rows: list[dict]):
        """Write `tables/paper_comparison.csv` in the common schema (claim, metric, paper, ours,
        held, note; held one of yes / partly / no / not tested); returns the DataFrame. A claim
        gated by an unmet precondition (`save_preconditions`) becomes 'not tested'."""
        df = comparison_frame(rows)
        pre = getattr(self, "preconditions", None)
        if pre is not None:
            df = gate_claims(df, pre)
        self.save_table(df, "paper_comparison")
        return df

    def log_sae(self, sae, name: str, folder: Path | None = None) -> Path:
        """Save an SAE (cfg.json + sae_weights.safetensors) and log it as a W&B artifact.

        Weights go to `folder` (default: the W&B run's files, else this run's SAE cache; never
        `results/`, to keep it small).
        """
        base = folder or (Path(self.wandb.dir) if self.wandb is not None else self.cache_dir("saes"))
        path = sae.save(Path(base) / "saes" / name)
        self.log_artifact(path, name, "sae", {k: v for k, v in sae.cfg.to_dict().items()
                                               if k != "metadata"})
        return path

    def log_artifact(self, folder: Path, name: str, kind: str, metadata: dict | None = None) -> None:
        """Log a folder (an SAE, a LoRA adapter) as the W&B artifact `<notebook>-<name>`."""
        if self.wandb is None:
            return
        import wandb

        art = wandb.Artifact(name=f"{self.notebook}-{name}".replace("/", "-"), type=kind,
                             metadata=_scalars(_flatten(metadata or {})))
        art.add_dir(str(folder))
        self.wandb.log_artifact(art)

    # ------------------------------------------------------------------ closing
    def _write_metrics(self) -> Path:
        now = datetime.now(timezone.utc)
        part = round((now - self.started).total_seconds(), 1)  # this session
        payload = {
            "notebook": self.notebook,
            "profile": self.profile,
            "status": self.status,
            "error": self.error,
            "params": self.params,
            "metrics": self.metrics,
            "started": self.started.isoformat(timespec="seconds"),
            "updated": now.isoformat(timespec="seconds"),
            "runtime_s": round(sum(self.earlier_parts_s) + part, 1),
            "runtime_parts_s": [*self.earlier_parts_s, part],
            "provenance": self.provenance,
            "wandb": self._wandb_info(),
        }
        return write_json(self.out_dir / "metrics.json", payload)

    def _wandb_info(self) -> dict | None:
        """The W&B run's mode, id, name, folder and project (kept once the run has finished)."""
        if self.wandb is not None:
            self._wandb = {"mode": os.environ.get("WANDB_MODE", "offline"), "id": self.wandb.id,
                           "name": self.wandb.name, "dir": str(self.wandb.dir),
                           "project": self.wandb.project}
        return getattr(self, "_wandb", None)

    def mark_failed(self, error: str, end: bool | None = None) -> None:
        """Note an error (a failed or interrupted cell): `metrics.json` says so. With `end`
        (default: when the runner started this kernel, where papermill stops at the failed cell)
        the W&B run ends at once with exit code 1, flushed; interactively it stays open in case
        the notebook still reaches `finish()`, and ends as failed at kernel exit otherwise."""
        if self.status == "finished":
            return
        self.status, self.error = "failed", error
        if end is None:
            end = self._under_runner()
        if end:
            self._close_unfinished()
            return
        if self.wandb is not None:
            self.wandb.summary["status"] = "failed"
        self._write_metrics()

    def _close_unfinished(self) -> None:
        """A run that ends unfinished (failed cell under the runner, a re-run of `start_run`,
        interpreter exit): `metrics.json` says failed or interrupted, the W&B run finishes with
        exit code 1, written to disk before this returns, and the lock is released."""
        if self.status == "finished":
            return
        if self.status == "running":
            self.status, self.error = "interrupted", self.error or "ended before finish()"
        try:
            self._write_metrics()
        except OSError:
            pass
        if self.wandb is not None:
            wandb_run, self.wandb = self.wandb, None
            try:
                import wandb

                wandb_run.summary["status"] = self.status
                wandb_run.finish(exit_code=1)
                # finish() can return before W&B's service has written the exit record; a
                # kernel killed right after would lose it. teardown() waits for the service.
                wandb.teardown()
            except Exception as err:  # at exit: say it, never raise
                warnings.warn(f"W&B run {wandb_run.name} could not be finished as failed: {err}")
        self._release()

    def finish(self) -> Path:
        """Write the final `metrics.json`, close the W&B run and publish the staged folder
        (replacing the previous results of this notebook and profile in one atomic exchange).
        Under the runner the runner publishes it, with the executed notebook inside. Returns the
        published folder."""
        self.status, self.error = "finished", None
        self._prune_sweeps()
        self._write_metrics()
        if not self._under_runner():
            publish_folder(self.out_dir, self.final_dir)
        if self.wandb is not None:
            wandb_run, self.wandb = self.wandb, None
            wandb_run.summary["status"] = "finished"
            wandb_run.finish(exit_code=0)
        self._release()
        return self.final_dir

    def _under_runner(self) -> bool:
        """Whether the runner started this kernel for this very run (it holds the lock)."""
        return os.environ.get(RUNNER_LOCK_ENV) == str(lock_path(self.notebook, self.profile))

    def _release(self) -> None:
        lock, self.lock = getattr(self, "lock", None), None
        if lock is not None:
            lock.release()


def _schema_frame(rows: list[dict], columns: list[str], what: str):
    """`rows` as a DataFrame, refused unless it has exactly `columns` and at least one row."""
    import pandas as pd

    df = pd.DataFrame(rows)
    missing = [c for c in columns if c not in df.columns]
    extra = [c for c in df.columns if c not in columns]
    if missing or extra or df.empty:
        raise ValueError(f"{what} exactly the columns {columns} and at least one row; "
                         f"missing {missing}, extra {extra}")
    return df


def comparison_frame(rows: list[dict]):
    """Rows of the common paper-comparison schema as a DataFrame, checked."""
    df = _schema_frame(rows, COMPARISON_COLUMNS, "paper comparison needs")
    bad = sorted(set(df.held) - set(HELD_VALUES))
    if bad:
        raise ValueError(f"paper comparison: held must be one of {HELD_VALUES}, got {bad}")
    return df[COMPARISON_COLUMNS].astype(str)  # a text table: numbers and prose share columns


def preconditions_frame(rows: list[dict]):
    """Rows of the preconditions table as a DataFrame, checked: the columns, `met` yes / no, and
    `gates` as space-separated 1-based claim numbers (may be empty)."""
    df = _schema_frame(rows, PRECONDITION_COLUMNS, "preconditions need")
    bad = sorted(set(df.met.astype(str)) - {"yes", "no"})
    if bad:
        raise ValueError(f"preconditions: met must be yes or no, got {bad}")
    for g in df.gates.astype(str):
        if not all(tok.isdigit() and int(tok) >= 1 for tok in g.split()):
            raise ValueError(f"preconditions: gates must be space-separated claim numbers from 1, got {g!r}")
    return df[PRECONDITION_COLUMNS].astype(str)


def gate_claims(comparison, preconditions):
    """The paper comparison with every claim that an unmet precondition gates set to 'not tested'
    (a 'no' there could not have been a 'yes'), the unmet preconditions named in its note. Claims
    whose preconditions are met keep their verdict. Idempotent; refuses gates past the last claim."""
    df = comparison.copy()
    for row in preconditions.itertuples(index=False):
        rows = [int(tok) for tok in str(row.gates).split()]
        if any(i > len(df) for i in rows):
            raise ValueError(f"precondition {row.precondition!r} gates claim {max(rows)}, but the paper "
                             f"comparison has {len(df)} rows")
        if str(row.met) == "yes":
            continue
        why = (f"not tested: precondition '{row.precondition}' not met ({row.measure} = {row.value}, "
               f"threshold {row.threshold})")
        for i in rows:
            note, held = str(df.iloc[i - 1]["note"]), str(df.iloc[i - 1]["held"])
            if held != "not tested":
                note = f"as measured: {held}; {note}" if note else f"as measured: {held}"
            df.iloc[i - 1, df.columns.get_loc("held")] = "not tested"
            if why not in note:
                df.iloc[i - 1, df.columns.get_loc("note")] = f"{why}; {note}" if note else why
    return df


_PARAM_TYPES = (bool, int, float, str, list, tuple, dict, type(None))
_ACTIVE: list[Run] = []


_PARAM_NAMES: list[str] = []
"""The parameter names `notebook_params` found last in this kernel (see there)."""


def notebook_params(namespace: dict) -> dict:
    """The parameters a notebook ran with (call it in the cell after the parameters cell).

    In IPython (a notebook, papermill) they are the names assigned in the parameters cell: the
    cells run last before this one that hold nothing but `name = literal` lines, `profile` among
    them (the parameters cell, and papermill's injected cell after it), read from the kernel's
    input history. So re-running the first cells of a kernel that has run the whole notebook
    gives the parameters, not every variable the notebook made since. A re-run of this cell alone reuses the names
    found last. Elsewhere (a plain dict): every plain-valued global, IPython's own left out."""
    names = _parameter_names(namespace)
    if names is None:
        return {k: v for k, v in namespace.items()
                if not k.startswith("_") and k not in ("In", "Out", "get_ipython", "exit", "quit")
                and isinstance(v, _PARAM_TYPES)}
    return {k: namespace[k] for k in names if k in namespace}


def _parameter_names(namespace: dict) -> list[str] | None:
    """Names assigned by the parameters cell(s) run just before the current cell, from IPython's
    input history `In`; the names found last when the cell before is no parameters cell; None
    outside IPython."""
    history = namespace.get("In")
    if not isinstance(history, list):
        return None
    cells = [c for c in history if isinstance(c, str)]
    if cells and "notebook_params" in cells[-1]:
        cells = cells[:-1]  # the cell running now
    found: list[str] = []
    for source in reversed(cells):
        assigned = _literal_assignments(source)
        if not assigned:
            break
        found = assigned + [n for n in found if n not in assigned]
    if "profile" in found:  # every notebook's parameters cell sets it; `x = 3` alone is no such cell
        _PARAM_NAMES[:] = found
    return list(_PARAM_NAMES) if _PARAM_NAMES else None


def _literal_assignments(source: str) -> list[str]:
    """The names a cell assigns when it holds only `name = literal` statements (a parameters
    cell); [] for any other cell."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return []
    names = []
    for node in body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
        if not isinstance(target, ast.Name):
            return []
        try:
            ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return []
        names.append(target.id)
    return names


def _run_name(notebook: str, profile: str, sha: str) -> str:
    return f"{notebook}-{profile}-{sha[:7]}-{datetime.now():%Y%m%d-%H%M%S}"


def start_run(notebook: str, params: dict, project: str = "resa-replications") -> Run:
    """Open the W&B run and staging folder of `notebook`, resuming an unfinished run's staged
    output (or starting from the published sweep rows). Never waits on the network offline.
    Also tunes the allocator for this process (`perf.tune_allocator`)."""
    from resa_utils.core.perf import tune_allocator

    tune_allocator()
    for old in _ACTIVE:  # a re-run of this cell in the same kernel
        old._close_unfinished()
    _ACTIVE.clear()
    profile = effective_profile(notebook, params)
    lock = None
    if os.environ.get(RUNNER_LOCK_ENV) != str(lock_path(notebook, profile)):
        lock = RunLock(notebook, profile).acquire()  # the runner holds it for its own kernels
    try:
        run = _open_run(notebook, params, profile, project)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run.lock = lock
    _ACTIVE.append(run)
    atexit.register(run._close_unfinished)  # after wandb's own hook, so it runs first
    _watch_cells(run)
    return run


def _open_run(notebook: str, params: dict, profile: str, project: str) -> Run:
    stage = staging_dir(notebook, profile)
    if not stage.exists():
        stage.mkdir(parents=True)
        published = results_dir(notebook, profile) / "sweeps"
        if published.is_dir():  # finished rows of the last published run: reused, not redone
            shutil.copytree(published, stage / "sweeps")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    run = Run(notebook, params, profile)
    if os.environ["WANDB_MODE"] != "disabled":
        try:
            import wandb

            # W&B writes under <dir>/wandb/: by default <repo>/wandb/offline-run-*
            folder = wandb_dir()
            try:  # W&B itself would move an unwritable folder's runs to a temp folder, silently
                check_writable(folder / "wandb", "the W&B folder (WANDB_DIR)",
                               "make it writable or point WANDB_DIR at a writable folder")
            except PermissionError as err:
                warnings.warn(f"{err}; W&B will write this run to a temporary folder", stacklevel=3)
            models = sorted({v for k, v in params.items() if "model" in k and isinstance(v, str)})
            seeds = {k: v for k, v in params.items() if "seed" in k}
            config = {**_flatten(params), **_flatten({"meta": {**run.provenance, "seeds": seeds}})}
            run.wandb = wandb.init(
                project=project, name=_run_name(notebook, profile, run.provenance["git"]["sha"]),
                group=notebook, job_type=profile, tags=[profile, *models][:20], config=config,
                dir=str(folder), reinit="finish_previous")
        except Exception as err:  # tracking must never stop the science
            warnings.warn(f"W&B unavailable ({type(err).__name__}: {err}); logging to "
                          f"{stage} only", stacklevel=3)
    run._write_metrics()
    return run


def _watch_cells(run: Run) -> None:
    """In IPython, a cell that raises (or is interrupted) marks the run failed."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return

    def post_run_cell(result) -> None:
        err = result.error_in_exec or result.error_before_exec
        if err is not None and run in _ACTIVE:
            run.mark_failed(f"{type(err).__name__}: {err}")

    ip.events.register("post_run_cell", post_run_cell)


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


def read_metrics(folder: Path) -> dict | None:
    """A results folder's `metrics.json`, or None."""
    path = Path(folder) / "metrics.json"
    return read_json(path) if path.exists() else None
