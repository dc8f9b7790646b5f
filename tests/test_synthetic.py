import pytest
import torch

from resa_utils.synthetic import (SyntheticConfig, make_dataset, recovery_rate, sample_codes,
                                  seed_consistency)


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
    assert recovery_rate(features, -features * 3, (0.5,))[0.5] < 0.5


def test_seed_consistency_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 64, generator=g)
    assert seed_consistency(a, a[torch.randperm(50, generator=g)]) == 1.0
    assert seed_consistency(a, torch.randn(50, 64, generator=g)) == 0.0
    alive = torch.zeros(50, dtype=torch.bool)
    alive[:10] = True
    assert seed_consistency(a, a[:10], alive_a=alive) == 1.0


def test_bad_synthetic_config():
    with pytest.raises(ValueError, match="sparsities"):
        SyntheticConfig(n_features=4, sparsities=(5,))
