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


# --------------------------------------------------------------------------- a harvested pair, its maps, its vectors


def test_studied_layers_and_steering_blocks():
    assert transfer.studied_layers(10, 3) == [0, 3, 6, 9] and transfer.studied_layers(8, 3, [4]) == [0, 3, 4, 6, 7]
    assert transfer.steering_blocks(24, 28) == (12, 14)  # middle source block -> same relative depth (12/23 * 27)
    assert transfer.steering_blocks(24, 28, 5, 9) == (5, 9) and transfer.steering_blocks(24, 28, 23) == (23, 27)


def test_harvest_pair_caches_the_studied_blocks_of_both_models_and_reuses_them(tmp_path):
    from resa_utils.data.corpora import load_texts

    paths = []
    sweep_path = lambda name: paths.append(name) or tmp_path / "sweeps" / f"{name}.jsonl"  # noqa: E731
    kw = dict(corpus="english", seq_len=16, n_windows=4, layer_stride=3, act_root=tmp_path / "acts", sweep_path=sweep_path)
    texts = load_texts("english")[:50]
    pair = transfer.harvest_pair(texts, "tiny-qwen2", "tiny-llama", "tokens", extra_src=[1], **kw)
    assert pair.layers_s == sorted({0, 1, 3, pair.n_s - 1}) and pair.layers_t == sorted({0, 3, pair.n_t - 1})
    from resa_utils.lm.activations import resid_hook

    acts = pair.cache_s.load(resid_hook(1), verify=False)
    assert acts.shape[0] == 4 * 15  # BOS not harvested
    assert pair.cache_t.load(resid_hook(pair.n_t - 1), verify=False).shape[0] == 4 * 15
    rows = pair.speed_rows("main")
    assert [r["model"] for r in rows] == ["tiny-qwen2", "tiny-llama"] and rows[0]["pair"] == "main"
    assert rows[0]["params"] > 0 and rows[0]["tokens/s"] > 0
    assert paths == [f"harvest_source_{pair.key}", f"harvest_target_{pair.key}"]
    from safetensors import safe_open

    from resa_utils.lm.content import POSITION_KEY

    for cache in (pair.cache_s, pair.cache_t):  # every shard records its rows' position verdicts (the key says so)
        for shard in cache.manifest["shards"]:
            with safe_open(str(cache.folder / shard["file"]), "pt") as fh:
                assert POSITION_KEY in fh.keys()
    left = pair.left_out(name="main")  # one row per studied block of each model, named by pair and model
    assert left.cache.tolist() == ["main/tiny-qwen2"] * len(pair.layers_s) + ["main/tiny-llama"] * len(pair.layers_t)
    assert (left.rows == 60).all() and left.hook.tolist() == [h for hs in pair.hooks() for h in hs]
    assert pair.content_mask().shape == pair.pw.source_rows.shape
    again = transfer.harvest_pair(texts, "tiny-qwen2", "tiny-llama", "tokens", extra_src=[1], **kw)
    assert again.key == pair.key and again.speeds == pair.speeds  # stored sweep rows, nothing harvested twice


class _Cache:
    """Stands in for an ActivationCache (one shard): activations keyed by block, each row's
    position verdict (`positions`, default every row passes), and the reading interface that
    `activations.content_rows` uses."""

    def __init__(self, by_layer, positions=None, model="m"):
        from resa_utils.lm.activations import resid_hook

        self.by_hook = {resid_hook(l): a for l, a in by_layer.items()}
        n = next(iter(by_layer.values())).shape[0]
        self.positions = torch.ones(n, dtype=torch.bool) if positions is None else positions
        self.manifest = {"shards": [{"n_tokens": n}], "model": model}
        self.n_tokens = n
        self.hooks = list(self.by_hook)

    def load(self, hook, verify=True):
        return self.by_hook[hook]

    def check_hook(self, hook):
        assert hook in self.by_hook, hook

    def read_shard(self, shard, hook, verify=True):
        return self.by_hook[hook]

    def read_positions(self, shard):
        return self.positions


def _planted_pair(n_win=30, T=20, positions=(None, None)):
    """Source block 2 maps exactly to target block 3 (4 blocks; 3 in the source); block 0s are noise."""
    g = torch.Generator().manual_seed(0)
    rows = torch.arange(n_win * T)
    src = {l: torch.randn(n_win * T, 5, generator=g) for l in (0, 2)}
    A = torch.randn(7, 5, generator=g)
    tgt = {0: torch.randn(n_win * T, 7, generator=g), 3: src[2] @ A.T - 1.0}
    pw = transfer.PairedWindows(torch.zeros(n_win, T + 1), torch.zeros(n_win, T + 1), rows, rows, rows // T, "tokens")
    return transfer.HarvestedPair(pw, [0, 2], [0, 3], 3, 4, "k", _Cache(src, positions[0], "s"),
                                  _Cache(tgt, positions[1], "t"), {}), A


def test_fit_pair_maps_marks_matched_blocks_keeps_maps_and_resumes(tmp_path):
    pair, A = _planted_pair()
    kw = dict(lambdas=[0.0], val_frac=0.2, test_frac=0.2, seed=0, map_dir=tmp_path / "maps",
              sweep_path=lambda name: tmp_path / f"{name}.jsonl")
    out = transfer.fit_pair_maps(pair, "p", keep=[(2, 3)], **kw)
    t = out.table.set_index(["source_layer", "target_layer"])
    assert t.matched.to_dict() == {(0, 0): True, (0, 3): False, (2, 0): False, (2, 3): True}
    assert t.loc[(2, 3), "r2"] > 0.999 and t.loc[(2, 3), "shuffled_r2"] < 0.1 and t.loc[(0, 3), "r2"] < 0.2
    assert torch.allclose(out.maps[(2, 3)].A_TS, A, atol=1e-3) and (tmp_path / "maps_p.jsonl").exists()
    pair.cache_s.by_hook = {}  # a stored row with its maps on disk is not fitted again
    again = transfer.fit_pair_maps(pair, "p", keep=[(2, 3)], **kw)
    assert again.table.r2.tolist() == out.table.r2.tolist()


def test_best_blocks_depth_gap_and_the_block0_baseline_on_a_constructed_table():
    import pandas as pd

    df = pd.DataFrame({"source_layer": [0, 0, 2, 2], "target_layer": [0, 4, 0, 4], "source_depth": [0, 0, 1, 1],
                       "target_depth": [0, 1, 0, 1], "r2": [0.6, 0.3, 0.2, 0.7], "matched": [True, False, False, True]})
    best = transfer.best_target_blocks(df)
    assert best.target_layer.tolist() == [0, 4] and transfer.depth_gap(best) == 0.0
    assert transfer.depth_gap(df.iloc[[1, 2]]) == 1.0
    m = transfer.over_block0(df)
    assert m.source_layer.tolist() == [0, 2] and m["r2 over block 0"].tolist() == pytest.approx([0.0, 0.4])


def test_carried_vectors_and_their_cosines():
    amap = transfer.AffineMap(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]), torch.tensor([0.0, 0.0, 5.0]))
    native = {"x": torch.tensor([1.0, 0.0, 0.0]), "y": torch.tensor([0.0, 3.0, 0.0])}
    source = {"x": torch.tensor([2.0, 0.0]), "y": torch.tensor([0.0, 1.0])}
    v = transfer.carried_vectors(native, source, amap, seed=4)
    assert torch.equal(v["x"]["A v"], torch.tensor([2.0, 0.0, 0.0])) and torch.equal(v["y"]["A v + p"], torch.tensor([0.0, 2.0, 5.0]))
    assert torch.isclose(v["y"]["random"].norm(), torch.tensor(3.0)) and not torch.equal(v["x"]["random"] / 1, v["y"]["random"] / 3)
    cos = transfer.vector_cosines(v, {"x": 1.5, "y": 2.5}).set_index("behaviour")
    assert cos.loc["x", "cos(native, A v)"] == pytest.approx(1.0) and cos.loc["y", "cos(native, A v + p)"] == pytest.approx(2 / 29 ** 0.5)
    assert cos.loc["y", "mean norm"] == 2.5 and list(cos.columns)[:3] == ["cos(native, A v + p)", "cos(native, A v)", "cos(native, random)"]


def test_paper_comparison_rules_on_constructed_results():
    import pandas as pd

    matched = pd.DataFrame({"source_layer": [0, 1, 2], "r2": [0.9, 0.6, 0.5], "shuffled_r2": [0.0, 0.0, 0.45],
                            "r2 over block 0": [0.0, 0.1, 0.2]})
    assert transfer.affine_claim(matched, "c", "a -> b", "p")["held"] == "no"  # block 2 beats shuffled by < 0.1
    row = transfer.affine_claim(matched.assign(shuffled_r2=0.0), "c", "a -> b", "p")  # block 0 is left out of the mean
    assert row["held"] == "yes" and row["ours"] == "0.55 (shuffled 0.00; +0.15 over block 0)"
    assert transfer.matched_r2_mean(matched) == pytest.approx(0.55)  # the one mean the record and the claim share
    assert "token identity 0.40" in transfer.affine_claim(matched.assign(shuffled_r2=0.0, token_r2=0.4), "c", "a", "p")["ours"]
    assert transfer.affine_claim(matched.assign(shuffled_r2=0.0, r2=0.3), "c", "a -> b", "p")["held"] == "partly"
    gaps = [{"gap": g, "low": g - 0.05, "high": g + h, "best is matched": 0.5, "test windows": 9}
            for g, h in ((0.1, 0.02), (0.1, 0.1), (0.2, 0.0), (0.4, 0.0))]
    assert [transfer.depth_claim(g)["held"] for g in gaps] == ["yes", "partly", "partly", "no"]  # the interval counts
    assert transfer.depth_claim(gaps[0])["ours"] == "0.10 [0.05, 0.12]"
    assert "0.80 -> 0.49" in transfer.paper_layers_text(20, 26, 20, 42)


def _claim_inputs(r_mean=0.9, pct=99.0, ratio=0.8):
    import pandas as pd

    summary = pd.DataFrame([{"behaviour": "s", "vector": v, "r mean": r, "r min": r - 0.1, "r max": r + 0.05, "mse mean": m,
                             "mse min": m, "mse max": m, "n alphas": 4}
                            for v, r, m in (("A v + p", r_mean, 2.0), ("A v", 0.5, 1.0), ("random", 0.85, 9.0))])
    null = pd.DataFrame([{"behaviour": "s", "vector": v, "slope": q * 4.0, "slope ratio": q, "percentile": p, "null n": 26,
                          "null p5": -3.0, "null p95": 2.0, "null p5 (random)": -1.0, "null p95 (random)": 0.5}
                         for v, q, p in (("native", 1.0, 100.0), ("A v + p", ratio, pct), ("A v", 0.1, 60.0),
                                         ("AdamW: A v + p", 0.2, 70.0))])
    return summary, null


def test_transfer_claims_need_the_slope_beyond_the_null_not_only_the_papers_r():
    summary, null = _claim_inputs()
    row = transfer.transfer_claim(summary, null, "s", "A v + p", "c", "p")
    assert row["held"] == "yes" and row["ours"].startswith("r 0.90 [0.80, 0.95], MSE 2.00; slope ratio 0.80, percentile 99")
    assert "random direction: r 0.85, MSE 9.00" in row["note"]
    assert transfer.transfer_claim(*_claim_inputs(pct=90.0), "s", "A v + p", "c", "p")["held"] == "no"  # inside the null
    assert transfer.transfer_claim(*_claim_inputs(ratio=0.3), "s", "A v + p", "c", "p")["held"] == "no"  # too weak
    assert transfer.transfer_claim(*_claim_inputs(r_mean=0.5), "s", "A v + p", "c", "p")["held"] == "partly"  # r below 0.73
    rows, gates = transfer.steering_claims(summary, null, ["s"], first=3)
    assert gates == {"s": [3, 4]} and [r["held"] for r in rows] == ["yes", "no"]
    rnd = transfer.random_control_claim(null)
    assert rnd["ours"] == "0.25" and rnd["held"] == "yes"  # the random group's max(|-1|, |0.5|) / native slope 4, not the whole null's


def test_source_preconditions_gate_each_behaviours_own_claims():
    import pandas as pd

    from resa_utils.harness.tracking import comparison_frame, gate_claims, preconditions_frame

    src = pd.DataFrame({"behaviour": ["s", "t"], "vector": "native", "slope": [3.0, 0.2]})
    pre = preconditions_frame(transfer.source_preconditions(src, ["s", "t"], 1.0, {"s": [1], "t": [2, 3]}, "m"))
    assert pre.met.tolist() == ["yes", "no"] and pre.gates.tolist() == ["1", "2 3"]
    claims = comparison_frame([{"claim": c, "metric": "m", "paper": "p", "ours": "o", "held": "yes", "note": ""} for c in "abcd"])
    assert gate_claims(claims, pre).held.tolist() == ["yes", "not tested", "not tested", "yes"]


def test_adamw_claim_reads_the_bias_table():
    import pandas as pd

    _, null = _claim_inputs()
    bias = pd.DataFrame([{"behaviour": "s", "map": m, "c": 1.0, "|p|": p, "cos(A v + c p, A v)": c}
                         for m, p, c in (("AdamW", 0.9, 0.95), ("ridge", 40.0, 0.1))])
    info = {"steps": 2200, "passes": 31.4, "batch rows": 512, "|p| at start": 0.8, "|p|": 0.9, "largest change": 0.004, "r2": -3.0}
    row = transfer.adamw_claim(info, bias, null, ["s"])
    assert row["held"] == "yes" and row["ours"] == "0.95 (ridge 0.10)" and "2200 AdamW steps of 512 rows (31 passes)" in row["note"]
    assert transfer.adamw_claim(info, bias.assign(**{"cos(A v + c p, A v)": 0.3}), null, ["s"])["held"] == "no"


def test_lrt_figures_draw_every_panel_and_series():
    import matplotlib.pyplot as plt
    import pandas as pd

    from resa_utils.harness import plots

    maps_df = pd.DataFrame({"source_layer": [0, 0, 2, 2], "target_layer": [0, 4, 0, 4], "source_depth": [0.0, 0, 1, 1],
                            "target_depth": [0.0, 1, 0, 1], "r2": [0.6, 0.3, 0.2, 0.7], "cosine": [0.9, 0.8, 0.7, 0.95],
                            "n_test": 100, "matched": [True, False, False, True]})
    fig = plots.lrt_maps(maps_df, "a -> b")
    assert len(fig.axes) == 5 and len(fig.axes[2].get_lines()) == 2  # 2 heatmaps (+ 2 colour bars), depth panel
    assert "n = 100 test positions" in fig._suptitle.get_text()
    plt.close(fig)
    dose = pd.DataFrame([{"behaviour": b, "vector": v, "alpha": a, "mean": a, "ci": 0.1, "diffs": [a, a, a]}
                         for b in ("s", "t") for v in ("native", "A v", "random") for a in (-1.0, 0.0, 1.0)])
    fig = plots.lrt_dose_response(dose, {"s": (" Yes", " No"), "t": (" A", " B")}, ["native", "A v", "random"], "m", 3)
    assert len(fig.axes) == 2 and len(fig.axes[0].containers) == 3  # one error-bar series per vector
    assert "3 held-out prompts per behaviour" in fig._suptitle.get_text() and fig.axes[1].get_legend() is not None
    plt.close(fig)


def _spoiled_pair():
    """The planted pair with rows that break the map: window starts (every T-th row) whose target
    is noise, flagged by the source's position verdicts only; 2 rows flagged by the target's
    position verdicts only (`t_out`); and 3 massive target rows at block 3 (~100x the typical
    norm) that only the norm rule can catch. `(pair, A, starts, t_out, massive)`."""
    n_win, T = 30, 20
    rows = torch.arange(n_win * T)
    starts, massive, t_out = rows % T == 0, torch.zeros(n_win * T, dtype=torch.bool), torch.zeros(n_win * T, dtype=torch.bool)
    massive[[45, 211, 377]] = True
    t_out[[7, 100]] = True
    pair, A = _planted_pair(n_win, T, positions=(~starts, ~t_out))
    g = torch.Generator().manual_seed(1)
    y = pair.cache_t.by_hook["blocks.3.hook_resid_post"].clone()
    y[starts] = 5 * torch.randn(int(starts.sum()), y.shape[1], generator=g)
    y[massive] = 300 * torch.randn(3, y.shape[1], generator=g)
    pair.cache_t.by_hook["blocks.3.hook_resid_post"] = y
    return pair, A, starts, t_out, massive


def test_content_mask_keeps_the_rows_both_models_keep_at_every_block():
    from resa_utils.lm.content import ContentRule

    pair, _, starts, t_out, massive = _spoiled_pair()
    mask = pair.content_mask(ContentRule())
    assert mask.tolist() == (~starts & ~t_out & ~massive).tolist()  # positions from both sides, norms from the target's block 3
    assert pair.content_mask(ContentRule(enabled=False)).all()
    assert pair.content_mask(ContentRule(max_norm_ratio=1000.0)).tolist() == (~starts & ~t_out).tolist()  # ~100x passes 1000x
    # word-end pairing: source row i pairs with target row i - 1; a pair is out when either side's row is out
    pw = pair.pw
    pair.pw = transfer.PairedWindows(pw.source_ids, pw.target_ids, pw.source_rows[1:], pw.target_rows[:-1], pw.window[1:], "word_end")
    assert pair.content_mask().tolist() == (~starts[1:] & ~t_out[:-1] & ~massive[:-1]).tolist()
    left = pair.left_out(ContentRule(), "main")
    assert left.cache.tolist() == ["main/s", "main/s", "main/t", "main/t"] and left.hook.tolist()[2:] == list(pair.cache_t.by_hook)
    assert left.by_position.tolist() == [30, 30, 2, 2] and left.by_norm.tolist() == [0, 0, 0, 3]
    assert left.variance_share.iloc[3] > 0.9  # the 3 massive rows carry most of block 3's centred variance


def test_fit_layer_maps_reads_only_the_masked_rows_in_every_split():
    pair, A, starts, t_out, massive = _spoiled_pair()
    load_s, load_t = pair.cache_s.load, pair.cache_t.load
    args = (lambda l: load_s(f"blocks.{l}.hook_resid_post"), lambda l: load_t(f"blocks.{l}.hook_resid_post"), pair.pw,
            [2], [3], 3, 4, [0.0], transfer.window_splits(30, 0.2, 0.2, 0))
    use = ~starts & ~t_out & ~massive
    (clean,), maps = transfer.fit_layer_maps(*args, keep={(2, 3)}, shuffled={(2, 3)}, progress=False, rows_P=use)
    (raw,), _ = transfer.fit_layer_maps(*args, shuffled={(2, 3)}, progress=False)
    assert clean["r2"] > 0.999 and clean["cosine"] > 0.999 and raw["r2"] < 0.5  # the spoiled rows were in every split
    assert torch.allclose(maps[(2, 3)].A_TS, A, atol=1e-3) and clean["shuffled_r2"] < 0.1
    split = transfer.window_splits(30, 0.2, 0.2, 0)[pair.pw.window]
    assert clean["n_train"] == int((use & (split == 0)).sum()) and clean["n_test"] == int((use & (split == 2)).sum())
    assert raw["n_test"] == int((split == 2).sum())
    with pytest.raises(ValueError, match="row mask has 3 entries"):
        transfer.fit_layer_maps(*args, progress=False, rows_P=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="0 test pairs are left"):
        transfer.fit_layer_maps(*args, progress=False, rows_P=use & (split != 2))


def test_fit_pair_maps_puts_the_rule_in_its_sweep_config_and_map_files(tmp_path):
    import json

    from resa_utils.lm.content import ContentRule

    pair, A, starts, t_out, massive = _spoiled_pair()
    kw = dict(lambdas=[0.0], val_frac=0.2, test_frac=0.2, seed=0, map_dir=tmp_path / "maps",
              sweep_path=lambda name: tmp_path / f"{name}.jsonl", keep=[(2, 3)])
    on = transfer.fit_pair_maps(pair, "p", **kw)  # the default rule
    assert on.table.set_index(["source_layer", "target_layer"]).loc[(2, 3), "r2"] > 0.999
    assert (on.pairs, on.content_pairs) == (600, int((~starts & ~t_out & ~massive).sum()))
    row = json.loads((tmp_path / "maps_p.jsonl").read_text().splitlines()[0])
    assert row["content_rule"] == {"enabled": True, "max_norm_ratio": 10.0}
    off = transfer.fit_pair_maps(pair, "p", **kw, rule=ContentRule(enabled=False))  # fitted again, not reused
    assert off.table.set_index(["source_layer", "target_layer"]).loc[(2, 3), "r2"] < 0.5 and off.content_pairs == 600
    rows = [json.loads(x) for x in (tmp_path / "maps_p.jsonl").read_text().splitlines()]
    assert rows[-1]["content_rule"] == {"enabled": False, "max_norm_ratio": 10.0} and rows[-1]["fit"] != row["fit"]
    assert len(list((tmp_path / "maps").iterdir())) == 2  # one map file per rule
    pair.cache_s.by_hook = {}  # each rule's stored row is reused by that rule only
    assert transfer.fit_pair_maps(pair, "p", **kw, rule=ContentRule(enabled=False)).table.r2.tolist() == off.table.r2.tolist()
    with pytest.raises(AssertionError):  # another ratio is another config: refitted (and here the caches are gone)
        transfer.fit_pair_maps(pair, "p", **kw, rule=ContentRule(max_norm_ratio=5.0))


# --------------------------------------------------------------------------- issue 36: fit statistics, the bias, the null


def test_fit_layer_maps_window_sums_per_dimension_r2_and_token_identity():
    pair, A = _planted_pair()
    load_s, load_t = pair.cache_s.load, pair.cache_t.load
    split = transfer.window_splits(30, 0.2, 0.2, 0)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 5, (600,), generator=g)
    pair.cache_t.by_hook["blocks.0.hook_resid_post"] = 3 * torch.randn(5, 7, generator=g)[tokens]  # block 0: the token alone
    rows, _ = transfer.fit_layer_maps(lambda l: load_s(f"blocks.{l}.hook_resid_post"), lambda l: load_t(f"blocks.{l}.hook_resid_post"),
                                      pair.pw, [0, 2], [0, 3], 3, 4, [0.0], split, progress=False, tokens_P=tokens)
    by = {(r["source_layer"], r["target_layer"]): r for r in rows}
    for r in rows:  # the per-window sums give back the pooled R²
        assert len(r["sse_w"]) == len(r["sst_w"]) == int((split == 2).sum())
        assert transfer.window_r2(r["sse_w"], r["sst_w"]) == pytest.approx(r["r2"], abs=1e-5)
    assert by[(2, 3)]["r2_dim"] > 0.999 and by[(0, 3)]["r2_dim"] < 0.2
    assert by[(2, 0)]["token_r2"] > 0.999 and by[(2, 3)]["token_r2"] < 0.2  # block 0 is token identity, block 3 is not


def test_token_identity_predicts_each_tokens_mean_and_the_mean_for_unseen_tokens():
    y_tr = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    tok_tr = torch.tensor([7, 7, 2])
    y_te = torch.tensor([[2.0, 0.0], [0.0, 4.0], [4 / 3, 4 / 3]])
    assert transfer.token_identity_r2(tok_tr, y_tr, torch.tensor([7, 2, 9]), y_te) == pytest.approx(1.0)  # 9 unseen: the mean
    assert transfer.token_identity_r2(tok_tr, y_tr, torch.tensor([2, 7, 9]), y_te) < 0


def test_depth_gap_interval_resamples_test_windows(tmp_path):
    pair, _ = _planted_pair()
    out = transfer.fit_pair_maps(pair, "p", lambdas=[0.0], val_frac=0.2, test_frac=0.2, seed=0, map_dir=tmp_path,
                                 sweep_path=lambda name: tmp_path / f"{name}.jsonl")
    assert {"sse_w", "sst_w"}.isdisjoint(out.table.columns) and "r2_dim" in out.table and "token_r2" in out.table
    ci = out.depth_gap_interval(200, seed=0)
    assert ci["low"] <= ci["gap"] <= ci["high"] and ci["test windows"] == 6
    assert ci["gap"] == pytest.approx(transfer.depth_gap(transfer.best_target_blocks(out.table)))
    # block 2 -> 3 is exact in every resample; block 0's best target is noise, so it moves
    assert 0.5 <= ci["best is matched"] <= 1.0 and ci == out.depth_gap_interval(200, seed=0)


def test_paired_windows_know_each_rows_target_token():
    ids = torch.tensor([[99, 5, 6, 7], [99, 8, 9, 10]])
    pw = transfer.PairedWindows(ids, ids, torch.tensor([0, 2, 4]), torch.tensor([0, 2, 4]), torch.tensor([0, 0, 1]), "tokens", 1)
    assert pw.target_tokens().tolist() == [5, 7, 9]


def test_adamw_moves_each_entry_by_about_lr_per_step_and_converges_with_a_large_one():
    x, y, A, p = _planted(n=512, s=6, t=4)
    m, info = transfer.fit_adamw(x, y, lr=1e-4, batch_rows=64, steps=16, seed=0)
    assert info["steps"] == 16 and info["passes"] == 2 and info["largest change"] <= 3.2 * 16 * 1e-4  # Adam's step is bounded by about lr
    assert info["|p|"] == pytest.approx(info["|p| at start"], abs=0.01)  # the bias stays near its initial value
    m2, _ = transfer.fit_adamw(x, y, lr=0.05, batch_rows=128, steps=400, seed=0, weight_decay=0.0)
    assert transfer.r2_score(m2(x), y) > 0.99 and transfer.r2_score(m(x), y) < 0.5
    again, _ = transfer.fit_adamw(x, y, lr=1e-4, batch_rows=64, steps=16, seed=0)
    assert torch.equal(again.A_TS, m.A_TS)  # seeded, and the global generator is left alone


def test_adamw_pair_map_uses_the_training_rows_and_resumes(tmp_path):
    pair, A = _planted_pair()
    kw = dict(lr=0.05, batch_rows=80, steps=500, val_frac=0.2, test_frac=0.2, seed=0, map_dir=tmp_path,
              sweep_path=lambda name: tmp_path / f"{name}.jsonl")
    m, info = transfer.adamw_pair_map(pair, 2, 3, **kw)
    assert info["r2"] > 0.99 and info["batch rows"] == 80 and info["steps"] == 500
    assert info["passes"] == pytest.approx(500 * 80 / 360, rel=0.1)  # about 18 training windows of 20 rows
    pair.cache_s.by_hook = {}  # the stored row and map are reused
    m2, info2 = transfer.adamw_pair_map(pair, 2, 3, **kw)
    assert torch.equal(m2.A_TS, m.A_TS) and info2 == info


def test_bias_sweep_vectors_and_table():
    amap = transfer.AffineMap(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]), torch.tensor([0.0, 0.0, 5.0]))
    adamw = transfer.AffineMap(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), torch.tensor([0.0, 0.0, 0.1]))
    native = {"x": torch.tensor([1.0, 0.0, 0.0])}
    source = {"x": torch.tensor([2.0, 0.0])}
    v = transfer.carried_vectors(native, source, amap, 0, bias_scales=[0.0, 0.1, 1.0], adamw=adamw)["x"]
    assert list(v) == ["native", "A v + p", "A v", "random", "A v + 0.1 p", "AdamW: A v + p", "AdamW: A v"]
    assert torch.allclose(v["A v + 0.1 p"], torch.tensor([2.0, 0.0, 0.5])) and torch.allclose(v["AdamW: A v + p"], torch.tensor([2.0, 0, 0.1]))
    t = transfer.bias_table(source, {"ridge": amap, "AdamW": adamw}, [0.0, 1.0], native).set_index(["map", "c"])
    assert t.loc[("ridge", 1.0), "|p|"] == 5.0 and t.loc[("ridge", 1.0), "|A v|"] == 2.0
    assert t.loc[("ridge", 1.0), "cos(A v + c p, p)"] == pytest.approx(5 / 29 ** 0.5)
    assert t.loc[("AdamW", 1.0), "cos(A v + c p, A v)"] > 0.99 and t.loc[("ridge", 0.0), "cos(A v + c p, native)"] == pytest.approx(1.0)


def test_null_vectors_random_shuffled_and_cross_behaviour():
    from resa_utils.methods.steering import CAAVector

    amap = transfer.AffineMap(torch.eye(3)[:, :2] * 2, torch.zeros(3))
    g = torch.Generator().manual_seed(0)
    caa = {n: CAAVector(torch.tensor(v), 1.0, torch.randn(6, 2, generator=g), torch.randn(5, 2, generator=g))
           for n, v in (("x", [1.0, 0.0]), ("y", [0.0, 1.0]), ("z", [1.0, 1.0]))}
    native = {n: torch.ones(3) for n in caa}
    nulls = transfer.null_vectors(caa, amap, native, n_random=4, n_shuffled=2, seed=0)
    assert sorted(nulls["x"]) == sorted([f"null random {k}" for k in range(4)] + ["null shuffled 0", "null shuffled 1",
                                                                                   "null cross y", "null cross z"])
    assert torch.equal(nulls["x"]["null cross y"], torch.tensor([0.0, 2.0, 0.0]))
    rnd = torch.stack([nulls[n][f"null random {k}"] for n in nulls for k in range(4)])
    assert len({tuple(r.tolist()) for r in rnd}) == 12  # every behaviour gets its own random directions
    assert nulls["x"]["null shuffled 0"][2] == 0  # passed through A


def test_lrt_null_figure_draws_a_row_per_null_group_and_a_line_per_vector():
    import matplotlib.pyplot as plt
    import pandas as pd

    from resa_utils.harness import plots

    slopes = pd.DataFrame([{"behaviour": b, "vector": v, "slope": s} for b in ("s", "t")
                           for v, s in (("native", 4.0), ("A v", 2.0), ("null random 0", 0.5), ("null random 1", -0.5),
                                        ("null cross u", 1.0))])
    fig = plots.lrt_null(slopes, ["native", "A v", "A v + p"], "m", 0.5)
    ax = fig.axes[0]
    assert len(fig.axes) == 2 and [t.get_text() for t in ax.get_yticklabels()] == ["null: cross", "null: random"]
    xs = sorted(float(l.get_xdata()[0]) for l in ax.get_lines() if l.get_label() in ("native", "A v"))
    assert xs == [0.5, 1.0]  # in units of the native slope; 'A v + p' is absent and not drawn
    assert "3 null vectors per behaviour" in fig._suptitle.get_text()
    plt.close(fig)
