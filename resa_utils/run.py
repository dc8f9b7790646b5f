"""Run the notebooks headlessly with papermill from a parameter profile.

    python -m resa_utils.run --profile cpu                  # every notebook
    python -m resa_utils.run --profile smoke 05_gba_recovery

Profiles live in `notebooks/params/<profile>/<notebook>.yaml`: `smoke` (tiny models, seconds),
`cpu` (the embedded real models; the default), `paper` (the papers' hub models, for a GPU).
Each executed notebook is kept as `results/<notebook>/<notebook>.ipynb`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from .tracking import repo_root, results_root

DEFAULT_PROFILE = "cpu"


class NotebookFailed(RuntimeError):
    pass


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def list_notebooks() -> list[str]:
    return sorted(p.stem for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def list_profiles() -> list[str]:
    return sorted(p.name for p in (notebooks_dir() / "params").iterdir() if p.is_dir())


def load_params(profile: str, notebook: str) -> dict:
    """The profile's parameters for `notebook`, checked against its `parameters` cell."""
    import papermill

    if profile not in list_profiles():
        raise ValueError(f"profile {profile!r} unknown: use one of {list_profiles()}")
    path = notebooks_dir() / "params" / profile / f"{notebook}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"profile {profile!r} has no parameters for {notebook}: add {path}")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a mapping of parameter names to values")
    known = papermill.inspect_notebook(str(notebooks_dir() / f"{notebook}.ipynb"))
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"{path}: unknown parameter(s) {unknown} for {notebook}; its parameters cell "
            f"defines {sorted(known)}. Fix the name or add it to the notebook's parameters cell"
        )
    return params


def run_notebook(notebook: str, profile: str = DEFAULT_PROFILE, out_dir: Path | None = None,
                 extra_params: dict | None = None) -> Path:
    """Execute one notebook; return the executed copy's path. Raises `NotebookFailed` naming
    the failing cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if notebook not in list_notebooks():
        raise ValueError(f"notebook {notebook!r} unknown: use one of {list_notebooks()}")
    params = {**load_params(profile, notebook), **(extra_params or {})}
    out_dir = out_dir or results_root() / notebook
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{notebook}.ipynb"
    running = out_dir / f".{notebook}.running.ipynb"
    # the kernel must be this interpreter, whatever `python` is on PATH
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        papermill.execute_notebook(
            str(notebooks_dir() / f"{notebook}.ipynb"), str(running), parameters=params,
            kernel_name="python3", cwd=str(notebooks_dir()), progress_bar=True,
            log_output=False, request_save_on_cell_execute=True,
        )
    except PapermillExecutionError as err:
        failed = out_dir / f"{notebook}.failed.ipynb"
        os.replace(running, failed)
        raise NotebookFailed(
            f"{notebook} (profile {profile}) failed in cell {err.cell_index} "
            f"(execution count {err.exec_count}): {err.ename}: {err.evalue}\n"
            f"  executed copy with the traceback: {failed}"
        ) from None
    os.replace(running, final)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--profile", default=os.environ.get("PROFILE", DEFAULT_PROFILE),
                        help=f"parameter profile (default {DEFAULT_PROFILE})")
    args = parser.parse_args(argv)
    names = args.notebooks or list_notebooks()
    try:
        for name in names:  # check every parameter file before running anything
            if name not in list_notebooks():
                raise ValueError(f"notebook {name!r} unknown: use one of {list_notebooks()}")
            load_params(args.profile, name)
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] {name} (profile {args.profile})", flush=True)
            path = run_notebook(name, args.profile)
            print(f"      done: {path}", flush=True)
    except (NotebookFailed, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
