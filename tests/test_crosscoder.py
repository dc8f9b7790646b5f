"""Crosscoder: planted shared and model-specific directions are found with the right relative
norms; folding the per-model normalisation leaves the reconstruction unchanged; paired caches
pair the same tokens and refuse caches of different tokens."""

import pytest
import torch

from resa_utils.core.sweep import config_key
from resa_utils.lm.activations import ActivationCache, PairedCache, resid_hook
from resa_utils.lm.content import ContentRule
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


def test_batchtopk_keeps_k_per_token_on_average_and_exports_its_threshold(tmp_path):
    x, dirs_a, dirs_b = planted(n=40_000)
    cfg = TrainConfig(method="crosscoder", d_sae=64, k=4, crosscoder_activation="batchtopk", lr=3e-3,
                      n_tokens=200_000, batch_size=256, seed=0, checkpoint_every=100)
    tr = make_trainer(cfg, x.shape[1])
    tr.setup(x[:4096])
    stats = tr.train_step(x[:256])
    assert stats["l0"] == pytest.approx(4.0)  # exactly k x B kept in the batch
    # the threshold is checkpointed with the run
    tr.save_checkpoint(tmp_path / "ck")
    again = make_trainer(cfg, x.shape[1])
    again.setup(x[:4096])
    assert again.load_checkpoint(tmp_path / "ck") and again.kept_score_min == pytest.approx(tr.kept_score_min)
    sae = train_sae(x, cfg, progress=False).sae
    assert sae.cfg.architecture == "jumprelu" and (sae.threshold > 0).all()
    with torch.no_grad():
        f = sae.encode(x[-4096:])
        fvu = (x[-4096:] - sae.decode(f)).pow(2).sum() / (x[-4096:] - x[-4096:].mean(0)).pow(2).sum()
    assert 3.0 <= float((f > 0).sum(1).float().mean()) <= 5.0   # about k per token, no batch needed
    assert float(fvu) < 0.2
    r = relative_norms(sae)
    truth = torch.nn.functional.normalize(torch.cat([dirs_a, 3.0 * dirs_b], 1), dim=1)
    best_cos, best = (truth @ torch.nn.functional.normalize(sae.W_dec.detach(), dim=1).t()).max(1)
    assert (best_cos > 0.9).float().mean() >= 0.5, best_cos
    assert r[best][16:].mean() > r[best][8:16].mean() + 0.5, r[best]   # B-only latents lean B, A-only lean A


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


def test_content_rows_drop_rows_far_above_the_median_norm_in_either_block():
    from memcache import MemCache

    from resa_utils.lm.activations import content_rows
    from resa_utils.lm.content import ContentRule

    x = torch.randn(100, 2, 4, generator=torch.Generator().manual_seed(0))
    x = (x / x.norm(dim=-1, keepdim=True)).reshape(100, 8)         # every block at norm 1
    x[3, :4] *= 50                                                   # a sink in the first model only
    x[7, 4:] *= 50                                                   # and one in the second
    x[9] *= 5                                                        # big but under the ratio
    kept, _ = content_rows(MemCache(x, torch.ones(100, dtype=torch.bool)), "h", ContentRule(max_norm_ratio=10),
                           n_blocks=2)
    keep = torch.cat([s["keep"] for s in kept.manifest["shards"]])
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


# --------------------------------------------------------------------------- notebook 04's steps


def test_predicting_positions_mark_the_token_before_each_word():
    from resa_utils.methods.crosscoder import cache_rows, category_masks, predicting_positions

    m = torch.zeros(2, 6, dtype=torch.bool)
    m[0, 3] = m[0, 5] = m[1, 1] = True
    pred = predicting_positions(m)
    want = torch.zeros(2, 6, dtype=torch.bool)
    want[0, 2] = want[0, 4] = want[1, 0] = True
    assert torch.equal(pred, want) and not pred[:, -1].any()
    assert not predicting_positions(torch.eye(1, 6, dtype=torch.bool)).any()   # a word at the start has no such position
    assert torch.equal(cache_rows(m), m[:, 1:].reshape(-1)) and cache_rows(m).shape == (10,)
    on_word, before = category_masks({"w": m}, 0)["w"], category_masks({"w": m}, -1)["w"]
    assert on_word.nonzero().flatten().tolist() == [2, 4, 5]        # (0,3), (0,5), (1,1) as rows of [2, 5]
    assert before.nonzero().flatten().tolist() == [1, 3]            # (0,2), (0,4); (1,0) is BOS: no row
    with pytest.raises(ValueError, match="offset"):
        category_masks({"w": m}, 1)


def test_mean_ci_is_the_normal_interval():
    from resa_utils.methods.crosscoder import mean_ci

    m, h = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and h == pytest.approx(1.96 * (5 / 3) ** 0.5 / 2)
    assert mean_ci(torch.tensor([2.0]))[0] == 2.0 and mean_ci([2.0])[1] != mean_ci([2.0])[1]  # NaN under two values


def _cats(r2, live, categories, firings=None, shares=None):
    import pandas as pd

    F = len(r2)
    df = pd.DataFrame({"latent": range(F), "category": categories, "firings": firings or [10] * F,
                       "r (L2)": r2, "r (L1)": r2, "live": live})
    for c in ("self-reflection", "deduction"):
        df[f"share {c}"] = (shares or {}).get(c, [0.0] * F)
    df["group"] = ["base-only" if v < 0.1 else "reasoner-only" if v > 0.9 else "shared" for v in r2]
    return df


def test_label_latents_and_categories_by_group():
    from resa_utils.methods.crosscoder import categories_by_group, label_latents

    N = 40
    wait = torch.zeros(N, dtype=torch.bool)
    wait[::4] = True
    acts = torch.zeros(N, 3)
    acts[wait, 0] = 1.0           # on "Wait" only
    acts[:, 1] = 1.0              # everywhere
    r = {"L2": torch.tensor([0.95, 0.5, 0.05]), "L1": torch.tensor([0.9, 0.5, 0.1])}
    live = torch.tensor([True, True, False])
    cats = label_latents(acts, {"self-reflection": wait}, r, live, 0.1, 0.9, min_share=0.5, min_firings=2)
    assert cats.group.tolist() == ["reasoner-only", "shared", "base-only"]
    assert cats.category.tolist() == ["self-reflection", "other", "other"] and cats.live.tolist() == [True, True, False]
    by = categories_by_group(cats)
    assert set(by.index) == {"reasoner-only", "shared"}            # the dead base-only latent is not counted
    assert by.loc["reasoner-only", "categorised share"] == 1.0 and by.loc["shared", "categorised share"] == 0.0


class _Tok:
    """A word-level tokenizer with BOS 1 and EOS 2 (the document windows' needs)."""

    bos_token_id, eos_token_id, all_special_ids = 1, 2, [1, 2]

    def __call__(self, text, add_special_tokens=False, **kw):
        return {"input_ids": [3 + (sum(map(ord, w)) % 50) for w in text.split()]}

    def decode(self, ids):
        return " ".join(f"t{int(i)}" for i in ids)


def test_mixed_windows_cap_the_answers_at_half_and_keep_documents_apart(tiny_lm):
    from resa_utils.data.corpora import Document
    from resa_utils.methods.crosscoder import answer_documents, mixed_windows

    class Prob:
        def __init__(self, uid):
            self.uid = uid

    answers = answer_documents([Prob(f"p{i}") for i in range(60)], [" a b c d e f g h"] * 60, lambda p: f"Q {p.uid}")
    assert answers[3].doc_id == "answer-p3" and answers[3].text == "Q p3 a b c d e f g h"
    texts = [Document(doc_id=f"t{i}", text=" ".join(f"w{i}x{j}" for j in range(30))) for i in range(80)]
    tok = tiny_lm.tokenizer
    mix = mixed_windows(answers, texts, tok, seq_len=9, train_tokens=400, eval_tokens=160, eval_frac=0.3, seed=0)
    for split, want in (("train", 400), ("eval", 160)):
        ids, src = mix.ids[split], mix.from_answers[split]
        assert ids.shape[1] == 9 and (ids[:, 0] == tok.bos_token_id).all() and len(src) == len(ids)
        assert mix.n_tokens(split) == len(ids) * 8 >= want
        assert 0 < int(src.sum()) <= -(-want // 8) // 2                  # answers: at most half the windows asked for
        assert not src.all() and src.any() and not (src[:-1] <= src[1:]).all()   # mixed, not sorted by source
    again = mixed_windows(answers, texts, tok, seq_len=9, train_tokens=400, eval_tokens=160, eval_frac=0.3, seed=0)
    assert all(torch.equal(mix.ids[s], again.ids[s]) for s in mix.ids)


class _Renamed:
    """A model under another name, so two "models" harvest into two caches."""

    def __init__(self, lm, name):
        self._lm, self.name = lm, name

    def __getattr__(self, key):
        return getattr(self._lm, key)


def _plant(folder, hook, row: int, factor: float) -> None:
    """Scale one row of a finished cache's first shard by `factor`, keeping the manifest's checks true."""
    from safetensors.torch import load_file, save_file

    from resa_utils.core.atomic import read_json, sha256_file, write_json

    manifest = read_json(folder / "manifest.json")
    shard = manifest["shards"][0]
    tensors = load_file(str(folder / shard["file"]))
    tensors[hook][row] *= factor
    save_file(tensors, str(folder / shard["file"]))
    shard["sha256"], shard["bytes"] = sha256_file(folder / shard["file"]), (folder / shard["file"]).stat().st_size
    manifest.pop("left_out", None)          # the harvest's record of what the rule leaves out: recomputed on the next build
    write_json(folder / "manifest.json", manifest)


def test_harvest_pairs_leave_out_special_tokens_and_norm_outliers(tmp_path, tiny_lm, tiny_windows):
    from resa_utils.lm.activations import content_positions
    from resa_utils.methods.crosscoder import cache_rows, describe_data, harvest_pairs, left_out_frame

    ids = tiny_windows[:6].clone()
    special = tiny_lm.tokenizer.all_special_ids[0]
    ids[1, 4] = ids[3, 9] = special
    splits = {"train": ids[:4], "eval": ids[4:]}
    hook = resid_hook(1)
    models = {"a": _Renamed(tiny_lm, "tiny-a"), "b": _Renamed(tiny_lm, "tiny-b")}
    loose = ContentRule(max_norm_ratio=1e9)
    data = harvest_pairs(tmp_path, models, "k", splits, hook, loose)
    assert (tmp_path / "tiny-a_k" / "train").exists() and (tmp_path / "tiny-b_k" / "train").exists()
    content = content_positions(splits["train"], tiny_lm.tokenizer)
    assert data.left_out["train"].by_position == 2 and data.left_out["eval"].by_position == 0
    assert torch.equal(data.keep["train"], content[:, 1:].reshape(-1)) and torch.equal(data.content["train"], content)
    x = data.paired["train"].load()
    assert x.shape == (4 * 31, 2 * tiny_lm.d_model) and torch.equal(x[:, :tiny_lm.d_model], x[:, tiny_lm.d_model:])
    assert torch.equal(data.rows["train"].load(PairedCache.HOOK), x[data.keep["train"]])
    _plant(tmp_path / "tiny-b_k" / "train", hook, row=40, factor=1000.0)   # a massive row in the second model only
    rule = ContentRule()
    planted = harvest_pairs(tmp_path, models, "k", splits, hook, rule)
    assert all(h["tokens"] == 0 for h in planted.harvest.values())      # the second call reads the caches
    x = planted.paired["train"].load()
    assert x[40, tiny_lm.d_model:].norm() > 100 * x[41, tiny_lm.d_model:].norm()
    assert not planted.keep["train"][40] and not planted.content["train"][1, 10]   # row 40 = window 1, position 10
    assert torch.equal(planted.keep["train"], cache_rows(planted.content["train"])) and not planted.content["train"][:, 0].any()
    trained_on = planted.rows["train"].load(PairedCache.HOOK)
    assert not any(torch.equal(r, x[40]) for r in trained_on) and len(trained_on) == int(planted.keep["train"].sum())
    assert planted.left_out["train"].by_norm >= 1 and planted.left_out["train"].norm_variance_share > 0.9
    left = left_out_frame(planted, hook)
    assert left.cache.tolist() == ["a/train", "a/eval", "b/train", "b/eval", "paired/train", "paired/eval"]
    by = left.set_index("cache")
    assert by.loc["b/train", "by_norm"] >= 1 and by.loc["paired/train", "variance_share"] > 0.9
    assert by.loc["paired/train", "by_norm"] == planted.left_out["train"].by_norm
    off = harvest_pairs(tmp_path, models, "k", splits, hook, ContentRule(enabled=False))   # every row, to show the difference
    assert off.keep["train"].all() and off.rows["train"].n_tokens == 4 * 31 and off.content["train"][:, 1:].all()
    assert (left_out_frame(off, hook).variance_share == 0).all()
    import pandas as pd

    from resa_utils.methods.crosscoder import MixedWindows

    mix = MixedWindows(splits, {"train": torch.tensor([True, False, False, False]), "eval": torch.tensor([False, True])})
    answers = pd.DataFrame({"correct": [True, False], "Wait": [1, 0]})
    text = describe_data(answers, mix, planted, planted.paired["eval"].load())
    assert text.startswith("2 answers (reasoner pass@1 on these training problems 0.50; 'Wait' in 50% of them)")
    assert "answers 25% / 50% of them" in text and "window starts 2 train / 0 held-out" in text and "cached" in text
    assert "rule is off" in describe_data(answers, mix, off, off.paired["eval"].load())


def test_harvest_pairs_refuse_a_cache_without_the_position_record(tmp_path, tiny_lm, tiny_windows, monkeypatch):
    from resa_utils.methods.crosscoder import harvest_pairs

    ids = tiny_windows[:4].clone()
    ids[1, 4] = tiny_lm.tokenizer.all_special_ids[0]
    splits = {"train": ids[:2], "eval": ids[2:]}
    hook = resid_hook(1)
    harvest_pairs(tmp_path, {"a": tiny_lm, "b": tiny_lm}, "k", splits, hook, ContentRule())
    # a cache harvested before the rule existed reads as every position passing
    monkeypatch.setattr(ActivationCache, "read_positions", lambda self, shard: torch.ones(shard["n_tokens"], dtype=torch.bool))
    with pytest.raises(ValueError, match="do not record which rows are special tokens"):
        harvest_pairs(tmp_path, {"a": tiny_lm, "b": tiny_lm}, "k", splits, hook, ContentRule())
    harvest_pairs(tmp_path, {"a": tiny_lm, "b": tiny_lm}, "k", splits, hook, ContentRule(enabled=False))   # the rule off needs no record


def test_train_crosscoder_trains_once_and_again_when_the_weights_are_gone(tmp_path):
    import shutil

    from resa_utils.methods.crosscoder import held_out_quality, train_crosscoder
    from resa_utils.sae import SAE

    x, *_ = planted(n=4096)
    cfg = TrainConfig(method="crosscoder", d_sae=16, n_tokens=2048, batch_size=256, lr=1e-3)
    args = (tmp_path / "sweep.jsonl", {"run": 1}, x[:3072], x[3072:], cfg, tmp_path / "cc", {"model_names": ["a", "b"]})
    rule = ContentRule()
    first = train_crosscoder(*args, rule=rule)
    assert (tmp_path / "cc" / "cfg.json").exists() and len(first.curve) > 0
    assert first.content_rule == {"enabled": True, "max_norm_ratio": 10.0}  # the rule is in the sweep row
    assert train_crosscoder(*args, rule=rule).seconds == first.seconds       # the stored row, no retraining
    shutil.rmtree(tmp_path / "cc")
    assert train_crosscoder(*args, rule=rule).seconds != first.seconds and (tmp_path / "cc" / "cfg.json").exists()
    cc = SAE.load(tmp_path / "cc")
    keep = torch.ones(1024, dtype=torch.bool)
    keep[:100] = False
    held = held_out_quality(cc, x[3072:], keep, ["a", "b"], first)
    assert held.acts_NF.shape == (1024, 16) and (held.acts_NF[:100] == 0).all()
    assert torch.equal(held.live_F, (held.acts_NF > 0).any(0))
    assert held.quality.model.tolist() == ["a", "b"] and held.metrics["dead_share"] == float((~held.live_F).float().mean())
    assert held.metrics["fvu_base"] == pytest.approx(float(held.quality["held-out FVU"][0]))
    assert held.metrics["l0"] == pytest.approx(float((held.acts_NF[keep] > 0).sum(1).float().mean()))


def test_crosscoder_runs_under_another_rule_are_never_reused(tmp_path, tiny_lm, tiny_windows, monkeypatch):
    from pathlib import Path

    import resa_utils.sae as sae_pkg
    from resa_utils.methods.crosscoder import crosscoder_key, harvest_pairs, train_crosscoder

    cfg = TrainConfig(method="crosscoder", d_sae=16, n_tokens=64, batch_size=32)
    keys = {r: crosscoder_key("data", "h", cfg, r, 100) for r in (ContentRule(), ContentRule(max_norm_ratio=5.0),
                                                                   ContentRule(enabled=False))}
    assert len({config_key(k) for k in keys.values()}) == 3 and all(k["content_rule"] for k in keys.values())
    assert config_key(crosscoder_key("data", "h", cfg, ContentRule(), 99)) != config_key(keys[ContentRule()])
    seen = []

    def fake_train(data, eval_ND, cfg, path, metadata=None, device=None):   # what train_crosscoder hands the trainer
        seen.append(data)
        Path(path).mkdir(exist_ok=True)
        (Path(path) / "cfg.json").write_text("{}")      # the weights are there: the row may be reused
        return None, {"fvu": 0.0, "seconds": float(len(seen))}

    monkeypatch.setattr(sae_pkg, "train_and_evaluate", fake_train)
    ids = tiny_windows[:4]
    models = {"a": _Renamed(tiny_lm, "tiny-a"), "b": _Renamed(tiny_lm, "tiny-b")}
    harvest_pairs(tmp_path, models, "k", {"train": ids}, resid_hook(1), ContentRule())
    _plant(tmp_path / "tiny-a_k" / "train", resid_hook(1), row=5, factor=1000.0)
    data = harvest_pairs(tmp_path, models, "k", {"train": ids}, resid_hook(1), ContentRule())
    sweep, x = tmp_path / "cc.jsonl", data.paired["train"].load()
    for rule in (ContentRule(), ContentRule(enabled=False), ContentRule(enabled=False)):
        train_crosscoder(sweep, {"run": 1}, data.paired["train"], x[:8], cfg, tmp_path / "cc", {}, rule=rule)
    assert len(seen) == 2                       # the rule off trained anew, then its row was reused
    on_rows, off_rows = seen[0][0].load(PairedCache.HOOK), seen[1][0].load(PairedCache.HOOK)
    assert len(off_rows) == len(x) and len(on_rows) == data.rows["train"].n_tokens < len(x)
    assert not any(torch.equal(r, x[5]) for r in on_rows)   # the planted massive row is not trained on


def test_relative_norm_counts_count_live_latents_per_group():
    from resa_utils.methods.crosscoder import relative_norm_counts, relative_norm_frame

    r = {"L2": torch.tensor([0.05, 0.5, 0.8, 0.95, 0.97]), "L1": torch.tensor([0.5, 0.5, 0.5, 0.5, 0.95])}
    live = torch.tensor([True, True, True, True, False])
    counts = relative_norm_counts(r, live, 0.1, 0.9, 0.7).set_index("norm")
    assert counts.loc["L2"].tolist() == [1, 2, 1, 2, 4] and counts.loc["L1"].tolist() == [0, 4, 0, 0, 4]
    assert list(counts.columns) == ["base-only r<0.1", "shared", "reasoner-only r>0.9", "reasoner-leaning r>0.7 (live)", "live"]
    frame = relative_norm_frame(r, live)
    assert len(frame) == 8 and frame[frame.norm == "L2"].latent.tolist() == [0, 1, 2, 3]


def test_top_latent_contexts_show_the_group_categorised_first():
    from resa_utils.methods.crosscoder import top_latent_contexts

    cats = _cats([0.95, 0.95, 0.5, 0.95], [True, True, True, False], ["other", "self-reflection", "other", "other"],
                 firings=[50, 3, 99, 99])
    ids = torch.arange(2 * 6).view(2, 6)
    acts = torch.zeros(10, 4)
    acts[7, 1], acts[2, 1], acts[4, 0] = 3.0, 1.0, 2.0
    ctx = top_latent_contexts(cats, "reasoner-only", acts, ids, _Tok(), n_latents=5, n_contexts=2)
    assert ctx.latent.tolist() == [1, 1, 0, 0] and ctx["rank"].tolist() == [1, 2, 1, 2]   # live reasoner-only only
    assert ctx.context[0].startswith("3.00:") and "[[t9]]" in ctx.context[0]             # row 7 = window 1, token 3 (id 9)
    assert top_latent_contexts(cats, "base-only", acts, ids, _Tok(), 5, 2).empty


def test_geometry_of_identical_models_has_cosine_one():
    from resa_utils.methods.crosscoder import geometry

    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    is_answer = torch.arange(200) < 50
    words = torch.zeros(200, dtype=torch.bool)
    words[[3, 70]] = True
    geo = geometry(torch.cat([x, 2 * x], 1), is_answer, words, seed=0, n_points=30)
    assert geo.table.n.tolist() == [50, 150, 2]
    assert geo.table["median cos(base, reasoner)"].to_numpy() == pytest.approx([1, 1, 1], abs=1e-5)
    assert geo.points.model.value_counts().to_dict() == {"base": 30, "reasoner": 30, "reasoning words (reasoner)": 2}
    b, rr = geo.points[geo.points.model == "base"], geo.points[geo.points.model == "reasoner"]
    assert b["PC 1"].to_numpy() == pytest.approx(rr["PC 1"].to_numpy(), abs=1e-4)     # same tokens, same place
    assert (geo.cos.tokens == "answers").sum() == 50 and len(geo.cos) == 200
    shifted = geometry(torch.cat([x, -x], 1), is_answer, words, seed=0)
    assert shifted.table["median cos(base, reasoner)"].to_numpy() == pytest.approx([-1, -1, -1], abs=1e-5)


def test_latent_pool_falls_back_to_every_live_latent():
    from resa_utils.methods.crosscoder import latent_pool

    live = torch.tensor([True, True, True, False])
    leaning = latent_pool(_cats([0.8, 0.5, 0.5, 0.9], live.tolist(), ["other"] * 4), live, 0.7)
    assert leaning.pool_F.tolist() == [True, False, False, False] and leaning.note.startswith("reasoner-leaning")
    none = latent_pool(_cats([0.5, 0.5, 0.5, 0.9], live.tolist(), ["other"] * 4), live, 0.7)
    assert torch.equal(none.pool_F, live) and not none.lean_F.any() and none.note.startswith("all live latents")


def test_busiest_windows_and_the_ablation_plan_read_other_windows():
    from resa_utils.methods.crosscoder import ablation_plan, busiest_windows

    N, T, F = 4, 6, 5
    words = {"self-reflection": torch.zeros(N, T, dtype=torch.bool), "deduction": torch.zeros(N, T, dtype=torch.bool)}
    words["self-reflection"][2, [2, 4]] = True
    words["self-reflection"][0, 3] = True
    words["deduction"][1, 5] = True
    words["deduction"][0, 5] = True
    assert busiest_windows(words, 2).tolist() == [0, 2]             # 2 words each, in window order
    acts = torch.zeros(N, T - 1, F)
    acts[1, 3, 0] = 1.0            # window 1, position 4 (predicts "Therefore" at 5): latent 0
    acts[3, :, 1] = 1.0            # everywhere in window 3: no share
    acts[2, 0, 2] = 5.0            # window 2 predicts "Wait" at position 2: but window 2 is ablated, so unseen
    acts[1, 0, 3] = 1.0            # latent 3: fires once on window 1, never on a predicting position
    pool = torch.tensor([True, True, True, True, False])
    plan = ablation_plan(acts.view(-1, F), words, torch.tensor([0, 2]), pool, n_ablate=2, min_share=0.3,
                         min_firings=1, cc_name="cc", rule=ContentRule())
    assert plan.configs == [{"category": "deduction", "latents": [0], "windows": [0, 2], "cc": "cc",
                             "measures": ["logit", "log-prob"], "content_rule": {"enabled": True, "max_norm_ratio": 10.0}}]
    assert plan.cats_pred.loc[0, "share deduction"] == 1.0 and plan.cats_pred.loc[2, "firings"] == 0
    off = ablation_plan(acts.view(-1, F), words, torch.tensor([0, 2]), pool, n_ablate=2, min_share=0.3,
                        min_firings=1, cc_name="cc", rule=ContentRule(enabled=False))
    assert config_key(off.configs[0]) != config_key(plan.configs[0])   # a row measured under one rule is not reused under another


def test_control_sets_draw_other_active_latents_of_the_pool():
    from resa_utils.methods.crosscoder import control_sets

    pool = torch.tensor([True] * 8 + [False] * 2)
    active = torch.tensor([True, True, False, True, True, False, True, False, True, True])
    sets, n = control_sets([0, 1], pool, active, n_draws=3, seed=5)
    assert n == 3 and sets["category latents"].tolist() == [0, 1]   # active pool latents 3, 4, 6 (8, 9 not in the pool)
    for k in range(3):
        assert len(sets[f"random {k}"]) == 2 and set(sets[f"random {k}"].tolist()) <= {3, 4, 6}
    again, _ = control_sets([0, 1], pool, active, n_draws=3, seed=5)
    assert all(torch.equal(sets[k], again[k]) for k in sets)
    few, n_few = control_sets([0, 1, 3], pool, torch.tensor([True] * 4 + [False] * 6), n_draws=1, seed=5)
    assert n_few == 5 and set(few["random 0"].tolist()) <= {2, 4, 5, 6, 7}        # too few active: the whole pool


def test_run_ablation_measures_the_words_at_the_positions_predicting_them(tmp_path, tiny_lm, tiny_windows):
    from resa_utils.methods.crosscoder import ablation_table, run_ablation, token_drops
    from resa_utils.sae import SAE, SAEConfig

    D = tiny_lm.d_model
    cc = SAE(SAEConfig(d_in=2 * D, d_sae=16, metadata={"n_models": 2, "d_model": D}))
    cc.init_weights(torch.Generator().manual_seed(0))
    ids = tiny_windows[:5]
    words = {"self-reflection": torch.zeros(ids.shape, dtype=torch.bool)}
    words["self-reflection"][1, 7] = words["self-reflection"][3, 12] = True
    acts = torch.rand(5 * 31, 16, generator=torch.Generator().manual_seed(1))
    where = torch.ones(ids.shape, dtype=torch.bool)
    cfg = [{"category": "self-reflection", "latents": [2, 5], "windows": [1, 3], "cc": "cc", "measures": ["logit", "log-prob"]}]
    hook = resid_hook(1)
    pool = torch.ones(16, dtype=torch.bool)
    abl = run_ablation(tmp_path / "abl.jsonl", cfg, tiny_lm, tiny_lm, cc, hook, ids, words, acts, torch.tensor([1, 3]),
                       pool, 2, 0, where)
    row = abl.iloc[0]
    assert row.pool == 14 and len(row.drops["category latents"]) == 2 and set(row.drops) == {"category latents", "random 0", "random 1"}
    at = torch.zeros(2, 32, dtype=torch.bool)
    at[0, 6] = at[1, 11] = True
    want = token_drops(tiny_lm, tiny_lm, cc, hook, ids[[1, 3]], at, {"s": [2, 5]}, where_BT=where[[1, 3]])
    assert row.drops["category latents"] == pytest.approx(want["logit"]["s"].tolist(), abs=1e-5)
    assert row.drops_lp["category latents"] == pytest.approx(want["log-prob"]["s"].tolist(), abs=1e-5)
    table = ablation_table(abl, _cats([0.5] * 16, [True] * 16, ["other"] * 16, shares={"self-reflection": [0.1 * i for i in range(16)]}))
    assert table.occurrences.tolist() == [2] and table["their share there"][0] == "0.20..0.50"
    assert table["logit fall (category latents)"][0] == pytest.approx(float(want["logit"]["s"].mean()), abs=1e-5)
    assert run_ablation(tmp_path / "none.jsonl", [], tiny_lm, tiny_lm, cc, hook, ids, words, acts, torch.tensor([1, 3]),
                        pool, 2, 0, where).empty


def test_ablation_table_summarises_the_falls():
    import pandas as pd

    from resa_utils.methods.crosscoder import ablation_table

    abl = pd.DataFrame([{"category": "deduction", "latents": [0, 1], "pool": 7,
                         "drops": {"category latents": [2.0, 4.0], "random 0": [0.0, 1.0], "random 1": [1.0, 2.0]},
                         "drops_lp": {"category latents": [1.0, 1.0], "random 0": [0.0, 0.0], "random 1": [0.5, 0.5]}}])
    cats = _cats([0.5, 0.5], [True, True], ["other"] * 2)
    cats["share deduction"] = [0.25, 0.75]
    t = ablation_table(abl, cats).iloc[0]
    assert t["logit fall (category latents)"] == 3.0 and t["± 95%"] == pytest.approx(1.96 * 2 ** 0.5 / 2 ** 0.5)
    assert t["logit fall (random, mean of draws)"] == 1.0 and t["random draws min..max"] == "0.500..1.500"
    assert t["log-prob fall (random, max of draws)"] == 0.5 and t["lp ± 95%"] == 0.0 and t["control pool"] == 7
    assert t["their share there"] == "0.25..0.75" and ablation_table(pd.DataFrame(), cats).empty
    assert t["percentile in random draws"] == 100.0 and t["random draws"] == 2   # 3.0 beats both draws' means


def test_steering_directions_prefer_a_labelled_latent_and_fall_back_to_the_largest_share():
    from resa_utils.methods.crosscoder import steering_directions

    cats = _cats([0.5, 0.6, 0.7, 0.8], [True] * 4, ["other", "self-reflection", "other", "other"], firings=[9, 9, 9, 1],
                 shares={"self-reflection": [0.9, 0.4, 0.0, 0.0], "deduction": [0.0, 0.1, 0.2, 0.9]})
    W = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    pool = torch.tensor([True, True, True, True])
    dirs, picked = steering_directions(cats, pool, W, mean_norm=3.0, min_firings=5)
    assert list(dirs) == ["self-reflection (latent 1)", "deduction (latent 2)"]   # latent 3 fires too rarely
    assert torch.allclose(dirs["deduction (latent 2)"], W[2] / W[2].norm() * 3.0)
    assert [p["labelled so by the rule"] for p in picked] == [True, False] and picked[1]["r (L2)"] == pytest.approx(0.7)
    assert steering_directions(cats, torch.zeros(4, dtype=torch.bool), W, 3.0, 5) == ({}, [])


def test_steering_table_means_and_intervals():
    import pandas as pd

    from resa_utils.data.tasks import wilson
    from resa_utils.methods.crosscoder import steering_table

    steered = pd.DataFrame({"vector": ["none"] * 2 + ["v"] * 3, "scale": [0.0] * 2 + [0.5] * 3,
                            "correct": [True, False, True, True, False], "n_tokens": [10, 20, 30, 30, 60],
                            "Wait": [0, 0, 1, 2, 3], "Therefore": [1, 1, 0, 0, 0]})
    t = steering_table(steered).set_index("direction")
    assert t.loc["none", "length"] == 15 and t.loc["v", "length"] == 40 and t.loc["v", "n"] == 3
    assert t.loc["v", "Wait ±95%"] == pytest.approx(1.96 * 1 / 3 ** 0.5)
    assert (t.loc["v", "acc low"], t.loc["v", "acc high"]) == wilson(2, 3) and t.loc["none", "Therefore ±95%"] == 0


def test_paper_claims_follow_their_stated_rules():
    import pandas as pd

    from resa_utils.methods.crosscoder import (claim_ablation, claim_categories, claim_specific_latents,
                                               claim_steering, report_scale)

    counts = pd.DataFrame([{"norm": "L2", "base-only r<0.1": 1, "shared": 90, "reasoner-only r>0.9": 2, "live": 100}])
    assert claim_specific_latents(counts, 0.1, 0.9, "m", 64, 2048)["held"] == "yes"
    counts["reasoner-only r>0.9"] = 0
    row = claim_specific_latents(counts, 0.1, 0.9, "m", 64, 2048)
    assert row["held"] == "no" and row["ours"] == "0 / 1 of 100" and "2,048 tokens" in row["note"]
    cats = _cats([0.95, 0.95, 0.5, 0.5, 0.5, 0.5], [True] * 6, ["self-reflection", "deduction", "other", "self-reflection", "other", "other"])
    lean = torch.tensor([True, True, False, False, False, False])
    assert claim_categories(cats, lean, 0.7, 0.3)["held"] == "yes"             # 1.0 vs 0.25 share
    cats.loc[4, "category"] = "deduction"
    assert claim_categories(cats, lean, 0.7, 0.3)["held"] == "partly"          # 1.0 vs 0.5: not more than twice
    no_lean = claim_categories(cats, torch.zeros(6, dtype=torch.bool), 0.7, 0.3)
    assert no_lean["held"] == "not tested" and no_lean["ours"] == "no reasoner-leaning latent (r > 0.7); shared 0.500"
    base = {"category": "deduction", "latents ablated": 4, "occurrences": 9, "random draws min..max": "0.100..0.200", "percentile in random draws": 100.0,
            "logit fall (random, mean of draws)": 0.15, "log-prob fall (random, max of draws)": 0.1}
    abl = pd.DataFrame([{**base, "logit fall (category latents)": 5.0, "± 95%": 1.0, "log-prob fall (category latents)": 2.0, "lp ± 95%": 0.5},
                        {**base, "logit fall (category latents)": 0.5, "± 95%": 1.0, "log-prob fall (category latents)": 2.0, "lp ± 95%": 0.5},
                        {**base, "logit fall (category latents)": 5.0, "± 95%": 1.0, "log-prob fall (category latents)": 0.3, "lp ± 95%": 0.5}])
    assert [r["held"] for r in claim_ablation(abl, "pool", 3)] == ["yes", "partly", "partly"]
    assert claim_ablation(pd.DataFrame(), "pool", 3) == []
    assert report_scale([0, 0.05, 0.1, 0.2]) == 0.1 and report_scale([0, 1.0]) == 1.0 and report_scale([0]) is None

    def steer_row(direction, scale, length, ci, wait=0.0):
        return {"direction": direction, "scale (× mean norm)": scale, "length": length, "length ±95%": ci, "Wait": wait, "accuracy": 0.5}

    table = pd.DataFrame([steer_row("none", 0.0, 50, 2), steer_row("self-reflection (latent 1)", 0.1, 90, 3, wait=2),
                          steer_row("deduction (latent 2)", 0.1, 48, 2), steer_row("random 0", 0.1, 55, 2), steer_row("random 1", 0.1, 45, 2)])
    picked = [{"direction": "self-reflection", "latent": 1, "r (L2)": 0.5, "labelled so by the rule": True},
              {"direction": "deduction", "latent": 2, "r (L2)": 0.5, "labelled so by the rule": False}]
    rows = claim_steering(table, ["self-reflection (latent 1)", "deduction (latent 2)", "random 0"], picked, [0, 0.1], "pool", 48, 160)
    assert [r["held"] for r in rows] == ["yes", "no"]                           # 1.8x vs random 1.1x; deduction 0.96x
    assert rows[0]["ours"].startswith("1.80 (percentile 100 of 2 random directions, the closest 1.10)") and "not labelled deduction" in rows[1]["note"]
    assert rows[1]["ours"].startswith("0.96 (percentile 50 of 2 random directions")
    assert [r["held"] for r in claim_steering(table, [], [], [0, 0.1], "pool", 48, 160)] == ["not tested"] * 2


def test_crosscoder_figures_have_their_panels_and_labelled_dashed_lines():
    import matplotlib.pyplot as plt
    import pandas as pd

    from resa_utils.harness import plots

    r = pd.DataFrame({"norm": ["L2"] * 3 + ["L1"] * 3, "latent": [0, 1, 2] * 2, "r": [0.2, 0.5, 0.6, 0.4, 0.5, 0.55]})
    fig = plots.crosscoder_relative_norms(r, 0.1, 0.9, "a vs b")
    assert len(fig.axes) == 2
    for ax in fig.axes:
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == 2 and all(not ln.get_label().startswith("_") for ln in dashed)
    assert {t.get_text() for t in fig.axes[1].get_legend().get_texts()} >= {"base-only below r = 0.1", "reasoner-only above r = 0.9"}
    plt.close(fig)
    pts = pd.DataFrame({"model": ["base", "reasoner", "reasoning words (reasoner)"], "PC 1": [0.0, 1.0, 2.0], "PC 2": [0.0, 1.0, 2.0]})
    cos = pd.DataFrame({"tokens": ["answers", "English", "English"], "cos": [0.9, 0.95, 1.0]})
    fig = plots.crosscoder_geometry(pts, cos, "a vs b")
    assert len(fig.axes) == 2 and len(fig.axes[0].collections) == 3
    plt.close(fig)
    abl = pd.DataFrame({"category": ["deduction", "contrast"], "logit fall (category latents)": [2.0, 1.0], "± 95%": [0.5, 0.2],
                        "logit fall (random, mean of draws)": [0.1, 0.0], "log-prob fall (category latents)": [1.0, 0.5],
                        "lp ± 95%": [0.1, 0.1], "log-prob fall (random, max of draws)": [0.0, 0.0], "occurrences": [5, 3]})
    fig = plots.crosscoder_ablation(abl, 4, 3, "pool")
    assert len(fig.axes) == 2 and all(len(ax.patches) == 4 for ax in fig.axes)
    plt.close(fig)
    rows = [{"direction": d, "scale (× mean norm)": s, "n": 4, "accuracy": 0.5, "acc low": 0.2, "acc high": 0.8,
             "length": 10.0, "length ±95%": 1.0, "Wait": 0.0, "Wait ±95%": 0.0}
            for d, s in (("none", 0.0), ("self-reflection (latent 1)", 0.5), ("random 0", 0.5), ("random 1", 0.5))]
    fig = plots.crosscoder_steering(pd.DataFrame(rows), 2, "m")
    assert len(fig.axes) == 3 and all(len(ax.containers) == 3 for ax in fig.axes)   # one errorbar line per direction
    labels = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert labels == ["self-reflection (latent 1)", "random (2 draws)"]
    plt.close(fig)


def test_calibration_and_dose_figures_mark_the_real_change_and_every_threshold():
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from resa_utils.harness import plots

    m = pd.DataFrame([[0.0, 0.5], [1.0, 1.0]], index=pd.Index([0.01, 0.1], name="freq"), columns=pd.Index([0.1, 1.0], name="amp"))
    fig = plots.crosscoder_detection_map({"relu": m, "batchtopk": m}, {"freq": 0.1, "amp_median": 0.1}, "a vs b")
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 2 and all(len(ax.collections) == 1 for ax in maps)
    star = maps[0].collections[0].get_offsets()[0]
    assert tuple(star) == pytest.approx((0.0, 1.0))          # amp 0.1 -> first column, freq 0.1 -> second row
    assert not [t for t in maps[0].texts if t.get_text().startswith("real:")]
    plt.close(fig)
    fig = plots.crosscoder_detection_map({"relu": m}, {"freq": 0.5, "amp_median": 0.3, "amp_q90": 2.0}, "a vs b")
    ax = [ax for ax in fig.axes if ax.images][0]
    assert tuple(ax.collections[0].get_offsets()[0]) == pytest.approx((np.log10(3), 1.0))   # freq 0.5 clipped to the top row
    assert [t.get_text() for t in ax.texts if t.get_text().startswith("real:")] == ["real: 0.5 of rows,\nsize 0.3"]
    assert ax.get_lines()[0].get_xdata()[1] == pytest.approx(1.0)                          # q90 2.0 clipped to the last column
    assert sorted(t.get_text() for t in ax.texts if not t.get_text().startswith("real:")) == ["0", "0.5", "1", "1"]
    plt.close(fig)
    dist = pd.DataFrame({"n r>0.5": [1, 2], "n r>0.9": [0, 1]}, index=["x1", "x2"])
    r = pd.DataFrame({"model": ["x1", "x1", "x2"], "r": [0.4, 0.6, 0.95]})
    fig = plots.crosscoder_dose(r, dist, (0.5, 0.9))
    assert len(fig.axes) == 2 and len(fig.axes[1].get_lines()) == 2
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["r > 0.5", "r > 0.9"]
    plt.close(fig)


def test_layer_rule_picks_the_candidate_where_the_models_differ_most():
    import pandas as pd

    from resa_utils.methods.crosscoder import choose_layer, dose_names

    reps = pd.DataFrame({"block": [3, 7, 10, 14, 7], "median cos": [0.90, 0.98, 0.95, 0.97, 0.50],
                         "text": ["reasoning"] * 4 + ["english"]})
    block, table = choose_layer(reps, [7, 10, 14])
    assert block == 10 and table.chosen.tolist() == [False, True, False]   # block 3 is no candidate, English is not read
    with pytest.raises(ValueError, match="no 'reasoning' rows"):
        choose_layer(reps, [20])
    assert dose_names("m-reasoner", ["-x2", "other"]) == ["m-reasoner-x2", "other"]


def test_preconditions_and_the_new_claims_follow_their_rules():
    import pandas as pd

    from resa_utils.methods.crosscoder import claim_authors_scoring, claim_dose, preconditions

    layers = pd.DataFrame({"block": [10, 14], "median cos": [0.97, 0.95]})
    change = {"freq": 0.4, "amp_median": 0.2}
    pre = preconditions(layers, 14, 0.96, {"recovered_share": 0.75}, 0.5, change)
    assert [p["met"] for p in pre] == ["yes", "yes"] and pre[0]["gates"] == "1 2 3" and pre[1]["gates"] == "1"
    pre = preconditions(layers, 10, 0.96, None, 0.5, None)
    assert [p["met"] for p in pre] == ["no", "no"]        # cos 0.97 > 0.96; nothing to place on the map
    auth = {"n_top": 3, "top_r_min": 0.62, "n_pool": 40, "n_live": 900}
    spear = {"rho": 0.3, "p_greater": 0.001, "null_q025": -0.05, "null_q975": 0.05}
    assert claim_authors_scoring(auth, spear, 0.003, 0.5, 1000)["held"] == "yes"
    assert claim_authors_scoring({**auth, "top_r_min": 0.45}, spear, 0.003, 0.5, 1000)["held"] == "partly"
    assert claim_authors_scoring({**auth, "top_r_min": 0.45}, {**spear, "p_greater": 0.2}, 0.003, 0.5, 1000)["held"] == "no"
    dose = pd.DataFrame({"live": [900, 900, 900], "r q95": [0.6, 0.7, 0.8], "n r>0.5": [10, 30, 90]}, index=["x1", "x2", "x4"])
    assert claim_dose(dose)["held"] == "yes"
    dose["n r>0.5"] = [10, 5, 90]
    assert claim_dose(dose)["held"] == "partly"
    dose["r q95"] = [0.8, 0.7, 0.6]
    assert claim_dose(dose)["held"] == "no"


def test_scoring_note_names_every_crosscoder_and_seed():
    import pandas as pd

    from resa_utils.methods.crosscoder import scoring_note

    df = pd.DataFrame({"activation": ["relu", "batchtopk"], "seed": [0, 1], "reasoner-only r>0.9": [0, 3],
                       "top r min": [0.61, 0.7], "Spearman(r, reasoning share)": [0.2, -0.1]})
    note = scoring_note(df, 0.9)
    assert note == ("relu seed 0: 0 over r 0.9, top r >= 0.610, Spearman 0.200; "
                    "batchtopk seed 1: 3 over r 0.9, top r >= 0.700, Spearman -0.100")
