"""Crosscoder scoring the authors' way: the top set is the live latents of largest r; answer-mass
shares; the Spearman permutation null (vectorised = a slow loop, calibrated, right on a
monotone relation); percentiles and summaries against nulls; the dose-response table; monotone."""

import math

import numpy as np
import pytest
import torch

from resa_utils.core.stats import spearman
from resa_utils.methods.crosscoder_scoring import (answer_mass_share, authors_scoring, monotone, null_percentile,
                                                   null_summary, r_distribution, spearman_null)


def test_authors_top_set_is_the_largest_r_among_live_latents():
    r = torch.tensor([0.99, 0.2, 0.8, 0.95, 0.5, 0.6, 0.7, 0.1])
    live = torch.tensor([False, True, True, True, True, True, True, True])  # latent 0 is dead with the largest r
    s = authors_scoring(r, live, top_share=3 / 7)
    assert s["n_live"] == 7 and s["n_top"] == 3
    assert s["top"].tolist() == [3, 2, 6] and s["top"].dtype == torch.long
    assert s["top_r_min"] == pytest.approx(0.7)
    assert s["pool"].tolist() == [False, False, True, True, False, True, True, False]  # r > 0.5, live; 0.5 itself not
    assert s["n_pool"] == 4 and s["pool_share"] == pytest.approx(4 / 7)


def test_authors_top_set_rounds_and_keeps_at_least_one():
    g = torch.Generator().manual_seed(0)
    r, live = torch.rand(1000, generator=g), torch.ones(1000, dtype=torch.bool)
    assert authors_scoring(r, live)["n_top"] == 3                       # 0.003 · 1000
    live[:700] = False
    assert authors_scoring(r, live, top_share=0.01)["n_top"] == 3       # 0.01 · 300
    assert authors_scoring(r, live, top_share=0.0116)["n_top"] == 3     # 3.48 rounds down
    assert authors_scoring(r, live, top_share=0.0118)["n_top"] == 4     # 3.54 rounds up
    assert authors_scoring(r, live)["n_top"] == 1                       # 0.9 rounds to 1
    live[:] = False
    live[[5, 9]] = True
    s = authors_scoring(r, live)                                        # 0.006 would round to 0: floor of 1
    assert s["n_top"] == 1 and s["top"].tolist() == [5 if r[5] > r[9] else 9]
    s = authors_scoring(r, torch.zeros(1000, dtype=torch.bool))
    assert s["n_top"] == 0 and math.isnan(s["top_r_min"]) and math.isnan(s["pool_share"])


def test_answer_mass_share_on_a_hand_matrix():
    acts = torch.tensor([[1.0, 0.0, 2.0, 0.0],
                         [3.0, 0.0, 0.0, 1.0],
                         [0.0, 0.0, 2.0, 1.0]])
    is_answer = torch.tensor([True, False, True])
    share = answer_mass_share(acts, is_answer)
    assert share.shape == (4,)
    assert share[0] == pytest.approx(0.25) and share[2] == pytest.approx(1.0) and share[3] == pytest.approx(0.5)
    assert math.isnan(share[1])                                         # dead latent: no mass
    # chunked the same as whole, in any float dtype
    g = torch.Generator().manual_seed(1)
    big = torch.rand(301, 7, generator=g) * (torch.rand(301, 7, generator=g) > 0.6)
    ans = torch.rand(301, generator=g) > 0.3
    whole = answer_mass_share(big, ans, chunk=10_000)
    direct = big[ans].sum(0).double() / big.sum(0).double()
    assert torch.allclose(whole, direct, atol=1e-6)
    assert torch.allclose(answer_mass_share(big, ans, chunk=16), whole, atol=1e-9)
    assert torch.allclose(answer_mass_share(big.half(), ans, chunk=16), whole, atol=1e-2)
    with pytest.raises(ValueError):
        answer_mass_share(big, ans[:-1])


def test_spearman_null_on_a_monotone_relation():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, generator=g)
    y = torch.exp(x) + 3                                   # monotone, not linear
    y[::7] = float("nan")                                  # non-finite y is left out
    mask = torch.ones(200, dtype=torch.bool)
    mask[:10] = False
    out = spearman_null(x, y, mask, n_perm=500, seed=0)
    assert out["n"] == int((mask & torch.isfinite(y)).sum())
    assert out["rho"] == pytest.approx(1.0)
    assert out["p_greater"] == pytest.approx(1 / 501) and out["p_two_sided"] == pytest.approx(1 / 501)
    assert out["percentile"] == 100.0
    out = spearman_null(x, -y, mask, n_perm=500, seed=0)
    assert out["rho"] == pytest.approx(-1.0) and out["p_greater"] == 1.0 and out["p_two_sided"] == pytest.approx(1 / 501)


def test_spearman_null_is_calibrated_on_independent_data():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(400, generator=g), torch.randn(400, generator=g)
    out = spearman_null(x, y, torch.ones(400, dtype=torch.bool), n_perm=1000, seed=1)
    assert out["rho"] == pytest.approx(spearman(x, y))
    assert out["p_greater"] > 0.01 and out["p_two_sided"] > 0.01
    bound = 1.96 / math.sqrt(399)                          # the null's quantiles sit near ±1.96/√(n−1)
    assert -1.4 * bound < out["null_q025"] < -0.7 * bound and 0.7 * bound < out["null_q975"] < 1.4 * bound
    assert abs(float(out["null"].mean())) < 0.01
    ps = [spearman_null(torch.randn(60, generator=g), torch.randn(60, generator=g), torch.ones(60, dtype=torch.bool),
                        n_perm=200, seed=s)["p_greater"] for s in range(40)]
    assert 0.3 < sum(ps) / len(ps) < 0.7                   # p roughly uniform: mean near ½
    assert sum(p < 0.05 for p in ps) <= 8


def test_spearman_null_vectorised_matches_a_slow_loop():
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 5, (50,), generator=g).float()    # ties in both
    y = x + torch.randint(0, 3, (50,), generator=g).float()
    mask = torch.rand(50, generator=g) > 0.2
    out = spearman_null(x, y, mask, n_perm=37, seed=5, chunk=8)
    xs, ys = x[mask], y[mask]
    gen = torch.Generator().manual_seed(5)
    slow = torch.tensor([spearman(xs, ys[torch.randperm(len(ys), generator=gen)]) for _ in range(37)], dtype=torch.float64)
    assert torch.allclose(out["null"], slow, atol=1e-12)
    assert out["rho"] == pytest.approx(spearman(xs, ys))
    assert out["p_greater"] == pytest.approx((1 + int((slow >= out["rho"] - 1e-12).sum())) / 38)
    assert out["p_two_sided"] == pytest.approx((1 + int((slow.abs() >= abs(out["rho"]) - 1e-12).sum())) / 38)
    assert math.isnan(spearman_null(x, y, torch.zeros(50, dtype=torch.bool))["rho"])


def test_null_percentile_counts_ties_half():
    null = [1.0, 2.0, 2.0, 3.0]
    assert null_percentile(2.0, null) == pytest.approx(50.0)            # one below, two equal: (1 + 1) / 4
    assert null_percentile(3.0, null) == pytest.approx(87.5)
    assert null_percentile(0.0, null) == 0.0 and null_percentile(9.0, torch.tensor(null)) == 100.0
    assert null_percentile(5.0, [5.0, 5.0]) == 50.0
    assert null_percentile(2.5, [1.0, float("nan"), 3.0]) == 50.0      # NaN draws dropped
    assert math.isnan(null_percentile(1.0, [])) and math.isnan(null_percentile(float("nan"), null))


def test_null_summary_beats_all_in_either_direction():
    null = torch.arange(20, dtype=torch.float64)                       # 0..19
    hi = null_summary(25.0, null)
    assert hi["beats_all"] and hi["percentile"] == 100.0 and hi["n_null"] == 20
    assert hi["null_mean"] == pytest.approx(9.5) and hi["null_max"] == 19.0 and hi["null_min"] == 0.0
    assert hi["null_q05"] == pytest.approx(0.95) and hi["null_q95"] == pytest.approx(18.05)
    assert not null_summary(19.0, null)["beats_all"]                  # a tie does not beat
    assert not null_summary(-1.0, null)["beats_all"]
    lo = null_summary(-1.0, null, higher_is_effect=False)
    assert lo["beats_all"] and lo["percentile"] == 0.0
    assert not null_summary(0.0, null, higher_is_effect=False)["beats_all"]
    assert not null_summary(25.0, null, higher_is_effect=False)["beats_all"]
    assert not null_summary(1.0, [])["beats_all"] and not null_summary(float("nan"), null)["beats_all"]


def test_r_distribution_matches_a_direct_count():
    g = torch.Generator().manual_seed(6)
    models = {}
    for name, shift in (("x1", 0.0), ("x2", 0.1), ("x4", 0.2)):
        r = (torch.rand(500, generator=g) * 0.8 + shift).clamp(0, 1)
        live = torch.rand(500, generator=g) > 0.1
        r[~live] = 0.999                                                # dead latents must not count
        models[name] = (r, live)
    tab = r_distribution(models, thresholds=(0.5, 0.9))
    assert list(tab.index) == ["x1", "x2", "x4"]
    assert list(tab.columns) == ["live", "r q05", "r median", "r q95", "r max", "n r>0.5", "n r>0.9", "top r min"]
    for name, (r, live) in models.items():
        rl = r[live].double()
        a = rl.numpy()
        row = tab.loc[name]
        assert row["live"] == int(live.sum())
        assert row["n r>0.5"] == int((a > 0.5).sum()) and row["n r>0.9"] == int((a > 0.9).sum())
        assert row["r median"] == pytest.approx(float(np.median(a)))
        assert row["r q05"] == pytest.approx(float(np.quantile(a, 0.05)))
        assert row["r q95"] == pytest.approx(float(np.quantile(a, 0.95)))
        assert row["r max"] == pytest.approx(float(a.max()))
        n_top = max(1, round(0.003 * len(rl)))
        assert row["top r min"] == pytest.approx(float(rl.sort(descending=True).values[n_top - 1]))
    assert monotone(tab["n r>0.5"].tolist()) == "increasing"


def test_monotone_cases():
    assert monotone([1, 2, 2, 3]) == "increasing"                      # non-strict
    assert monotone([3, 1, 1]) == "decreasing"
    assert monotone([2, 2, 2]) == "flat" and monotone([5]) == "flat" and monotone([]) == "flat"
    assert monotone([1, 3, 2]) == "mixed"
    assert monotone([1, 3, 2.9], tol=0.2) == "increasing"              # a dip within tol
    assert monotone([1, 1.05, 0.98], tol=0.1) == "flat"
    assert monotone([1, float("nan"), 3]) == "mixed"
    with pytest.raises(ValueError):
        monotone([1, 2], tol=-1)
