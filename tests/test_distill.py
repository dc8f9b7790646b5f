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


def test_candidate_speed_rows_and_the_distill_estimate(tmp_path):
    from resa_utils.lm.lora import LoraTrainConfig

    probs = T.make_problems("chain_sum", 8, seed=1)
    cfg = LoraTrainConfig(r=4, alpha=8, batch_size=2, max_length=128)
    kw = dict(style=T.TraceStyle(), cfg=cfg, steps=1, path=tmp_path / "speed.jsonl", setup={"s": 1},
              n_train=600, epochs=2.0)
    speed = distill.candidate_speed(["tiny-llama"], probs, **kw)
    assert list(speed.columns) == distill.SPEED_COLUMNS and speed.model.tolist() == ["tiny-llama"]
    r = speed.iloc[0]
    assert r["est. distill min"] == pytest.approx(r.tokens_per_example * 600 * 2.0 / r["tokens/s"] / 60)
    assert 0 < r.tokens_per_example <= 128 and r["tokens/s"] > 0 and r.n_params > 0
    again = distill.candidate_speed(["tiny-llama"], probs, **kw)  # read back, not timed again
    assert again["tokens/s"].tolist() == speed["tokens/s"].tolist()
    assert distill.candidate_speed(["tiny-llama"], probs, **{**kw, "steps": 0}).empty


def _rft_kw(tmp_path, **kw):
    from resa_utils.lm.lora import LoraTrainConfig

    return {"k": 2, "temperature": 0.7, "seed": 10, "sample_path": tmp_path / "samples.jsonl",
            "setup": {"task": "chain_sum"}, "max_new_tokens": 4, "batch_size": 4, "base_model": "tiny-llama",
            "cfg": LoraTrainConfig(r=4, alpha=8, max_steps=1, batch_size=1, max_length=128),
            "out_dir": tmp_path / "rft", "init_adapter": None, "register_as": "tiny-llama-rfttest",
            "info": {"task": "chain_sum"}, **kw}


def test_rft_round_without_a_correct_sample_trains_nothing(tiny, tmp_path):
    probs = T.make_problems("chain_sum", 2, seed=6)
    make = distill.TaskPrompt(tiny.tokenizer)
    rnd = distill.rft_round(tiny, probs, make, 0, **_rft_kw(tmp_path))  # 4 tokens: never an answer tag
    assert rnd.stats == {"round": 0, "samples": 4, "correct": 0, "kept (distinct)": 0,
                         "problems solved": 0, "problems": 2}
    assert not rnd.trained and rnd.model is None and rnd.kept == [] and len(rnd.costs) == 1
    prompt_tokens = 2 * sum(len(tiny.tokenizer(make(p))["input_ids"]) for p in probs)
    assert rnd.costs[0]["tokens"] == prompt_tokens + int(rnd.samples.n_tokens.sum())


def test_rft_round_trains_and_registers_on_the_distinct_correct_samples(tiny, tmp_path, monkeypatch):
    from resa_utils.core.atomic import read_json
    from resa_utils.lm import adapters, generation

    a, b = T.make_problems("chain_sum", 2, seed=7)
    good = f"<think> ok </think> <answer> Answer: {a.answer} </answer>"
    calls = {}

    def fake_evaluate(lm, problems, make_prompt, path, setup, max_new_tokens, batch_size, **kw):
        calls.update(setup=setup, problems=[p.uid for p in problems], **kw)
        df = pd.DataFrame({"uid": [a.uid, a.uid, b.uid, b.uid], "text": [good, good, "no", "no"],
                           "correct": [True, True, False, False], "n_tokens": [5, 5, 3, 3]})
        df.attrs["seconds"] = 1.5
        return df

    monkeypatch.setattr(generation, "evaluate", fake_evaluate)
    make = distill.TaskPrompt(tiny.tokenizer)
    rnd = distill.rft_round(tiny, [a, b], make, 1, **_rft_kw(tmp_path))
    assert calls["problems"] == [a.uid, a.uid, b.uid, b.uid] and calls["seed"] == 10 + 1000
    assert calls["setup"]["model"] == "rft1" and calls["temperature"] == 0.7
    assert rnd.stats == {"round": 1, "samples": 4, "correct": 2, "kept (distinct)": 1,
                         "problems solved": 1, "problems": 2}
    assert rnd.kept == [(make(a), good)] and rnd.trained
    assert [c["stage"] for c in rnd.costs] == ["RFT round 1 sample", "RFT round 1 LoRA"]
    assert rnd.costs[0]["wall s"] == 1.5 and rnd.costs[1]["tokens"] == rnd.train.tokens > 0
    assert read_json(tmp_path / "rft" / "result.json")["cfg"]["seed"] == 10 + 1 + 1
    meta = read_json(adapters.adapter_path("tiny-llama-rfttest") / adapters.META)
    assert meta["base"] == "tiny-llama" and meta["stage"] == "rft round 1" and meta["task"] == "chain_sum"
    assert rnd.model.name == "tiny-llama-rfttest"


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


def test_judge_reasoners_applies_the_fixed_rules():
    acc = pd.DataFrame([distill.accuracy_row("base", _answers(30, 300)),
                        distill.accuracy_row("reasoner", _answers(120, 300, wait=1))])
    kw = dict(task="chain_sum", difficulty=1, wait_rate=0.3, rft_rounds=1, rft_k=4, rft_temperature=0.7)
    v = distill.judge_reasoners(acc, n_test=300, **kw)
    assert v.lift_points == pytest.approx(30.0) and v.lift_disjoint and v.reasoner_ok
    assert [r["held"] for r in v.rows] == ["yes", "no", "yes"] and v.rows[0]["ours"] == 30.0
    small = distill.judge_reasoners(acc, n_test=299, **kw)
    assert not small.reasoner_ok and small.rows[0]["held"] == "partly"
    with_rft = pd.concat([acc, pd.DataFrame([distill.accuracy_row("rft", _answers(125, 300))])])
    rft_row = distill.judge_reasoners(with_rft, n_test=300, **kw).rows[-1]
    assert rft_row["ours"] == pytest.approx(1.7) and rft_row["held"] == "partly"


def test_reasoning_models_figure_has_three_panels():
    import matplotlib.pyplot as plt

    from resa_utils.harness import plots

    acc = pd.DataFrame([distill.accuracy_row("base", _answers(3, 10)),
                        distill.accuracy_row("reasoner", _answers(8, 10, wait=1))])
    curves = distill.training_curves({"distill": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}],
                                      "rft0": [{"step": 1, "loss": 0.9}]})
    fig = plots.reasoning_models(acc, curves, "chain_sum d1")
    ax_acc, ax_phrases, ax_loss = fig.axes[:3]
    assert len(fig.axes) == 3 and len(ax_acc.containers) == 2 and len(ax_loss.get_lines()) == 2
    assert len(ax_phrases.patches) >= len(T.REFLECTION_PHRASES) * 2
    assert "base vs reasoner" in fig._suptitle.get_text() and "(n = 10)" in fig._suptitle.get_text()
    assert all(ax.get_legend() is not None for ax in fig.axes) and not ax_loss.texts
    empty = plots.reasoning_models(acc, distill.training_curves({"distill": []}), "chain_sum d1")
    assert not empty.axes[2].get_lines() and "no loss logged" in empty.axes[2].texts[0].get_text()
    plt.close(fig)
    plt.close(empty)


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
