import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from resa_utils.atomic import write_json  # noqa: E402
from resa_utils.sweep import run_sweep  # noqa: E402
from resa_utils.tracking import start_run  # noqa: E402


def test_start_run_writes_results_and_an_offline_wandb_run(tmp_path):
    run = start_run("99_test", {"lr": 0.1, "nested": {"k": 3}}, out_dir=tmp_path / "r")
    assert run.wandb is not None and os.environ["WANDB_MODE"] == "offline"
    run.log({"loss": 1.0}, step=1)
    run.record(fvu=0.25, bad=float("nan"))
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    png = run.save_figure(fig, "curve")
    csv = run.save_table(pd.DataFrame({"a": [1, 2]}), "table")
    run.finish()
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["metrics"]["fvu"] == 0.25
    assert metrics["metrics"]["bad"] is None  # NaN is not JSON
    assert metrics["params"]["nested"]["k"] == 3
    assert png.read_bytes()[:4] == b"\x89PNG" and csv.exists()
    assert "offline-run" in metrics["wandb"]["dir"]
    assert not list((tmp_path / "r").rglob("*.tmp"))  # atomic writes leave no temp files


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
    from resa_utils.tracking import notebook_params

    ns = {"lr": 0.1, "widths": [1, 2], "name": "x", "In": ["code"], "Out": {}, "_hidden": 1,
          "pd": pd, "fn": len}
    assert notebook_params(ns) == {"lr": 0.1, "widths": [1, 2], "name": "x"}
