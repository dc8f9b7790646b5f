"""Steering: the hook adds exactly α v/‖v‖ at the chosen block and nowhere else, and the model is
as it was on exit; difference of means on a constructed case; last-token states and logit
differences do not depend on batching."""

import numpy as np
import pytest
import torch

from resa_utils.methods import steering
from resa_utils.lm.activations import resid_hook, run_with_cache
from resa_utils.lm.models import load_model


def test_difference_of_means_on_a_constructed_case():
    pos = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    neg = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 2.0]])
    assert torch.equal(steering.diff_of_means(pos, neg), torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError):
        steering.diff_of_means(pos, neg[:0])


def test_steer_adds_exactly_alpha_unit_v_at_the_layer_and_restores():
    lm = load_model("tiny-llama")
    ids = lm.tokenizer("the quick brown fox", return_tensors="pt").input_ids
    v = torch.randn(lm.d_model)
    before = run_with_cache(lm.model, ids, [resid_hook(1), resid_hook(2)])
    with steering.steer(lm, 1, v, alpha=3.0):
        inside = run_with_cache(lm.model, ids, [resid_hook(1)])
    delta = inside[resid_hook(1)] - before[resid_hook(1)]
    assert torch.allclose(delta, (3.0 * v / v.norm()).expand_as(delta), atol=1e-5)
    after = run_with_cache(lm.model, ids, [resid_hook(1), resid_hook(2)])
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="zero norm"):
        with steering.steer(lm, 1, torch.zeros(lm.d_model), 1.0):
            pass


def test_last_token_states_and_logit_diff_do_not_depend_on_batching():
    lm = load_model("tiny-llama")
    prompts = ["a b c d e", "f", "g h i"]
    together = steering.last_token_states(lm, prompts, 2, batch_size=3)
    alone = torch.cat([steering.last_token_states(lm, [p], 2) for p in prompts])
    assert torch.allclose(together, alone, atol=1e-4)
    tok = lm.tokenizer
    one = [t for t in ("a", "b", "c") if len(tok(t, add_special_tokens=False)["input_ids"]) == 1]
    d = steering.logit_diff(lm, prompts, one[0], one[1], batch_size=2)
    assert d.shape == (3,) and torch.allclose(d, torch.cat(
        [steering.logit_diff(lm, [p], one[0], one[1]) for p in prompts]), atol=1e-4)
    with pytest.raises(ValueError, match="layer=9 is out of range"):
        steering.last_token_states(lm, prompts, 9)
    with pytest.raises(ValueError, match="tokenize to nothing"):
        steering.last_token_states(lm, ["ok", ""], 1)


def test_behaviour_files_load_and_split_without_overlap():
    from resa_utils.methods import steering

    names = steering.behaviour_names()
    assert len(names) >= 4
    for name in names:
        b = steering.load_behaviour(name)
        assert len(b.pos) >= 64 and len(b.neg) >= 64 and "{text}" in b.template
        assert not set(b.pos) & set(b.neg)
        fp, fn, ep, en = b.split(48, seed=0)
        assert len(fp) == len(fn) == 48 and len(ep) == len(b.pos) - 48 and len(en) == len(b.neg) - 48
        assert not set(fp) & set(ep) and not set(fn) & set(en)
        assert fp == b.split(48, seed=0)[0] and fp != b.split(48, seed=1)[0]  # seeded
        assert all(p.startswith(b.template.split("{text}")[0]) for p in fp)
    with pytest.raises(ValueError, match="held-out"):
        steering.load_behaviour(names[0]).split(64, seed=0)
    with pytest.raises(ValueError, match="unknown behaviour"):
        steering.load_behaviour("no-such-behaviour")


def test_random_like_and_token_ids_in_logit_diff(tiny_lm):
    from resa_utils.methods import steering

    v = torch.randn(tiny_lm.d_model)
    r = steering.random_like(v, seed=3)
    assert torch.isclose(r.norm(), v.norm()) and torch.equal(r, steering.random_like(v, seed=3))
    ids = tiny_lm.tokenizer(" the", add_special_tokens=False)["input_ids"]
    prompts = ["Once upon a time", "The cat sat"]
    by_id = steering.logit_diff(tiny_lm, prompts, ids[0], 5)
    assert by_id.shape == (2,) and torch.isfinite(by_id).all()
    assert torch.allclose(by_id, -steering.logit_diff(tiny_lm, prompts, 5, ids[0]))


def _gemma3_mixed_attention():
    """Tiny Gemma 3 whose blocks alternate sliding (window 3) and full attention, as the real one."""
    from resa_utils.lm.models import LoadedModel
    from resa_utils.lm.registry import _tiny

    model, tok = _tiny("Gemma3TextConfig", "Gemma3ForCausalLM", head_dim=16, sliding_window=3,
                       layer_types=["sliding_attention", "full_attention"] * 2)()
    return LoadedModel(name="tiny-gemma3-mixed", model=model.eval(), tokenizer=tok, device="cpu",
                       dtype=torch.float32)


@pytest.mark.parametrize("name", ["gemma3-mixed", "tiny-qwen2", "tiny-llama"])
def test_running_from_a_prefix_matches_the_full_steered_forward(name):
    lm = _gemma3_mixed_attention() if name == "gemma3-mixed" else load_model(name)
    tok = lm.tokenizer
    one = [t for t in ("a", "b", "c", "d") if len(tok(t, add_special_tokens=False)["input_ids"]) == 1][:2]
    prompts = ["a b c d e f g h", "f", "g h i", "the quick brown fox jumps"]
    layer = 1
    blocks = list(steering.decoder_layers(lm.model))
    prefixes = steering.run_prefix(lm, prompts, layer, batch_size=3)  # two batches, left-padded
    plain = steering.logit_diff(lm, prompts, one[0], one[1], batch_size=3)
    assert torch.allclose(steering.logit_diff_from(lm, prefixes, one[0], one[1]), plain, atol=1e-4)
    v = torch.randn(lm.d_model)
    with steering.steer(lm, layer, v, alpha=4.0):
        steered = steering.logit_diff(lm, prompts, one[0], one[1], batch_size=3)
    got = steering.logit_diff_from(lm, prefixes, one[0], one[1], 4.0 * v / v.norm())
    assert not torch.allclose(steered, plain, atol=1e-3)  # the vector does something ...
    assert torch.allclose(got, steered, atol=1e-4)  # ... and the prefix path does the same
    assert list(steering.decoder_layers(lm.model)) == blocks  # every block back in place


def test_generate_steered_steers_each_prompt_by_its_own_row():
    from resa_utils.lm.generation import generate

    lm = load_model("tiny-llama")
    prompts = ["a b c", "d e"]
    v = torch.randn(lm.d_model) * 20
    plain = generate(lm, prompts, 6)
    with steering.steer(lm, 1, v, alpha=float(v.norm())):
        steered = generate(lm, prompts[1:], 6)
    both = steering.generate_steered(lm, prompts, 1, torch.stack([torch.zeros(lm.d_model), v]), 6)
    assert steered[0]["text"] != plain[1]["text"]  # the vector changes prompt 2's text ...
    assert [r["text"] for r in both] == [plain[0]["text"], steered[0]["text"]]  # ... and only its
    with pytest.raises(ValueError, match="one per prompt"):
        steering.generate_steered(lm, prompts, 1, v[None], 6)


def test_evaluate_steered_rows_match_steered_generation_and_resume(tmp_path):
    from resa_utils.lm.generation import generate
    from resa_utils.data.tasks import make_problems

    lm = load_model("tiny-llama")
    probs = make_problems("chain_sum", 3, seed=0)
    make_prompt = lambda p: p.question  # noqa: E731
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    vectors = {"v": v, "w": -v}
    df = steering.evaluate_steered(lm, probs, make_prompt, 1, vectors, [0, 20.0], tmp_path / "s.jsonl", {"x": 1},
                                   max_new_tokens=5, batch_size=4)
    assert len(df) == 3 * 3 and set(df.vector) == {"none", "v", "w"}  # scale 0 runs once, unsteered
    plain = generate(lm, [make_prompt(p) for p in probs], 5)
    assert df[df.vector == "none"].text.tolist() == [g["text"] for g in plain]
    one = steering.generate_steered(lm, [make_prompt(probs[1])], 1, (20.0 * v)[None], 5)
    assert df[(df.vector == "v") & (df.uid == probs[1].uid)].text.iloc[0] == one[0]["text"]
    calls = []
    real = steering.generate_steered
    steering.generate_steered = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        again = steering.evaluate_steered(lm, probs, make_prompt, 1, vectors, [0, 20.0], tmp_path / "s.jsonl",
                                          {"x": 1}, max_new_tokens=5, batch_size=4)
    finally:
        steering.generate_steered = real
    assert not calls and again.text.tolist() == df.text.tolist()  # resumed from the sweep file
    with pytest.raises(ValueError, match="width"):
        steering.evaluate_steered(lm, probs, make_prompt, 1, {"bad": torch.ones(3)}, [1.0], tmp_path / "b.jsonl", {})


# --------------------------------------------------------------------------- dose-response of several vectors


def _two_behaviours(tok):
    """Two tiny constructed behaviours whose tokens are single tokens for `tok`."""
    one = [t for t in ("a", "b", "c", "d") if len(tok(t, add_special_tokens=False)["input_ids"]) == 1]
    mk = lambda name, pos, neg: steering.Behaviour(name, "", "Say: {text}", one[0], one[1], pos, neg)  # noqa: E731
    return {"x": mk("x", ["good day", "fine work", "nice one"], ["bad day", "poor work", "awful one"]),
            "y": mk("y", ["the sea", "a boat", "waves"], ["the hill", "a rock", "stones"])}


def test_caa_vector_is_the_difference_of_means_with_the_mean_norm_as_its_unit():
    lm = load_model("tiny-llama")
    pos, neg = ["a b c", "d e"], ["f g", "h", "i j k"]
    c = steering.caa_vector(lm, pos, neg, 1, batch_size=2)
    hp, hn = steering.last_token_states(lm, pos, 1), steering.last_token_states(lm, neg, 1)
    assert torch.allclose(c.v_D, hp.mean(0) - hn.mean(0), atol=1e-5)
    norms = [float(h.norm()) for h in torch.cat([hp, hn])]
    assert c.scale == pytest.approx(sum(norms) / 5, rel=1e-5)


def test_scaled_delta_has_norm_alpha_times_scale_along_v():
    v = torch.tensor([3.0, 4.0])
    d = steering.scaled_delta(v, -0.5, 10.0)
    assert torch.allclose(d, torch.tensor([-3.0, -4.0]))


def test_steering_sweep_matches_steer_then_logit_diff_and_resumes(tmp_path):
    lm = load_model("tiny-llama")
    B = _two_behaviours(lm.tokenizer)
    splits = {n: b.split(2, seed=0) for n, b in B.items()}
    g = torch.Generator().manual_seed(0)
    vectors = {n: {"u": torch.randn(lm.d_model, generator=g), "w": torch.randn(lm.d_model, generator=g)} for n in B}
    scale = {"x": 2.0, "y": 3.0}
    df = steering.steering_sweep(lm, B, splits, vectors, scale, [-1.0, 0.0, 1.0], 1, tmp_path / "s.jsonl", {"k": 1},
                                 batch_size=1)
    assert len(df) == 2 * (1 + 2 * 2) and (df[df.alpha == 0].vector == "none").all()  # α = 0 once per behaviour
    assert {"setup", "vec", "eval", "tokens"}.isdisjoint(df.columns)
    ev = splits["y"][2] + splits["y"][3]
    b = B["y"]
    with steering.steer(lm, 1, vectors["y"]["w"], alpha=-1.0 * 3.0):
        want = steering.logit_diff(lm, ev, b.pos_token, b.neg_token)
    got = df[(df.behaviour == "y") & (df.vector == "w") & (df.alpha == -1.0)].diffs.iloc[0]
    assert torch.allclose(torch.tensor(got), want, atol=1e-4)
    plain = steering.logit_diff(lm, splits["x"][2] + splits["x"][3], B["x"].pos_token, B["x"].neg_token)
    assert torch.allclose(torch.tensor(df[(df.behaviour == "x") & (df.alpha == 0)].diffs.iloc[0]), plain, atol=1e-4)
    calls = []
    real = steering.run_prefix
    steering.run_prefix = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        again = steering.steering_sweep(lm, B, splits, vectors, scale, [-1.0, 0.0, 1.0], 1, tmp_path / "s.jsonl",
                                        {"k": 1}, batch_size=1)
        vectors["x"]["u"] = vectors["x"]["u"] * 2  # a changed vector reruns its rows only
        steering.steering_sweep(lm, B, splits, vectors, scale, [-1.0, 0.0, 1.0], 1, tmp_path / "s.jsonl",
                                {"k": 1}, batch_size=1)
    finally:
        steering.run_prefix = real
    assert again.diffs.tolist() == df.diffs.tolist() and len(calls) == 1


def test_dose_response_repeats_the_unsteered_row_for_every_vector():
    import pandas as pd

    steer_df = pd.DataFrame([{"behaviour": "x", "vector": "none", "alpha": 0.0, "diffs": [1.0, 3.0]},
                             {"behaviour": "x", "vector": "v", "alpha": 1.0, "diffs": [2.0, 2.0, 5.0]},
                             {"behaviour": "x", "vector": "w", "alpha": 1.0, "diffs": [0.0, 4.0]}])
    dose = steering.dose_response(steer_df, ["v", "w"])
    assert dose[["vector", "alpha"]].values.tolist() == [["v", 0.0], ["v", 1.0], ["w", 0.0], ["w", 1.0]]
    assert dose["mean"].tolist() == [2.0, 3.0, 2.0, 2.0]
    sd = 2 ** 0.5  # sample standard deviation of (1, 3), of (0, 4) / 2
    assert dose.ci.iloc[0] == pytest.approx(1.96 * sd / 2 ** 0.5) and dose.ci.iloc[3] == pytest.approx(1.96 * 2 * sd / 2 ** 0.5)


def test_native_correlations_find_a_scaled_copy_and_a_reversed_one():
    import pandas as pd

    alphas = [-1.0, 0.0, 1.0, 2.0]
    rows = []
    for i, a in enumerate(alphas):
        base = [a + 0.1 * k for k in range(5)]  # 5 prompts, effect linear in α (slope 1)
        for v, f in (("native", 1.0), ("half", 0.5), ("flip", -2.0)):
            rows.append({"behaviour": "x", "vector": v, "alpha": a, "diffs": [f * d for d in base]})
    dose = pd.DataFrame(rows)
    corr = steering.native_correlations(dose, ["x"], ["native", "half", "flip"], alphas, n_boot=50, seed=0)
    by = corr.set_index("vector")
    assert by.loc["half", "pearson r"] == pytest.approx(1.0) and by.loc["flip", "pearson r"] == pytest.approx(-1.0)
    assert by.loc["half", "slope"] == pytest.approx(0.5) and by.loc["flip", "slope"] == pytest.approx(-2.0)
    assert by.loc["half", "slope (native)"] == pytest.approx(1.0)
    assert by.loc["half", "r low"] == pytest.approx(1.0) and by.loc["flip", "r high"] == pytest.approx(-1.0)
    again = steering.native_correlations(dose, ["x"], ["native", "half", "flip"], alphas, n_boot=50, seed=0)
    pd.testing.assert_frame_equal(corr, again)


def test_steered_generation_table_one_row_per_prompt_one_column_per_vector():
    from resa_utils.lm.generation import generate

    lm = load_model("tiny-llama")
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    vectors = {"x": {"native": v, "other": -v}}
    prompts = {"x": ["a b c", "d e"]}
    df = steering.steered_generation_table(lm, prompts, vectors, {"x": 20.0}, 1, 2.0, ["unsteered", "native"], 5)
    assert df.columns.tolist() == ["behaviour", "prompt", "unsteered", "native"] and len(df) == 2
    assert df.unsteered.tolist() == [g["text"] for g in generate(lm, prompts["x"], 5)]
    with steering.steer(lm, 1, v, alpha=40.0):
        assert df.native.tolist() == [g["text"] for g in generate(lm, prompts["x"], 5)]
    assert steering.steered_generation_table(lm, {"x": []}, vectors, {"x": 1.0}, 1, 1.0, ["native"], 5).empty


# --------------------------------------------------------------------------- issue 36: general prompt sets, the paper's statistic, the null


def _behaviour_file(tmp_path, n_pos=8, n_neg=9, **change):
    import json

    data = {"name": "mine", "description": "d", "template": "Q: {text}\nA:", "pos_token": " Yes", "neg_token": " No",
            "pos": [f"good thing {i}" for i in range(n_pos)], "neg": [f"bad thing {i}" for i in range(n_neg)], **change}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_any_json_file_of_the_same_shape_loads_and_splits(tmp_path):
    b = steering.load_behaviour(_behaviour_file(tmp_path))
    fp, fn, ep, en = b.split(6, seed=0)
    assert (len(fp), len(fn), len(ep), len(en)) == (6, 6, 2, 3) and ep[0].startswith("Q: good thing")
    with pytest.raises(ValueError, match="at least 8 a side"):
        steering.load_behaviour(_behaviour_file(tmp_path, n_pos=7))
    with pytest.raises(ValueError, match="must contain"):
        steering.load_behaviour(_behaviour_file(tmp_path, template="Q: no slot"))
    with pytest.raises(ValueError, match="lacks the fields"):
        steering.load_behaviour(_write_raw(tmp_path, {"name": "x"}))
    with pytest.raises(ValueError, match="unknown behaviour"):
        steering.load_behaviour(str(tmp_path / "absent.json"))


def _write_raw(tmp_path, data):
    import json

    path = tmp_path / "raw.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_behaviour_parameter_takes_a_path_and_names_the_parameter_when_it_is_bad(tmp_path):
    from resa_utils.harness import params as P
    from resa_utils.harness.checks import lrt_affine_transfer as checks

    checks.CHECKS["behaviours"]("behaviours", ["sentiment", _behaviour_file(tmp_path)], {})
    with pytest.raises(P.ParameterError, match="behaviours\\[1\\].*at least 8 a side"):
        checks.CHECKS["behaviours"]("behaviours", ["sentiment", _behaviour_file(tmp_path, n_neg=3)], {})


def test_label_shuffled_vectors_keep_the_side_sizes_and_lose_the_difference():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(40, 3, generator=g) + torch.tensor([5.0, 0, 0]), torch.randn(30, 3, generator=g)
    c = steering.CAAVector(steering.diff_of_means(pos, neg), 1.0, pos, neg)
    shuffled = steering.label_shuffled_vectors(c, 50, seed=1)
    assert len(shuffled) == 50 and all(s.shape == (3,) for s in shuffled)
    assert float(torch.stack(shuffled)[:, 0].abs().mean()) < 0.3 * float(c.v_D[0])  # the planted difference is gone
    assert torch.equal(shuffled[0], steering.label_shuffled_vectors(c, 1, seed=1)[0])
    with pytest.raises(ValueError, match="states"):
        steering.label_shuffled_vectors(steering.CAAVector(c.v_D, 1.0), 1, 0)


def _dose(rows):
    import pandas as pd

    return pd.DataFrame([{"behaviour": b, "vector": v, "alpha": a, "diffs": d,
                          "mean": sum(d) / len(d)} for b, v, a, d in rows])


def test_paper_statistic_is_r_across_prompts_at_each_alpha_with_the_mse():
    base = [0.0, 1.0, 3.0, 6.0]
    rows = []
    for a in (-1.0, 0.0, 1.0, 2.0):
        nat = [x + a for x in base]
        rows += [("s", "native", a, nat), ("s", "shifted", a, [x + 2 for x in nat]), ("s", "reversed", a, nat[::-1])]
    stats = steering.paper_statistics(_dose(rows), ["s"], ["native", "shifted", "reversed"])
    assert sorted(set(stats.alpha)) == [-1.0, 1.0, 2.0]  # α = 0 is the same prompts unsteered: left out
    by = stats.set_index(["vector", "alpha"])
    assert by.loc[("shifted", 1.0), "pearson r (prompts)"] == pytest.approx(1.0) and by.loc[("shifted", 1.0), "mse"] == pytest.approx(4.0)
    assert by.loc[("reversed", 2.0), "pearson r (prompts)"] < -0.8 and by.loc[("shifted", 2.0), "n prompts"] == 4
    summ = steering.paper_summary(stats).set_index("vector")
    assert summ.loc["shifted", "r mean"] == pytest.approx(1.0) and summ.loc["shifted", "n alphas"] == 3
    assert summ.loc["reversed", "mse min"] <= summ.loc["reversed", "mse mean"] <= summ.loc["reversed", "mse max"]


def test_null_percentiles_place_each_slope_among_the_null():
    rows = [("s", "native", 0.0, [1.0]), ("s", "native", 0.5, [3.0]), ("s", "weak", 0.5, [1.5])]
    rows += [("s", f"null random {k}", 0.5, [1.0 + 0.1 * (k - 5)]) for k in range(10)]
    rows += [("s", "null cross t", 0.5, [2.0]), ("s", "ignored", 0.25, [9.0])]
    dose = _dose(rows)
    dose = steering.dose_response(dose.drop(columns="mean").assign(vector=dose.vector.where(dose.alpha != 0, "none")),
                                  ["native", "weak", "ignored"] + [f"null random {k}" for k in range(10)] + ["null cross t"])
    sl = steering.one_sided_slopes(dose, 0.5).set_index("vector").slope
    assert sl["native"] == pytest.approx(4.0) and sl["weak"] == pytest.approx(1.0) and "ignored" not in sl
    pct = steering.null_percentiles(steering.one_sided_slopes(dose, 0.5), ["native", "weak"]).set_index("vector")
    assert pct.loc["native", "percentile"] == 100.0 and pct.loc["native", "null n"] == 11
    assert pct.loc["weak", "percentile"] == pytest.approx(100 * 10 / 11)  # above the 10 random slopes, below the cross one
    assert pct.loc["weak", "percentile (cross, n=1)"] == 0.0 and pct.loc["weak", "slope ratio"] == pytest.approx(0.25)
    random_slopes = [sl[f"null random {k}"] for k in range(10)]
    assert pct.loc["weak", "null p95 (random)"] == pytest.approx(np.percentile(random_slopes, 95))  # per group: the cross slope left out
    assert pct.loc["weak", "null p95 (random)"] < pct.loc["weak", "null p95"] and pct.loc["weak", "null p5 (cross)"] == pytest.approx(sl["null cross t"])
    assert steering.slopes(dose).set_index("vector").slope["native"] == pytest.approx(4.0)
    bent = _dose([("s", "v", a, [y]) for a, y in ((-0.5, 0.0), (-0.25, 0.0), (0.0, 0.0), (0.25, 1.0), (0.5, 4.0))])
    line = _dose([("s", "v", a, [3 * a + 1]) for a in (-0.5, 0.0, 0.5)])
    assert steering.slopes(line)["linear R²"].iloc[0] == pytest.approx(1.0) and steering.slopes(bent)["linear R²"].iloc[0] < 0.8


def test_steering_sweep_runs_short_vectors_at_their_alphas_only(tmp_path, monkeypatch):
    B = {"x": steering.Behaviour("x", "", "{text}", "a", "b", ["p"] * 3, ["n"] * 3)}
    splits = {"x": (["p"], ["n"], ["p", "p"], ["n"])}
    monkeypatch.setattr(steering, "run_prefix", lambda lm, prompts, layer, bs: prompts)
    monkeypatch.setattr(steering, "logit_diff_from", lambda lm, pre, a, b, d: torch.zeros(len(pre)) + (0 if d is None else float(d.sum())))
    vectors = {"x": {"main": torch.ones(2), "null random 0": -torch.ones(2)}}
    df = steering.steering_sweep(None, B, splits, vectors, {"x": 1.0}, [-1.0, 0.0, 1.0], 1, tmp_path / "s.jsonl", {},
                                 short={"x": ["null random 0"]}, short_alphas=[1.0])
    assert sorted(zip(df.vector, df.alpha)) == [("main", -1.0), ("main", 1.0), ("none", 0.0), ("null random 0", 1.0)]
    with pytest.raises(ValueError, match="short_alphas"):
        steering.steering_sweep(None, B, splits, vectors, {"x": 1.0}, [-1.0, 0.0, 1.0], 1, tmp_path / "t.jsonl", {},
                                short={"x": ["null random 0"]}, short_alphas=[0.5])


def test_any_prompt_file_with_8_a_side_splits_by_share(tmp_path):
    """Prompt sets the repo does not ship (any JSON of the same shape, >= 8 a side) work at the
    default fit_share: 6 fit the vector and 2 are held out of 8; 48 and 16 of 64."""
    import json

    spec = {"name": "mine", "description": "d", "template": "Q: {text}\nA:", "pos_token": " Yes", "neg_token": " No",
            "pos": [f"p{i}" for i in range(8)], "neg": [f"n{i}" for i in range(9)]}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(spec))
    b = steering.load_behaviour(str(path))
    assert b.n_fit(0.75) == 6
    fp, fn, ep, en = b.split(b.n_fit(0.75), seed=0)
    assert (len(fp), len(fn), len(ep), len(en)) == (6, 6, 2, 3)
    assert steering.load_behaviour("sentiment").n_fit(0.75) == 48
