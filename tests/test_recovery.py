"""Notebook 05's steps (resa_utils.methods.recovery) on constructed inputs with known answers, its
parameter checks, and its figures (resa_utils.harness.plots, section 05_gba_recovery)."""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from resa_utils.core.sweep import config_key
from resa_utils.lm.content import ContentRule
from resa_utils.methods import recovery as R
from resa_utils.sae import SAE, SAEConfig
from memcache import MemCache

matplotlib.use("Agg")

TOY = R.ToySpec(n_features=16, d=8, paper_mix=[1, 3], n_samples=2000, width=32, samples=4096, batch=256,
                probe_samples=[1024, 2048], n_eval=1000)
PAPER = {"topk": 3, "relu_l1": 0.03, "gba": [0.2, 0.01, 0.05, 4]}


# --------------------------------------------------------------------------- the toy's configs


def test_knobs_and_labels_of_each_method():
    assert R.knobs("topk", 20.0) == {"k": 20}
    assert R.knobs("relu_l1", 1) == {"l1_coefficient": 1.0}
    assert R.knobs("gba", [0.1, 0.001, 0.01, 50.0]) == {"gba_p_high": 0.1, "gba_p_low": 0.001,
                                                        "gba_gamma": 0.01, "gba_interval": 50}
    assert R.label("topk", 20) == "k=20"
    assert R.label("relu_l1", 0.030) == "λ=0.03"
    assert R.label("gba", [0.1, 0.001, 0.01, 50]) == "0.1→0.001, γ 0.01/50"


def test_syn_config_holds_every_knob_so_settings_get_distinct_keys():
    c = R.syn_config(TOY, "gba", [0.2, 0.01, 0.05, 4], seed=3, role="report")
    assert c["syn"]["sparsities"] == (1, 3) and c["syn"]["seed"] == 3 and c["syn"]["n_features"] == 16
    t = c["train"]
    assert (t["method"], t["d_sae"], t["n_tokens"], t["batch_size"], t["seed"]) == ("gba", 32, 4096, 256, 3)
    assert t["dead_tokens"] == 20 * 256 and t["gba_p_high"] == 0.2 and t["gba_interval"] == 4
    assert c["probe_samples"] == [1024, 2048] and c["n_eval"] == 1000
    other = R.syn_config(TOY, "gba", [0.5, 0.01, 0.05, 4], seed=3, role="report")
    assert config_key(c) != config_key(other)
    assert R.syn_config(TOY, "topk", 2, 0, "report")["train"]["k"] == 2


def test_syn_configs_run_every_setting_on_every_seed_then_the_wrong_ladders():
    wrong = R.wrong_settings([[0.05, 0.001], [0.9, 0.5]], PAPER["gba"])
    assert wrong == [[0.05, 0.001, 0.05, 4], [0.9, 0.5, 0.05, 4]]
    grids = {"topk": [2, 3], "relu_l1": [0.01, 0.03, 0.1], "gba": [PAPER["gba"]]}
    configs = R.syn_configs(TOY, grids, wrong, seeds=[0, 1])
    assert len(configs) == 2 * 6 + 2 * 2
    assert [c["role"] for c in configs].count("wrong ladder") == 4
    assert [c["method"] for c in configs[:6]] == ["topk", "topk", "relu_l1", "relu_l1", "relu_l1", "gba"]
    assert {c["seed"] for c in configs[6:12]} == {1}


def _run_rows(values: list[tuple]) -> pd.DataFrame:
    """Sweep-like rows from `(method, setting, seed, role, recovery@0.9, fvu)`."""
    rows = []
    for m, s, seed, role, rec, fvu in values:
        rows.append({"method": m, "setting": s, "seed": seed, "role": role, "syn": {}, "train": {},
                     "probe_samples": [], "n_eval": 1, "recovery@0.9": rec, "fvu": fvu, "l0": 2.0,
                     "curve": [{"samples": 10, "recovery@0.9": rec / 2, "fvu": fvu}, {"samples": 20, "recovery@0.9": rec, "fvu": fvu}]})
    return pd.DataFrame(rows)


def test_label_runs_marks_only_the_paper_setting_of_the_report_runs():
    out = R.label_runs(_run_rows([("topk", 3, 0, "report", 1, 0), ("topk", 2, 0, "report", 1, 0),
                                  ("gba", [0.2, 0.01, 0.05, 4], 0, "report", 1, 0),
                                  ("gba", [0.2, 0.01, 0.05, 4], 0, "wrong ladder", 1, 0)]), PAPER)
    assert "syn" not in out and "train" not in out
    assert list(out["paper setting"]) == [True, False, True, False]
    assert list(out.Method) == ["TopK", "TopK", "GBA", "GBA"] and out.setting_label.iloc[1] == "k=2"


def _report() -> pd.DataFrame:
    """TopK: k=2 wins on seeds 0 and 1, k=3 on seed 2 (so the fold holding out seed 2 picks k=2,
    the folds holding out 0 or 1 average one win each: k=2 0.9/0.5 vs k=3 0.5/0.9 -> tie at 0.7,
    broken by the lower FVU, k=3's). L1 and GBA: one setting each."""
    v = [("topk", 2, 0, "report", 0.9, 0.2), ("topk", 3, 0, "report", 0.5, 0.1),
         ("topk", 2, 1, "report", 0.9, 0.2), ("topk", 3, 1, "report", 0.5, 0.1),
         ("topk", 2, 2, "report", 0.5, 0.2), ("topk", 3, 2, "report", 0.9, 0.1)]
    for seed in (0, 1, 2):
        v += [("relu_l1", 0.03, seed, "report", 0.4 + 0.1 * seed, 0.3), ("gba", PAPER["gba"], seed, "report", 0.6, 0.4)]
    return R.label_runs(_run_rows(v), PAPER)


def test_loo_tuning_picks_on_the_other_seeds_and_breaks_ties_by_fvu():
    report = _report()
    t = R.loo_tuned(report, "topk", [0, 1, 2])
    assert list(t.seed) == [0, 1, 2]
    assert list(t.setting_label) == ["k=3", "k=3", "k=2"]
    assert list(t["recovery@0.9"]) == [0.5, 0.5, 0.5]  # every held-out seed is scored where the pick was worse
    tuning = R.tune(report, [0, 1, 2])
    assert tuning.picked == {"topk": ["k=2", "k=3"], "relu_l1": ["λ=0.03"], "gba": ["0.2→0.01, γ 0.05/4"]}
    assert list(tuning.choices().columns) == ["Method", "seed", "setting_label", "recovery@0.9", "fvu", "l0"]
    assert len(tuning.choices()) == 9


def test_mean_sd_is_text_over_seeds_with_zero_sd_for_one_seed():
    df = pd.DataFrame({"g": ["a", "a", "b"], "x": [1.0, 3.0, 5.0]})
    out = R.mean_sd(df, ["g"], ["x"])
    assert list(out.x) == ["2.000 ± 1.414", "5.000 ± 0.000"] and list(out.seeds) == [2, 1]


def test_headline_table_and_records():
    report = _report()
    tuning = R.tune(report, [0, 1, 2])
    wrong = R.label_runs(_run_rows([("gba", [0.05, 0.001, 0.05, 4], s, "wrong ladder", 0.1, 0.9) for s in (0, 1)]), PAPER)
    table = R.headline_table(report, wrong, tuning, ["recovery@0.9", "fvu"])
    assert list(table.row) == ["paper setting", "tuned (leave one seed out)"] * 3 + ["wrong ladder"]
    assert table.setting_label.iloc[1] == "k=2 / k=3" and table["recovery@0.9"].iloc[1] == "0.500 ± 0.000"
    assert table["recovery@0.9"].iloc[-1] == "0.100 ± 0.000" and table.seeds.iloc[-1] == 2
    rec = R.toy_records(report, tuning)
    assert rec["toy/topk/paper/recovery@0.9"] == pytest.approx((0.5 + 0.5 + 0.9) / 3)
    assert rec["toy/topk/tuned/recovery@0.9"] == pytest.approx(0.5)
    assert rec["toy/relu_l1/paper/fvu"] == pytest.approx(0.3) and len(rec) == 12


def test_recovery_curves_and_their_summary_drop_a_paper_series_equal_to_the_tuned_one():
    report = _report()
    tuning = R.tune(report, [0, 1, 2])
    curves = R.recovery_curves(report, tuning, PAPER)
    # each method: paper rows (3 seeds) + tuned rows (3 seeds), 2 probes each
    assert len(curves) == 3 * 2 * 3 * 2
    assert not curves[curves.Method == "TopK"].same.any() and curves[curves.Method == "GBA"].same.all()
    s = R.curve_summary(curves, ["recovery@0.9"])
    assert list(dict.fromkeys(s.series)) == ["TopK paper", "TopK tuned", "L1 tuned = paper", "GBA tuned = paper"]
    l1 = s[(s.series == "L1 tuned = paper") & (s.samples == 20)].iloc[0]
    assert l1["mean"] == pytest.approx(0.5) and l1.sd == pytest.approx(0.1)
    assert list(s[s.series == "TopK tuned"].samples) == [10.0, 20.0]


def test_sensitivity_bars_tag_paper_and_picked_settings_and_the_wrong_ladders():
    report = _report()
    tuning = R.tune(report, [0, 1, 2])
    wrong = R.label_runs(_run_rows([("gba", [0.05, 0.001, 0.05, 4], s, "wrong ladder", 0.1, 0.9) for s in (0, 1)]), PAPER)
    sens = pd.concat([report, wrong]).assign(**{"recovery@0.8": 1.0})
    bars = R.sensitivity_bars(sens, tuning, {"recovery@0.9": "τ 0.9", "recovery@0.8": "τ 0.8"})
    assert len(bars) == (2 + 1 + 2) * 2
    k3 = bars[(bars.setting_label == "k=3") & (bars.metric == "recovery@0.9")].iloc[0]
    assert k3.tick == "k=3 ★ ◆\nFVU 0.10 · L0 2.0" and k3["mean"] == pytest.approx((0.5 + 0.5 + 0.9) / 3)
    assert k3.sd == pytest.approx(np.std([0.5, 0.5, 0.9], ddof=1))
    w = bars[bars.wrong]
    assert set(w.setting_label) == {"0.05→0.001, γ 0.05/4"} and "◆" not in w.tick.iloc[0] and w.Method.iloc[0] == "GBA"


# --------------------------------------------------------------------------- real activations

SPEC = R.RealSpec(d_sae=16, n_tokens=256, batch=64, lr=1e-3, dead_tokens=100, gba_schedule=[0.05, 20],
                  data_key="abc", default_variant="tied/relu")


def test_real_train_config_reads_each_method_and_gba_variant():
    assert R.real_train_config(SPEC, "topk", 4.0, 1).k == 4
    assert R.real_train_config(SPEC, "relu_l1", 0.1, 1).l1_coefficient == 0.1
    g = R.real_train_config(SPEC, "gba", 0.1, 2, "untied/jumprelu")
    assert g.gba_p_low == pytest.approx(0.001) and g.gba_interval == 20 and g.gba_gamma == 0.05
    assert not g.gba_tied and g.gba_activation == "jumprelu" and g.seed == 2 and g.checkpoint_every == 100
    assert R.real_train_config(SPEC, "gba", 0.1, 2).gba_tied  # the default variant


def test_real_configs_grid_on_the_first_seed_variants_and_named_settings_on_the_others():
    assert R.real_config(SPEC, "topk", 4, 0)["variant"] == "" and R.real_config(SPEC, "gba", 0.1, 0)["variant"] == "tied/relu"
    grid = {"topk": [4, 8], "relu_l1": [0.1], "gba": [0.2, 0.1]}
    named = {"topk": 4, "relu_l1": 0.1, "gba": 0.1}
    variants = [["tied", "relu"], ["untied", "relu"], ["tied", "jumprelu"]]
    configs = R.real_configs(SPEC, grid, named, [0, 5, 6], variants, [0.1])
    assert len(configs) == 5 + 2 + 2 * 3
    assert [c["variant"] for c in configs[5:7]] == ["untied/relu", "tied/jumprelu"]
    assert [(c["method"], c["knob"], c["seed"]) for c in configs[7:10]] == [("topk", 4, 5), ("relu_l1", 0.1, 5), ("gba", 0.1, 5)]
    splices = R.ce_splices(SPEC, named, 0, variants, [0.1])
    assert list(splices) == ["TopK", "L1", "GBA", "GBA (untied/relu)", "GBA (tied/jumprelu)"]
    assert list(R.ce_splices(SPEC, named, 0, variants, [0.2])) == ["TopK", "L1", "GBA"]
    key = R.ce_sweep_key(splices, 4, 16)
    assert key["saes"]["TopK"] == config_key(splices["TopK"]) and key["windows"] == 4
    assert [len(v) for v in R.named_configs(SPEC, named, [0, 5]).values()] == [2, 2, 2]


def test_sae_paths_stored_rows_and_loading(tmp_path):
    c = R.real_config(SPEC, "gba", 0.1, 0, "untied/relu")
    path = R.sae_path(tmp_path, c)
    assert path.parent == tmp_path and path.name.startswith("gba_untied-relu_0.1_seed0_")
    assert not R.has_sae(c, tmp_path)
    sae = SAE(SAEConfig(d_in=4, d_sae=16)).init_weights(torch.Generator().manual_seed(0))
    sae.save(path)
    assert R.has_sae(c, tmp_path) and not R.has_sae({k: v for k, v in c.items() if k != "data"}, tmp_path)
    assert torch.equal(R.load_sae(tmp_path, c).W_dec, sae.W_dec)



# --------------------------------------------------------------------------- content rows (issue 30)

OFF = R.RealSpec(**{**SPEC.__dict__, "rule": ContentRule(enabled=False)})
LOOSE = R.RealSpec(**{**SPEC.__dict__, "rule": ContentRule(max_norm_ratio=50.0)})


def test_the_content_rule_is_in_every_real_config_so_no_row_of_another_rule_is_reused(tmp_path):
    assert SPEC.rule == ContentRule()  # the library default
    on, off, loose = (R.real_config(s, "topk", 4, 0) for s in (SPEC, OFF, LOOSE))
    assert on["content_rule"] == {"enabled": True, "max_norm_ratio": 10.0} and off["content_rule"]["enabled"] is False
    assert on["cfg"] == off["cfg"] and len({config_key(c) for c in (on, off, loose)}) == 3
    assert len({R.sae_path(tmp_path, c) for c in (on, off, loose)}) == 3  # weights of each rule in their own folder
    SAE(SAEConfig(d_in=4, d_sae=16)).init_weights(torch.Generator().manual_seed(0)).save(R.sae_path(tmp_path, on))
    assert R.has_sae(on, tmp_path) and not R.has_sae(off, tmp_path) and not R.has_sae(loose, tmp_path)
    assert not R.has_sae({k: v for k, v in on.items() if k != "content_rule"}, tmp_path)  # a row from before the rule
    grid, named = {"topk": [4], "relu_l1": [0.1], "gba": [0.1]}, {"topk": 4, "relu_l1": 0.1, "gba": 0.1}
    variants = [["tied", "relu"], ["untied", "relu"]]
    for spec in (SPEC, OFF):
        every = (R.real_configs(spec, grid, named, [0, 1], variants, [0.1])
                 + [c for cs in R.named_configs(spec, named, [0, 1]).values() for c in cs]
                 + list(R.ce_splices(spec, named, 0, variants, [0.1]).values()))
        assert all(c["content_rule"] == dataclasses.asdict(spec.rule) for c in every)


def test_the_ce_sweep_key_holds_the_rule_and_delta_ce_refuses_splices_of_another_rule():
    named = {"topk": 4, "relu_l1": 0.1, "gba": 0.1}
    splices = R.ce_splices(SPEC, named, 0, [["tied", "relu"]], [0.1])
    on = R.ce_sweep_key(splices, 4, 16)
    off = R.ce_sweep_key(splices, 4, 16, ContentRule(enabled=False))
    assert on["content_rule"] == dataclasses.asdict(ContentRule()) and config_key(on) != config_key(off)
    # splices built under another rule than the SAEs' configs: the rows are not theirs
    configs = list(R.ce_splices(SPEC, named, 0, [["tied", "relu"]], [0.1]).values())
    real = pd.DataFrame({"fvu": [0.1] * 3, "l0": [4.0] * 3})
    pw = {n: [1.0, 2.0] for n in ["clean", "zero", *splices]}
    R.delta_ce(pw, splices, real, configs)
    with pytest.raises(ValueError, match="content rule"):
        R.delta_ce(pw, R.ce_splices(OFF, named, 0, [["tied", "relu"]], [0.1]), real, configs)


def test_ce_row_splices_under_the_rule_of_its_sweep_config(tmp_path, tiny_lm):
    from resa_utils.lm.activations import resid_hook

    hook = resid_hook(1)
    c = R.real_config(SPEC, "topk", 4, 0)
    SAE(SAEConfig(d_in=tiny_lm.d_model, d_sae=16)).init_weights(torch.Generator().manual_seed(0)).save(R.sae_path(tmp_path, c))
    ids = torch.randint(10, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    out = {name: R.ce_row(R.ce_sweep_key({"TopK": c}, 3, 12, rule), tiny_lm, hook, {"TopK": c}, tmp_path, ids)["per_window"]
           for name, rule in (("on", ContentRule()), ("off", ContentRule(enabled=False)))}
    assert out["on"]["clean"] == pytest.approx(out["off"]["clean"])  # the clean pass is the same
    # the rule keeps position 0 (and any outlier) clean, so every splice reads otherwise than with the rule off
    assert out["on"]["zero"] != pytest.approx(out["off"]["zero"]) and out["on"]["TopK"] != pytest.approx(out["off"]["TopK"])


def test_real_row_trains_on_the_content_rows_it_is_given_without_a_planted_massive_row(tmp_path):
    from resa_utils.lm.activations import content_rows

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    x[100] *= 1000.0  # a massive activation
    pos = torch.ones(len(x), dtype=torch.bool)
    pos[::64] = False  # window starts
    kept, left = content_rows(MemCache(x, pos, shard_rows=256), "h", SPEC.rule)
    rows = kept.load("h")
    assert left.by_norm == 1 and left.by_position == 16 and len(rows) == 1024 - 17
    assert rows.norm(dim=1).max() < 100 and left.variance_share > 0.9  # the planted row carried most of the variance
    c = R.real_config(SPEC, "topk", 4, 0)
    row = R.real_row(c, (kept, "h"), rows[:256], tmp_path, {})  # streamed, as the notebook does past its RAM limit
    assert R.has_sae(c, tmp_path) and 0 < row["fvu"] < 1.5


def _real_rows() -> pd.DataFrame:
    rows = [("topk", 4, 0, "", 0.1, 4), ("topk", 8, 0, "", 0.05, 8), ("gba", 0.1, 0, "tied/relu", 0.2, 4),
            ("gba", 0.2, 0, "tied/relu", 0.1, 16), ("gba", 0.1, 0, "untied/relu", 0.05, 6),
            ("relu_l1", 0.1, 0, "", 0.3, 10), ("topk", 4, 1, "", 0.3, 6), ("gba", 0.1, 1, "tied/relu", 0.4, 8),
            ("relu_l1", 0.1, 1, "", 0.5, 12)]
    return pd.DataFrame(rows, columns=["method", "knob", "seed", "variant", "fvu", "l0"])


def test_label_real_frontier_points_and_the_named_spread():
    real = R.label_real(_real_rows())
    assert real.series.iloc[2] == "GBA (tied/relu)" and real.series.iloc[0] == "TopK"
    first = R.frontier_points(real, 0, "tied/relu")
    assert len(first) == 6 and list(first.default) == [True, True, True, True, False, True]
    spread = R.named_spread(real, {"topk": 4, "relu_l1": 0.1, "gba": 0.1}, "tied/relu").set_index("Method")
    assert spread.loc["TopK", "fvu"] == pytest.approx(0.2) and spread.loc["TopK", "l0_sd"] == pytest.approx(math.sqrt(2))
    assert spread.loc["GBA", "seeds"] == 2 and spread.loc["GBA", "l0"] == pytest.approx(6.0)  # the untied variant left out


def test_delta_ce_in_nats_with_an_interval_and_ce_recovered():
    configs = [R.real_config(SPEC, "topk", 4, 0), R.real_config(SPEC, "relu_l1", 0.1, 0)]
    real = pd.DataFrame({"fvu": [0.1, 0.2], "l0": [4.0, 9.0]})
    splices = {"TopK": configs[0], "L1": configs[1]}
    pw = {"clean": [1.0, 1.0, 1.0, 1.0], "zero": [5.0, 5.0, 5.0, 5.0], "TopK": [2.0, 2.0, 2.0, 2.0], "L1": [1.0, 2.0, 3.0, 4.0]}
    out = R.delta_ce(pw, splices, real, configs)
    t = out.table.set_index("SAE")
    assert t.loc["TopK", "ΔCE nats"] == 1.0 and t.loc["TopK", "± 95%"] == 0.0 and t.loc["TopK", "CE recovered"] == 0.75
    assert t.loc["L1", "ΔCE nats"] == pytest.approx(1.5)
    assert t.loc["L1", "± 95%"] == pytest.approx(1.96 * np.std([0, 1, 2, 3], ddof=1) / 2)
    assert t.loc["L1", "l0"] == 9.0 and (out.clean, out.zero, out.n_windows) == (1.0, 5.0, 4)
    assert out.records() == {"real/TopK/delta_ce": 1.0, "real/TopK/ce_recovered": 0.75,
                             "real/L1/delta_ce": pytest.approx(1.5), "real/L1/ce_recovered": pytest.approx(0.625)}


def test_seed_consistency_of_identical_and_of_random_saes(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = SAE(SAEConfig(d_in=16, d_sae=20)).init_weights(g)
    b = SAE(SAEConfig(d_in=16, d_sae=20)).init_weights(g)
    configs = {"TopK": [R.real_config(SPEC, "topk", 4, s) for s in (0, 1)],
               "GBA": [R.real_config(SPEC, "gba", 0.1, s) for s in (0, 1)]}
    for c, sae in zip(configs["TopK"] + configs["GBA"], (a, a, a, b)):  # TopK: the same SAE twice
        sae.save(R.sae_path(tmp_path, c))
    x = torch.randn(300, 16, generator=g)
    floor = torch.tensor([0.1, 0.2, 0.95, 0.3])
    out = R.seed_consistency(configs, tmp_path, x, 0.0, floor)
    t = out.table.set_index(["Method", "subset"])
    assert t.loc[("TopK", "all live"), "consistency@0.9"] == 1.0 and t.loc[("TopK", "all live"), "sd over pairs"] == 0.0
    assert t.loc[("GBA", "all live"), "consistency@0.9"] < 0.5
    assert (t["random floor @0.9"] == 0.25).all() and np.allclose(t["random floor median"], 0.2)
    assert set(out.cosines.subset) == {"all live", "frequent"} and list(out.cosines.columns) == ["Method", "subset", "cos"]


# --------------------------------------------------------------------------- ours vs the paper


def test_verdict_helpers():
    assert (R.held(True, False), R.held(False, True), R.held(False, False)) == ("yes", "partly", "no")
    assert R.mean_sd_text(pd.Series([1.0, 3.0])) == "2.000 ± 1.414"
    a, b = pd.Series([0.9, 1.0]), pd.Series([0.1, 0.2])
    assert (R.beats(a, b), R.beats(b, a), R.beats(a, a)) == ("yes", "no", "partly")
    front = pd.DataFrame({"l0": [100.0, 1.0], "fvu": [1.0, 0.0]})
    assert R.fvu_at(front, 10.0) == pytest.approx(0.5)  # halfway in log L0


def test_toy_claims_follow_the_stated_rules():
    rows = []
    for seed in (0, 1):
        rows += [("topk", 20, seed, "report", 0.95, 0.1),  # within 0.1 of 0.984: recovers
                 ("topk", 30, seed, "report", 0.5, 0.1),  # more than 0.2 above 0.242: the failure does not hold
                 ("gba", [0.1, 0.001, 0.01, 50], seed, "report", 0.85, 0.2),  # partly (>= 0.8)
                 ("gba", [0.5, 0.2, 0.01, 50], seed, "wrong ladder", 0.05, 0.9)]
    syn = R.label_runs(_run_rows(rows), {"topk": 20, "relu_l1": 0.03, "gba": [0.1, 0.001, 0.01, 50]})
    tuning = R.Tuning({"gba": syn[(syn.method == "gba") & (syn.role == "report")],
                       "topk": syn[(syn.method == "topk") & (syn.setting == 20)]}, {"gba": ["g"], "topk": ["k=20"]})
    claims = R.toy_claims(syn, tuning, TOY, [0.1, 0.001, 0.01, 50], [[0.5, 0.2, 0.01, 50]], 0.125, [0, 1], [20, 30])
    assert [c["held"] for c in claims] == ["yes", "no", "not tested", "partly", "no", "yes"]
    assert claims[2]["ours"] == "not run" and "not in topk_grid [20, 30]" in claims[2]["note"]
    assert claims[0]["ours"] == "0.950 ± 0.000" and "f = 0.125" in claims[-1]["note"]


def test_frontier_and_consistency_claims():
    first = R.frontier_points(R.label_real(_real_rows()), 0, "tied/relu")
    c = R.frontier_claim(first, 4, "tied/relu", "tiny")
    # TopK at L0 4: FVU 0.1; GBA's default frontier (L0 4 -> 0.2, 16 -> 0.1) at L0 4: 0.2, ratio 2
    assert c["ours"] == "2.00" and c["held"] == "no" and c["note"].startswith("tiny, GBA tied/relu")
    assert R.frontier_claim(first, 8, "tied/relu", "tiny")["ours"] == "3.00"  # L0 8: GBA 0.15 (log-interpolated) / 0.05
    same = first.assign(fvu=np.where(first.method == "gba", [0.1, 0.05, 0.1, 0.05, 0.1, 0.3][:len(first)], first.fvu))
    assert R.frontier_claim(same, 4, "tied/relu", "tiny")["held"] == "yes"
    shifted = first.assign(l0=np.where(first.method == "gba", first.l0 * 3, first.l0))
    out = R.frontier_claim(shifted, 4, "tied/relu", "tiny")
    assert out["held"] == "not tested" and out["ours"] == "nan"
    cons = pd.DataFrame({"Method": ["TopK", "GBA", "TopK"], "subset": ["all live", "all live", "frequent"],
                         "consistency@0.9": [0.01, 0.015, 0.9], "sd over pairs": [0.001, 0.001, 0.0],
                         "random floor @0.9": [0.0, 0.0, 0.0]})
    assert R.consistency_claim(cons, "n")["held"] == "not tested"
    cons["consistency@0.9"] = [0.3, 0.5, 0.0]
    assert R.consistency_claim(cons, "n")["held"] == "yes"
    cons["consistency@0.9"] = [0.5, 0.3, 0.0]
    assert R.consistency_claim(cons, "n")["held"] == "no"


# --------------------------------------------------------------------------- parameter checks


def test_true_frequency_and_a_wrong_ladder_that_contains_it():
    from resa_utils.harness import params as P
    from resa_utils.harness import run
    from resa_utils.harness.checks import gba_recovery as checks

    import ast

    defaults = {k: ast.literal_eval(v) for k, v in run.notebook_parameters("05_gba_recovery").items()}
    good = {**defaults, **run.load_params("smoke", "05_gba_recovery")}
    assert checks.true_frequency({"paper_mix": [3, 20], "n_features": 128}) == pytest.approx(11.5 / 128)
    checks.cross(good)
    f = checks.true_frequency(good)
    with pytest.raises(P.ParameterError, match="so it is not wrong"):
        checks.cross({**good, "wrong_ladders": [[2 * f, f / 2]]})
    assert set(good) <= set(checks.CHECKS)


# --------------------------------------------------------------------------- figures


def _lines(fig) -> int:
    return sum(len(ax.get_lines()) for ax in fig.axes)


def test_recovery_curves_figure_has_a_panel_per_metric_and_few_x_ticks():
    from resa_utils.harness import plots

    samples = [250_000, 500_000, 1_000_000, 2_000_000, 4_000_000]
    summary = pd.DataFrame([{"Method": m, "which": "tuned", "series": f"{m} tuned", "metric": metric, "samples": float(s),
                             "mean": 0.5, "sd": 0.1} for m in ("TopK", "GBA") for metric in ("fvu", "l0") for s in samples])
    fig = plots.gba_recovery_curves(summary, {"fvu": "FVU", "l0": "L0"}, "t")
    assert len(fig.axes) == 2
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert ticks == ["250k", "1M", "4M"]
    assert len(fig.axes[0].containers) == 2  # one error-bar series per method
    matplotlib.pyplot.close(fig)


def test_sensitivity_figure_has_a_panel_per_method_and_marks_wrong_ladders():
    from resa_utils.harness import plots

    rows = [{"Method": m, "setting_label": s, "tick": s, "wrong": s == "w", "metric": b, "bar": b, "mean": 0.5, "sd": 0.1}
            for m, settings in (("TopK", ["a", "b"]), ("L1", ["c"]), ("GBA", ["d", "w"])) for s in settings
            for b in ("recovery@0.9", "recovery_all@0.9")]
    fig = plots.gba_sensitivity(pd.DataFrame(rows), "share", "t")
    assert len(fig.axes) == 3
    assert len(fig.axes[2].patches) == 2 * 2 + 1  # two bars per setting, one hatched span
    colours = [t.get_color() for t in fig.axes[2].get_xticklabels()]
    assert colours[0] != "firebrick" and colours[1] == "firebrick"
    matplotlib.pyplot.close(fig)


def test_frontier_and_consistency_figures():
    from resa_utils.harness import plots

    real = R.label_real(_real_rows())
    first = R.frontier_points(real, 0, "tied/relu")
    spread = R.named_spread(real, {"topk": 4, "relu_l1": 0.1, "gba": 0.1}, "tied/relu")
    fig = plots.gba_frontier(first, spread, "t")
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) >= 4  # TopK, GBA, GBA (untied), L1 (+ error bars)
    assert len(fig.axes[0].containers) == 3
    matplotlib.pyplot.close(fig)
    cos = pd.DataFrame({"Method": ["TopK"] * 3 + ["GBA"] * 3, "subset": ["all live", "frequent", "all live"] * 2,
                        "cos": np.linspace(0, 1, 6)})
    fig = plots.gba_consistency(cos, np.array([0.1, 0.2, 0.3]), "t")
    assert len(fig.axes) == 2
    assert _lines(fig) == 2 * (2 + 1 + 1)  # per panel: two methods, the random floor, the 0.9 line
    assert "random directions" in fig.axes[1].get_legend_handles_labels()[1]
    matplotlib.pyplot.close(fig)
