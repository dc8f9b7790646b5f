"""The papermill runner on a tiny notebook of its own (the real notebooks run under nbval):
results by profile, staging, W&B runs that say what they are and fail when the notebook does,
overrides, prefixes, --list and --dry-run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
import yaml

from resa_utils.harness import run
from resa_utils.harness.tracking import results_dir, results_root

from wandb_log import summary as wandb_summary

TINY = "90_tiny"
CELLS = [
    ("code", 'profile = "cpu"\nfail = False\nx = 1\nsleep = 0', ["parameters"]),
    ("code", "from resa_utils.harness import params as P\nfrom resa_utils.harness.tracking import notebook_params\n"
             "params = notebook_params(globals())\n"
             "P.validate('90_tiny', params, {'profile': P.profile(), 'fail': P.boolean(), "
             "'x': P.integer(min=0, max=100), 'sleep': P.integer(min=0)})", []),
    ("code", "from resa_utils.harness.tracking import start_run\nrun = start_run('90_tiny', params)\n"
             "run.record(x=x)\nrun.log_curves('train', {'a': [{'step': 1, 'loss': 2.0}, "
             "{'step': 2, 'loss': 1.0}]})", []),
    ("code", "if fail:\n    raise RuntimeError('boom')\nimport time\ntime.sleep(sleep)", []),
    ("code", "run.save_paper_comparison([{'claim': 'c', 'metric': 'm', 'paper': 1, 'ours': x, "
             "'held': 'yes', 'note': ''}])\nrun.finish()", []),
]


@pytest.fixture
def tiny_repo(tmp_path, monkeypatch):
    """A notebooks folder with one tiny notebook and smoke/cpu profiles for it."""
    nb_dir = tmp_path / "notebooks"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "resa", "display_name": "Python (resa)", "language": "python"}
    for kind, src, tags in CELLS:
        cell = nbformat.v4.new_code_cell(src)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    (nb_dir / "params" / "smoke").mkdir(parents=True)
    (nb_dir / "params" / "cpu").mkdir()
    nbformat.write(nb, str(nb_dir / f"{TINY}.ipynb"))
    (nb_dir / "params" / "smoke" / f"{TINY}.yaml").write_text("x: 2\n")
    (nb_dir / "params" / "cpu" / f"{TINY}.yaml").write_text("{}\n")
    monkeypatch.setenv("RESA_NOTEBOOKS_DIR", str(nb_dir))
    monkeypatch.setenv("RESA_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    return tmp_path


def _last_wandb(tmp_path: Path) -> dict:
    runs = sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    return wandb_summary(runs[-1])


@pytest.mark.slow
def test_smoke_run_publishes_under_its_profile_only(tiny_repo):
    assert run.kernel_available("resa"), "make setup registers the kernel `resa`"
    published = run.run_notebook("90", "smoke", heartbeat_s=0.5)  # a unique prefix
    assert published == results_root() / "smoke" / TINY
    metrics = json.loads((published / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["metrics"]["x"] == 2
    assert metrics["profile"] == "smoke" and metrics["provenance"]["git"]["sha"]
    assert (published / f"{TINY}.ipynb").exists() and (published / "curves" / "train.csv").exists()
    executed = nbformat.read(str(published / f"{TINY}.ipynb"), as_version=4)
    assert executed.metadata.kernelspec.name == "resa"
    assert not (results_root() / TINY).exists()  # the committed (cpu) folder is untouched
    assert not list((results_root() / ".staging" / "smoke").iterdir())
    info = _last_wandb(tiny_repo)
    assert info["exit_code"] == 0 and info["group"] == TINY and info["job_type"] == "smoke"
    assert info["name"].startswith(f"{TINY}-smoke-") and "smoke" in info["tags"]


@pytest.mark.slow
def test_failed_run_is_marked_failed_and_leaves_published_results(tiny_repo):
    first = run.run_notebook(TINY, "smoke")
    before = (first / "metrics.json").read_text()
    smoke_yaml = Path(os.environ["RESA_NOTEBOOKS_DIR"]) / "params" / "smoke" / f"{TINY}.yaml"
    smoke_yaml.write_text("x: 2\nfail: true\n")
    with pytest.raises(run.NotebookFailed, match=r"failed in code cell 4 of 5 \[if fail:\]: RuntimeError: boom"):
        run.run_notebook(TINY, "smoke")
    assert (first / "metrics.json").read_text() == before  # published folder unchanged
    staged = results_root() / ".staging" / "smoke"
    assert (staged / f"{TINY}.failed.ipynb").exists()
    partial = json.loads((staged / TINY / "metrics.json").read_text())
    assert partial["status"] == "failed" and "boom" in partial["error"]
    info = _last_wandb(tiny_repo)
    assert info["exit_code"] not in (0, None)


@pytest.mark.slow
def test_cpu_run_publishes_reference_and_regenerates_results_readme(tiny_repo):
    published = run.run_notebook(TINY, "cpu")
    assert published == results_root() / TINY == results_dir(TINY)
    readme = (results_root() / "README.md").read_text()
    assert f"## {TINY}" in readme and "| c | m | 1 | 1 | yes |" in readme


@pytest.mark.slow
def test_overrides_make_a_custom_run(tiny_repo):
    published = run.run_notebook(TINY, "cpu", overrides={"x": 5})
    assert published == results_root() / "custom" / TINY
    assert not (results_root() / TINY).exists()


def test_prefixes_overrides_list_and_dry_run(tiny_repo, capsys):
    assert run.resolve_notebook("90") == TINY
    with pytest.raises(ValueError, match="matches no notebook"):
        run.resolve_notebook("77")
    assert run.parse_overrides(["x=3", "w=[1, 2]", "s=abc"]) == {"x": 3, "w": [1, 2], "s": "abc"}
    with pytest.raises(ValueError, match="not name=value"):
        run.parse_overrides(["x"])
    with pytest.raises(ValueError, match=r"-p: unknown parameter\(s\) \['y'\]"):
        run.load_params("smoke", TINY, {"y": 1})
    assert run.main(["--list"]) == 0
    assert TINY in capsys.readouterr().out
    assert run.main(["--dry-run", "--profile", "smoke", "90"]) == 0
    assert "every parameter checks out" in capsys.readouterr().out
    assert run.main(["--dry-run", "--profile", "smoke", "90", "-p", "x=-4"]) == 1
    err = capsys.readouterr().err
    assert "parameter `x` = -4" in err and "Fix:" in err
    assert not results_root().exists() or not list(results_root().rglob("metrics.json"))


def test_unknown_profile_and_parameter_are_refused_before_running(tiny_repo):
    with pytest.raises(ValueError, match="profile 'gpu' unknown"):
        run.load_params("gpu", TINY)
    yaml_path = Path(os.environ["RESA_NOTEBOOKS_DIR"]) / "params" / "smoke" / f"{TINY}.yaml"
    yaml_path.write_text(yaml.safe_dump({"xx": 3}))
    with pytest.raises(ValueError, match=r"unknown parameter.*xx.*parameters cell"):
        run.load_params("smoke", TINY)
    assert run.main(["--profile", "smoke"]) == 1


def test_every_profile_has_every_notebook():
    for profile in ("smoke", "cpu", "paper"):
        for nb in run.list_notebooks():
            run.load_params(profile, nb)


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_marks_the_run_failed(tiny_repo):
    import signal
    import subprocess
    import sys
    import time

    yaml_path = Path(os.environ["RESA_NOTEBOOKS_DIR"]) / "params" / "smoke" / f"{TINY}.yaml"
    yaml_path.write_text("x: 2\nsleep: 120\n")
    proc = subprocess.Popen([sys.executable, "-m", "resa_utils.harness.run", "--profile", "smoke", TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staged = results_root() / ".staging" / "smoke" / TINY / "metrics.json"
    deadline = time.monotonic() + 120
    while not staged.exists() and proc.poll() is None and time.monotonic() < deadline:  # wait for the sleeping cell
        time.sleep(0.5)
    if not staged.exists():  # the run never reached the kernel: say why instead of timing the signal
        proc.kill()
        pytest.fail("the run did not start its notebook: " + proc.communicate()[1][-2000:])
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    lines = [ln for ln in err.splitlines() if ln.strip() and "IPKernelApp" not in ln]
    assert len(lines) == 1 and lines[0].startswith("interrupted in 90_tiny") and "resume" in lines[0], err
    assert "Traceback" not in err
    assert json.loads(staged.read_text())["status"] in ("failed", "interrupted")
    assert _last_wandb(tiny_repo)["exit_code"] not in (0, None)
    assert not (results_root() / "smoke" / TINY).exists()


def test_a_notebook_waiting_for_notebook_00s_models_is_checked_after_00():
    from resa_utils.harness import params as P

    waiting = P.ParameterError("parameter `target_model` = 'm-reasoner': is not registered: notebook 00 has not built it here")
    both = ["00_reasoning_models", "01_resa_sae_tuning"]
    assert run._waits_for_builder("01_resa_sae_tuning", both, waiting)
    assert not run._waits_for_builder("01_resa_sae_tuning", ["01_resa_sae_tuning"], waiting)  # 00 not in this run
    assert not run._waits_for_builder("01_resa_sae_tuning", both, P.ParameterError("parameter `k` = -1: must be >= 1"))
