"""The runner and tracking under misuse (issue 31): concurrent runs of one notebook and profile,
atomic publishing, re-running the first cells in a used kernel, failed runs in W&B, W&B keys
of dotted training names, Ctrl-C's resume hint, and one-line refusals of unwritable folders
and contradictory options."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from resa_utils.harness import params as P
from resa_utils.harness import run, tracking
from resa_utils.harness.tracking import RunBusy, RunLock, lock_path, notebook_params

from test_run import TINY, tiny_repo  # noqa: F401  (the fixture)
from wandb_log import final_summary, history_keys, summary as wandb_summary


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _hold_lock_in_another_process(notebook: str, profile: str) -> subprocess.Popen:
    code = (f"from resa_utils.harness.tracking import RunLock\n"
            f"lock = RunLock({notebook!r}, {profile!r}).acquire()\n"
            "print('held', flush=True)\nimport time\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# --------------------------------------------------------------------------- 1. one run at a time


def test_a_held_lock_refuses_a_second_run_at_once_and_a_dead_holders_lock_is_taken_over(tiny_repo, capsys):
    holder = _hold_lock_in_another_process(TINY, "smoke")
    try:
        with pytest.raises(RunBusy) as busy:
            run.run_notebook(TINY, "smoke")
        msg = str(busy.value)
        assert "\n" not in msg and f"PID {holder.pid}" in msg and "started 20" in msg
        assert "delete the stale lock" in msg and str(lock_path(TINY, "smoke")) in msg
        assert run.main(["--profile", "smoke", "90"]) == 1  # the runner: one line, exit 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: 90_tiny (profile smoke) is already running: PID") and "\n" not in err
        assert not (tracking.staging_dir(TINY, "smoke") / "metrics.json").exists()  # nothing ran
    finally:
        holder.kill()
        holder.wait()
    # killed: its flock went with it, its record stayed; the next run takes the lock over
    assert json.loads(lock_path(TINY, "smoke").read_text())["pid"] == holder.pid
    with RunLock(TINY, "smoke") as lock:
        assert lock.stale["pid"] == holder.pid
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid() and {"host", "started", "command"} <= set(record)
    assert not lock_path(TINY, "smoke").exists()  # released: the file goes


def test_a_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("RESA_RESULTS_DIR", str(tmp_path))
    path = lock_path("05_gba_recovery", "cpu")
    path.parent.mkdir(parents=True)
    dead = _dead_pid()
    path.write_text(json.dumps({"pid": dead, "host": "h", "started": "2025-01-01T00:00:00",
                                "command": "x"}))
    lock = RunLock("05_gba_recovery", "cpu").acquire()
    assert lock.stale["pid"] == dead
    with pytest.raises(RunBusy, match=rf"PID {os.getpid()} "):  # now held: a second taker is refused
        RunLock("05_gba_recovery", "cpu").acquire()
    lock.release()


def test_without_flock_a_live_pid_on_this_host_holds_the_lock_and_a_dead_one_does_not(tmp_path, monkeypatch):
    import fcntl
    import socket

    monkeypatch.setenv("RESA_RESULTS_DIR", str(tmp_path))

    def no_flock(*_a):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    path = lock_path("03_dense_latents", "smoke")
    path.parent.mkdir(parents=True)
    live = {"pid": os.getppid(), "host": socket.gethostname(), "started": "s", "command": "c"}
    path.write_text(json.dumps(live))
    with pytest.raises(RunBusy, match=f"PID {os.getppid()} on"):
        RunLock("03_dense_latents", "smoke").acquire()
    path.write_text(json.dumps({**live, "pid": _dead_pid()}))
    RunLock("03_dense_latents", "smoke").acquire().release()


def test_an_interactive_run_takes_the_lock_too(monkeypatch):
    monkeypatch.setenv("RESA_PROFILE", "smoke")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with RunLock("98_locked", "smoke"):
        with pytest.raises(RunBusy, match="98_locked .profile smoke. is already running"):
            tracking.start_run("98_locked", {"lr": 0.1})
    r = tracking.start_run("98_locked", {"lr": 0.1})
    assert r.lock is not None and lock_path("98_locked", "smoke").exists()
    r.finish()
    assert not lock_path("98_locked", "smoke").exists()


def test_publishing_swaps_the_whole_folder_in_one_step(tmp_path):
    """A reader that looks at the published path at any moment finds a whole folder (the old or
    the new one): never no folder, never one with files missing."""
    final, stage = tmp_path / "results" / "nb", tmp_path / "stage"
    names = [f"f{i}.csv" for i in range(20)]
    final.mkdir(parents=True)
    for name in names:
        (final / name).write_text("old")
    gaps, looks, stop = [], [0], threading.Event()

    def reader():
        while not stop.is_set():
            looks[0] += 1
            if not final.is_dir():
                gaps.append("no folder")
            elif not all((final / name).is_file() for name in names):
                gaps.append("files missing")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40):
            stage.mkdir()
            for name in names:
                (stage / name).write_text(f"new{i}")
            tracking.publish_folder(stage, final)
            assert not stage.exists()
    finally:
        stop.set()
        t.join()
    assert {p.read_text() for p in final.iterdir()} == {"new39"} and looks[0] > 40
    probe_a, probe_b = tmp_path / "x", tmp_path / "y"
    probe_a.mkdir(), probe_b.mkdir()
    if not tracking._exchange(probe_a, probe_b):
        pytest.skip("no atomic exchange of folders here: the two-rename fallback was used")
    assert not gaps, gaps[:5]


# --------------------------------------------------------------------------- 2. re-run in a used kernel


PARAMS_CELL = '# Parameters\nprofile = "cpu"   # the profile\nseed = 0\nwidths = [1, 2]\n'
CHECK_CELL = "params = notebook_params(globals())\nP.validate('nb', params, CHECKS)"
CHECKS = {"profile": P.choice(["cpu", "smoke"]), "seed": P.integer(min=0), "widths": P.list_of(P.integer(min=1))}


def test_first_cells_rerun_in_a_used_kernel_validate_only_the_parameters(monkeypatch):
    monkeypatch.setattr(tracking, "_PARAM_NAMES", [])
    # the whole notebook ran once: many plain-valued variables besides the parameters
    used = {f"var{i}": i for i in range(70)} | {"n_rows": 5, "label": "x", "rows": [1, 2]}
    history = ["", PARAMS_CELL, CHECK_CELL, "import pandas as pd\ndf = pd.DataFrame()", "n_rows = 5",
               "x = f(3)", PARAMS_CELL.replace("seed = 0", "seed = 7"), CHECK_CELL]
    ns = {"In": history, "Out": {}, "profile": "cpu", "seed": 7, "widths": [1, 2], **used}
    params = notebook_params(ns)
    assert params == {"profile": "cpu", "seed": 7, "widths": [1, 2]}
    P.validate("nb", params, CHECKS)
    with pytest.raises(P.ParameterError, match="restart the kernel"):  # the old behaviour's error
        P.validate("nb", {**params, **used}, CHECKS)
    # the check cell alone, run again later: the names found last
    ns["In"] = history + ["y = 2", CHECK_CELL]  # `y = 2` sets no profile: no parameters cell
    assert notebook_params(ns) == params


def test_papermills_injected_cell_adds_to_the_parameters_cell(monkeypatch):
    monkeypatch.setattr(tracking, "_PARAM_NAMES", [])
    injected = '# Parameters\nseed = 3\nprofile = "smoke"\n'
    ns = {"In": ["", PARAMS_CELL, injected, CHECK_CELL], "profile": "smoke", "seed": 3,
          "widths": [1, 2], "other": 1}
    assert notebook_params(ns) == {"profile": "smoke", "seed": 3, "widths": [1, 2]}


def test_a_plain_namespace_keeps_every_plain_value():
    ns = {"lr": 0.1, "name": "x", "fn": len, "_h": 1}
    assert notebook_params(ns) == {"lr": 0.1, "name": "x"}


# --------------------------------------------------------------------------- 3, 4. W&B


def _offline_runs(root: Path) -> list[Path]:
    return sorted((root / "wandb").glob("offline-run-*"))


def test_a_failed_cell_under_the_runner_ends_the_wandb_run_as_failed_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RESA_PROFILE", "smoke")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv(tracking.RUNNER_LOCK_ENV, str(lock_path("97_failing", "smoke")))
    r = tracking.start_run("97_failing", {"lr": 0.1})
    assert r.lock is None  # the runner holds it
    r.record(loss=1.0)
    r.mark_failed("RuntimeError: boom")
    assert r.wandb is None  # finished, flushed
    info = wandb_summary(_offline_runs(tmp_path)[-1])
    assert info["exit_code"] == 1
    assert final_summary(_offline_runs(tmp_path)[-1])["status"] == '"failed"'
    metrics = json.loads((r.out_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "boom" in metrics["error"] and metrics["wandb"]["id"]


def test_interactively_a_failed_cell_leaves_the_run_open_until_exit(tmp_path, monkeypatch):
    monkeypatch.setenv("RESA_PROFILE", "smoke")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    r = tracking.start_run("96_interactive", {"lr": 0.1})
    r.mark_failed("ValueError: fixed later")
    assert r.wandb is not None
    r._close_unfinished()  # what the atexit hook does
    assert r.wandb is None and wandb_summary(_offline_runs(tmp_path)[-1])["exit_code"] == 1
    assert not lock_path("96_interactive", "smoke").exists()


def test_an_unfinished_run_ends_failed_at_interpreter_exit_after_a_long_backlog(tmp_path):
    code = textwrap.dedent("""
        from resa_utils.harness.tracking import start_run
        run = start_run("95_exit", {"lr": 0.1})
        run.log_curves("train", {f"t{i}": [{"step": s, "loss": 1.0 / (s + 1)} for s in range(200)]
                                 for i in range(10)})
        raise SystemExit(0)  # never finish(): the kernel shuts down
    """)
    env = {**os.environ, "RESA_PROFILE": "smoke", "WANDB_DIR": str(tmp_path),
           "RESA_RESULTS_DIR": str(tmp_path / "results")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    assert wandb_summary(_offline_runs(tmp_path)[-1])["exit_code"] == 1
    metrics = json.loads((tmp_path / "results" / ".staging" / "smoke" / "95_exit" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"


def test_dotted_training_names_make_flat_wandb_keys_and_curves_stay_out_of_the_summary(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("RESA_PROFILE", "smoke")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    r = tracking.start_run("94_curves", {"lr": 0.1})
    names = ["λ=0.01", "jumprelu_0.1", "lr0.001", "a.b", "a_b"]
    csv = r.log_curves("sweep.v2", {n: [{"step": s, "loss": 1.0 / (s + 1), "l0@0.5": 3} for s in range(3)]
                                    for n in names})
    assert pd.read_csv(csv).training.unique().tolist() == names  # the CSV keeps the names
    r.record(fvu=0.25)
    r.finish()
    run_dir = _offline_runs(tmp_path)[-1]
    curve_keys = {k for k in history_keys(run_dir) if k.startswith("curves/")}
    assert "curves/sweep_v2/lambda_0p01/step" in curve_keys
    assert {"curves/sweep_v2/jumprelu_0p1/loss", "curves/sweep_v2/lr0p001/l0_0p5",
            "curves/sweep_v2/a_b/loss", "curves/sweep_v2/a_b_2/loss"} <= curve_keys
    assert not any("." in k for k in curve_keys) and len(curve_keys) == 5 * 3
    summary = final_summary(run_dir)
    assert summary["fvu"] == "0.25" and not [k for k in summary if k.startswith("curves/")]


def test_wandb_key():
    assert tracking.wandb_key("λ=0.01") == "lambda_0p01"
    assert tracking.wandb_key("jumprelu_0.1") == "jumprelu_0p1"
    assert tracking.wandb_key("seed 0 (top-k)") == "seed_0_top-k"
    assert tracking.wandb_keys(["x.y", "x_y", "x y"]) == {"x.y": "x_y", "x_y": "x_y_2", "x y": "x_y_3"}


# --------------------------------------------------------------------------- 8. Ctrl-C


def test_ctrl_c_prints_one_line_whose_command_resumes_with_every_option(tiny_repo, monkeypatch, capsys):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_notebook", interrupted)
    monkeypatch.chdir(tiny_repo)  # --results-dir is relative
    argv = ["--profile", "smoke", "90", "-p", "x=3", "-p", "w=[1, 2]", "--results-dir", "out dir"]
    monkeypatch.setattr(run, "parse_overrides", lambda items: {"x": 3})  # w is no parameter of 90_tiny
    assert run.main(argv) == 130
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted in 90_tiny: finished work is kept"), err
    command = lines[0].split("resume with `", 1)[1].rstrip("`")
    parts = shlex.split(command)
    assert parts[1:4] == ["-m", "resa_utils.harness.run", "--profile"]
    assert parts[4:] == ["smoke", TINY, "-p", "x=3", "-p", "w=[1, 2]", "--results-dir", "out dir"]
    assert not lock_path(TINY, "smoke").exists()  # released on the way out


def test_the_resume_command_lists_the_interrupted_notebook_and_those_after_it():
    cmd = run.resume_command("cpu", ["03_dense_latents", "05_gba_recovery"], ["seeds=[0, 1]"],
                             allow_cpu=True)
    assert cmd.endswith("-m resa_utils.harness.run --profile cpu 03_dense_latents 05_gba_recovery "
                        "-p 'seeds=[0, 1]' --allow-cpu")


# --------------------------------------------------------------------------- 9. one-line refusals


def test_profile_as_a_parameter_is_refused(tiny_repo, capsys):
    assert run.main(["--profile", "smoke", "90", "-p", "profile=cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: -p 'profile=cpu': the profile is chosen with --profile (it picks the "
                   "profile's parameter file): write --profile cpu instead")


@pytest.mark.parametrize("which", ["results", "wandb"])
def test_an_unwritable_results_or_wandb_folder_is_refused_up_front(tiny_repo, monkeypatch, capsys, which):
    blocker = tiny_repo / "a-file"
    blocker.write_text("not a folder")
    if which == "results":
        monkeypatch.setenv("RESA_RESULTS_DIR", str(blocker / "results"))
        expect = f"error: the results folder {blocker / 'results' / '.staging'} is not writable"
    else:
        monkeypatch.setenv("WANDB_DIR", str(blocker))
        expect = f"error: the W&B folder (WANDB_DIR) {blocker / 'wandb'} is not writable"
    assert run.main(["--profile", "smoke", "90"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(expect) and "\n" not in err, err
    assert ("--results-dir" in err) if which == "results" else ("set WANDB_DIR" in err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_results_folder_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "results"
    (root / ".staging").mkdir(parents=True)
    (root / ".staging").chmod(0o555)
    monkeypatch.setenv("RESA_RESULTS_DIR", str(root))
    try:
        with pytest.raises(PermissionError, match="results folder .* is not writable"):
            run.check_output_folders()
    finally:
        (root / ".staging").chmod(0o755)


def test_every_parameters_cell_is_what_notebook_params_reads():
    """notebook_params finds a parameters cell as `name = literal` lines only, `profile` among them."""
    import nbformat

    from resa_utils.harness.tracking import _literal_assignments, notebooks_dir, parameters_cell

    for nb in run.list_notebooks():
        book = nbformat.read(notebooks_dir() / f"{nb}.ipynb", as_version=4)
        names = _literal_assignments(book.cells[parameters_cell(book)].source)
        assert "profile" in names and set(names) == set(run.notebook_parameters(nb)), nb


def test_ctrl_c_while_a_worker_pool_runs_prints_one_line_and_no_traceback(tiny_repo):
    """The real thing: the runner in a terminal-like subprocess, a cell waiting on spawned worker
    processes, SIGINT to the runner. The workers' tracebacks go to the kernel's log file."""
    import signal
    import time

    import nbformat

    from test_run import _last_wandb

    nb_path = Path(os.environ["RESA_NOTEBOOKS_DIR"]) / f"{TINY}.ipynb"
    nb = nbformat.read(str(nb_path), as_version=4)
    nb.cells[3].source = ("import multiprocessing, time\nfrom concurrent.futures import ProcessPoolExecutor\n"
                          "if sleep:  # the workers' initializer is still running at Ctrl-C (as importing torch)\n"
                          "    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('spawn'),\n"
                          "                             initializer=time.sleep, initargs=(sleep,)) as pool:\n"
                          "        list(pool.map(abs, [1, 2]))")
    nbformat.write(nb, str(nb_path))
    argv = ["--profile", "smoke", TINY, "-p", "sleep=90", "-p", "x=2"]
    proc = subprocess.Popen([sys.executable, "-m", "resa_utils.harness.run", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staged = tracking.staging_dir(TINY, "custom") / "metrics.json"
    deadline = time.monotonic() + 180
    while not staged.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    if not staged.exists():  # the run never reached the kernel: say why instead of timing the signal
        proc.kill()
        pytest.fail("the run did not start its notebook: " + proc.communicate()[1][-2000:])
    time.sleep(8)  # the workers have started (spawned interpreters)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "Error" not in err, err
    hint = lines[0].split("resume with `", 1)[1].rstrip("`")
    assert shlex.split(hint)[3:] == ["--profile", "smoke", TINY, "-p", "sleep=90", "-p", "x=2"]
    assert json.loads(staged.read_text())["status"] == "failed"
    assert _last_wandb(tiny_repo)["exit_code"] == 1
    kernel_log = staged.parent.parent / f"{TINY}.kernel.log"
    assert "Exception in initializer" in kernel_log.read_text()  # the workers' noise went here
