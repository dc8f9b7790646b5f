import pytest
import torch

from resa_utils.methods.recovery import pairwise_consistency
from resa_utils.sae import SAE, SAEConfig
from resa_utils.data.synthetic import SyntheticConfig, make_dataset, recovery_rate, sample_codes


def test_codes_have_exact_sparsity_and_equal_feature_frequency():
    cfg = SyntheticConfig(n_features=20, d=8, sparsities=(3, 7), n_samples=20_000)
    h = sample_codes(cfg, torch.Generator().manual_seed(0))
    nnz = (h > 0).sum(1)
    assert set(nnz.unique().tolist()) == {3, 7} and (h >= 0).all()
    assert (nnz == 3).sum() == (nnz == 7).sum() == 10_000
    freq = (h > 0).float().mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 5 / 20), atol=0.02)


def test_data_is_codes_times_unit_features():
    x, features = make_dataset(SyntheticConfig(n_features=16, d=6, sparsities=(1,), n_samples=100,
                                               coef_low=1.0, coef_high=1.0 + 1e-9))
    assert torch.allclose(features.norm(dim=1), torch.ones(16))
    # 1-sparse with unit coefficient: every sample is exactly one feature
    cos = (x / x.norm(dim=1, keepdim=True)) @ features.t()
    assert torch.allclose(cos.max(dim=1).values, torch.ones(100), atol=1e-5)


def test_recovery_rate_closed_forms():
    _, features = make_dataset(SyntheticConfig(n_features=32, d=16, n_samples=10))
    assert recovery_rate(features, features) == {0.8: 1.0, 0.9: 1.0, 0.95: 1.0, 0.99: 1.0}
    half = torch.cat([features[:16], -features[16:]])  # wrong sign is not a match
    assert recovery_rate(features, half, (0.9,))[0.9] == pytest.approx(0.5, abs=0.1)
    assert recovery_rate(features, -features * 3, (0.9,))[0.9] == 0.0  # a flipped sign never matches (scale ignored)


def test_seed_consistency_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = SAE(SAEConfig(d_in=64, d_sae=50)).init_weights(g)
    permuted = SAE(SAEConfig(d_in=64, d_sae=50))
    perm = torch.randperm(50, generator=g)
    permuted.load_state_dict({"W_enc": a.W_enc[:, perm], "b_enc": a.b_enc[perm],
                              "W_dec": a.W_dec[perm], "b_dec": a.b_dec})
    other = SAE(SAEConfig(d_in=64, d_sae=50)).init_weights(g)
    same = pairwise_consistency([a, permuted])
    assert same["consistency@0.9"] == 1.0 and same["median_max_cos"] == pytest.approx(1.0)
    rand = pairwise_consistency([a, other])
    assert rand["consistency@0.9"] == 0.0 and rand["median_max_cos"] < 0.6
    # dead latents on the evaluation data are left out of A's set
    x = torch.randn(200, 64, generator=g)
    with torch.no_grad():
        other.W_dec[:25] = a.W_dec[:25]
        other.b_enc[25:] = -1e4  # latents 25.. never fire
        other.W_enc[:, :25] = a.W_dec[:25].t()
    mixed = pairwise_consistency([other, a], (0.9,), eval_ND=x)
    # other -> a: its 25 alive latents all match (1.0); a -> other: 25 of a's 50 do (0.5)
    assert mixed["consistency@0.9"] == pytest.approx(0.75)


def test_bad_synthetic_config():
    with pytest.raises(ValueError, match="sparsities"):
        SyntheticConfig(n_features=4, sparsities=(5,))


def test_dead_latents_do_not_count_and_firing_corr_tells_a_feature_from_a_direction():
    from resa_utils.data.synthetic import make_dataset_with_codes, matched_firing_corr

    syn = SyntheticConfig(n_features=8, d=6, sparsities=(2,), n_samples=4000, seed=3)
    x, feats, codes = make_dataset_with_codes(syn)
    assert torch.allclose(x, codes @ feats) and torch.allclose(make_dataset(syn)[0], x)
    from resa_utils.data.synthetic import fresh_samples
    x2, codes2 = fresh_samples(syn, feats, 500, seed=99)
    assert torch.allclose(x2, codes2 @ feats) and (codes2 > 0).sum(1).eq(2).all()
    assert not (x2[:, None, :] == x[None, :, :]).all(-1).any()  # new draws, not the training rows
    # decoder rows = the true features; the first four are dead (never fire)
    alive = torch.tensor([False] * 4 + [True] * 4)
    assert recovery_rate(feats, feats, (0.99,))[0.99] == 1.0
    assert recovery_rate(feats, feats, (0.99,), alive_M=alive)[0.99] == 0.5
    assert recovery_rate(feats, feats, (0.99,), alive_M=torch.zeros(8, dtype=torch.bool))[0.99] == 0.0
    # latents that read their own coefficient track it (r = 1); latents firing on noise do not
    good = codes * 2.0
    noise = torch.rand(codes.shape, generator=torch.Generator().manual_seed(0))
    r_good = matched_firing_corr(feats, feats, codes, good)
    r_noise = matched_firing_corr(feats, feats, codes, noise)
    assert torch.allclose(r_good, torch.ones(8), atol=1e-5)
    assert r_noise.abs().max() < 0.1
    # a latent that never fires is skipped: feature 0's best live match is another direction
    silent = good.clone()
    silent[:, 0] = 0
    r = matched_firing_corr(feats, feats, codes, silent)
    assert r[0] < 0.5 and torch.allclose(r[1:], torch.ones(7), atol=1e-5)
    assert torch.equal(matched_firing_corr(feats, feats, codes, torch.zeros_like(codes)), torch.zeros(8))


def test_synthetic_scores_on_a_perfect_and_on_a_silent_sae():
    """Orthonormal features (n <= d) and an encoder that reads them: the SAE's latents are the
    codes, so every score is perfect; the same decoder with latents that never fire scores 0 on
    live recovery and firing, though every decoder row still sits on a feature."""
    from resa_utils.methods.recovery import FIRING_R, synthetic_scores
    from resa_utils.data.synthetic import fresh_samples

    syn = SyntheticConfig(n_features=6, d=8, sparsities=(2,), n_samples=10, seed=1)
    feats = torch.linalg.qr(torch.randn(8, 6, generator=torch.Generator().manual_seed(0)))[0].T  # [6, 8] orthonormal
    x, codes = fresh_samples(syn, feats, 3000, seed=5)
    sae = SAE(SAEConfig(d_in=8, d_sae=6))
    with torch.no_grad():
        sae.W_enc.copy_(feats.T); sae.W_dec.copy_(feats); sae.b_enc.fill_(-1e-5); sae.b_dec.zero_()  # rounding never fires
    s = synthetic_scores(sae, feats, x, codes, (0.9, 0.99))
    assert s["recovery@0.99"] == 1.0 and s["recovery_all@0.99"] == 1.0 and s[f"firing@{FIRING_R}"] == 1.0
    assert s["fvu"] < 1e-8 and s["l0"] == pytest.approx(2.0) and s["dead_frac"] == 0.0
    with torch.no_grad():
        sae.b_enc.fill_(-10.0)  # nothing fires
    s = synthetic_scores(sae, feats, x, codes, (0.9,))
    assert s["recovery@0.9"] == 0.0 and s["recovery_all@0.9"] == 1.0 and s[f"firing@{FIRING_R}"] == 0.0
    assert s["l0"] == 0.0 and s["dead_frac"] == 1.0 and s["fvu"] >= 1.0  # x̂ = b_dec = 0


def test_synthetic_run_scores_at_each_probe_and_at_the_stopping_point():
    from resa_utils.methods.recovery import synthetic_run
    from resa_utils.sae import TrainConfig

    syn = SyntheticConfig(n_features=16, d=12, sparsities=(2,), n_samples=4096, seed=0)
    cfg = TrainConfig(method="topk", d_sae=32, k=2, n_tokens=8192, batch_size=256, lr=3e-3)
    out = synthetic_run(syn, cfg, probe_samples=(1024, 4096), n_eval=2000)
    assert [r["samples"] for r in out["curve"]] == [1024, 4096, 8192]
    assert out["recovery@0.9"] == out["curve"][-1]["recovery@0.9"] and out["seconds"] > 0
    assert out["curve"][-1]["fvu"] < out["curve"][0]["fvu"]  # it learns between probes


def test_best_match_cosines_and_the_random_floor():
    from resa_utils.methods.recovery import best_match_cosines, random_match_cosines

    g = torch.Generator().manual_seed(0)
    a = SAE(SAEConfig(d_in=32, d_sae=40)).init_weights(g)
    assert torch.allclose(best_match_cosines(a, a), torch.ones(40), atol=1e-5)
    alive = torch.arange(40) < 10
    assert best_match_cosines(a, a, alive).shape == (10,)
    floor = random_match_cosines(40, 40, 32)
    other = SAE(SAEConfig(d_in=32, d_sae=40)).init_weights(g)
    assert 0.2 < floor.median() < 0.7  # random directions in 32 dims: far from 1
    assert abs(float(best_match_cosines(a, other).median() - floor.median())) < 0.15


def test_seed_match_cosines_per_ordered_pair_over_firing_latents():
    from resa_utils.methods.recovery import seed_match_cosines

    g = torch.Generator().manual_seed(0)
    a = SAE(SAEConfig(d_in=16, d_sae=20)).init_weights(g)
    b = SAE(SAEConfig(d_in=16, d_sae=20)).init_weights(g)
    with torch.no_grad():
        b.W_dec[:10] = a.W_dec[:10]
        b.W_enc[:, :10] = a.W_dec[:10].t()
        b.b_enc[10:] = -1e4  # b's latents 10.. never fire
    x = torch.randn(500, 16, generator=g)
    a_to_b, b_to_a = seed_match_cosines([a, b], x)
    assert b_to_a.shape == (10,) and torch.allclose(b_to_a, torch.ones(10), atol=1e-5)
    live_a = int((torch.relu(a.pre_acts(x)) > 0).any(0).sum())
    assert a_to_b.shape == (live_a,) and (a_to_b > 1 - 1e-5).sum() >= 1
    # a density floor keeps only latents firing more often than it
    dens = (a.encode(x) > 0).float().mean(0)
    assert seed_match_cosines([a, b], x, min_density=0.5)[0].shape == (int((dens > 0.5).sum()),)


@pytest.mark.parametrize("seed", [0, 1])
def test_an_sae_with_the_toys_own_seed_does_not_start_at_the_true_features(seed):
    """The SAE's random decoder and the toy's features came from one generator stream when their
    seeds matched, so every toy SAE started with its first n rows on the truth."""
    from resa_utils.sae import TrainConfig
    from resa_utils.sae.train import make_trainer

    x, features = make_dataset(SyntheticConfig(n_features=128, d=42, n_samples=2048, seed=seed))
    trainer = make_trainer(TrainConfig(method="topk", d_sae=512, k=20, seed=seed), 42, "cpu")
    trainer.setup(x)
    start = trainer.sae.W_dec.detach()
    assert recovery_rate(features, start, (0.9,))[0.9] == 0.0
    # the random level: no decoder row sits closer than chance to a feature
    best = (torch.nn.functional.normalize(start, dim=1) @ features.T).abs().max(0).values
    assert best.max() < 0.8, best.max()
