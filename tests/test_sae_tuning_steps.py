"""Notebook 01's steps around SAE-Tuning: the authors' texts, the constant-lr runs and their kept
checkpoints, the measures of a tuned model (damage and spliced KL, SAE quality), the random-change
null, the choice on dev, McNemar, the costs, and the premises that gate the claims."""

import math

import pandas as pd
import pytest
import torch

from resa_utils.core.stats import mcnemar
from resa_utils.data import tasks as T
from resa_utils.data.tasks import split_problems
from resa_utils.lm.activations import resid_hook
from resa_utils.lm.content import ContentRule
from resa_utils.lm.models import load_model
from resa_utils.methods import distill
from resa_utils.methods import sae_tuning as S
from resa_utils.sae import SAE, SAEConfig


def _sae(d: int, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    return SAE(SAEConfig(d_in=d, d_sae=32, architecture="topk", k=4)).init_weights(g)


def _probs(n: int = 12):
    probs, _ = split_problems("chain_sum", n, 2, seed=0)
    return probs


def test_the_authors_texts_and_sft_examples():
    p = _probs(1)[0]
    text = S.tuning_texts([p])[0]
    assert text == (f"{T.SYSTEM_PROMPT}\n\nUser:\n {p.question}\n\nAssistant:\n <think> {p.answer} </think>\n"
                    f"<answer> Answer: {p.answer}</answer>")
    assert S.tuning_texts([p], system="")[0].startswith("User:\n ")
    assert S.sft_examples([p], lambda q: f"<{q.question}>") == [(f"<{p.question}>", f"think: \n{p.answer}\n answer: {p.answer}")]
    ordered = S.by_length(_probs(12))
    assert [len(q.question) for q in ordered] == sorted(len(q.question) for q in ordered)


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    a = [True] * 8 + [False] * 2 + [True] * 5
    b = [False] * 8 + [True] * 2 + [True] * 5
    out = mcnemar(a, b)
    assert (out["a_only"], out["b_only"]) == (8, 2)
    assert out["p"] == pytest.approx(2 * (1 + 10 + 45) / 2 ** 10)
    assert mcnemar(b, a)["p"] == out["p"]
    assert mcnemar([True, False], [True, False])["p"] == 1.0
    assert mcnemar([True] * 5, [False] * 5)["p"] == pytest.approx(2 / 32)
    with pytest.raises(ValueError, match="paired"):
        mcnemar([True], [True, False])


def test_mcnemar_table_pairs_answers_by_uid():
    def frame(correct, order):
        return pd.DataFrame({"uid": [f"u{i}" for i in order], "correct": [correct[i] for i in order],
                             "lenient": [True] * len(order)})
    ref = [True, False, False, True]
    other = [True, True, True, False]
    out = S.mcnemar_table({"target": frame(ref, [0, 1, 2, 3]), "arm": frame(other, [3, 2, 1, 0])})
    row = out.iloc[0]
    assert (row["model"], row["n"], row["only model"], row["only target"]) == ("arm", 4, 2, 1)
    assert row["points"] == pytest.approx(25.0) and row["lenient p"] == 1.0


def test_tuning_runs_keep_checkpoints_and_train_only_after_the_splice(tmp_path):
    lm = load_model("tiny-llama")
    probs = _probs(24)
    chunks = S.pack_chunks(lm.tokenizer, S.tuning_texts(probs), 32)
    sft = S.sft_examples(probs, distill.TaskPrompt(lm.tokenizer))
    tuning = S.Tuning("tiny-llama", chunks, sft, tmp_path, 4, 8, 2, 32)
    label = tuning.train("sae", 1e-2, 4, keep=(2,), sae=_sae(lm.d_model), layer=1, progress=False)
    assert label == S.run_label("sae", 1e-2, 0, 4, 1) == "sae_L1_lr0.01_seed0_steps4"
    res, steps = tuning.runs[label]
    assert steps == 4 and res.history and all(r.get("learning_rate", 1e-2) == pytest.approx(1e-2) for r in res.history)
    early, last = tuning.tuned(label, 2), tuning.tuned(label, 4)
    moved = S.change_norms(last.model, lm.model)
    assert moved and all(".layers.2." in n or ".layers.3." in n for n in moved)   # the no-grad splice: after block 1 only
    assert S.change_norms(early.model, last.model)                               # step 2 is another model
    with pytest.raises(FileNotFoundError, match="step 3"):
        tuning.weights(label, 3)
    sft_label = tuning.train("sft", 1e-2, 2, progress=False)
    assert sft_label == "sft_lr0.01_seed0_steps2" and S.change_norms(tuning.tuned(sft_label, 2).model, lm.model)
    with pytest.raises(ValueError, match="arm="):
        tuning.train("rl", 1e-2, 2)
    with pytest.raises(ValueError, match="needs the SAE"):
        tuning.train("sae", 1e-2, 2, layer=1)
    with pytest.raises(ValueError, match="last block"):
        tuning.train("sae", 1e-2, 2, sae=_sae(lm.d_model), layer=lm.n_layers - 1)
    cfg = S.tune_config(4, 8, 1e-3, 10, 1, 32, 0, keep=(5, 10, 20))
    assert (cfg.warmup_ratio, cfg.lr_schedule, cfg.keep_steps, cfg.max_steps) == (0.0, "constant", (5,), 10)


def test_trace_batch_marks_the_output_and_pair_kl_reads_it():
    lm = load_model("tiny-llama")
    tok = lm.tokenizer
    ids, attn, mask = S.trace_batch(tok, ["a b c", "a"], [" d e", " f g h"])
    n0 = len(tok("a b c")["input_ids"])
    assert attn[0].sum() == n0 + len(tok(" d e", add_special_tokens=False)["input_ids"])
    assert mask[0].nonzero().flatten().tolist() == list(range(n0 - 1, int(attn[0].sum()) - 1))
    assert not (mask & ~attn.bool()).any()
    assert S.pair_kl(lm.model, lm.model, ids, attn, mask) == 0.0
    other = load_model("tiny-llama")
    with torch.no_grad():
        next(p for n, p in other.model.named_parameters() if "layers.2" in n).mul_(3.0)
    assert S.pair_kl(lm.model, other.model, ids, attn, mask) > 0
    with pytest.raises(ValueError, match="no output tokens"):
        S.trace_batch(tok, ["a"], [""])


def test_sae_quality_and_the_spliced_objective():
    lm = load_model("tiny-llama")
    chunks = S.pack_chunks(lm.tokenizer, S.tuning_texts(_probs(12)), 32)[:4]
    sae = _sae(lm.d_model)
    q = S.sae_quality(lm, sae, 1, chunks, ContentRule())
    want = S.spliced_kl(lm, chunks, 1, sae, {"on": ContentRule()})["on"]
    assert q["spliced KL"] == pytest.approx(want, rel=1e-5) and q["spliced KL"] > 0
    assert q["left out"] >= 1 / chunks.shape[1] and q["fvu"] > 0          # position 0 of each chunk at least
    off = S.sae_quality(lm, sae, 1, chunks, S.RULE_OFF)
    assert off["left out"] == 0.0
    same = S.pair_kl(lm.model, lm.model, chunks, splice=(1, sae, ContentRule(), lm.tokenizer))
    assert same == pytest.approx(q["spliced KL"], rel=1e-5)


def test_random_changes_match_the_norms_restore_the_weights_and_make_a_null():
    teacher, student = load_model("tiny-llama"), load_model("tiny-llama")
    names = [n for n, p in student.model.named_parameters() if p.ndim == 2 and "layers.2" in n][:3]
    norms = {n: 0.5 + i for i, n in enumerate(names)}
    copy = load_model("tiny-llama")
    S.random_change(copy.model, norms, 2, seed=0)
    got = S.change_norms(copy.model, teacher.model)
    assert set(got) == set(names) and all(got[n] == pytest.approx(norms[n], rel=1e-4) for n in names)
    params = dict(copy.model.named_parameters())
    delta = params[names[0]] - dict(teacher.model.named_parameters())[names[0]]
    assert torch.linalg.matrix_rank(delta.detach()) <= 2
    batch = S.trace_batch(teacher.tokenizer, ["a b", "c"], [" d", " e f"])
    kls = S.random_change_kls(teacher.model, student.model, norms, 2, [1, 2, 3], batch)
    assert len(kls) == 3 and all(k > 0 for k in kls) and len(set(kls)) == 3
    assert not S.change_norms(student.model, teacher.model)          # restored
    assert S.null_share(0.0, kls) == 0.0 and S.null_share(max(kls), kls) == 1.0


def test_the_choice_on_dev_breaks_ties_towards_the_smaller_change():
    rows = [S.checkpoint_row("target", math.nan, 0, {"pass@1": 0.9, "ci_low": 0, "ci_high": 1, "lenient pass@1": 0.9}, 0, 0.1)]
    for arm, lr, step, acc in [("sae", 1e-3, 100, 0.5), ("sae", 1e-4, 200, 0.5), ("sae", 1e-4, 100, 0.5),
                               ("sae", 1e-5, 100, 0.4), ("sft", 1e-3, 200, 0.3), ("sft", 1e-3, 100, 0.2)]:
        rows.append(S.checkpoint_row(arm, lr, step, {"pass@1": acc, "ci_low": 0, "ci_high": 1, "lenient pass@1": acc}, 0.1, 0.2))
    grid = pd.DataFrame(rows)
    sae, sft = S.choose_point(grid, "sae"), S.choose_point(grid, "sft")
    assert (sae["lr"], sae["step"]) == (1e-4, 100) and (sft["lr"], sft["step"]) == (1e-3, 200)   # never step 0
    with pytest.raises(ValueError, match="no checkpoint"):
        S.choose_point(grid, "other")


def test_source_extra_cost_and_the_cost_table(tmp_path):
    csv = tmp_path / "costs.csv"
    pd.DataFrame({"stage": ["evaluate base", "distill seed 0 (full)", "distill seed 1 (full)"], "wall s": [1.0, 80.0, 90.0],
                  "FLOPs": [1.0, 800.0, 900.0]}).to_csv(csv, index=False)
    src = {"seed": 0, "train": {"total_steps": 80}}
    assert S.source_extra_cost(csv, src, {"step": 20}) == (60.0, 600.0)
    assert S.source_extra_cost(csv, {**src, "seed": 1}, {"step": 40}) == (45.0, 450.0)
    assert all(math.isnan(v) for v in S.source_extra_cost(None, src, {"step": 20}))
    assert all(math.isnan(v) for v in S.source_extra_cost(csv, src, {}))
    table, r_s, r_f = S.cost_table((60.0, 600.0), {"harvest": (10.0, 100.0), "tune": (20.0, 200.0)})
    assert table.stage.tolist()[1:] == ["harvest", "tune"] and (r_s, r_f) == (2.0, 2.0)


def _acc(name: str, k: int, n: int = 100) -> dict:
    return distill.accuracy_row(name, pd.DataFrame({"correct": [True] * k + [False] * (n - k), "lenient": [True] * k + [False] * (n - k),
                                                    "n_tokens": [10] * n, **{w: [0] * n for w in T.REFLECTION_PHRASES}}))


def test_preconditions_gate_the_transfer_claims(tmp_path):
    bars = S.Bars(min_gap=10, max_fvu=0.2, max_spliced_kl=0.5)
    pre00 = tmp_path / "pre.csv"
    pd.DataFrame({"precondition": ["the source beats the target on the dev split"], "value": [16.0], "met": ["yes"]}).to_csv(pre00, index=False)
    gap = S.gap_from_00(pre00)
    assert gap == {"value": 16.0, "met": True} and S.gap_from_00(None) is None and S.gap_from_00(tmp_path / "x.csv") is None
    good = S.preconditions(gap, {"points": 12.0, "disjoint": True}, {"fvu": 0.1, "spliced KL": 0.3}, bars)
    assert [r["met"] for r in good] == ["yes"] * 4
    lift, share, per_layer = (str(S.CLAIMS.index(c) + 1) for c in ("lift", "share of source", "per layer"))
    assert good[0]["gates"].split() == [lift, share, per_layer] and good[1]["gates"] == share
    bad = S.preconditions(None, {"points": 12.0, "disjoint": False}, {"fvu": 0.3, "spliced KL": 0.6}, bars)
    assert [r["met"] for r in bad] == ["no"] * 4 and math.isnan(bad[0]["value"])


def test_paper_comparison_follows_the_fixed_rules():
    acc = {"target": _acc("target", 30), "source": _acc("source", 50), "SAE-Tuning (seed 0)": _acc("s0", 49),
           "SAE-Tuning (seed 1)": _acc("s1", 47), "SFT control": _acc("sft", 20)}
    mcn = pd.DataFrame([{"model": "SAE-Tuning (seed 0)", "points": 19.0, "p": 0.001, "lenient points": 19.0, "lenient p": 0.001},
                        {"model": "SAE-Tuning (seed 1)", "points": 17.0, "p": 0.01, "lenient points": 17.0, "lenient p": 0.01},
                        {"model": "SFT control", "points": -30.0, "p": 1e-6, "lenient points": -10.0, "lenient p": 0.2}])
    by_layer = pd.DataFrame({"layer": [4, 12, 22], "pass@1": [0.1, 0.2, 0.3], "reasoning features": [1, 5, 2]})
    corr = S.spearman_interval(by_layer["reasoning features"].tolist(), by_layer["pass@1"].tolist())
    kw = dict(sft="SFT control", chosen={"sae": {"lr": 1e-4, "step": 100}, "sft": {"lr": 1e-3, "step": 200}},
              noop=S.NoopCheck(2, 0.0, 0.0, 0.0), corr=corr, by_layer=by_layer, ratio=(3.0, 4.0),
              null={"value": 0.01, "share": 0.9, "n": 20}, bars=S.Bars(), n_test=100)
    rows = S.paper_comparison(acc, mcn, headline=["SAE-Tuning (seed 0)", "SAE-Tuning (seed 1)"], **kw)
    assert len(rows) == len(S.CLAIMS) and all(set(r) == {"claim", "metric", "paper", "ours", "held", "note"} for r in rows)
    by = dict(zip(S.CLAIMS, rows))
    assert (by["lift"]["ours"], by["lift"]["held"]) == (19.0, "yes") and "lr 0.0001, step 100" in by["lift"]["note"]
    assert "above 90% of 20 random" in by["lift"]["note"]
    assert (by["share of source"]["ours"], by["share of source"]["held"]) == (96.0, "yes")
    assert (by["SFT below target"]["ours"], by["SFT below target"]["held"]) == (-10.0, "partly")
    assert by["target SAE"]["held"] == by["portability"]["held"] == by["cost"]["held"] == "not tested"
    assert by["per layer"]["held"] == "not tested"                    # three layers: no interval
    assert (by["no-op"]["held"], by["cost"]["ours"]) == ("yes", 4.0)
    mcn2 = mcn.assign(p=[0.001, 0.3, 1e-6])                           # the second seed is not significant
    assert S.paper_comparison(acc, mcn2, headline=["SAE-Tuning (seed 0)", "SAE-Tuning (seed 1)"], **kw)[0]["held"] == "partly"
    mcn3 = mcn.assign(points=[19.0, -1.0, -30.0])                     # one seed below the target
    assert S.paper_comparison(acc, mcn3, headline=["SAE-Tuning (seed 0)", "SAE-Tuning (seed 1)"], **kw)[0]["held"] == "no"


def test_sae_tuning_figure_has_three_panels():
    import matplotlib.pyplot as plt

    from resa_utils.harness import plots

    dev = lambda a: {"pass@1": a, "ci_low": 0, "ci_high": 1, "lenient pass@1": a}  # noqa: E731
    grid = pd.DataFrame([S.checkpoint_row("target", math.nan, 0, dev(0.3), 0.0, 0.2)]
                        + [S.checkpoint_row(arm, lr, step, dev(0.3 + step / 1000), 0.01 * step, 0.1)
                           for arm in ("sae", "sft") for lr in (1e-4, 1e-3) for step in (100, 200)])
    chosen = {"sae": S.choose_point(grid, "sae"), "sft": S.choose_point(grid, "sft")}
    acc = pd.DataFrame([_acc("target", 30), _acc("SAE-Tuning (seed 0)", 40)])
    fig = plots.sae_tuning(grid, acc, chosen, "chain_sum", 1)
    ax_dev, ax_kl, ax_acc = fig.axes[:3]
    labels = ax_dev.get_legend_handles_labels()[1]
    assert "SAE-Tuning, lr 0.0001" in labels and "SFT control, lr 0.001" in labels and "chosen: SAE-Tuning" in labels
    assert list(ax_dev.lines[0].get_xdata()) == [0, 100, 200]                         # from the target at step 0
    assert ax_kl.get_yscale() == "log" and any("objective" in t for t in ax_kl.get_legend_handles_labels()[1])
    assert [t.get_text() for t in ax_acc.get_yticklabels()] == ["target", "SAE-Tuning (seed 0)"]
    plt.close(fig)
