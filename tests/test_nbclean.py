"""Notebooks are stored without outputs or session metadata (a git clean filter), so opening or
running one in JupyterLab leaves the repository's content unchanged and runs record dirty=False
(`git status` may still list the file by its changed size; `git diff` shows nothing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resa_utils.harness.nbclean import KERNELSPEC, clean

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def lab_save(text: str) -> str:
    """What JupyterLab writes after a kernel start and a run: its kernelspec display name, the
    kernel's language_info, outputs, execution counts and cell UI metadata."""
    nb = json.loads(text)
    nb["metadata"]["kernelspec"] = {"display_name": "Python (resa)", "language": "python", "name": "resa"}
    nb["metadata"]["language_info"] = {"codemirror_mode": {"name": "ipython", "version": 3},
                                       "file_extension": ".py", "mimetype": "text/x-python", "name": "python",
                                       "nbconvert_exporter": "python", "pygments_lexer": "ipython3",
                                       "version": "3.11.7"}
    for i, cell in enumerate(nb["cells"]):
        cell["metadata"]["collapsed"] = False
        if cell["cell_type"] == "code":
            cell["execution_count"] = i
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hello\n"]}]
    return json.dumps(nb, indent=2)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_are_in_stored_form(path):
    text = path.read_text()
    assert clean(text) == text, f"{path.name}: run `python -m resa_utils.harness.nbclean < {path.name} > clean.ipynb` and replace it (or `make nbfilter` and re-add it)"
    assert json.loads(text)["metadata"]["kernelspec"] == KERNELSPEC


def test_a_lab_save_cleans_back_to_the_stored_notebook():
    text = NOTEBOOKS[0].read_text()
    saved = lab_save(text)
    assert saved != text and clean(saved) == text
    assert clean(clean(saved)) == clean(saved)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_status_stays_clean_after_a_lab_save(tmp_path):
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(NOTEBOOKS[0], repo / "notebooks" / "nb.ipynb")
    (repo / ".gitattributes").write_text((ROOT / ".gitattributes").read_text())

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                              capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("config", "filter.resa-nbclean.clean", f"{sys.executable} -m resa_utils.harness.nbclean")
    git("config", "filter.resa-nbclean.smudge", "cat")
    git("add", ".")
    git("commit", "-qm", "init")
    from resa_utils.harness.tracking import git_state

    (repo / "notebooks" / "nb.ipynb").write_text(lab_save(NOTEBOOKS[0].read_text()))
    assert git("diff", "HEAD") == "" and git_state(repo)["dirty"] is False
    # a real edit still counts
    nb = json.loads((repo / "notebooks" / "nb.ipynb").read_text())
    nb["cells"][0]["source"] = ["changed"]
    (repo / "notebooks" / "nb.ipynb").write_text(json.dumps(nb))
    assert "nb.ipynb" in git("diff", "--stat", "HEAD") and git_state(repo)["dirty"] is True
