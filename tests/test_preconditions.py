"""Preconditions gate claims: a claim whose premise was not met is 'not tested', never 'no';
claims whose preconditions hold keep their verdict; the report shows preconditions above claims."""

from __future__ import annotations

import pytest

from resa_utils.harness import params as P
from resa_utils.harness.tracking import (COMPARISON_COLUMNS, Run, comparison_frame, gate_claims,
                                         preconditions_frame)


def _claims():
    return comparison_frame([
        {"claim": "transfer lifts the target", "metric": "points", "paper": 6.1, "ours": -12.3, "held": "no", "note": "n=300"},
        {"claim": "SFT falls below", "metric": "points", "paper": -2.2, "ours": -25.6, "held": "yes", "note": ""},
        {"claim": "no-op", "metric": "logit change", "paper": 0, "ours": 0, "held": "yes", "note": "exact"},
    ])


def _pre(met_first="no"):
    return preconditions_frame([
        {"precondition": "source beats target", "measure": "pass@1 points (source - target)", "threshold": 10,
         "value": -7.6, "met": met_first, "gates": "1"},
        {"precondition": "SAE splices well", "measure": "spliced KL (nats/token)", "threshold": 0.1,
         "value": 0.05, "met": "yes", "gates": "1 2"},
    ])


def test_unmet_precondition_turns_its_claims_into_not_tested_and_names_it():
    out = gate_claims(_claims(), _pre())
    assert list(out.held) == ["not tested", "yes", "yes"]
    assert "precondition 'source beats target' not met" in out.note[0] and "as measured: no" in out.note[0]
    assert "n=300" in out.note[0]
    assert list(out.note[1:]) == ["", "exact"]  # met preconditions leave their claims alone


def test_met_preconditions_change_nothing_and_gating_is_idempotent():
    assert gate_claims(_claims(), _pre("yes")).equals(_claims())
    once = gate_claims(_claims(), _pre())
    assert gate_claims(once, _pre()).equals(once)


@pytest.mark.parametrize("bad, match", [({"met": "maybe"}, "met must be yes or no"),
                                        ({"gates": "1,2"}, "gates must be"), ({"gates": "0"}, "gates must be")])
def test_bad_precondition_rows_are_refused(bad, match):
    row = {"precondition": "p", "measure": "m", "threshold": 1, "value": 2, "met": "yes", "gates": "1", **bad}
    with pytest.raises(ValueError, match=match):
        preconditions_frame([row])


def test_a_gate_past_the_last_claim_is_refused():
    pre = preconditions_frame([{"precondition": "p", "measure": "m", "threshold": 1, "value": 0,
                                "met": "no", "gates": "4"}])
    with pytest.raises(ValueError, match="gates claim 4"):
        gate_claims(_claims(), pre)


@pytest.mark.parametrize("value, match", [(float("nan"), "is NaN"), (-0.5, ">= 0"), (float("inf"), "finite"),
                                          ("ten", "must be a number")])
def test_bad_threshold_parameter_is_refused_naming_it(value, match):
    with pytest.raises(P.ParameterError, match=f"min_gap.*{match}|{match}.*min_gap") as err:
        P.threshold()("min_gap", value, {})
    assert "min_gap" in str(err.value)
    P.threshold()("min_gap", 10, {})  # a finite non-negative number passes


def test_run_writes_preconditions_and_gates_its_comparison(tmp_path, monkeypatch):
    import pandas as pd

    from resa_utils.harness import report

    monkeypatch.setenv("RESA_RESULTS_DIR", str(tmp_path))
    run = Run("01_resa_sae_tuning", {"profile": "cpu"}, "cpu")
    run.save_preconditions(_pre().to_dict("records"))
    df = run.save_paper_comparison(_claims().to_dict("records"))
    assert list(df.held) == ["not tested", "yes", "yes"]
    saved = pd.read_csv(run.out_dir / "tables" / "paper_comparison.csv", dtype=str, keep_default_na=False)
    assert list(saved.columns) == COMPARISON_COLUMNS and list(saved.held) == list(df.held)
    # the report, from a published folder: preconditions above claims, every figure shown
    pub = tmp_path / "01_resa_sae_tuning"
    (pub / "tables").mkdir(parents=True)
    (pub / "figures").mkdir()
    for name in ("a", "b"):
        (pub / "figures" / f"{name}.png").write_bytes(b"png")
    (pub / "metrics.json").write_text('{"status": "finished", "runtime_s": 60, "metrics": {"headline_figure": "b"}}')
    _pre().to_csv(pub / "tables" / "preconditions.csv", index=False)
    _claims().to_csv(pub / "tables" / "paper_comparison.csv", index=False)  # ungated: the report gates it
    text = report.render(["01_resa_sae_tuning"])
    assert text.index("**Preconditions**") < text.index("**Claims**")
    assert text.index("figures/b.png") < text.index("figures/a.png")
    assert "| transfer lifts the target | points | 6.1 | -12.3 | not tested |" in text


def test_report_marks_results_run_before_the_notebook_last_changed(monkeypatch, tmp_path):
    """A committed run from an earlier version of its notebook's code is flagged stale in the
    README; a later change of its markdown only (the results text) is not; outside git or with
    an unknown commit nothing is flagged."""
    import json
    import subprocess

    from resa_utils.harness import report

    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    nb = repo / "notebooks" / "01_x.ipynb"

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()

    def write(code: str, text: str) -> None:
        nb.write_text(json.dumps({"cells": [{"cell_type": "code", "source": [code]}, {"cell_type": "markdown", "source": [text]}]}))

    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    write("x = 1", "results: to do")
    git("add", "-A")
    git("commit", "-qm", "one")
    run_sha = git("rev-parse", "HEAD")
    monkeypatch.setenv("RESA_NOTEBOOKS_DIR", str(repo / "notebooks"))
    assert report.changed_since("01_x", run_sha) is False
    write("x = 1  # measured: 1", "results: x is 1")   # the results text and a comment, written after the run
    git("commit", "-qam", "two")
    assert report.changed_since("01_x", run_sha) is False
    write("x = 2", "results: x is 1")        # the code changed: the committed results are stale
    assert report.changed_since("01_x", run_sha) is True
    assert report.changed_since("01_x", None) is None and report.changed_since("01_x", "0" * 40) is None
