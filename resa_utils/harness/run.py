"""Run the notebooks headlessly with papermill from a parameter profile.

    python -m resa_utils.harness.run --list                         # notebooks, profiles, runtimes
    python -m resa_utils.harness.run                                # every notebook, cpu profile
    python -m resa_utils.harness.run --profile smoke 05             # a unique prefix is enough
    python -m resa_utils.harness.run 05 -p seed=1 -p 'widths=[256]' # overrides, YAML-parsed
    python -m resa_utils.harness.run --dry-run --profile paper      # check every parameter, no compute

Profiles live in `notebooks/params/<profile>/<notebook>.yaml`: `smoke` (tiny models, seconds),
`cpu` (the embedded real models; the default, and the only profile whose finished runs replace
the committed `results/<notebook>/`), `paper` (the papers' hub models, for a GPU). Other
profiles publish to `results/<profile>/<notebook>/` (git-ignored); overrides with `-p` make a
run `custom` (`results/custom/<notebook>/`). A notebook writes into a staging folder that
replaces the published one only when it finishes, so a failed or interrupted run leaves the
published results as they were and resumes from its own staged work on the next run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import yaml

from resa_utils.harness.params import ParameterError
from resa_utils.harness.tracking import (PROFILE_ENV, REFERENCE_PROFILE, RESULTS_ENV, STAGING,
                                         effective_profile, notebooks_dir, parameters_cell,
                                         read_metrics, results_dir, results_root)

DEFAULT_PROFILE = REFERENCE_PROFILE
KERNEL = "resa"
"""Jupyter kernel registered for the project's venv by `make setup`."""
HEARTBEAT_S = 30.0
"""Seconds between the terminal lines that show a long cell's progress."""


class NotebookFailed(RuntimeError):
    pass


def list_notebooks() -> list[str]:
    return sorted(p.stem for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def list_profiles() -> list[str]:
    return sorted(p.name for p in (notebooks_dir() / "params").iterdir() if p.is_dir())


def resolve_notebook(name: str) -> str:
    """A notebook's full name from its name or a unique prefix (`05`, `05_gba`)."""
    names = list_notebooks()
    if name in names:
        return name
    hits = [n for n in names if n.startswith(name)]
    if len(hits) == 1:
        return hits[0]
    what = "matches several notebooks" if hits else "matches no notebook"
    raise ValueError(f"notebook {name!r} {what}: use one of {hits or names}")


def notebook_parameters(notebook: str) -> dict[str, str]:
    """`{name: default source}` of the notebook's `parameters` cell."""
    import papermill

    found = papermill.inspect_notebook(str(notebooks_dir() / f"{notebook}.ipynb"))
    return {k: v["default"] for k, v in found.items()}


def parse_overrides(items: list[str]) -> dict:
    """`["k=v", ...]` with YAML-parsed values (`-p seed=1 -p 'widths=[256, 512]'`)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"-p {item!r} is not name=value: write e.g. -p seed=1")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"-p {item!r}: the value is not valid YAML ({err})") from None
    return out


def load_params(profile: str, notebook: str, overrides: dict | None = None) -> dict:
    """The profile's parameters for `notebook` plus `overrides`, each name checked against its
    `parameters` cell; `profile` is set too (every notebook has that parameter)."""
    if profile not in list_profiles():
        raise ValueError(f"profile {profile!r} unknown: use one of {list_profiles()}")
    path = notebooks_dir() / "params" / profile / f"{notebook}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"profile {profile!r} has no parameters for {notebook}: add {path}")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a mapping of parameter names to values")
    known = notebook_parameters(notebook)
    for source, names in ((str(path), params), ("-p", overrides or {})):
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(
                f"{source}: unknown parameter(s) {unknown} for {notebook}; its parameters cell "
                f"defines {sorted(known)}. Fix the name or add it to the notebook's parameters cell"
            )
    return {**params, **(overrides or {}), "profile": profile}


def check_cells(notebook: str) -> tuple[str, str]:
    """Source of the `parameters` cell and of the first code cell after it (the checks)."""
    import nbformat

    nb = nbformat.read(str(notebooks_dir() / f"{notebook}.ipynb"), as_version=4)
    i = parameters_cell(nb)
    after = [c for c in nb.cells[i + 1:] if c.cell_type == "code"]
    if not after:
        raise ValueError(f"{notebook} has no code cell after its `parameters` cell to check them")
    return nb.cells[i].source, after[0].source


def check_params(notebook: str, params: dict) -> None:
    """Run the notebook's parameter checks on `params` in this process, without compute: the
    parameters cell, the values set, then the check cell. Raises what the checks raise."""
    param_src, check_src = check_cells(notebook)
    ns: dict = {"__name__": "__resa_check__"}
    exec(compile(param_src, f"<{notebook} parameters>", "exec"), ns)
    ns.update(params)
    cwd = os.getcwd()
    os.chdir(notebooks_dir())
    try:
        exec(compile(check_src, f"<{notebook} parameter checks>", "exec"), ns)
    finally:
        os.chdir(cwd)


# --------------------------------------------------------------------------- execution


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Progress:
    """Terminal lines for long cells: the cell, elapsed time and the last progress bar line
    the notebook printed (the runner makes the kernel's bars plain text)."""

    def __init__(self, notebook: str, every: float = HEARTBEAT_S):
        self.notebook, self.every = notebook, every
        self.cell: tuple[int, int, str] | None = None
        self.started = time.monotonic()
        self.bars: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    # stderr_file protocol for papermill: the kernel's stderr stream
    def write(self, text: str) -> None:
        text = _ANSI.sub("", text)  # nested bars move the cursor with escape codes
        for line in (ln.strip() for ln in text.replace("\r", "\n").split("\n")):
            if line:  # one entry per bar (its description), so nested bars show together
                self.bars.pop(line.split(":")[0], None)
                self.bars[line.split(":")[0]] = line[:100]

    @property
    def last_line(self) -> str:
        return " | ".join(list(self.bars.values())[-2:])

    def flush(self) -> None:
        pass

    def cell_start(self, index: int, total: int, source: str) -> None:
        self.cell, self.started, self.bars = (index, total, _first_line(source)), time.monotonic(), {}

    def cell_done(self) -> None:
        if self.cell is not None:
            took = time.monotonic() - self.started
            if took >= self.every:
                print(f"      cell {self.cell[0]}/{self.cell[1]} done in {_fmt(took)}", flush=True)
        self.cell = None

    def _beat(self) -> None:
        while not self.stop.wait(self.every):
            if self.cell is not None:
                idx, total, first = self.cell
                bar = f" | {self.last_line}" if self.last_line else ""
                print(f"      cell {idx}/{total} running {_fmt(time.monotonic() - self.started)}"
                      f" [{first}]{bar}", flush=True)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _code_cells(nb) -> list[int]:
    """Indices of the notebook's own code cells (papermill's injected cell left out), so cell
    numbers match the notebook as a user sees it: code cell 1 is the parameters cell."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and "injected-parameters" not in c.metadata.get("tags", [])]


def _first_line(source: str) -> str:
    return next((ln.strip() for ln in source.splitlines() if ln.strip()), "")[:60]


def _register_engine(progress: _Progress) -> str:
    """A papermill engine that reports cell starts to `progress`, and on Ctrl-C interrupts the
    kernel first (so the notebook records the interruption) before shutting it down."""
    from jupyter_core.utils import run_sync
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    class Client(PapermillNotebookClient):
        def papermill_execute_cells(self):
            code = _code_cells(self.nb)
            start, complete = self.nb_man.cell_start, self.nb_man.cell_complete

            def cell_start(cell, cell_index=None, **kw):
                if cell_index in code:
                    progress.cell_start(code.index(cell_index) + 1, len(code), cell.source)
                return start(cell, cell_index, **kw)

            def cell_complete(cell, cell_index=None, **kw):
                progress.cell_done()
                return complete(cell, cell_index, **kw)

            self.nb_man.cell_start, self.nb_man.cell_complete = cell_start, cell_complete
            try:
                super().papermill_execute_cells()
            except KeyboardInterrupt:
                run_sync(self.km.interrupt_kernel)()
                time.sleep(2.0)  # let the kernel record the interruption before shutdown
                raise

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None,
                                     **kwargs):
            from papermill.utils import remove_args

            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            return Client(nb_man, timeout=execution_timeout, startup_timeout=start_timeout,
                          kernel_name=kernel_name, log_output=log_output, stdout_file=stdout_file,
                          stderr_file=stderr_file, **kwargs).execute()

    papermill_engines.register("resa", Engine)
    return "resa"


def kernel_available(name: str = KERNEL) -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    return name in KernelSpecManager().find_kernel_specs()


def run_notebook(notebook: str, profile: str = DEFAULT_PROFILE, overrides: dict | None = None,
                 heartbeat_s: float = HEARTBEAT_S) -> Path:
    """Execute one notebook; return its published results folder. Raises `NotebookFailed`
    naming the failing cell; its executed copy stays in `results/.staging/` (git-ignored)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = resolve_notebook(notebook)
    params = load_params(profile, notebook, overrides)
    if not kernel_available():
        raise ValueError(f"Jupyter kernel {KERNEL!r} is not registered: run `make setup` (it runs "
                         f"`python -m ipykernel install --sys-prefix --name {KERNEL}`)")
    label = effective_profile(notebook, params)
    stage_root = results_root() / STAGING / label
    stage_root.mkdir(parents=True, exist_ok=True)
    running = stage_root / f"{notebook}.running.ipynb"
    # the kernel runs this interpreter's environment; its progress bars print as text
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ[PROFILE_ENV] = profile
    os.environ.setdefault("RESA_PROGRESS", "text")
    progress = _Progress(notebook, heartbeat_s)
    progress.thread.start()
    started = time.time()
    try:
        papermill.execute_notebook(
            str(notebooks_dir() / f"{notebook}.ipynb"), str(running), parameters=params,
            kernel_name=KERNEL, engine_name=_register_engine(progress), cwd=str(notebooks_dir()),
            progress_bar=False, stderr_file=progress, request_save_on_cell_execute=True,
        )
    except KeyboardInterrupt:
        if running.exists():
            os.replace(running, stage_root / f"{notebook}.interrupted.ipynb")
        raise
    except PapermillExecutionError as err:
        import nbformat

        failed = stage_root / f"{notebook}.failed.ipynb"
        os.replace(running, failed)
        from papermill.execute import remove_error_markers

        executed = remove_error_markers(nbformat.read(str(failed), as_version=4))
        code = _code_cells(executed)
        where = (f"code cell {code.index(err.cell_index) + 1} of {len(code)} "
                 f"[{_first_line(executed.cells[err.cell_index].source)}]"
                 if err.cell_index in code else f"cell {err.cell_index}")
        raise NotebookFailed(
            f"{notebook} (profile {label}) failed in {where}: {err.ename}: {err.evalue}\n"
            f"  executed copy with the traceback: {failed}\n"
            f"  the published results in {results_dir(notebook, label)} are unchanged"
        ) from None
    except Exception as err:  # the kernel died (out of memory, killed), or papermill broke
        if running.exists():
            os.replace(running, stage_root / f"{notebook}.failed.ipynb")
        raise NotebookFailed(f"{notebook} (profile {label}) stopped: {type(err).__name__}: {err}; "
                             f"the published results in {results_dir(notebook, label)} are "
                             "unchanged") from None
    finally:
        progress.stop.set()
    final = results_dir(notebook, label)
    metrics = read_metrics(final)
    fresh = metrics is not None and datetime.fromisoformat(metrics["updated"]).timestamp() >= started - 1
    if not fresh or metrics.get("status") != "finished":
        raise NotebookFailed(f"{notebook} ran to its end but never called run.finish(): "
                             f"nothing was published to {final}")
    from resa_utils.core.atomic import atomic_path

    with atomic_path(final / f"{notebook}.ipynb") as tmp:
        shutil.copyfile(running, tmp)
    running.unlink()
    if label == REFERENCE_PROFILE:
        from resa_utils.harness.report import write_results_readme

        write_results_readme()
    return final


# --------------------------------------------------------------------------- listing


def listing() -> str:
    """Notebooks, their profiles, and each profile's last measured runtime here."""
    lines = [f"{'notebook':<28}" + "".join(f"{p:>14}" for p in list_profiles())]
    for nb in list_notebooks():
        cells = []
        for p in list_profiles():
            if not (notebooks_dir() / "params" / p / f"{nb}.yaml").exists():
                cells.append(f"{'-':>14}")
                continue
            m = read_metrics(results_dir(nb, p))
            ok = m is not None and m.get("status") == "finished" and m.get("runtime_s")
            cells.append(f"{_fmt(m['runtime_s']) if ok else 'not run':>14}")
        lines.append(f"{nb:<28}" + "".join(cells))
    lines.append("runtimes: the last finished run of each profile (cpu: the committed results); "
                 f"profiles: {', '.join(list_profiles())}")
    return "\n".join(lines)


BUILDER = "00_reasoning_models"
"""The notebook that registers the models other notebooks study (see `_waits_for_builder`)."""


def _waits_for_builder(name: str, names: list[str], err: Exception) -> bool:
    """Whether `name`'s check failed only for a model that notebook 00 registers, and 00 runs
    before it in this run (a fresh `make reproduce`): then it is checked again after 00."""
    return (BUILDER in names and names.index(BUILDER) < names.index(name)
            and "is not registered: notebook 00 has not built it" in str(err))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebook names or unique prefixes (default: all)")
    parser.add_argument("--profile", default=os.environ.get("PROFILE", DEFAULT_PROFILE),
                        help=f"parameter profile (default {DEFAULT_PROFILE})")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a parameter (YAML value); repeatable")
    parser.add_argument("--list", action="store_true", help="list notebooks, profiles, runtimes")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every parameter of the chosen notebooks, run nothing")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="let a GPU-sized profile (paper) run without a GPU")
    parser.add_argument("--results-dir", help=f"results root (default <repo>/results; env {RESULTS_ENV})")
    args = parser.parse_args(argv)
    if args.results_dir:
        os.environ[RESULTS_ENV] = str(Path(args.results_dir).resolve())
    if args.list:
        print(listing())
        return 0
    current = None
    try:
        overrides = parse_overrides(args.param)
        if args.allow_cpu:
            overrides["allow_cpu"] = True
        names = [resolve_notebook(n) for n in args.notebooks] or list_notebooks()
        deferred = set()
        for name in names:  # every parameter of every chosen notebook, before any compute
            try:
                check_params(name, load_params(args.profile, name, overrides))
            except ParameterError as err:
                if not _waits_for_builder(name, names, err):
                    raise
                deferred.add(name)  # its models come from notebook 00, which runs first
                print(f"{name} (profile {args.profile}): needs models notebook 00 builds in this run; "
                      "checked again once it has", flush=True)
                continue
            if args.dry_run:
                print(f"{name} (profile {args.profile}): every parameter checks out", flush=True)
        if args.dry_run:
            return 0
        for i, name in enumerate(names, 1):
            current = name
            if name in deferred:
                check_params(name, load_params(args.profile, name, overrides))
            print(f"[{i}/{len(names)}] {name} (profile {args.profile})", flush=True)
            t0 = time.monotonic()
            path = run_notebook(name, args.profile, overrides)
            print(f"      done in {_fmt(time.monotonic() - t0)}: {path}", flush=True)
    except KeyboardInterrupt:
        import logging

        # the interrupted cell's pending task would be logged at exit with a long traceback
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        hint = f" {current}" if current else ""
        print(f"\ninterrupted{(' in ' + current) if current else ''}: finished work is kept "
              f"(sweep rows, checkpoints, staged results); resume with `python -m resa_utils.harness.run "
              f"--profile {args.profile}{hint}`", file=sys.stderr)
        return 130
    except (NotebookFailed, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
