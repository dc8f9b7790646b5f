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
                     "peak@0.9": max(rec, 0.8), "peak_samples": 10 if rec < 0.8 else 20, "neg_scale": 0.0,
                     "recovery_enc@0.9": rec, "firing_r_mean": 0.5, "dead_frac": 0.0,
                     "curve": [{"samples": 10, "progress": 0.1, "recovery@0.9": max(rec, 0.8) if rec < 0.8 else rec / 2, "fvu": fvu},
                               {"samples": 20, "progress": 0.2, "recovery@0.9": rec, "fvu": fvu}]})
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


def test_real_configs_run_every_setting_on_every_seed_and_the_variants_on_the_first():
    assert R.real_config(SPEC, "topk", 4, 0)["variant"] == "" and R.real_config(SPEC, "gba", 0.1, 0)["variant"] == "tied/relu"
    grid = {"topk": [4, 8], "relu_l1": [0.1, 0.2], "gba": [0.2, 0.1]}
    variants = [["tied", "relu"], ["untied", "relu"], ["tied", "jumprelu"]]
    configs = R.real_configs(SPEC, grid, [0, 5], variants, [0.1])
    assert len(configs) == 2 * 6 + 2
    assert [c["variant"] for c in configs[-2:]] == ["untied/relu", "tied/jumprelu"] and {c["seed"] for c in configs[-2:]} == {0}
    assert [(c["method"], c["knob"], c["seed"]) for c in configs[6:9]] == [("topk", 4, 5), ("topk", 8, 5), ("relu_l1", 0.1, 5)]
    splices = R.ce_splices(SPEC, grid, 0, variants, [0.1])
    assert list(splices) == ["TopK k=4", "TopK k=8", "L1 λ=0.1", "L1 λ=0.2", "GBA p=0.2", "GBA p=0.1",
                             "GBA (untied/relu) p=0.1", "GBA (tied/jumprelu) p=0.1"]
    assert all(c["seed"] == 0 for c in splices.values())
    key = R.ce_sweep_key(splices, 4, 16)
    assert key["saes"]["TopK k=4"] == config_key(splices["TopK k=4"]) and key["windows"] == 4
    per_setting = R.setting_configs(SPEC, grid, [0, 5])
    assert list(per_setting)[:2] == [("TopK", "k=4"), ("TopK", "k=8")] and len(per_setting) == 6
    assert [c["seed"] for c in per_setting[("GBA", "p=0.1")]] == [0, 5]


def test_real_jobs_train_each_config_from_the_caches_into_its_own_folder(tmp_path):
    configs = R.real_configs(SPEC, {"topk": [4], "relu_l1": [0.1], "gba": [0.1]}, [0, 1], [["tied", "relu"]], [])
    jobs = R.real_jobs(configs, tmp_path / "train", tmp_path / "eval", "h", tmp_path / "saes", {"m": 1}, False, SPEC.rule)
    assert list(jobs) == [config_key(c) for c in configs]
    job = jobs[config_key(configs[2])]
    assert job.cfg.method == "gba" and job.save_dir == str(R.sae_path(tmp_path / "saes", configs[2]))
    assert job.train_dir == str(tmp_path / "train") and not job.in_ram and job.rule == SPEC.rule and job.hook == "h"


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
    grid = {"topk": [4], "relu_l1": [0.1], "gba": [0.1]}
    variants = [["tied", "relu"], ["untied", "relu"]]
    for spec in (SPEC, OFF):
        every = (R.real_configs(spec, grid, [0, 1], variants, [0.1])
                 + [c for cs in R.setting_configs(spec, grid, [0, 1]).values() for c in cs]
                 + list(R.ce_splices(spec, grid, 0, variants, [0.1]).values()))
        assert all(c["content_rule"] == dataclasses.asdict(spec.rule) for c in every)


def test_the_ce_sweep_key_holds_the_rule_and_delta_ce_refuses_splices_of_another_rule():
    named = {"topk": [4], "relu_l1": [0.1], "gba": [0.1]}
    splices = R.ce_splices(SPEC, named, 0, [["tied", "relu"]], [])
    on = R.ce_sweep_key(splices, 4, 16)
    off = R.ce_sweep_key(splices, 4, 16, ContentRule(enabled=False))
    assert on["content_rule"] == dataclasses.asdict(ContentRule()) and config_key(on) != config_key(off)
    # splices built under another rule than the SAEs' configs: the rows are not theirs
    configs = list(R.ce_splices(SPEC, named, 0, [["tied", "relu"]], []).values())
    real = pd.DataFrame({"fvu": [0.1] * 3, "l0": [4.0] * 3})
    pw = {n: [1.0, 2.0] for n in ["clean", "zero", *splices]}
    R.delta_ce(pw, splices, real, configs)
    with pytest.raises(ValueError, match="content rule"):
        R.delta_ce(pw, R.ce_splices(OFF, named, 0, [["tied", "relu"]], []), real, configs)


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
    """Two seeds. TopK: L0 4 / 8 / 16 with FVU 0.1 / 0.05 / 0.025 (seed 1: 0.2 / 0.1 / 0.05); GBA: L0 8 /
    32 with FVU 0.2 / 0.1 (seed 1 the same); one untied GBA point; L1 at L0 10 and 12."""
    rows = []
    for seed, f in ((0, 1.0), (1, 2.0)):
        rows += [("topk", 4, seed, "", 0.1 * f, 4.0), ("topk", 8, seed, "", 0.05 * f, 8.0), ("topk", 16, seed, "", 0.025 * f, 16.0),
                 ("gba", 0.1, seed, "tied/relu", 0.2, 8.0), ("gba", 0.05, seed, "tied/relu", 0.1, 32.0),
                 ("relu_l1", 0.1, seed, "", 0.3, 10.0 + 2 * seed)]
    rows.append(("gba", 0.1, 0, "untied/relu", 0.05, 6.0))
    return pd.DataFrame(rows, columns=["method", "knob", "seed", "variant", "fvu", "l0"])


def test_label_real_the_spread_over_seeds_and_the_matched_l0():
    real = R.label_real(_real_rows(), "tied/relu")
    assert real.series.iloc[3] == "GBA" and real.series.iloc[-1] == "GBA (untied/relu)" and not real["default"].iloc[-1]
    assert list(real.setting[:6]) == ["k=4", "k=8", "k=16", "p=0.1", "p=0.05", "λ=0.1"]
    spread = R.frontier_spread(real)
    l1 = spread[spread.series == "L1"].iloc[0]
    assert l1.l0 == pytest.approx(11.0) and l1.l0_sd == pytest.approx(math.sqrt(2)) and l1.seeds == 2
    k4 = spread[(spread.series == "TopK") & (spread.setting == "k=4")].iloc[0]
    assert k4.fvu == pytest.approx(0.15) and k4.fvu_sd == pytest.approx(np.std([0.1, 0.2], ddof=1))
    match = R.matched_l0(spread)  # GBA 8..32, TopK 4..16: overlap 8..16, matched at sqrt(128)
    assert (match.lo, match.hi, match.overlap) == (8.0, 16.0, True) and match.l0 == pytest.approx(math.sqrt(128))
    assert not R.matched_l0(spread.assign(l0=np.where(spread.series == "GBA", spread.l0 * 4, spread.l0))).overlap
    assert math.isnan(R.MatchedL0(20.0, 10.0).l0)
    assert R.nearest_setting(spread, "TopK", 7.0) == "k=8" and R.nearest_setting(spread, "GBA", float("nan")) == "p=0.05"


def test_matched_l0_on_per_seed_rows_lies_inside_every_seeds_range():
    """Matched on the means, a seed whose range starts higher misses the matched L0 and its FVU is
    NaN; matched on every seed's range (the notebook's rule), every seed interpolates."""
    real = R.label_real(_real_rows(), "tied/relu")
    real.loc[(real.series == "GBA") & (real.seed == 1) & (real.l0 == 8.0), "l0"] = 14.0  # seed 1's GBA starts at 14
    on_means = R.matched_l0(R.frontier_spread(real))
    per_seed = R.matched_l0(real)
    assert on_means.lo == pytest.approx(11.0) and (per_seed.lo, per_seed.hi) == (14.0, 16.0)
    dce = pd.DataFrame({"series": ["TopK", "TopK", "GBA", "GBA"], "l0": [4.0, 16.0, 8.0, 32.0], "ΔCE nats": [2.0, 1.0, 3.0, 1.0]})
    assert math.isnan(R.matched_table(real, dce, on_means, [0, 1]).set_index("series").loc["GBA", "fvu"])
    t = R.matched_table(real, dce, per_seed, [0, 1]).set_index("series")
    assert np.isfinite(t.loc[["GBA", "TopK"], ["fvu", "ΔCE nats"]].to_numpy()).all()
    assert R.l0_precondition(per_seed, "8")["met"] == "yes" and "every seed" in R.l0_precondition(per_seed, "8")["precondition"]


def test_matched_table_interpolates_each_seed_in_log_l0_and_leaves_out_of_range_series_nan():
    real = R.label_real(_real_rows(), "tied/relu")
    dce = pd.DataFrame({"series": ["TopK", "TopK", "GBA", "GBA"], "l0": [4.0, 16.0, 8.0, 32.0], "ΔCE nats": [2.0, 1.0, 3.0, 1.0]})
    t = R.matched_table(real, dce, R.MatchedL0(8.0, 8.0), [0, 1]).set_index("series")
    assert t.loc["TopK", "fvu"] == pytest.approx((0.05 + 0.1) / 2) and t.loc["TopK", "fvu per seed"] == "0.050 / 0.100"
    assert t.loc["GBA", "fvu"] == pytest.approx(0.2) and t.loc["GBA", "ΔCE nats"] == pytest.approx(3.0)
    assert t.loc["TopK", "ΔCE nats"] == pytest.approx(1.5)  # halfway from L0 4 to 16 in log L0
    assert math.isnan(t.loc["L1", "fvu"]) and "GBA (untied/relu)" not in t.index
    assert math.isnan(R.at_l0(dce[dce.series == "TopK"], 20.0, "ΔCE nats"))  # no extrapolation


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
    configs = {("TopK", "k=4"): [R.real_config(SPEC, "topk", 4, s) for s in (0, 1)],
               ("GBA", "p=0.1"): [R.real_config(SPEC, "gba", 0.1, s) for s in (0, 1)]}
    for c, sae in zip(configs[("TopK", "k=4")] + configs[("GBA", "p=0.1")], (a, a, a, b)):  # TopK: the same SAE twice
        sae.save(R.sae_path(tmp_path, c))
    x = torch.randn(300, 16, generator=g)
    floor = torch.tensor([0.1, 0.2, 0.95, 0.3])
    out = R.seed_consistency(configs, tmp_path, x, 0.0, floor)
    t = out.table.set_index(["Method", "subset"])
    assert t.loc[("TopK", "all live"), "consistency@0.9"] == 1.0 and t.loc[("TopK", "all live"), "sd over pairs"] == 0.0
    assert t.loc[("GBA", "all live"), "consistency@0.9"] < 0.5
    assert (t["random floor @0.9"] == 0.25).all() and np.allclose(t["random floor median"], 0.2)
    assert set(out.cosines.subset) == {"all live", "frequent"} and list(out.cosines.columns) == ["Method", "setting", "subset", "cos"]
    assert set(out.picked({"GBA": "p=0.1"}).Method) == {"GBA"} and out.picked({"GBA": "p=9"}).empty
    assert t.loc[("TopK", "all live"), "setting"] == "k=4"


# --------------------------------------------------------------------------- ours vs the paper


def test_verdict_helpers():
    assert (R.held(True, False), R.held(False, True), R.held(False, False)) == ("yes", "partly", "no")
    assert R.mean_sd_text(pd.Series([1.0, 3.0])) == "2.000 ± 1.414"
    a, b = pd.Series([0.9, 1.0]), pd.Series([0.1, 0.2])
    assert (R.beats(a, b), R.beats(b, a), R.beats(a, a)) == ("yes", "no", "partly")
    front = pd.DataFrame({"l0": [100.0, 1.0], "fvu": [1.0, 0.0]})
    assert R.at_l0(front, 10.0) == pytest.approx(0.5)  # halfway in log L0
    assert math.isnan(R.at_l0(front, 200.0)) and R.claim_numbers(3, 2) == "3 4" and R.claim_numbers(1, 0) == ""


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


def test_frontier_and_consistency_claims_and_their_preconditions():
    real = R.label_real(_real_rows(), "tied/relu")
    spread = R.frontier_spread(real)
    match = R.matched_l0(spread)
    dce = pd.DataFrame({"series": ["TopK", "TopK", "GBA", "GBA"], "l0": [4.0, 16.0, 8.0, 32.0], "ΔCE nats": [2.0, 1.0, 3.0, 1.0]})
    matched = R.matched_table(real, dce, match, [0, 1]).set_index("series")
    c = R.frontier_claim(matched.reset_index(), spread, match, "tiny", "tied/relu")
    ratio = matched.loc["GBA", "fvu"] / matched.loc["TopK", "fvu"]
    assert c["ours"].startswith(f"{ratio:.2f} ") and c["held"] == "no" and "ΔCE" in c["ours"] and "L0 11" in c["metric"]
    assert R.l0_precondition(match, "8")["met"] == "yes"
    close = real.assign(fvu=np.where(real.method == "gba", real.fvu / 2.9, real.fvu))  # GBA close to TopK
    sp = R.frontier_spread(close)
    assert R.frontier_claim(R.matched_table(close, dce, match, [0, 1]), sp, match, "t", "tied/relu")["held"] in ("yes", "partly")
    apart = real.assign(l0=np.where(real.method == "gba", real.l0 * 4, real.l0))  # GBA 32..128, TopK 4..16
    sp = R.frontier_spread(apart)
    m2 = R.matched_l0(sp)
    out = R.frontier_claim(R.matched_table(apart, dce, m2, [0, 1]), sp, m2, "t", "tied/relu")
    # still a number: GBA's lowest L0 point (32: FVU 0.2) against TopK's highest (16: mean FVU 0.0375)
    assert out["ours"].startswith(f"{0.2 / 0.0375:.2f} ") and "nearest" in out["metric"]
    pre = R.l0_precondition(m2, "8")
    assert pre["met"] == "no" and pre["gates"] == "8"
    cons = pd.DataFrame({"Method": ["TopK", "GBA", "TopK", "GBA"], "setting": ["k=4", "p=0.1", "k=8", "p=0.1"],
                         "subset": ["all live", "all live", "all live", "frequent"],
                         "consistency@0.9": [0.01, 0.015, 0.5, 0.9], "sd over pairs": [0.001, 0.001, 0.0, 0.0],
                         "random floor @0.9": [0.0, 0.0, 0.0, 0.0]})
    picks = {"TopK": "k=4", "GBA": "p=0.1"}
    assert R.consistency_claim(cons, picks, "n")["held"] == "yes"  # 0.015 vs 0.01, sd 0.001
    pre = R.consistency_precondition(cons, picks, 0.02, "9")
    assert pre["met"] == "no" and pre["value"] == "0.0150"  # both at the floor: the claim gets gated
    assert R.consistency_claim(cons, {"TopK": "k=8", "GBA": "p=0.1"}, "n")["held"] == "no"
    assert R.consistency_precondition(cons, {"TopK": "k=8", "GBA": "p=0.1"}, 0.02, "9")["met"] == "yes"


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

    spread = R.frontier_spread(R.label_real(_real_rows(), "tied/relu"))
    fig = plots.gba_frontier(spread, 11.3, "t")
    assert len(fig.axes) == 1 and len(fig.axes[0].containers) == 4  # TopK, GBA, L1, GBA (untied) with error bars
    assert "matched L0 11" in fig.axes[0].get_legend_handles_labels()[1]
    matplotlib.pyplot.close(fig)
    fig = plots.gba_frontier(spread, float("nan"), "t")
    assert not any(t.startswith("matched") for t in fig.axes[0].get_legend_handles_labels()[1])
    matplotlib.pyplot.close(fig)
    cos = pd.DataFrame({"Method": ["TopK"] * 3 + ["GBA"] * 3, "subset": ["all live", "frequent", "all live"] * 2,
                        "cos": np.linspace(0, 1, 6)})
    fig = plots.gba_consistency(cos, np.array([0.1, 0.2, 0.3]), "t")
    assert len(fig.axes) == 2
    assert _lines(fig) == 2 * (2 + 1 + 1)  # per panel: two methods, the random floor, the 0.9 line
    assert "random directions" in fig.axes[1].get_legend_handles_labels()[1]
    matplotlib.pyplot.close(fig)


# --------------------------------------------------------------------------- issue 37: diagnostics, progress, shared cache

DIAG = R.DiagSpec(easy_mix=[1], lr=1e-4, a_init=0.1, f_true=0.125)


def test_lr_progress_is_the_sum_of_the_lrs_the_trainer_uses():
    from resa_utils.sae import TrainConfig
    from resa_utils.sae.train import make_trainer

    for kw in ({"lr": 1e-3, "lr_decay_frac": 0.2}, {"lr": None, "lr_decay_frac": 0.5}, {"lr": 1e-4, "lr_decay_frac": 0.0}):
        cfg = TrainConfig(method="topk", d_sae=32, k=2, batch_size=8, n_tokens=8 * 40, **kw)
        trainer = make_trainer(cfg, 4)
        trainer.setup(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)))
        used = []
        for _ in range(cfg.n_steps):
            used.append(trainer.opt.param_groups[0]["lr"])
            trainer.opt.step()
            trainer.sched.step()
        for steps in (0, 10, 33, 40):
            assert R.lr_progress(cfg, steps) == pytest.approx(sum(used[:steps]), rel=1e-9, abs=1e-15)


def _toy_sae(features: torch.Tensor) -> SAE:
    """A ReLU SAE whose rows are the true features (encoder = decoder transpose)."""
    n, d = features.shape
    sae = SAE(SAEConfig(d_in=d, d_sae=n))
    with torch.no_grad():
        sae.W_dec.copy_(features)
        sae.W_enc.copy_(features.t())
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_synthetic_scores_count_negative_output_scales_and_score_the_encoder_directions():
    from resa_utils.data.synthetic import SyntheticConfig, make_dataset, fresh_samples

    syn = SyntheticConfig(n_features=8, d=16, sparsities=(1,), n_samples=100, seed=0)
    _, features = make_dataset(syn)
    x, codes = fresh_samples(syn, features, 2000, seed=1)
    sae = _toy_sae(features)
    good = R.synthetic_scores(sae, features, x, codes)
    assert good["recovery@0.9"] == 1.0 and good["recovery_enc@0.9"] == 1.0 and good["neg_scale"] == 0.0
    with torch.no_grad():
        sae.W_dec[:2] *= -1  # two output scales a_m < 0: the decoder row is -w_m
    flipped = R.synthetic_scores(sae, features, x, codes)
    assert flipped["neg_scale"] == pytest.approx(2 / 8) and flipped["recovery@0.9"] == pytest.approx(6 / 8)
    assert flipped["recovery_enc@0.9"] == 1.0  # the encoder directions still sit on every feature


def test_start_from_the_truth_and_a_small_or_frozen_output_scale():
    from resa_utils.sae import TrainConfig
    from resa_utils.sae.train import train_sae

    g = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    x = torch.rand(512, 6, generator=g) @ features
    seen = {}

    def keep(trainer):  # record the start the hook made, before any step
        seen["W"] = trainer.sae.W_dec.detach().clone()
        seen["a"] = trainer.out_scale_F.detach().clone()

    cfg = TrainConfig(method="gba", d_sae=16, batch_size=64, n_tokens=64 * 20, gba_p_high=0.5, gba_p_low=0.05,
                      gba_interval=5, lr=1e-2)
    hook = R.start_from(features, a_init=0.1, a_frozen=True)
    train_sae(x, cfg, progress=False, device="cpu", init=lambda t: (hook(t), keep(t)))
    assert torch.allclose(seen["W"][:6], features) and torch.allclose(seen["a"], torch.full((16,), 0.1))
    res = train_sae(x, cfg, progress=False, device="cpu", init=R.start_from(None, a_init=0.1, a_frozen=True))
    # frozen: the exported decoder rows keep norm a_m / input scale on every latent
    norms = res.sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-4)
    free = train_sae(x, cfg, progress=False, device="cpu", init=R.start_from(None, a_init=0.1)).sae.W_dec.norm(dim=1)
    assert not torch.allclose(free, free[0].expand_as(free), rtol=1e-3)
    assert R.start_from() is None
    with pytest.raises(ValueError, match="tied GBA"):
        train_sae(x, TrainConfig(method="topk", d_sae=16, k=2, batch_size=64, n_tokens=128), progress=False,
                  device="cpu", init=R.start_from(a_frozen=True))
    with pytest.raises(ValueError, match="raise the width"):
        R.start_from(torch.randn(20, 8))(type("T", (), {"sae": SAE(SAEConfig(d_in=8, d_sae=16)), "cfg": cfg})())


def test_diagnostic_configs_change_only_what_each_diagnostic_names():
    configs = R.diagnostic_configs(TOY, PAPER, [0, 1], DIAG)
    assert len(configs) == 2 * (3 * 3 + 3)
    by = {(c["diagnostic"], c["method"], c["seed"]): c for c in configs}
    base = R.syn_config(TOY, "gba", PAPER["gba"], 0, "report")
    assert "diagnostic" not in base and "init" not in base  # the report runs keep their keys
    truth = by[("start at truth", "topk", 0)]
    assert truth["init"] == {"truth": True} and truth["train"] == R.syn_config(TOY, "topk", 3, 0, "report")["train"]
    assert by[("easy toy", "gba", 1)]["syn"]["sparsities"] == (1,)
    lr = by[("fixed low lr", "relu_l1", 0)]["train"]
    assert lr["lr"] == 1e-4 and lr["lr_decay_frac"] == 0.0 and lr["l1_coefficient"] == 0.03
    one = by[("one group at f", "gba", 0)]
    assert one["train"]["gba_groups"] == 1 and one["train"]["gba_p_high"] == one["train"]["gba_p_low"] == 0.125
    assert one["train"]["d_sae"] == max(TOY.width, 4 * TOY.n_features)
    assert by[("small a_m", "gba", 0)]["init"] == {"a_init": 0.1} and by[("frozen a_m", "gba", 1)]["init"] == {"a_frozen": True}
    assert len({config_key(c) for c in configs}) == len(configs)
    assert set(c["diagnostic"] for c in configs) == set(R.DIAGNOSTICS)


def test_synthetic_row_of_a_diagnostic_reports_its_peak_and_progress():
    c = R.diagnostic_configs(TOY, PAPER, [0], DIAG)[0]  # TopK started at the truth
    out = R.synthetic_row(c)
    assert R.has_scores(out) and not R.has_scores({"peak@0.9": 1.0})
    assert out["peak@0.9"] == max(p["recovery@0.9"] for p in out["curve"]) >= out["recovery@0.9"]
    assert [p["samples"] for p in out["curve"]] == [1024, 2048, 4096]
    prog = [p["progress"] for p in out["curve"]]
    assert prog == sorted(prog) and prog[0] > 0 and out["peak_progress"] in prog
    assert 0.0 <= out["neg_scale"] <= 1.0 and 0.0 <= out["recovery_enc@0.9"] <= 1.0


def test_starting_at_the_truth_changes_the_run():
    """The diagnostic must differ from the paper setting it modifies: in the first cpu run of
    this design both were identical to the last digit (the random start already was the truth)."""
    truth = R.diagnostic_configs(TOY, PAPER, [0], DIAG)[0]
    base = R.syn_config(TOY, "topk", PAPER["topk"], 0, "report")
    assert base["syn"]["feature_stream"] != 0  # in the sweep key: rows from before the fix are not reused
    a, b = R.synthetic_row(truth), R.synthetic_row(base)
    assert a["fvu"] != b["fvu"] and a["curve"][0]["recovery@0.9"] != b["curve"][0]["recovery@0.9"]
    assert a["curve"][0]["recovery@0.9"] > b["curve"][0]["recovery@0.9"]  # a start at the truth is ahead at the first probe


def _diag_syn() -> pd.DataFrame:
    rows = [("topk", 3, s, "report", 0.2, 0.1) for s in (0, 1)] + [("gba", PAPER["gba"], s, "report", 0.6, 0.3) for s in (0, 1)]
    rows += [("relu_l1", 0.03, s, "report", 0.9, 0.2) for s in (0, 1)]
    syn = _run_rows(rows)
    diag = _run_rows([(m, PAPER[m], s, "diagnostic", rec, 0.1) for s in (0, 1)
                      for m, rec in (("topk", 0.95), ("gba", 0.7), ("relu_l1", 0.5))]).assign(diagnostic="easy toy")
    return R.label_runs(pd.concat([syn, diag], ignore_index=True), PAPER)


def test_diagnostics_table_progress_summary_and_the_easy_precondition():
    syn = _diag_syn()
    tuning = R.tune(syn[syn.role == "report"], [0, 1])
    runs = R.series_runs(syn, tuning)
    assert set(runs.series) == {R.PAPER_SETTING, R.TUNED, "easy toy"} and len(runs) == 6 + 6 + 6
    table = R.diagnostics_table(runs).set_index(["Method", "series"])
    assert list(dict.fromkeys(table.index.get_level_values(0))) == ["TopK", "L1", "GBA"]
    assert table.loc[("TopK", R.PAPER_SETTING), "peak@0.9"] == "0.800 ± 0.000"
    assert table.loc[("TopK", R.PAPER_SETTING), "recovery@0.9"] == "0.200 ± 0.000"
    assert table.loc[("TopK", R.PAPER_SETTING), "peak − final"] == pytest.approx(0.6)
    assert table.loc[("TopK", "easy toy"), "peak − final"] == pytest.approx(0.0)
    rec = R.diagnostic_records(runs)
    assert rec["toy/GBA/easy toy/recovery@0.9"] == pytest.approx(0.7)
    summary = R.progress_summary(R.progress_curves(runs))
    t = summary[(summary.Method == "TopK") & (summary.series == R.PAPER_SETTING)]
    assert list(t.progress) == [0.1, 0.2] and list(t.peak) == [True, False] and list(t.final) == [False, True]
    assert list(t["mean"]) == pytest.approx([0.8, 0.2])
    pre = R.easy_precondition(syn, 0.9, "1 2")
    assert pre["met"] == "yes" and pre["value"] == "0.950" and "TopK" in pre["measure"] and pre["gates"] == "1 2"
    assert R.easy_precondition(syn, 0.99, "1")["met"] == "no"
    assert R.paper_marks({"topk": 20})["TopK"][0][0] == 0.984 and "TopK" not in R.paper_marks({"topk": 10})


def test_toy_claims_read_the_final_value_and_name_the_peak_and_the_unstated_settings():
    syn = _diag_syn()
    tuning = R.tune(syn[syn.role == "report"], [0, 1])
    claims = R.toy_claims(syn, tuning, TOY, PAPER["gba"], [], 0.125, [0, 1], [3])
    gba = claims[3]
    assert gba["ours"] == "0.600 ± 0.000" and "peak along training 0.800" in gba["note"] and R.UNSTATED in gba["note"]


def test_progress_figure_has_a_panel_per_method_with_peaks_finals_and_the_paper_lines():
    from resa_utils.harness import plots

    syn = _diag_syn()
    runs = R.series_runs(syn, R.tune(syn[syn.role == "report"], [0, 1]))
    summary = R.progress_summary(R.progress_curves(runs))
    fig = plots.gba_progress(summary, R.paper_marks({"topk": 3}) | {"TopK": [(0.984, "paper: TopK")]}, "t")
    assert len(fig.axes) == 3
    ax = fig.axes[0]  # TopK: 3 series x (line, peak, final) + the paper line
    assert len(ax.get_lines()) == 3 * 3 + 1 and [ln.get_ydata()[0] for ln in ax.get_lines()][-1] == 0.984
    labels = fig.axes[-1].get_legend_handles_labels()
    assert fig.axes[-1].get_legend() is not None and {"peak", "final (the rule)"} <= {t.get_text() for t in fig.axes[-1].get_legend().get_texts()}
    matplotlib.pyplot.close(fig)


def test_shared_data_key_has_the_fields_of_notebook_03s_key():
    import ast
    import json
    from pathlib import Path

    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "03_dense_latents.ipynb").read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "data_key" for t in n.targets)]
    assert calls, "notebook 03 no longer assigns data_key: update shared_data_key and 05's cache reuse"
    fields = {k.value for k in calls[0].value.args[0].keys}
    mine = R.shared_data_key("m", "english", 0, 0.05, 256, [9], 10, 2)
    assert fields == {"model", "corpus", "seed", "eval_frac", "seq_len", "dtype", "layers", "train_windows", "eval_windows"}
    assert mine == config_key({"model": "m", "corpus": "english", "seed": 0, "eval_frac": 0.05, "seq_len": 256,
                               "dtype": "bfloat16", "layers": [9], "train_windows": 10, "eval_windows": 2})
    assert mine != R.shared_data_key("m", "english", 0, 0.05, 256, [3, 9], 10, 2)


def test_notebook_05s_cpu_defaults_name_notebook_03s_windows():
    """05 reads 03's activation cache only when its key matches: the same model, corpus, split,
    window length, layers and harvested token counts (03 harvests whole SAE batches)."""
    import ast
    import math

    from resa_utils.harness import run

    d3, d5 = ({k: ast.literal_eval(v) for k, v in run.notebook_parameters(nb).items()}
              for nb in ("03_dense_latents", "05_gba_recovery"))
    assert d5["shared_cache"] == "03_dense_latents"
    assert (d5["model_name"], d5["corpus"], d5["seq_len"], d5["eval_frac"], d5["seeds"][0], d5["cache_layers"]) == \
        (d3["model_name"], d3["corpus"], d3["seq_len"], d3["eval_frac"], d3["seed"], d3["layers"])
    assert d5["real_harvest_tokens"] == math.ceil(d3["train_tokens"] / d3["batch_size"]) * d3["batch_size"]
    assert d5["real_eval_tokens"] == d3["eval_tokens"]
    assert d5["real_train_tokens"] >= 1_000_000 > d5["real_harvest_tokens"]  # several passes over the harvested rows


def test_activation_dir_reads_a_shared_cache_only_when_it_holds_the_hook_over_the_same_windows(tmp_path, tiny_lm, tiny_windows):
    from resa_utils.lm.activations import ActivationCache, resid_hook

    ids = tiny_windows[:6]
    root = tmp_path / "activations" / "smoke" / "05_gba_recovery"
    shared = root.parent / "03_dense_latents" / "shared"
    for split, part in (("train", ids[:4]), ("eval", ids[4:])):
        ActivationCache.build(shared / split, tiny_lm, part, [resid_hook(0), resid_hook(1)], progress=False, dtype=torch.bfloat16)
    assert R.activation_dir(root, "03_dense_latents", "shared", "own", resid_hook(1), 4) == (shared, True)
    assert R.activation_dir(root, "03_dense_latents", "shared", "own", resid_hook(2), 4) == (root / "own", False)
    assert R.activation_dir(root, "03_dense_latents", "shared", "own", resid_hook(1), 5) == (root / "own", False)
    assert R.activation_dir(root, "", "shared", "own", resid_hook(1), 4) == (root / "own", False)
    caches, h = R.open_or_harvest(shared, True, tiny_lm, {"train": ids[:4], "eval": ids[4:]}, resid_hook(1))
    assert h["tokens"] == 0 and caches["train"].n_tokens == 4 * (ids.shape[1] - 1)
    own, h = R.open_or_harvest(root / "own", False, tiny_lm, {"train": ids[:4], "eval": ids[4:]}, resid_hook(1))
    assert h["tokens"] == 6 * (ids.shape[1] - 1) and own["eval"].hooks == [resid_hook(1)]
    assert torch.equal(own["train"].read_shard(own["train"].manifest["shards"][0], resid_hook(1)),
                       caches["train"].read_shard(caches["train"].manifest["shards"][0], resid_hook(1)))


def test_new_parameter_checks_name_the_parameter():
    from resa_utils.harness import params as P
    from resa_utils.harness import run
    from resa_utils.harness.checks import gba_recovery as checks

    import ast

    defaults = {k: ast.literal_eval(v) for k, v in run.notebook_parameters("05_gba_recovery").items()}
    good = {**defaults, **run.load_params("smoke", "05_gba_recovery")}
    checks.cross(defaults)
    bad = [({"real_l1s": good["real_l1s"][:1]}, "real_gba_p_highs"),
           ({"easy_mix": [good["n_features"] + 1]}, "easy_mix"),
           ({"syn_width": good["n_features"] - 1, "topk_grid": [2], "l1_grid": [0.01], "gba_grid": [good["paper_gba"]],
             "paper_topk_k": 2, "paper_l1": 0.01}, "syn_width")]
    for change, name in bad:
        with pytest.raises(P.ParameterError, match=name):
            checks.cross({**good, **change})
    for name, value in (("diag_lr", 0.0), ("diag_a_init", -1.0), ("easy_min_recovery", 1.5), ("shared_cache", "04_x"),
                        ("min_consistency_margin", 2.0), ("real_topk_ks", [4])):
        with pytest.raises(P.ParameterError, match=name):
            checks.CHECKS[name](name, value, good)
