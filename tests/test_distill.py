"""Notebook 00's helpers: traces as (prompt, response) pairs, RFT keeps distinct correct samples
only, accuracy rows with Wilson intervals, and the lift rule."""

import pandas as pd
import pytest

from resa_utils.methods import distill
from resa_utils.data import tasks as T


def test_trace_examples_pair_each_prompt_with_its_trace():
    probs = T.make_problems("chain_sum", 5, seed=3)
    ex = distill.trace_examples(probs, T.TraceStyle(), lambda p: "Q: " + p.question, seed=1)
    assert [q for q, _ in ex] == ["Q: " + p.question for p in probs]
    assert all(T.is_correct(r, p.answer) and r.startswith("<think>") for (_, r), p in zip(ex, probs))
    assert ex == distill.trace_examples(probs, T.TraceStyle(), lambda p: "Q: " + p.question, seed=1)


def test_correct_samples_keep_distinct_correct_texts():
    probs = T.make_problems("chain_sum", 2, seed=4)
    a, b = probs
    good_a = f"<answer> Answer: {a.answer} </answer>"
    rows = [(a.uid, good_a, True), (a.uid, good_a, True), (a.uid, "x " + good_a, True),
            (a.uid, "<answer> 99999 </answer>", False), (b.uid, "nothing", False)]
    df = pd.DataFrame(rows, columns=["uid", "text", "correct"])
    kept = distill.correct_samples(df, probs, lambda p: p.question)
    assert kept == [(a.question, good_a), (a.question, "x " + good_a)]
    assert len(distill.correct_samples(df, probs, lambda p: p.question, per_problem=1)) == 1


def test_accuracy_rows_and_the_lift_rule():
    def frame(k, n):
        return pd.DataFrame({"correct": [True] * k + [False] * (n - k), "lenient": [True] * n,
                             "n_tokens": [10] * n, **{w: [1] * n for w in T.REFLECTION_PHRASES}})
    lo, hi = distill.accuracy_row("b", frame(30, 300)), distill.accuracy_row("r", frame(120, 300))
    assert lo["pass@1"] == pytest.approx(0.1) and (lo["ci_low"], lo["ci_high"]) == T.wilson(30, 300)
    gain = distill.lift(hi, lo)
    assert gain["points"] == pytest.approx(30.0) and gain["disjoint"]
    near = distill.accuracy_row("r2", frame(36, 300))
    assert not distill.lift(near, lo)["disjoint"]
    assert distill.lift(hi, lo, "lenient ")["points"] == pytest.approx(0.0)
