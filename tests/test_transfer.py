"""Affine maps: a planted map is recovered, streamed statistics equal one fit, λ is chosen on
validation, shuffled pairs score near zero; positions pair across tokenizers at word ends."""

import pytest
import torch

from resa_utils.methods import transfer


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

    from resa_utils.core.paths import cache_dir

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


def test_float32_statistics_with_a_shift_match_float64_and_share_the_source_side():
    x, y, _, _ = _planted(noise=0.5)
    x = x * 50 + 1000  # hidden states with a large mean: the shift keeps float32 exact enough
    ref = transfer.RidgeStats(12, 20).add(x, y).solve(1e-3, relative=True)
    fast = transfer.RidgeStats(12, 20, torch.float32).add(x, y, chunk=700).solve(1e-3, relative=True)
    assert torch.allclose(fast.A_TS, ref.A_TS, atol=1e-4) and torch.allclose(fast.p_T, ref.p_T, rtol=1e-4, atol=1e-2)
    base = transfer.RidgeStats(12, 1, torch.float32).add(x, torch.zeros(len(x), 1))
    shared = base.with_targets(y, x).solve(1e-3, relative=True)
    assert torch.allclose(shared.A_TS, ref.A_TS, atol=1e-4)
    with pytest.raises(ValueError, match="same"):
        base.with_targets(y[:10], x[:10])


def test_fit_layer_maps_finds_the_planted_layer_pair_and_the_shuffled_baseline_fails():
    g = torch.Generator().manual_seed(0)
    n_win, T = 40, 25
    src = {l: torch.randn(n_win * T, 6, generator=g) for l in (0, 1)}
    A = torch.randn(8, 6, generator=g)
    tgt = {0: torch.randn(n_win * T, 8, generator=g), 2: src[1] @ A.T + 3.0}  # target block 2 = A · source block 1 + p
    rows = torch.arange(n_win * T)
    pw = transfer.PairedWindows(torch.zeros(n_win, T), torch.zeros(n_win, T), rows, rows, rows // T, "tokens")
    split = transfer.window_splits(n_win, 0.2, 0.2, seed=0)
    assert set(split.tolist()) == {0, 1, 2}
    out, maps = transfer.fit_layer_maps(src.__getitem__, tgt.__getitem__, pw, [0, 1], [0, 2], 2, 3, [0.0, 0.01],
                                        split, keep={(1, 2)}, shuffled={(1, 2)}, progress=False)
    by = {(r["source_layer"], r["target_layer"]): r for r in out}
    assert by[(1, 2)]["r2"] > 0.999 and by[(1, 2)]["shuffled_r2"] < 0.1
    assert by[(0, 2)]["r2"] < 0.2 and by[(1, 0)]["r2"] < 0.2
    assert by[(1, 2)]["target_depth"] == 1.0 and by[(1, 2)]["source_depth"] == 1.0
    assert torch.allclose(maps[(1, 2)].A_TS, A, atol=1e-3)
    assert transfer.matched_layer(1, 2, [0, 2], 3) == 2 and transfer.matched_layer(0, 24, [0, 3, 27], 28) == 0


def test_paired_windows_one_tokenizer_pairs_every_position_and_refuses_two(tiny_lm):
    tok = tiny_lm.tokenizer
    texts = ["The quick brown fox jumps over the lazy dog. " * 20] * 3
    pw = transfer.paired_windows(texts, tok, tok, 16, 5, "tokens")
    assert pw.source_ids.shape == (5, 16) and torch.equal(pw.source_ids, pw.target_ids)
    assert torch.equal(pw.source_rows, torch.arange(5 * 15)) and pw.window.max() == 4  # BOS not harvested
    short = transfer.paired_windows(["A cat.", "A dog sat.", "Birds fly high."] * 10, tok, tok, 16, 3, "tokens")
    body = short.source_ids[:, 1:].reshape(-1)
    assert (body == tok.eos_token_id).any() and not (body[short.source_rows] == tok.eos_token_id).any()
    assert len(short.source_rows) == int((body != tok.eos_token_id).sum())  # separators are not text
    words = transfer.paired_windows(texts, tok, tok, 16, 5, "word_end")
    assert len(words.source_rows) > 0 and torch.equal(words.source_rows, words.target_rows)  # same tokenizer
    with pytest.raises(ValueError, match="word_end"):
        transfer.paired_windows(texts, tok, _OtherTok(tok), 16, 5, "tokens")


class _OtherTok:
    """A tokenizer that differs from `tok` only in its vocabulary."""

    def __init__(self, tok):
        self.tok = tok

    def get_vocab(self):
        return {**self.tok.get_vocab(), "<extra>": 10**6}

    def __call__(self, *a, **k):
        return self.tok(*a, **k)


def test_word_end_rows_point_at_tokens_ending_at_the_same_character():
    from transformers import AutoTokenizer

    from resa_utils.core.paths import cache_dir

    folders = [cache_dir() / "models" / n for n in ("smollm2-135m-instruct", "gemma-3-270m")]
    if not all((f / "tokenizer.json").exists() for f in folders):
        pytest.skip("real tokenizers not converted yet (make models)")
    a, b = (AutoTokenizer.from_pretrained(str(f)) for f in folders)
    texts = ["Hyphenated-words, numbers like 12,345 and naïve cafés test the pairing. " * 6] * 4
    pw = transfer.paired_windows(texts, a, b, 24, 6, "word_end")
    Ta, Tb = pw.source_ids.shape[1] - 1, pw.target_ids.shape[1] - 1  # both have BOS: rows skip it
    for ra, rb in zip(pw.source_rows.tolist(), pw.target_rows.tolist()):
        wa, ia = divmod(ra, Ta)
        wb, ib = divmod(rb, Tb)
        assert wa == wb
        prefix_a = a.decode(pw.source_ids[wa, 1:ia + 2])
        prefix_b = b.decode(pw.target_ids[wb, 1:ib + 2])
        assert prefix_a == prefix_b  # the same text up to and including the paired tokens
    assert len(pw.source_rows) > 6 * 10
