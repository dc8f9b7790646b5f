"""The papermill runner: bad input stops before execution; every notebook runs on `smoke`."""

import json

import pytest

from resa_utils import run
from resa_utils.tracking import results_root


def test_unknown_profile_and_notebook():
    with pytest.raises(ValueError, match="profile 'gpu' unknown"):
        run.load_params("gpu", "05_gba_recovery")
    with pytest.raises(ValueError, match="notebook '99_nope' unknown"):
        run.run_notebook("99_nope", "smoke")


def test_unknown_parameter_is_refused_before_running(tmp_path, monkeypatch):
    params = tmp_path / "notebooks" / "params" / "smoke"
    params.mkdir(parents=True)
    (params / "05_gba_recovery.yaml").write_text("n_featurez: 3\n")
    src = run.notebooks_dir() / "05_gba_recovery.ipynb"
    (tmp_path / "notebooks" / "05_gba_recovery.ipynb").write_text(src.read_text())
    monkeypatch.setattr(run, "notebooks_dir", lambda: tmp_path / "notebooks")
    with pytest.raises(ValueError, match="unknown parameter.*n_featurez.*parameters cell"):
        run.load_params("smoke", "05_gba_recovery")
    assert run.main(["--profile", "smoke"]) == 1


def test_every_profile_has_every_notebook():
    for profile in ("smoke", "cpu", "paper"):
        for nb in run.list_notebooks():
            run.load_params(profile, nb)


@pytest.mark.parametrize("notebook", run.list_notebooks())
def test_notebook_runs_on_smoke_profile(notebook):
    path = run.run_notebook(notebook, "smoke")
    assert path.exists()
    metrics = json.loads((results_root() / notebook / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["metrics"]
    assert list((results_root() / notebook / "figures").glob("*.png"))
