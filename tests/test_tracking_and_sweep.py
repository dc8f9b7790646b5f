import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from resa_utils.core.atomic import write_json  # noqa: E402
from resa_utils.core.sweep import run_sweep  # noqa: E402
from resa_utils.harness.tracking import start_run  # noqa: E402


def test_start_run_stages_then_publishes_with_an_offline_wandb_run(monkeypatch):
    from resa_utils.harness.tracking import results_dir, staging_dir

    monkeypatch.setenv("RESA_PROFILE", "smoke")
    run = start_run("99_test", {"lr": 0.1, "nested": {"k": 3}})
    assert run.wandb is not None and os.environ["WANDB_MODE"] == "offline"
    assert run.out_dir == staging_dir("99_test", "smoke") and run.final_dir == results_dir("99_test", "smoke")
    run.log({"loss": 1.0}, step=1)
    run.record(fvu=0.25, bad=float("nan"))
    assert json.loads((run.out_dir / "metrics.json").read_text())["status"] == "running"
    assert not run.final_dir.exists()  # nothing is published before finish()
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    run.save_figure(fig, "curve")
    run.save_table(pd.DataFrame({"a": [1, 2]}), "table")
    curves = run.log_curves("train", {"a": [{"step": 1, "loss": 2.0}], "b": [{"step": 1, "loss": 3.0}]})
    assert pd.read_csv(curves).training.tolist() == ["a", "b"]
    final = run.finish()
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["metrics"]["fvu"] == 0.25
    assert metrics["metrics"]["bad"] is None  # NaN is not JSON
    assert metrics["params"]["nested"]["k"] == 3 and metrics["profile"] == "smoke"
    assert (final / "figures" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "offline-run" in metrics["wandb"]["dir"]
    assert not run.out_dir.exists()
    assert not list(final.rglob("*.tmp"))  # atomic writes leave no temp files


def test_published_sweeps_are_only_the_ones_this_run_asked_for(monkeypatch):
    """A run starts from the published sweep rows (to reuse them); at finish the files it never
    asked for (an earlier design's or setting's) are dropped, and the ones it used are kept."""
    monkeypatch.setenv("RESA_PROFILE", "smoke")
    first = start_run("99_prune", {"x": 1})
    for name in ("kept", "old design"):
        run_sweep(first.sweep_path(name), [{"i": 0}], lambda cfg: {"v": cfg["i"]})
    published = first.finish() / "sweeps"
    assert sorted(f.name for f in published.glob("*.jsonl")) == ["kept.jsonl", "old_design.jsonl"]

    second = start_run("99_prune", {"x": 2})
    assert (second.sweep_dir / "old_design.jsonl").exists()  # copied for reuse at the start
    calls = []
    rows = run_sweep(second.sweep_path("kept"), [{"i": 0}], lambda cfg: calls.append(cfg) or {"v": 9})
    assert calls == [] and rows.v.tolist() == [0]  # the published row was reused, not redone
    published = second.finish() / "sweeps"
    assert [f.name for f in published.glob("*.jsonl")] == ["kept.jsonl"]


def test_a_resumed_run_counts_every_session_in_its_runtime(monkeypatch):
    """An interrupted run resumed later: `runtime_s` is the sum of its sessions, each listed,
    and the results README says how many (it showed only the last session's time)."""
    from datetime import timedelta

    from resa_utils.harness.report import render

    monkeypatch.setenv("RESA_PROFILE", "cpu")  # the results README reads the cpu runs (in the tests' results folder)
    first = start_run("99_resume", {"x": 1})
    first.started -= timedelta(seconds=600)  # this session ran ten minutes
    first._close_unfinished()
    second = start_run("99_resume", {"x": 1})
    assert second.earlier_parts_s == [pytest.approx(600, abs=5)]
    second.started -= timedelta(seconds=300)
    metrics = json.loads((second.finish() / "metrics.json").read_text())
    assert metrics["runtime_s"] == pytest.approx(900, abs=10)
    assert [round(p, -1) for p in metrics["runtime_parts_s"]] == [600, 300]
    assert "| 15 min (2 sessions) |" in render(["99_resume"])
    third = start_run("99_resume", {"x": 1})  # a fresh run after a finished one starts from zero
    assert third.earlier_parts_s == []
    third._close_unfinished()


def test_paper_comparison_schema_is_enforced():
    from resa_utils.harness.tracking import comparison_frame

    ok = {"claim": "c", "metric": "m", "paper": 1.0, "ours": "x", "held": "partly", "note": ""}
    assert list(comparison_frame([ok]).columns) == ["claim", "metric", "paper", "ours", "held", "note"]
    with pytest.raises(ValueError, match="held must be one of"):
        comparison_frame([{**ok, "held": "maybe"}])
    with pytest.raises(ValueError, match="missing \\['note'\\]"):
        comparison_frame([{k: v for k, v in ok.items() if k != "note"}])


def test_write_json_is_atomic_on_failure(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}


def test_sweep_resumes_and_ignores_a_torn_line(tmp_path):
    calls = []

    def fn(c):
        calls.append(c["x"])
        return {"y": c["x"] ** 2}

    path = tmp_path / "s.jsonl"
    configs = [{"x": i} for i in range(4)]
    run_sweep(path, configs[:2], fn)
    with open(path, "a") as fh:
        fh.write('{"x": 2, "y": 4, "_ke')  # killed mid-write
    df = run_sweep(path, configs, fn)
    assert calls == [0, 1, 2, 3]
    assert df.y.tolist() == [0, 1, 4, 9]
    assert run_sweep(path, configs, fn).y.tolist() == [0, 1, 4, 9] and calls == [0, 1, 2, 3]


def test_notebook_params_keeps_plain_values_only():
    from resa_utils.harness.tracking import notebook_params

    ns = {"lr": 0.1, "widths": [1, 2], "name": "x", "In": ["code"], "Out": {}, "_hidden": 1,
          "pd": pd, "fn": len}
    assert notebook_params(ns) == {"lr": 0.1, "widths": [1, 2], "name": "x"}


def test_sweep_recomputes_invalid_rows_and_keeps_only_its_own(tmp_path):
    calls = []

    def fn(c):
        calls.append(c["x"])
        return {"y": c["x"] + len(calls)}

    path = tmp_path / "s.jsonl"
    run_sweep(path, [{"x": 0}, {"x": 1}, {"x": 2}], fn)
    df = run_sweep(path, [{"x": 0}, {"x": 1}], fn, valid=lambda row: row["x"] != 1)
    assert calls == [0, 1, 2, 1] and df.y.tolist() == [1, 5]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["x"] for r in rows] == [0, 1]  # the stale x=2 row and the superseded x=1 row are gone


def test_sweep_never_shows_valid_a_row_of_another_layout(tmp_path):
    """A run's staging starts from the committed sweeps of an earlier design: their rows lack the
    fields `valid` reads, and must be skipped, not crash the run (notebook 03's first cpu run of
    this design stopped so, after 1h40 of work)."""
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"_key": "0123456789abcdef", "layer": 3, "fvu": 0.1}) + "\n")
    df = run_sweep(path, [{"epochs": [1]}], lambda c: {"y": 1}, valid=lambda row: max(row["epochs"]) > 0)
    assert df.y.tolist() == [1]
    assert [json.loads(line).get("epochs") for line in path.read_text().splitlines()] == [[1]]


def test_sweep_in_worker_processes_matches_the_serial_sweep(tmp_path):
    from resa_utils.methods.recovery import synthetic_row

    def cfg(seed, method):
        return {"syn": {"n_features": 12, "d": 6, "sparsities": [2], "n_samples": 2000, "seed": seed},
                "train": {"method": method, "d_sae": 16, "k": 2, "n_tokens": 4096, "batch_size": 256,
                          "seed": seed, "gba_interval": 4, "dead_tokens": 1024},
                "probe_samples": [1024], "n_eval": 1000}
    configs = [cfg(s, m) for s in (0, 1) for m in ("topk", "gba")]
    serial = run_sweep(tmp_path / "a.jsonl", configs, synthetic_row)
    parallel = run_sweep(tmp_path / "b.jsonl", configs, synthetic_row, workers=2)
    cols = ["recovery@0.9", "fvu", "l0", "dead_frac"]
    pd.testing.assert_frame_equal(serial[cols], parallel[cols])  # same rows, in configs order
    assert [len(c) for c in parallel.curve] == [2] * 4  # the probe and the stopping point
    with pytest.raises(TypeError, match="module-level function"):
        run_sweep(tmp_path / "c.jsonl", configs, lambda c: {}, workers=2)


def test_an_interrupted_sweep_stops_its_worker_processes(tmp_path):
    """Ctrl-C in the kernel (JupyterLab's interrupt reaches it alone) stops the running jobs at
    once, rather than waiting for them and leaving them running after the kernel is gone."""
    import os
    import signal
    import threading
    import time

    from sweep_helpers import sleep_and_record_pid

    configs = [{"dir": str(tmp_path), "i": i, "s": 120} for i in range(2)]

    def interrupt_when_both_started():
        deadline = time.monotonic() + 90
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_both_started, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tmp_path / "rows.jsonl", configs, sleep_and_record_pid, workers=2)
    assert time.monotonic() - t0 < 100  # not the jobs' 120 s
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2
    time.sleep(1)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
