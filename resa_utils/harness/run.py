"""Run the notebooks headlessly with papermill from a parameter profile.

    python -m resa_utils.harness.run --list                         # notebooks, profiles, runtimes
    python -m resa_utils.harness.run                                # every notebook, cpu profile
    python -m resa_utils.harness.run --profile smoke 05             # a unique prefix is enough
    python -m resa_utils.harness.run 05 -p 'seeds=[0, 1]'          # overrides, YAML-parsed
    python -m resa_utils.harness.run --dry-run --profile paper      # check every parameter, no compute

Profiles live in `notebooks/params/<profile>/<notebook>.yaml`: `smoke` (tiny models, seconds),
`cpu` (the embedded real models; the default, and the only profile whose finished runs replace
the committed `results/<notebook>/`), `paper` (the papers' hub models, for a GPU). Other
profiles publish to `results/<profile>/<notebook>/` (git-ignored); overrides with `-p` make a
run `custom` (`results/custom/<notebook>/`). A notebook writes into a staging folder that
replaces the published one only when it finishes (one atomic exchange of the two folders, the
executed notebook inside), so a failed or interrupted run leaves the published results as they
were and resumes from its own staged work on the next run. One run per notebook and profile at
a time (`tracking.RunLock`); Ctrl-C prints one line with the command that resumes.
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
from resa_utils.harness.tracking import (PROFILE_ENV, REFERENCE_PROFILE, RESULTS_ENV,
                                         RUNNER_LOCK_ENV, STAGING, RunBusy, RunLock,
                                         check_writable, effective_profile, notebooks_dir,
                                         parameters_cell, publish_folder, read_metrics,
                                         results_dir, results_root, staging_dir, wandb_dir)

DEFAULT_PROFILE = REFERENCE_PROFILE
KERNEL = "resa"
"""Jupyter kernel registered for the project's venv by `make setup`."""
HEARTBEAT_S = 30.0
"""Seconds between the terminal lines that show a long cell's progress."""
INTERRUPT_WAIT_S = 60.0
"""After Ctrl-C: how long the interrupted kernel gets to record the interruption (the failed
cell, `metrics.json`, the W&B run's exit code) before it is shut down."""
KERNEL_SHUTDOWN_S = 30.0
"""How long a kernel gets to exit by itself (atexit: W&B flushes its backlog) before SIGKILL."""


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
        if key.strip() == "profile":
            raise ValueError(f"-p {item!r}: the profile is chosen with --profile (it picks the "
                             f"profile's parameter file): write --profile {value.strip()} instead")
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
                _quiet_asyncio()  # the cell's pending tasks would log tracebacks at exit
                try:
                    run_sync(self.km.interrupt_kernel)()
                    # the cell's own task runs on: the kernel's reply (after the notebook marked
                    # its run failed and finished its W&B run) ends it
                    run_sync(_settle)(INTERRUPT_WAIT_S)
                except KeyboardInterrupt:  # Ctrl-C again: stop at once
                    self.shutdown_kernel = "immediate"
                raise

        def create_kernel_manager(self):
            km = super().create_kernel_manager()
            km.shutdown_wait_time = KERNEL_SHUTDOWN_S
            return km

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None,
                                     kernel_env=None, kernel_log=None, **kwargs):
            from papermill.utils import remove_args

            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            # the kernel's own stdout/stderr (its warnings, worker processes' tracebacks after an
            # interrupt, shutdown errors) go to a log file, not the terminal; cell output comes
            # through Jupyter's channels as before
            launch = {"env": kernel_env} if kernel_env is not None else {}
            if kernel_log is not None:
                launch.update(stdout=kernel_log, stderr=kernel_log)
            return Client(nb_man, timeout=execution_timeout, startup_timeout=start_timeout,
                          kernel_name=kernel_name, log_output=log_output, stdout_file=stdout_file,
                          stderr_file=stderr_file, **kwargs).execute(**launch)

    papermill_engines.register("resa", Engine)
    return "resa"


async def _settle(timeout: float) -> None:
    """Let the event loop's other tasks (an interrupted cell's) finish, for up to `timeout` s."""
    import asyncio

    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    if pending:
        done, _ = await asyncio.wait(pending, timeout=timeout)
        for task in done:  # retrieved here, so asyncio does not log them at exit
            if not task.cancelled():
                task.exception()


def _quiet_asyncio() -> None:
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def kernel_available(name: str = KERNEL) -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    return name in KernelSpecManager().find_kernel_specs()


def run_notebook(notebook: str, profile: str = DEFAULT_PROFILE, overrides: dict | None = None,
                 heartbeat_s: float = HEARTBEAT_S, lock: RunLock | None = None) -> Path:
    """Execute one notebook; return its published results folder. Raises `NotebookFailed`
    naming the failing cell; its executed copy stays in `results/.staging/` (git-ignored).

    One run per notebook and profile at a time: `RunBusy` (naming the holder) if another live
    process runs it (`lock`: a `RunLock` the caller already holds for it). The staged folder,
    the executed notebook inside, replaces the published one in one atomic exchange."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = resolve_notebook(notebook)
    params = load_params(profile, notebook, overrides)
    if not kernel_available():
        raise ValueError(f"Jupyter kernel {KERNEL!r} is not registered: run `make setup` (it runs "
                         f"`python -m ipykernel install --sys-prefix --name {KERNEL}`)")
    label, note = _label(notebook, params)
    if note:
        print(f"      {note}", flush=True)
    stage_root = results_root() / STAGING / label
    check_writable(stage_root, "the results folder", _results_fix())
    own_lock = lock is None
    if own_lock:
        lock = RunLock(notebook, label).acquire()
    try:
        _say_stale(lock)
        return _execute(notebook, label, params, stage_root, lock, heartbeat_s,
                        papermill, PapermillExecutionError)
    finally:
        if own_lock:
            lock.release()


def _label(notebook: str, params: dict) -> tuple[str, str | None]:
    """The run's profile label (`custom` for overridden parameters) and, if it is custom, the
    line that says why (as text for the terminal, not a Python warning)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        label = effective_profile(notebook, params)
    return label, (str(caught[-1].message) if caught else None)


def _say_stale(lock: RunLock) -> None:
    if lock.stale:
        print(f"      took over the lock of PID {lock.stale.get('pid')} (started "
              f"{lock.stale.get('started')}), which is no longer running", flush=True)
        lock.stale = None


def _execute(notebook, label, params, stage_root, lock, heartbeat_s, papermill,
             PapermillExecutionError) -> Path:
    running = stage_root / f"{notebook}.running.ipynb"
    kernel_log = stage_root / f"{notebook}.kernel.log"
    # the kernel runs this interpreter's environment; its progress bars print as text; it leaves
    # the lock and the publishing to this process
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           PROFILE_ENV: params["profile"], RUNNER_LOCK_ENV: str(lock.path)}
    env.setdefault("RESA_PROGRESS", "text")
    progress = _Progress(notebook, heartbeat_s)
    progress.thread.start()
    started = time.time()
    log = open(kernel_log, "wb")
    try:
        papermill.execute_notebook(
            str(notebooks_dir() / f"{notebook}.ipynb"), str(running), parameters=params,
            kernel_name=KERNEL, engine_name=_register_engine(progress), cwd=str(notebooks_dir()),
            progress_bar=False, stderr_file=progress, request_save_on_cell_execute=True,
            kernel_env=env, kernel_log=log,
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
                             f"the kernel's own output is in {kernel_log}; the published results "
                             f"in {results_dir(notebook, label)} are unchanged") from None
    finally:
        progress.stop.set()
        log.close()
    final, stage = results_dir(notebook, label), staging_dir(notebook, label)
    staged = read_metrics(stage) if stage.is_dir() else None
    if _fresh_finished(staged, started):  # the notebook finished: publish with its executed copy
        from resa_utils.core.atomic import atomic_path

        with atomic_path(stage / f"{notebook}.ipynb") as tmp:
            shutil.copyfile(running, tmp)
        publish_folder(stage, final)
    elif _fresh_finished(read_metrics(final), started):  # published by the kernel itself
        from resa_utils.core.atomic import atomic_path

        with atomic_path(final / f"{notebook}.ipynb") as tmp:
            shutil.copyfile(running, tmp)
    else:
        raise NotebookFailed(f"{notebook} ran to its end but never called run.finish(): "
                             f"nothing was published to {final}")
    running.unlink()
    kernel_log.unlink(missing_ok=True)
    if label == REFERENCE_PROFILE:
        from resa_utils.harness.report import write_results_readme

        write_results_readme()
    return final


def _fresh_finished(metrics: dict | None, started: float) -> bool:
    return (metrics is not None and metrics.get("status") == "finished"
            and datetime.fromisoformat(metrics["updated"]).timestamp() >= started - 1)


def _results_fix() -> str:
    return (f"make it writable (chmod -R u+w), or choose another results root with --results-dir "
            f"DIR or {RESULTS_ENV}=DIR")


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


def resume_command(profile: str, notebooks: list[str], params: list[str],
                   results_dir: str | None = None, allow_cpu: bool = False) -> str:
    """The runner command that runs `notebooks` again with this profile and these `-p` items."""
    import shlex

    python = sys.executable
    try:
        rel = os.path.relpath(python)
        python = rel if not rel.startswith("..") else python
    except ValueError:
        pass
    parts = [python, "-m", "resa_utils.harness.run", "--profile", profile, *notebooks]
    for item in params:
        parts += ["-p", item]
    if allow_cpu:
        parts.append("--allow-cpu")
    if results_dir:
        parts += ["--results-dir", results_dir]
    return " ".join(shlex.quote(p) for p in parts)


def check_output_folders() -> None:
    """Refuse at once, in one line, a results root or W&B folder this run cannot write to (W&B
    would silently move its runs to a temporary folder that `wandb sync` never looks in)."""
    check_writable(results_root() / STAGING, "the results folder", _results_fix())
    if os.environ.get("WANDB_MODE", "offline") != "disabled":
        check_writable(wandb_dir() / "wandb", "the W&B folder (WANDB_DIR)",
                       "make it writable, or set WANDB_DIR to a writable folder (runs land in "
                       "$WANDB_DIR/wandb/offline-run-*), or WANDB_MODE=disabled")


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
    names: list[str] = []
    current = None
    locks: dict[str, RunLock] = {}
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
        check_output_folders()
        for name in names:  # no other run of these notebooks and profile may be running
            params = load_params(args.profile, name, overrides)
            locks[name] = RunLock(name, _label(name, params)[0]).acquire()
        for i, name in enumerate(names, 1):
            current = name
            if name in deferred:
                check_params(name, load_params(args.profile, name, overrides))
            print(f"[{i}/{len(names)}] {name} (profile {args.profile})", flush=True)
            t0 = time.monotonic()
            path = run_notebook(name, args.profile, overrides, lock=locks[name])
            locks.pop(name).release()
            print(f"      done in {_fmt(time.monotonic() - t0)}: {path}", flush=True)
    except KeyboardInterrupt:
        _quiet_asyncio()
        left = names[names.index(current):] if current else names
        hint = resume_command(args.profile, left if args.notebooks or current else [],
                              args.param, args.results_dir, args.allow_cpu)
        print(f"\ninterrupted{(' in ' + current) if current else ''}: finished work is kept "
              f"(sweep rows, checkpoints, staged results); resume with `{hint}`",
              file=sys.stderr, flush=True)
        return 130
    except (NotebookFailed, RunBusy, PermissionError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        for lock in locks.values():
            lock.release()
    return 0


def _cli() -> int:
    """`python -m resa_utils.harness.run`: after Ctrl-C's one line, nothing more reaches the
    terminal (late messages of threads and clean-up at exit)."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    return code


if __name__ == "__main__":
    raise SystemExit(_cli())
