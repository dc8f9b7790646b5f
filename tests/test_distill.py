"""Notebook 00's helpers: traces as (prompt, response) pairs, accuracy rows with Wilson intervals
and the lift rule, the held-out splits and kept steps, the behaviour and target rules, the
dose-response and representation tables, and the verdicts."""

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


# --------------------------------------------------------------------------- the notebook's steps

def _answers(k: int, n: int, wait: int = 0) -> pd.DataFrame:
    """A graded-answers frame: `k` of `n` strictly correct, all lenient-correct, `wait` 'Wait's each."""
    return pd.DataFrame({"uid": [f"u{i}" for i in range(n)], "answer": ["1"] * n, "text": ["t"] * n,
                         "correct": [True] * k + [False] * (n - k), "lenient": [True] * n,
                         "n_tokens": [10] * n, **{w: [wait if w == "Wait" else 0] * n for w in T.REFLECTION_PHRASES}})


@pytest.fixture(scope="module")
def tiny():
    from resa_utils.lm.models import load_model

    return load_model("tiny-llama")


def test_task_prompt_is_the_chat_prompt_of_the_task_question(tiny):
    import pickle

    from resa_utils.lm.generation import chat_prompt

    p = T.make_problems("chain_sum", 1, seed=2)[0]
    make = distill.TaskPrompt(tiny.tokenizer)
    assert make(p) == chat_prompt(tiny.tokenizer, T.prompt(p)) and p.question in make(p)
    assert pickle.loads(pickle.dumps(make))(p) == make(p)


def test_evaluate_model_row_and_cost_match_its_answers(tiny, tmp_path):
    probs = T.make_problems("chain_sum", 3, seed=5)
    make = distill.TaskPrompt(tiny.tokenizer)
    ev = distill.evaluate_model(tiny, "base", probs, make, tmp_path / "eval.jsonl", {"seed": 0}, 4, 2)
    df = ev.answers
    assert list(df.uid) == [p.uid for p in probs] and (df.n_tokens <= 4).all()
    assert ev.row["n"] == len(df) == 3 and ev.row["correct"] == int(df.correct.sum())
    assert ev.row == distill.accuracy_row("base", df)
    prompt_tokens = sum(len(tiny.tokenizer(make(p))["input_ids"]) for p in probs)
    assert ev.cost["tokens"] == prompt_tokens + int(df.n_tokens.sum())
    n_params = sum(p.numel() for p in tiny.model.parameters())
    assert ev.cost["FLOPs"] == pytest.approx(2 * n_params * ev.cost["tokens"])
    assert ev.cost["stage"] == "evaluate base" and ev.cost["wall s"] > 0
    assert set(ev.metrics()) == {"base/pass@1", "base/lenient_pass@1", "base/mean_tokens"}
    assert ev.metrics()["base/mean_tokens"] == pytest.approx(df.n_tokens.mean())
    again = distill.evaluate_model(tiny, "base", probs, make, tmp_path / "eval.jsonl", {"seed": 0}, 4, 2)
    assert again.answers.text.tolist() == df.text.tolist() and again.cost == ev.cost  # resumed from the sweep


def test_training_curves_and_example_outputs_are_tidy():
    curves = {"distill": [{"step": 5, "loss": 2.0, "learning_rate": 1e-4}, {"step": 10, "loss": 1.5}],
              "rft0": [], "rft1": [{"step": 5, "loss": 1.0}]}
    tidy = distill.training_curves(curves)
    assert tidy.values.tolist() == [["distill", 5, 2.0], ["distill", 10, 1.5], ["rft1", 5, 1.0]]
    assert list(distill.training_curves({}).columns) == ["training", "step", "loss"]
    evals = [distill.ModelEval(m, _answers(k, 4), {}, {}) for m, k in (("base", 0), ("reasoner", 3))]
    shown = distill.example_outputs(evals, 2)
    assert shown.model.tolist() == ["base", "base", "reasoner", "reasoner"]
    assert shown.uid.tolist() == ["u0", "u1"] * 2 and shown.correct.tolist() == [False, False, True, True]
    assert list(shown.columns) == ["model", "uid", "answer", "correct", "output"]


def _behaviour(models, teacher_wait=1.0, wait=1.0):
    teacher = {w: (teacher_wait if w == "Wait" else 0.5) for w in T.REFLECTION_PHRASES}
    rows = []
    for m in models:
        ans = _answers(5, 10)
        ans["Wait"] = wait
        for w in ("Alternatively", "Therefore", "However"):
            ans[w] = 0.5
        rows += distill.behaviour_rows(m, ans, teacher, "sampled")
    return pd.DataFrame(rows)


def test_reasoning_models_figures_have_their_panels():
    import matplotlib.pyplot as plt

    from resa_utils.harness import plots

    acc = pd.DataFrame([distill.accuracy_row("base", _answers(3, 10)),
                        distill.accuracy_row("reasoner", _answers(8, 10, wait=1))])
    curves = distill.training_curves({"reasoner": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}],
                                      "reasoner-seed1": [{"step": 1, "loss": 0.9}]})
    fig = plots.reasoning_models(acc, _behaviour(["reasoner"]), curves, "chain_sum d1")
    ax_acc, ax_phrases, ax_loss = fig.axes[:3]
    assert len(fig.axes) == 3 and len(ax_acc.containers) == 2 and len(ax_loss.get_lines()) == 2
    assert len(ax_phrases.patches) >= len(T.REFLECTION_PHRASES) and ax_phrases.collections  # bars + teacher marks
    assert "(n = 10)" in fig._suptitle.get_text()
    empty = plots.reasoning_models(acc, _behaviour([]), distill.training_curves({"distill": []}), "chain_sum d1")
    assert not empty.axes[2].get_lines() and "no loss logged" in empty.axes[2].texts[0].get_text()
    reps = pd.DataFrame([{"model": m, "text": t, "block": b, "median cos": 1 - 0.01 * b * (1 + (m == "x2"))}
                         for m in ("reasoner", "x2") for t in ("reasoning", "english") for b in range(4)])
    accs = {"base": distill.accuracy_row("base", _answers(1, 10)), "reasoner": distill.accuracy_row("reasoner", _answers(8, 10)),
            "x2": distill.accuracy_row("x2", _answers(4, 10))}
    dose = distill.dose_table({"base": 0.0, "reasoner": 1.0, "x2": 2.0}, accs, _behaviour(["reasoner", "x2"]), reps, 2)
    fig2 = plots.reasoning_representation(reps, dose, 2)
    assert len(fig2.axes) == 4 and len(fig2.axes[0].get_lines()) == 4 + 1  # 2 models x 2 texts, and the block line
    assert len(fig2.axes[2].get_lines()) == 2 and len(fig2.axes[3].get_lines()) == len(T.REFLECTION_PHRASES)
    for f in (fig, empty, fig2):
        plt.close(f)


def test_held_out_splits_are_disjoint_and_in_order():
    probs = T.make_problems("chain_sum", 12, seed=5)
    sp = distill.held_out_splits(probs, {"test": 5, "dev": 4, "select": 3})
    assert [p.uid for p in sp["test"] + sp["dev"] + sp["select"]] == [p.uid for p in probs]
    with pytest.raises(ValueError, match="need 13"):
        distill.held_out_splits(probs, {"test": 10, "dev": 3})


def test_total_steps_matches_the_trainer_and_early_steps_lie_inside(tmp_path):
    from resa_utils.lm.lora import LoraTrainConfig, train_lora
    from resa_utils.lm.models import load_model

    cfg = LoraTrainConfig(r=2, alpha=4, batch_size=3, epochs=1.5, max_length=32, save_steps=100, logging_steps=1,
                          keep_steps=(1, 3))
    ex = [(f"Q{i}", " A") for i in range(7)]
    res = train_lora(load_model("tiny-llama"), ex, cfg, tmp_path / "t", progress=False)
    assert max(h["step"] for h in res.history) == distill.total_steps(7, cfg) == 5  # ceil(7/3) * 1.5 -> 5
    assert sorted(p.name for p in (tmp_path / "t").glob("step-*")) == ["step-1", "step-3"]
    assert distill.early_steps(100, [0.1, 0.25, 0.1, 0.999]) == (10, 25, 99)
    assert distill.early_steps(3, [0.01]) == (1,)


def test_teacher_rates_and_behaviour_rows():
    probs = T.make_problems("chain_sum", 400, seed=2)
    style = T.TraceStyle(wait_rate=0.0, alternative_rate=1.0, therefore_rate=0.0, however_rate=0.5)
    rates = distill.teacher_rates(probs, style, seed=1)
    assert rates["Wait"] == 0 and rates["Therefore"] == 0 and rates["Alternatively"] == 1.0
    assert 0.4 < rates["However"] < 0.6 and rates == distill.teacher_rates(probs, style, seed=1)
    ans = _answers(2, 4, wait=3)
    rows = {r["phrase"]: r for r in distill.behaviour_rows("m", ans, {"Wait": 1.0, "Alternatively": 0.0,
                                                                       "Therefore": 0.2, "However": 0.0}, "greedy")}
    assert rows["Wait"]["ratio"] == 3.0 and not rows["Wait"]["within"]
    assert rows["Therefore"]["ratio"] == 0.0 and not rows["Therefore"]["within"]
    assert not rows["Alternatively"]["within"]  # a phrase the teacher never writes cannot be matched
    assert distill.behaviour_rows("m", ans, {w: 2.0 for w in T.REFLECTION_PHRASES}, "g")[0]["within"]  # 3 vs 2


def _eval(label, k, n=20, text=None):
    ans = _answers(k, n)
    if text is not None:
        ans["text"] = text
    return distill.ModelEval(label, ans, distill.accuracy_row(label, ans), {})


def test_choose_target_takes_the_latest_formatted_checkpoint_far_enough_below():
    good, bad = "<answer> Answer: 1 </answer>", "no answer here"
    source = _eval("source", 18)
    cands = {5: _eval("s5", 2, text=bad), 10: _eval("s10", 6, text=good), 20: _eval("s20", 12, text=good),
             30: _eval("s30", 16, text=good)}
    step, table = distill.choose_target(cands, source, margin=20, min_format=0.9)
    assert step == 20 and table.qualifies.tolist() == [False, True, True, False]
    assert table.chosen.tolist() == [False, False, True, False]
    assert distill.choose_target(cands, source, margin=90, min_format=0.9)[0] is None
    assert distill.format_share(cands[5].answers) == 0.0 and distill.format_share(cands[10].answers) == 1.0


def _judge_inputs(lift_k=(15, 16), wait=1.0, cos=0.9, dev=(24, 6)):
    acc = {"base": distill.accuracy_row("base", _answers(1, 20))}
    seeds = ["r", "r-seed1"]
    for s, k in zip(seeds, lift_k):
        acc[s] = distill.accuracy_row(s, _answers(k, 20))
    reps = pd.DataFrame([{"model": "r", "text": t, "block": 3, "median cos": cos} for t in ("reasoning", "english")])
    devs = None if dev is None else {"source": distill.accuracy_row("source", _answers(dev[0], 30)),
                                     "target": distill.accuracy_row("target", _answers(dev[1], 30))}
    return acc, seeds, _behaviour(seeds, wait=wait), reps, devs


def test_judge_applies_the_fixed_rules_and_gates_the_target_claim():
    th = distill.Thresholds()
    pre, claims = distill.judge(*_judge_inputs(), block=3, th=th, task="chain_sum", difficulty=1)
    met = {r["precondition"]: r["met"] for r in pre}
    assert all(v == "yes" for v in met.values()), met
    assert [c["held"] for c in claims] == ["yes", "no", "yes", "yes", "yes"]  # lenient: every answer lenient-correct
    assert claims[0]["ours"] == pytest.approx(70.0) and claims[4]["ours"] == pytest.approx(100 * (24 - 6) / 30)
    pre, claims = distill.judge(*_judge_inputs(lift_k=(15, 3), wait=5.0, cos=0.99, dev=None), block=3, th=th,
                                task="chain_sum", difficulty=1)
    met = {r["precondition"]: r["met"] for r in pre}
    assert met["reasoner r-seed1 lifts pass@1"] == "no" and met["'Wait' per sampled answer near the teacher's rate"] == "no"
    assert met["'Therefore' per sampled answer near the teacher's rate"] == "yes"
    assert [c["held"] for c in claims] == ["partly", "no", "partly", "no", "not tested"]
    from resa_utils.harness.tracking import gate_claims, comparison_frame, preconditions_frame

    gated = gate_claims(comparison_frame(claims), preconditions_frame(pre))
    assert gated.held.tolist()[-1] == "not tested" and gated.held.tolist()[0] == "partly"


def test_dose_table_reads_each_scale_and_the_base_is_cosine_one():
    reps = pd.DataFrame([{"model": m, "text": "reasoning", "block": 1, "median cos": c} for m, c in (("r", 0.9), ("x2", 0.7))])
    accs = {m: distill.accuracy_row(m, _answers(k, 10)) for m, k in (("base", 1), ("r", 8), ("x2", 3))}
    dose = distill.dose_table({"x2": 2.0, "base": 0.0, "r": 1.0}, accs, _behaviour(["r", "x2"], wait=0.25), reps, 1)
    assert dose.model.tolist() == ["base", "r", "x2"] and dose["pass@1"].tolist() == [0.1, 0.8, 0.3]
    assert dose["median cos (reasoning)"].tolist() == [1.0, 0.9, 0.7]
    assert dose["Wait / answer"].iloc[1:].tolist() == [0.25, 0.25] and pd.isna(dose["Wait / answer"].iloc[0])


def test_representation_table_loads_each_model_once_per_text(tiny):
    import torch

    ids = torch.randint(10, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    loaded = []

    def load(name):
        loaded.append(name)
        return tiny

    df = distill.representation_table(tiny, ["a", "b"], load, {"reasoning": ids, "english": ids}, [0, 2])
    assert loaded == ["a", "b"] and len(df) == 2 * 2 * 2
    assert list(df.columns[:3]) == ["model", "text", "block"] and (df["median cos"] > 0.9999).all()


def test_reasoning_windows_hold_prompt_and_trace_tokens(tiny):
    probs = T.make_problems("chain_sum", 30, seed=1)
    w = distill.reasoning_windows(probs, T.TraceStyle(), lambda p: "Q: " + p.question, tiny.tokenizer, 3, 16, seed=0)
    assert tuple(w.shape) == (3, 16)
    assert w.equal(distill.reasoning_windows(probs, T.TraceStyle(), lambda p: "Q: " + p.question, tiny.tokenizer, 3, 16, seed=0))


def test_representation_change_is_zero_for_the_same_model_and_grows_with_a_scaled_change():
    """Cosine 1 for a model against itself; a perturbed copy gives cosine below 1 that falls as the
    perturbation grows; window starts are not counted under the content rule."""
    import copy

    import torch

    from resa_utils.lm.content import ContentRule
    from resa_utils.lm.models import load_model
    from resa_utils.methods.distill import representation_change

    base = load_model("tiny-llama")
    ids = torch.randint(10, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    same = representation_change(base, base, ids, [1, 3])
    assert list(same.block) == [1, 3] and (same["median cos"] > 0.9999).all()
    assert (same.n == 3 * 11).all()  # 36 rows minus the 3 window starts
    out = []
    for eps in (0.05, 0.5):
        other = copy.deepcopy(base)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in other.model.parameters():
                p.add_(eps * p.abs().mean() * torch.randn(p.shape, generator=g))
        out.append(representation_change(base, other, ids, [3])["median cos"].iloc[0])
    assert 1 > out[0] > out[1]
    assert representation_change(base, base, ids, [1], ContentRule(enabled=False)).n.iloc[0] == 36
