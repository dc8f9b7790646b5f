"""Crosscoder: planted shared and model-specific directions are found with the right relative
norms; folding the per-model normalisation leaves the reconstruction unchanged; paired caches
pair the same tokens and refuse caches of different tokens."""

import pytest
import torch

from resa_utils.lm.activations import ActivationCache, PairedCache, resid_hook
from resa_utils.methods.crosscoder import decoder_norms, relative_norms, split_latents
from resa_utils.sae import TrainConfig, train_sae
from resa_utils.sae.train import make_trainer


def planted(n_each: int = 8, d: int = 16, n: int = 40_000, seed: int = 0, scale_b: float = 3.0):
    """Paired activations `[n, 2d]`: `n_each` shared features (each with its own direction in
    each model, firing in both), `n_each` A-only and `n_each` B-only; model B is `scale_b`
    times larger, which the per-model normalisation must undo."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda m: torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)  # noqa: E731
    dirs_a = torch.cat([unit(n_each), unit(n_each), torch.zeros(n_each, d)])
    dirs_b = torch.cat([unit(n_each), torch.zeros(n_each, d), unit(n_each)])
    F = 3 * n_each
    codes = torch.zeros(n, F)
    support = torch.rand(n, F, generator=g).argsort(1)[:, :2]
    codes.scatter_(1, support, torch.rand(n, 2, generator=g) + 0.5)
    return torch.cat([codes @ dirs_a, scale_b * codes @ dirs_b], 1), dirs_a, dirs_b


def test_crosscoder_finds_shared_and_model_specific_directions():
    x, dirs_a, dirs_b = planted()
    cfg = TrainConfig(method="crosscoder", d_sae=64, l1_coefficient=0.5, lr=3e-3, n_tokens=400_000,
                      batch_size=256, seed=0)
    sae = train_sae(x, cfg, progress=False).sae
    r = relative_norms(sae)
    truth = torch.nn.functional.normalize(torch.cat([dirs_a, 3.0 * dirs_b], 1), dim=1)  # in raw scale
    W = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    best_cos, best = (truth @ W.t()).max(1)
    # every planted feature has a latent pointing its way; which blocks it uses decides r
    assert (best_cos > 0.9).float().mean() >= 0.9, best_cos
    rs = r[best]
    assert ((rs[:8] - 0.5).abs() < 0.2).float().mean() >= 0.75, rs[:8]   # shared: r ≈ 0.5
    assert (rs[8:16] < 0.1).float().mean() >= 0.75, rs[8:16]              # A-only: r ≈ 0
    assert (rs[16:] > 0.9).float().mean() >= 0.75, rs[16:]                # B-only: r ≈ 1
    groups = split_latents(r)
    assert sum(len(v) for v in groups.values()) == 64


def test_folding_the_normalisation_keeps_the_reconstruction():
    x, *_ = planted(n=4096)
    for act in ("relu", "topk"):
        cfg = TrainConfig(method="crosscoder", d_sae=32, k=4, crosscoder_activation=act, n_tokens=2048,
                          batch_size=256, lr=1e-3)
        tr = make_trainer(cfg, x.shape[1])
        tr.setup(x[:2048])
        for i in range(8):
            tr.train_step(x[i * 256:(i + 1) * 256])
        s = tr.input_scale
        assert s.shape == (32,) and torch.allclose(s[:16], s[0]) and torch.allclose(s[16:], s[16])
        # each model's scaled activations have mean norm sqrt(d)
        assert (x[:2048, 16:] * s[16:]).norm(dim=1).mean() == pytest.approx(4.0, rel=1e-4)
        with torch.no_grad():
            inner = tr.sae(x[:512] * s) / s
            out = tr.export()
            assert torch.allclose(out(x[:512]), inner, atol=1e-4, rtol=1e-4)
            assert out.cfg.metadata["n_models"] == 2 and out.cfg.metadata["d_model"] == 16
            # relative norms are read in the training scale: the export's raw norms differ by s
            assert torch.allclose(relative_norms(out), tr.decoder_norms()[:, 1] / tr.decoder_norms().sum(1), atol=1e-5)
            assert decoder_norms(out).shape == (32, 2)


def test_decoder_starts_at_the_stated_norm_and_l1_ramps_up():
    x, *_ = planted(n=2048)
    tr = make_trainer(TrainConfig(method="crosscoder", d_sae=16, n_tokens=2048 * 10, batch_size=256), 32)
    tr.setup(x)
    assert torch.allclose(tr.decoder_norms(), torch.full((16, 2), 0.08), atol=1e-6)
    assert torch.equal(tr.sae.W_enc, tr.sae.W_dec.t())
    assert tr.l1_weight() == 0.0
    tr.step = 4  # 5 % of 80 steps is 4
    assert tr.l1_weight() == pytest.approx(tr.cfg.l1_coefficient)
    with pytest.raises(ValueError, match="not a multiple of n_models=2"):
        make_trainer(TrainConfig(method="crosscoder", d_sae=16), 33)


def test_paired_cache_pairs_the_same_tokens(tmp_path, tiny_lm, tiny_windows):
    h1, h2 = resid_hook(1), resid_hook(2)
    a = ActivationCache.build(tmp_path / "a", tiny_lm, tiny_windows, [h1], windows_per_shard=4, progress=False)
    b = ActivationCache.build(tmp_path / "b", tiny_lm, tiny_windows, [h2], windows_per_shard=4, progress=False)
    paired = PairedCache(a, h1, b, h2)
    both = paired.load()
    assert torch.equal(both, torch.cat([a.load(h1), b.load(h2)], 1))
    rows = {tuple(r.tolist()) for r in both}
    batches = list(paired.batches(PairedCache.HOOK, 8, seed=0))
    assert batches and all(tuple(r.tolist()) in rows for batch in batches for r in batch)
    short = ActivationCache.build(tmp_path / "c", tiny_lm, tiny_windows[:-1], [h2], windows_per_shard=4, progress=False)
    with pytest.raises(ValueError, match="paired caches hold different tokens"):
        PairedCache(a, h1, short, h2)


def test_kept_rows_leave_out_exactly_the_masked_rows(tmp_path, tiny_lm, tiny_windows):
    from resa_utils.lm.activations import KeptRows, content_positions

    h1, h2 = resid_hook(1), resid_hook(2)
    ids = tiny_windows.clone()
    special = tiny_lm.tokenizer.all_special_ids[0]
    ids[0, 5] = ids[3, 7] = ids[6, 2] = special                  # an EOS between packed documents, say
    a = ActivationCache.build(tmp_path / "a", tiny_lm, ids, [h1], windows_per_shard=3, progress=False)
    b = ActivationCache.build(tmp_path / "b", tiny_lm, ids, [h2], windows_per_shard=3, progress=False)
    paired = PairedCache(a, h1, b, h2)
    content = content_positions(ids, tiny_lm.tokenizer)
    is_special = torch.isin(ids[:, 1:], torch.tensor(tiny_lm.tokenizer.all_special_ids))
    assert not content[:, 0].any() and torch.equal(~content[:, 1:], is_special) and not content[3, 7]
    keep = content[:, 1:].reshape(-1)
    kept = KeptRows(paired, keep)
    assert kept.n_tokens == paired.n_tokens - int(is_special.sum()) and is_special.sum() >= 3
    assert torch.equal(kept.load(PairedCache.HOOK), paired.load()[keep])
    rows = {tuple(r.tolist()) for r in kept.load(PairedCache.HOOK)}
    seen = [tuple(r.tolist()) for batch in kept.batches(PairedCache.HOOK, 4, seed=1) for r in batch]
    assert seen and all(r in rows for r in seen) and len(seen) == kept.n_tokens // 4 * 4
    with pytest.raises(ValueError, match="row mask has"):
        KeptRows(paired, keep[:-1])


def test_typical_rows_drop_rows_far_above_the_median_norm_in_either_block():
    from resa_utils.lm.activations import typical_rows

    class Mem:  # one-shard stand-in for a cache
        def __init__(self, x):
            self.x, self.manifest = x, {"shards": [{"n_tokens": len(x)}]}

        def read_shard(self, shard, hook):
            return self.x

    x = torch.randn(100, 2, 4, generator=torch.Generator().manual_seed(0))
    x = (x / x.norm(dim=-1, keepdim=True)).reshape(100, 8)         # every block at norm 1
    x[3, :4] *= 50                                                   # a sink in the first model only
    x[7, 4:] *= 50                                                   # and one in the second
    x[9] *= 5                                                        # big but under the ratio
    keep = typical_rows(Mem(x), "h", max_ratio=10, n_blocks=2)
    assert keep.sum() == 98 and not keep[3] and not keep[7] and keep[9]


def test_ablation_splice_is_exact_when_empty_and_moves_logits_otherwise(tiny_lm, tiny_windows):
    from resa_utils.methods.crosscoder import ablated_logits
    from resa_utils.sae import SAE, SAEConfig

    D = tiny_lm.d_model
    cc = SAE(SAEConfig(d_in=2 * D, d_sae=16, metadata={"n_models": 2, "d_model": D}))
    cc.init_weights(torch.Generator().manual_seed(0))
    ids = tiny_windows[:2]
    hook = resid_hook(1)
    with torch.no_grad():
        clean = tiny_lm.model(input_ids=ids, use_cache=False).logits
    assert torch.equal(ablated_logits(tiny_lm, tiny_lm, cc, hook, ids, []), clean)
    moved = ablated_logits(tiny_lm, tiny_lm, cc, hook, ids, list(range(16)))
    assert not torch.allclose(moved, clean)
    where = torch.zeros(ids.shape, dtype=torch.bool)
    where[:, 6:] = True                                        # ablate from position 6 on: causal, so earlier logits stay clean
    part = ablated_logits(tiny_lm, tiny_lm, cc, hook, ids, list(range(16)), where)
    assert torch.allclose(part[:, :6], clean[:, :6], atol=1e-5) and not torch.allclose(part[:, 6:], clean[:, 6:])


def test_category_positions_mark_every_form_of_the_word(tiny_lm):
    from resa_utils.methods.crosscoder import category_positions, word_variants

    tok = tiny_lm.tokenizer
    text = "Wait, the sum is 7. Therefore it is 7. wait no. However fine. Waiter here."
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    marks = category_positions(ids, tok, {"self-reflection": ("Wait",), "contrast": ("However",),
                                           "deduction": ("Therefore",), "none": ("Alternatively",)})
    assert int(marks["contrast"].sum()) == 1 and int(marks["deduction"].sum()) == 1
    assert int(marks["none"].sum()) == 0
    hits = [tok.decode([h]) for h in ids[marks["self-reflection"]].tolist()]
    assert all(h.strip()[:1] in "Ww" for h in hits) and len(hits) >= 2  # "Wait", " wait" (and "Waiter" if it shares the token)
    assert all(s for s in word_variants(tok, "Wait"))


def test_latent_categories_follow_the_activation_mass():
    from resa_utils.methods.crosscoder import latent_categories

    N = 200
    wait = torch.zeros(N, dtype=torch.bool)
    wait[::20] = True
    therefore = torch.zeros(N, dtype=torch.bool)
    therefore[5::20] = True
    acts = torch.zeros(N, 4)
    acts[wait, 0] = 2.0                      # fires only on "Wait"
    acts[:, 1] = 1.0                         # fires everywhere
    acts[therefore, 2] = 1.0                 # mostly on "Therefore", a little elsewhere
    acts[7, 2] = 0.5
    acts[wait.nonzero()[:2, 0], 3] = 1.0     # on "Wait" but too rarely
    df = latent_categories(acts, {"self-reflection": wait, "deduction": therefore}, min_share=0.5, min_firings=5)
    assert df.category.tolist() == ["self-reflection", "other", "deduction", "other"]
    assert df.loc[0, "share self-reflection"] == 1.0 and df.loc[0, "lift"] == pytest.approx(20.0)
    assert df.loc[1, "share self-reflection"] == pytest.approx(0.05)


def test_token_logit_drops_are_zero_for_nothing_and_match_the_splice(tiny_lm, tiny_windows):
    from resa_utils.methods.crosscoder import ablated_logits, token_logit_drops
    from resa_utils.sae import SAE, SAEConfig

    D = tiny_lm.d_model
    cc = SAE(SAEConfig(d_in=2 * D, d_sae=16, metadata={"n_models": 2, "d_model": D}))
    cc.init_weights(torch.Generator().manual_seed(0))
    ids = tiny_windows[:3]
    at = torch.zeros(ids.shape, dtype=torch.bool)
    at[0, 3] = at[2, 10] = True
    hook = resid_hook(1)
    drops = token_logit_drops(tiny_lm, tiny_lm, cc, hook, ids, at, {"none": [], "all": list(range(16))}, batch_size=2)
    assert drops["none"].shape == (2,) and torch.equal(drops["none"], torch.zeros(2))
    with torch.no_grad():
        clean = tiny_lm.model(input_ids=ids, use_cache=False).logits
    moved = ablated_logits(tiny_lm, tiny_lm, cc, hook, ids, list(range(16)))
    want = torch.stack([clean[0, 3, ids[0, 4]] - moved[0, 3, ids[0, 4]], clean[2, 10, ids[2, 11]] - moved[2, 10, ids[2, 11]]])
    assert torch.allclose(drops["all"], want, atol=1e-5) and drops["all"].abs().sum() > 0
    from resa_utils.methods.crosscoder import token_drops

    both = token_drops(tiny_lm, tiny_lm, cc, hook, ids, at, {"all": list(range(16))}, batch_size=2)
    assert torch.equal(both["logit"]["all"], drops["all"])
    lp_c, lp_m = clean.float().log_softmax(-1), moved.float().log_softmax(-1)
    want_lp = torch.stack([lp_c[0, 3, ids[0, 4]] - lp_m[0, 3, ids[0, 4]], lp_c[2, 10, ids[2, 11]] - lp_m[2, 10, ids[2, 11]]])
    assert torch.allclose(both["log-prob"]["all"], want_lp, atol=1e-5)


def test_per_model_fvu_and_batched_encoding_match_the_direct_computation():
    from resa_utils.methods.crosscoder import encode_batches, per_model_fvu
    from resa_utils.sae import SAE, SAEConfig

    D = 6
    cc = SAE(SAEConfig(d_in=2 * D, d_sae=20, metadata={"n_models": 2}))
    cc.init_weights(torch.Generator().manual_seed(1))
    x = torch.randn(50, 2 * D, generator=torch.Generator().manual_seed(2))
    x[:, D:] *= 3
    with torch.no_grad():
        f = cc.encode(x)
        xh = cc.decode(f)
    assert torch.allclose(encode_batches(cc, x, batch_size=7), f, atol=1e-6)
    want = [float((x[:, s] - xh[:, s]).pow(2).sum() / (x[:, s] - x[:, s].mean(0)).pow(2).sum())
            for s in (slice(0, D), slice(D, 2 * D))]
    assert per_model_fvu(cc, x, batch_size=7) == pytest.approx(want, rel=1e-5)
