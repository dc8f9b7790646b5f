"""Affine maps: a planted map is recovered, streamed statistics equal one fit, λ is chosen on
validation, shuffled pairs score near zero; positions pair across tokenizers at word ends."""

import pytest
import torch

from resa_utils import transfer


def _planted(n=2000, s=12, t=20, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    A, p = torch.randn(t, s, generator=g), torch.randn(t, generator=g)
    x = torch.randn(n, s, generator=g) * 3 + 1
    y = x @ A.T + p + noise * torch.randn(n, t, generator=g)
    return x, y, A, p


def test_a_planted_affine_map_is_recovered():
    x, y, A, p = _planted()
    m = transfer.fit_affine(x, y)
    assert torch.allclose(m.A_TS, A, atol=1e-4) and torch.allclose(m.p_T, p, atol=1e-3)
    xv, yv, _, _ = _planted(n=500, seed=0)
    assert transfer.r2_score(m(xv), yv) > 0.999 and transfer.mean_cosine(m(xv), yv) > 0.999


def test_streamed_statistics_equal_one_fit_and_lambda_is_chosen_on_validation(tmp_path):
    x, y, _, _ = _planted(noise=2.0)
    stats = transfer.RidgeStats(12, 20)
    for a in range(0, len(x), 300):
        stats.add(x[a:a + 300], y[a:a + 300])
    one = transfer.fit_affine(x, y, lam=0.5)
    assert torch.allclose(stats.solve(0.5).A_TS, one.A_TS, atol=1e-5)
    xv, yv, _, _ = _planted(n=400, noise=2.0, seed=0)
    best, rows = transfer.choose_lambda(stats, xv, yv, [0.0, 1.0, 1e6])
    assert best.lam in (0.0, 1.0) and rows[-1]["r2"] < rows[0]["r2"]  # a huge λ predicts the mean
    path = best.save(tmp_path / "map.safetensors")
    again = transfer.AffineMap.load(path)
    assert torch.equal(again.A_TS, best.A_TS) and again.lam == best.lam


def test_shuffled_pairs_explain_nothing_held_out():
    x, y, _, _ = _planted(n=3000)
    m = transfer.shuffled_stats(x, y).solve(0.0)
    xv, yv, _, _ = _planted(n=500, seed=0)
    assert transfer.r2_score(m(xv), yv) < 0.05


def test_word_end_pairing_across_two_tokenizers():
    from transformers import AutoTokenizer

    from resa_utils.models import cache_dir

    folders = [cache_dir() / "models" / n for n in ("smollm2-135m-instruct", "gemma-3-270m")]
    if not all((f / "tokenizer.json").exists() for f in folders):
        pytest.skip("real tokenizers not converted yet (make models)")
    a, b = (AutoTokenizer.from_pretrained(str(f)) for f in folders)
    text = "Unbelievably, the tokenizers disagree about hyphenated-words."
    pairs = transfer.word_end_pairs(text, a, b)
    ea = a(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    eb = b(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    words = ["Unbelievably", "the", "tokenizers", "disagree", "about", "hyphenated", "words"]
    ends = [text.index(w) + len(w) for w in words]
    assert [ea[i][1] for i, _ in pairs] == [eb[j][1] for _, j in pairs]
    assert set(ea[i][1] for i, _ in pairs) <= set(ends) and len(pairs) >= 5
    assert not transfer.same_tokenizer(a, b) and transfer.same_tokenizer(a, a)
