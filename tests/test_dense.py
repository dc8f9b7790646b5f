"""Paper 3's statistics on constructed cases whose answers are known."""

import json

import pytest
import torch
from sae_helpers import relu_sae

from resa_utils.methods import dense


def test_a_hand_built_antipodal_pair_scores_one_and_finds_its_partner():
    g = torch.Generator().manual_seed(0)
    dec = torch.randn(50, 16, generator=g)
    dec[7] = -dec[3]
    enc = dec.clone() + 0.01 * torch.randn(50, 16, generator=g)
    s, partner = dense.antipodality(enc, dec, torch.tensor([3, 7, 10]))
    assert s[0] > 0.99 and s[1] > 0.99 and partner[:2].tolist() == [7, 3]
    assert s[2] < 0.9  # random latents are far from antipodal in 16 dims


def test_projection_leaves_activations_orthogonal_to_the_subspace():
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(3, 20, generator=g)
    dirs = torch.cat([dirs, dirs[:1] * -2.0])  # a repeated (antipodal) direction: rank 3
    q = dense.subspace_basis(dirs)
    assert q.shape == (3, 20)
    x = torch.randn(100, 20, generator=g)
    y = dense.project_out(x, q)
    assert (y @ dirs.T).abs().max() < 1e-5
    assert torch.allclose(dense.project_out(y, q), y, atol=1e-6)  # idempotent


def test_a_latent_equal_to_position_is_labelled_position():
    pos = torch.arange(200).repeat(3).float()
    stats = {"position_rho": dense.spearman(pos.sqrt(), pos),
             "context_share": dense.between_group_share(pos, torch.arange(600) // 200)}
    assert stats["position_rho"] == pytest.approx(1.0)
    assert [lab for lab, _ in dense.labels_for(stats, dense.LabelThresholds())] == ["position"]
    assert dense.labels_for({}, dense.LabelThresholds()) == [("unlabelled", "")]


def test_context_binding_share_between_documents():
    doc = torch.arange(400) // 100
    act = doc.float() * 5 + 0.01 * torch.randn(400)
    assert dense.between_group_share(act, doc) > 0.99
    assert dense.between_group_share(torch.randn(400), doc) < 0.1


def test_a_latent_built_to_fire_on_nouns_has_auc_one():
    g = torch.Generator().manual_seed(2)
    noun = torch.rand(500, generator=g) < 0.3
    act = noun.float() * (1 + torch.rand(500, generator=g))
    assert dense.roc_auc(act, noun) == pytest.approx(1.0)
    assert dense.roc_auc(-act, noun) == pytest.approx(0.0)
    assert abs(dense.roc_auc(torch.zeros(500), noun) - 0.5) < 1e-9  # all ties: chance


def test_the_alphabet_rule_on_a_constructed_unembedding():
    vocab = [f"a{i}" for i in range(100)] + [f" b{i}" for i in range(100)] + ["7", "!"]
    W_U = torch.zeros(len(vocab), 4)
    W_U[:100, 0] = 1.0 + torch.rand(100)       # direction 0 promotes the a-tokens
    W_U[100:200, 1] = 1.0 + torch.rand(100)    # direction 1 promotes the (space) b-tokens
    W_U[:, 2] = torch.randn(len(vocab))
    share, letter = dense.alphabet_share(torch.tensor([1.0, 0, 0, 0]), W_U, vocab)
    assert (share, letter) == (1.0, "a")
    share, letter = dense.alphabet_share(torch.tensor([0, 1.0, 0, 0]), W_U, vocab, top=50)
    assert (share, letter) == (1.0, "b")
    share, _ = dense.alphabet_share(torch.tensor([0, 0, 1.0, 0]), W_U, vocab)
    assert share < 0.9
    tie = torch.zeros(len(vocab), 4)
    tie[[150, 3, 151, 4], 3] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # b, a, b, a: two each, b promoted most
    assert dense.alphabet_share(torch.tensor([0, 0, 0, 1.0]), tie, vocab, top=4) == (0.5, "b")


def test_nullspace_and_pca_alignment():
    W_U = torch.diag(torch.tensor([5.0, 4.0, 3.0, 0.01]))
    assert dense.nullspace_alignment(torch.tensor([0, 0, 0, 1.0]), W_U, k=1) == pytest.approx(1.0)
    assert dense.nullspace_alignment(torch.tensor([1.0, 0, 0, 0]), W_U, k=1) == pytest.approx(0.0)
    g = torch.Generator().manual_seed(3)
    acts = torch.randn(1000, 4, generator=g) * torch.tensor([10.0, 1, 1, 1])
    cos, comp = dense.pca_alignment(torch.tensor([-1.0, 0, 0, 0]), acts, k=2)
    assert cos > 0.99 and comp == 0


def test_firing_rates_and_dense_counts():
    from resa_utils.sae import SAE, SAEConfig

    sae = SAE(SAEConfig(d_in=4, d_sae=3, architecture="standard")).init_weights()
    with torch.no_grad():
        sae.W_enc.zero_(); sae.b_dec.zero_()
        sae.W_enc[0, 0] = 1.0; sae.b_enc.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = torch.zeros(10, 4)
    x[:3, 0] = 1.0  # latent 0 fires on 3 of 10 tokens, latent 1 always, latent 2 never
    rates = dense.firing_rates(sae, [x[:5], x[5:]])
    assert rates.tolist() == [0.3, 1.0, 0.0]
    assert dense.dense_counts(rates, (0.1, 0.5)) == {0.1: 2, 0.5: 1}


def test_null_basis_and_top_components_match_the_svd():
    g = torch.Generator().manual_seed(4)
    W_U = torch.randn(300, 12, generator=g) * torch.linspace(0.1, 3, 12)
    _, _, vh = torch.linalg.svd(W_U.double(), full_matrices=False)
    null = dense.null_basis(W_U, 2)
    assert null.shape == (2, 12)
    assert (null @ vh[-2:].T).abs().sum(0).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)  # same span
    assert dense.nullspace_cos(vh[-1], null) == pytest.approx(1.0) and dense.nullspace_cos(vh[0], null) < 1e-6
    acts = torch.randn(2000, 5, generator=g) * torch.tensor([1.0, 8, 1, 3, 1])
    pcs = dense.top_components(acts, 2)
    assert abs(float(pcs[0, 1])) > 0.99 and abs(float(pcs[1, 3])) > 0.99  # largest variance first
    assert dense.component_cos(torch.tensor([0, 0, 0, -2.0, 0]), pcs) == (pytest.approx(1.0, abs=1e-3), 1)


def test_sentence_positions_restart_at_sentences_documents_and_skip_separators():
    doc = torch.tensor([0, 0, 0, 0, -1, 1, 1, 1])
    start = torch.tensor([True, False, True, False, False, False, False, True])
    assert dense.sentence_positions(doc, start).tolist() == [0, 1, 0, 1, -1, 0, 1, 0]


def test_random_sparse_latents_and_seed_matches():
    rates = torch.tensor([0.0, 0.5, 0.01, 0.02, 0.3, 0.001])
    picked = dense.random_sparse(rates, 10, 0.1, seed=0)
    assert picked.tolist() == [2, 3, 5]                                   # firing, not dense
    assert len(dense.random_sparse(rates, 2, 0.1, seed=0)) == 2
    a = torch.eye(4)[:2]
    b = torch.stack([torch.tensor([1.0, 0.05, 0, 0]), torch.tensor([0, 0, 1.0, 0])])
    assert dense.match_share(a, b, 0.9) == 0.5
    assert dense.match_share(a, b[:0], 0.9) == 0.0


def test_label_stats_find_the_planted_statistic(tiny_lm):
    from resa_utils.data.corpora import POS_CLASSES

    g = torch.Generator().manual_seed(5)
    N, D = 600, 8
    doc = torch.arange(N) // 200
    window = torch.arange(N) % 100
    sentence = torch.arange(N) % 7
    tag = torch.randint(0, 3, (N,), generator=g)
    tag[::10] = -1  # some untagged tokens
    W_U = torch.randn(40, D, generator=g)
    ctx = dense.LabelContext(positions={"window": window, "document": torch.arange(N) % 200, "sentence": sentence},
                             doc_N=doc, tag_N=tag, class_names=POS_CLASSES, entropy_M=torch.rand(300, generator=g),
                             null_KD=dense.null_basis(W_U, 2), W_U_VD=W_U, token_strings=[f"t{i}" for i in range(40)],
                             pcs_KD=torch.eye(D)[:2], min_class_tokens=20)
    st = dense.label_stats(sentence.float() + 0.01 * torch.rand(N, generator=g), torch.eye(D)[0], ctx, alphabet_top=10)
    assert st["position_kind"] == "sentence" and st["position_rho"] > 0.95
    assert st["pca_cos"] == pytest.approx(1.0) and st["pca_component"] == 0
    noun = POS_CLASSES.index("noun")
    tag[tag >= 0] = torch.where(tag[tag >= 0] == 1, noun, POS_CLASSES.index("verb"))
    st = dense.label_stats((tag == noun).float() * 2, torch.eye(D)[5], ctx, alphabet_top=10)
    assert st["pos_class"] == "noun" and st["pos_auc"] == pytest.approx(1.0)
    assert st["alphabet_share"] == 1.0  # every token string starts with 't'
    labels = [lab for lab, _ in dense.labels_for(st, dense.LabelThresholds())]
    assert "part of speech" in labels and "position" not in labels
    # separators (doc -1) are left out: a latent firing only there has no statistics to earn
    ctx.doc_N = torch.where(torch.arange(N) % 50 == 0, -1, doc)
    st = dense.label_stats((ctx.doc_N < 0).float(), torch.eye(D)[5], ctx, alphabet_top=10)
    assert st["context_share"] == 0.0 and st["pos_auc"] == pytest.approx(0.5)  # all ties: chance


def test_effective_unembedding_and_top_contexts(tiny_lm):
    W = dense.effective_unembedding(tiny_lm)
    W_U = tiny_lm.model.get_output_embeddings().weight.detach()
    gain = 1 + tiny_lm.model.model.norm.weight.detach()  # Gemma's norm applies 1 + w
    assert torch.allclose(W, W_U * gain / gain.abs().max(), atol=1e-5)
    ids = torch.tensor([[2, 10, 11, 12, 13], [2, 20, 21, 22, 23]])
    act = torch.zeros(8)
    act[6] = 3.0  # window 1, position 3: token 22
    tok = tiny_lm.tokenizer
    (text,) = dense.top_contexts(act, ids, tok, n=1, width=2)
    assert text.startswith("3.00:") and f"[[{tok.decode([22])}]]" in text and tok.decode([20, 21]) in text
    # a content-row subset: row 2 of these three is cache row 6 (window 1, token 22), not row 2
    (text,) = dense.top_contexts(torch.tensor([0.0, 1.0, 3.0]), ids, tok, n=1, width=2, rows_N=torch.tensor([0, 3, 6]))
    assert f"[[{tok.decode([22])}]]" in text
    with pytest.raises(ValueError, match="rows_N"):
        dense.top_contexts(act, ids, tok, rows_N=torch.tensor([0, 1]))


def test_cache_job_trains_on_the_projected_cache(tmp_path, tiny_lm, tiny_windows):
    """A CacheJob reads its caches, projects the basis out of training and held-out tokens, and
    gives the row `train_and_evaluate` gives on those projected tokens, in a spawned worker too;
    streamed from disk it trains on the cache shard by shard."""
    from functools import partial

    from safetensors.torch import save_file

    from resa_utils.lm.activations import ActivationCache, content_rows, resid_hook
    from resa_utils.sae import CacheJob, TrainConfig, train_and_evaluate, train_cache_job
    from resa_utils.core.sweep import config_key, run_sweep

    hook = resid_hook(1)
    tr = ActivationCache.build(tmp_path / "tr", tiny_lm, tiny_windows[:8], [hook], windows_per_shard=3, progress=False)
    ev = ActivationCache.build(tmp_path / "ev", tiny_lm, tiny_windows[8:], [hook], progress=False)
    d = tr.load(hook).shape[1]
    basis = dense.subspace_basis(torch.randn(3, d, generator=torch.Generator().manual_seed(0)))
    save_file({"basis": basis}, str(tmp_path / "basis.safetensors"))
    cfg = TrainConfig(method="topk", d_sae=4 * d, k=4, batch_size=32, n_tokens=256, seed=0)
    configs = [{"variant": v} for v in ("original", "ablate", "streamed")]
    jobs = {config_key(c): CacheJob(
        str(tmp_path / "tr"), str(tmp_path / "ev"), hook, cfg, str(tmp_path / c["variant"]),
        in_ram=c["variant"] != "streamed", density_thresholds=(0.01, 0.1),
        basis_file=str(tmp_path / "basis.safetensors") if c["variant"] == "ablate" else None)
        for c in configs}
    rows = run_sweep(tmp_path / "rows.jsonl", configs, partial(train_cache_job, jobs=jobs), workers=2).set_index("variant")
    tr_rows, ev_rows = content_rows(tr, hook)[0].load(hook), content_rows(ev, hook)[0].load(hook)  # the job's default rule
    x, e = dense.project_out(tr_rows, basis), dense.project_out(ev_rows, basis)
    _, direct = train_and_evaluate(x, e, cfg, tmp_path / "direct")
    assert rows.loc["ablate"].fvu == pytest.approx(direct["fvu"], rel=1e-4)
    assert rows.loc["original"].fvu != pytest.approx(direct["fvu"], rel=1e-4)
    _, streamed = train_and_evaluate((tr, hook), ev_rows, cfg, tmp_path / "direct_streamed")
    assert rows.loc["streamed"].fvu == pytest.approx(streamed["fvu"], rel=1e-4)
    assert {"dense@0.1", "dense@0.01"} <= set(rows.columns)
    assert (tmp_path / "ablate" / "cfg.json").exists()
    with pytest.raises(ValueError, match="in_ram"):
        bad = CacheJob(str(tmp_path / "tr"), str(tmp_path / "ev"), hook, cfg, str(tmp_path / "bad"), in_ram=False,
                       basis_file=str(tmp_path / "basis.safetensors"))
        train_cache_job({"v": 0}, {config_key({"v": 0}): bad})


def test_task_threads_give_a_lone_last_task_every_core():
    from resa_utils.core.sweep import task_threads

    assert task_threads(4, 2, 2) == [1, 1, 1, 1]
    assert task_threads(3, 2, 2) == [1, 1, 2]
    assert task_threads(5, 2, 16) == [8, 8, 8, 8, 16]
    assert task_threads(1, 4, 2) == [2]


# --------------------------------------------------------------------------- the notebook's steps


def test_held_out_tokens_drop_bos_and_keep_each_tokens_provenance():
    from resa_utils.data.windows import Windows

    w = Windows(ids=torch.tensor([[2, 5, 6, 7], [2, 8, 9, 10]]),
                doc=torch.tensor([[-1, 0, 0, -1], [-1, 1, 1, 1]]),
                pos=torch.tensor([[-1, 4, 5, -1], [-1, 0, 1, 2]]),
                sentence_start=torch.tensor([[False, True, False, False], [False, True, False, True]]),
                pos_tag=torch.tensor([[-1, 1, -1, -1], [-1, 0, 2, 3]]), doc_ids=["a", "b"])
    h = dense.held_out_tokens(w)
    assert h.doc_N.tolist() == [0, 0, -1, 1, 1, 1]
    assert h.tag_N.tolist() == [1, -1, -1, 0, 2, 3]
    assert h.positions["window"].tolist() == [1, 2, 3, 1, 2, 3]
    assert h.positions["document"].tolist() == [4, 5, -1, 0, 1, 2]
    assert h.positions["sentence"].tolist() == [0, 1, -1, 0, 1, 0]
    assert h.row_N.tolist() == list(range(6))
    sub = h.subset(torch.tensor([True, False, False, True, True, False]))
    assert sub.row_N.tolist() == [0, 3, 4] and sub.doc_N.tolist() == [0, 1, 1] and sub.tag_N.tolist() == [1, 0, 2]
    assert sub.positions["window"].tolist() == [1, 1, 2] and sub.positions["document"].tolist() == [4, 0, 1]
    assert sub.entropy(torch.tensor([10.0, 11, 12, 13])).tolist() == [10.0, 13.0]  # entropy of rows 0..3 only
    with pytest.raises(ValueError, match="row mask"):
        h.subset(torch.ones(5, dtype=torch.bool))


def _hand_cache(folder, hook, x_ND, position_ok_N, shard_rows):
    """An ActivationCache written by hand (no model): `x_ND` in shards of `shard_rows` rows, with
    the content-position record."""
    from safetensors.torch import save_file

    from resa_utils.core.atomic import sha256_file, write_json
    from resa_utils.lm.activations import ActivationCache
    from resa_utils.lm.content import POSITION_KEY

    folder.mkdir(parents=True)
    shards = []
    for i, a in enumerate(range(0, len(x_ND), shard_rows)):
        name = f"shard_{i:05d}.safetensors"
        save_file({hook: x_ND[a:a + shard_rows].contiguous(), POSITION_KEY: position_ok_N[a:a + shard_rows].contiguous()},
                  str(folder / name))
        shards.append({"file": name, "start": i, "stop": i + 1, "n_tokens": len(x_ND[a:a + shard_rows]),
                       "sha256": sha256_file(folder / name)})
    write_json(folder / "manifest.json", {"hooks": [hook], "shards": shards, "complete": True, "n_tokens": len(x_ND)})
    return ActivationCache(folder)


def test_held_out_content_leaves_out_planted_rows_and_keeps_labels_aligned(tmp_path):
    from resa_utils.lm.content import ContentRule

    g = torch.Generator().manual_seed(0)
    N, D, hook = 40, 6, "blocks.1.hook_resid_post"
    x = torch.randn(N, D, generator=g)
    x[17] *= 1000.0                                   # a massive row
    pos_ok = torch.ones(N, dtype=torch.bool)
    pos_ok[[0, 20]] = False                           # window starts / special tokens
    cache = _hand_cache(tmp_path / "eval", hook, x, pos_ok, shard_rows=15)
    held = dense.HeldOutTokens(doc_N=torch.arange(N) // 10, tag_N=torch.arange(N) % 3,
                               positions={"window": torch.arange(N) % 20}, row_N=torch.arange(N))
    acts, rows = dense.held_out_content(cache, {1: hook}, held, ContentRule())
    kept = rows[1].row_N
    assert set(range(N)) - set(kept.tolist()) == {0, 17, 20}
    assert torch.equal(acts[1], x[kept])                      # row i of the activations ...
    assert torch.equal(rows[1].doc_N, held.doc_N[kept])       # ... is token i of the labels
    assert torch.equal(rows[1].tag_N, held.tag_N[kept])
    assert torch.equal(rows[1].positions["window"], held.positions["window"][kept])
    assert rows[1].entropy(torch.arange(25.0)).tolist() == [float(r) for r in kept if r < 25]
    acts_all, rows_all = dense.held_out_content(cache, {1: hook}, held, ContentRule(enabled=False))
    assert torch.equal(acts_all[1], x) and torch.equal(rows_all[1].row_N, torch.arange(N))
    with pytest.raises(ValueError, match="held-out tokens"):
        dense.held_out_content(cache, {1: hook}, held.subset(torch.arange(N) < 30), ContentRule())


def test_harvest_once_harvests_then_reuses_the_cache(tmp_path, tiny_lm, tiny_windows):
    import math

    from resa_utils.lm.activations import ActivationCache, resid_hook

    splits, hooks = {"train": tiny_windows[:4], "eval": tiny_windows[4:6]}, [resid_hook(0), resid_hook(1)]
    args = (tmp_path / "h.jsonl", {"data": "x"}, tmp_path / "acts", tiny_lm, splits, hooks)
    first = dense.harvest_once(*args)
    assert not first.reused and first.tokens_per_s > 0 and "tok/s" in first.note(2)
    assert first.tokens == sum(ActivationCache(tmp_path / "acts" / s).n_tokens for s in splits) > 0
    (tmp_path / "h.jsonl").unlink()  # the row is gone but the caches are complete: nothing to harvest
    again = dense.harvest_once(*args)
    assert again.reused and again.tokens == 0 and math.isnan(again.tokens_per_s) and "reused" in again.note(2)
    stored = dense.harvest_once(tmp_path / "h.jsonl", {"data": "x"}, tmp_path / "acts", None, splits, hooks)
    assert stored.reused and stored.tokens == 0  # a stored row with complete caches never touches the model (None here)


def test_sae_sweep_names_trains_and_loads_each_variant(tmp_path, tiny_lm, tiny_windows):
    from resa_utils.lm.activations import resid_hook
    from resa_utils.sae import TrainConfig

    hooks = {1: resid_hook(1)}
    dense.harvest_once(tmp_path / "h.jsonl", {"data": "x"}, tmp_path / "acts", tiny_lm,
                       {"train": tiny_windows[:8], "eval": tiny_windows[8:12]}, list(hooks.values()))
    d = tiny_lm.d_model
    cfg = TrainConfig(method="topk", d_sae=2 * d, k=4, batch_size=32, n_tokens=128, seed=0)
    sweep = dense.SAESweep(tmp_path / "saes", tmp_path / "acts", hooks, cfg, {"data": "x"}, {"rank_rtol": 0.05},
                           tiny_lm.name, (0.1,))
    other_rule = dense.SAESweep(**{**sweep.__dict__, "variant_setup": {"rank_rtol": 0.5}})
    assert sweep.path(1) == sweep.path(1, "original", 0, 1) == other_rule.path(1)  # originals ignore the variants' settings
    assert sweep.path(1, "ablate-dense", 0) != other_rule.path(1, "ablate-dense", 0) != sweep.path(1, "ablate-dense", 1)
    assert sweep.path(1, "original", 0, 2) != sweep.path(1, "original", 0, 1)  # epochs are part of the name
    basis = dense.subspace_basis(torch.eye(d)[:2])
    grid = [{"layer": 1, "variant": "original", "seed": 0, "epochs": [1, 2]},
            {"layer": 1, "variant": "ablate-dense", "seed": 0, "epochs": [1]},
            {"layer": 1, "variant": "planted", "seed": 0, "epochs": [1]}]
    rows = sweep.train(tmp_path / "s.jsonl", grid, bases={(1, "ablate-dense", 0): basis}, plant=(0.2, 7))
    assert rows.variant.tolist() == ["original", "ablate-dense", "planted"] and "dense@0.1" in rows
    assert [p["epochs"] for p in rows.probes[0]] == [1, 2] and rows["trained epochs"].tolist() == [2, 1, 1]
    assert all(sweep.has_sae(r) for r in rows.to_dict("records")) and not sweep.has_sae({**grid[0], "seed": 5})
    old_layout = {"_key": "0123456789abcdef", "layer": 1, "variant": "original", "seed": 0, "fvu": 0.1}  # an earlier design's row: no epochs
    assert not sweep.has_sae(old_layout)
    with open(tmp_path / "s.jsonl", "a") as f:
        f.write(json.dumps(old_layout) + "\n")
    assert sweep.path(1, "original", 0, 1).exists() and sweep.path(1, "original", 0, 2).exists()  # both snapshots
    assert not list((tmp_path / "saes").glob("*.ckpt"))  # checkpoints removed once saved
    assert sweep.basis_file(1, "ablate-dense", 0, 1).exists()
    ablated = sweep.load(1, "ablate-dense", 0)
    assert ablated.cfg.metadata["variant"] == "ablate-dense" and ablated.cfg.d_sae == 2 * d
    again = sweep.train(tmp_path / "s.jsonl", grid, bases={(1, "ablate-dense", 0): basis}, plant=(0.2, 7))
    assert again.fvu.tolist() == rows.fvu.tolist()  # the stored rows
    with pytest.raises(ValueError, match="plant"):
        sweep.train(tmp_path / "s2.jsonl", [{**grid[2], "seed": 3}])


def test_sae_sweep_keys_folders_and_rows_by_the_content_rule(tmp_path, tiny_lm, tiny_windows):
    """Two rules: other folders, other sweep rows (never reused across rules), and the jobs read
    other rows (a strict norm ratio leaves rows out of training and of the held-out metrics)."""
    from dataclasses import asdict

    from resa_utils.core.sweep import read_rows
    from resa_utils.lm.activations import resid_hook
    from resa_utils.lm.content import ContentRule
    from resa_utils.sae import TrainConfig

    hooks = {1: resid_hook(1)}
    dense.harvest_once(tmp_path / "h.jsonl", {"data": "x"}, tmp_path / "acts", tiny_lm,
                       {"train": tiny_windows[:8], "eval": tiny_windows[8:12]}, list(hooks.values()))
    cfg = TrainConfig(method="topk", d_sae=2 * tiny_lm.d_model, k=4, batch_size=32, n_tokens=128, seed=0)
    strict, off = ContentRule(max_norm_ratio=1.05), ContentRule(enabled=False)
    sweeps = {r: dense.SAESweep(tmp_path / "saes", tmp_path / "acts", hooks, cfg, {"data": "x"}, {}, tiny_lm.name,
                                (0.1,), rule=r) for r in (strict, off)}
    assert sweeps[strict].path(1) != sweeps[off].path(1)
    assert dense.SAESweep(**{**sweeps[off].__dict__, "rule": ContentRule()}).path(1) not in {s.path(1) for s in sweeps.values()}
    grid = [{"layer": 1, "variant": "original", "seed": 0, "epochs": [1]}]
    rows = {strict: sweeps[strict].train(tmp_path / "s.jsonl", grid)}
    (key_strict,) = read_rows(tmp_path / "s.jsonl")
    again = sweeps[strict].train(tmp_path / "s.jsonl", grid)  # same rule: the stored row
    assert again.fvu[0] == rows[strict].fvu[0] and list(read_rows(tmp_path / "s.jsonl")) == [key_strict]
    rows[off] = sweeps[off].train(tmp_path / "s.jsonl", grid)  # another rule: a row of its own, trained
    assert list(read_rows(tmp_path / "s.jsonl")) != [key_strict]
    assert rows[strict].content_rule[0] == asdict(strict) and rows[off].content_rule[0] == asdict(off)
    assert rows[strict].fvu[0] != pytest.approx(rows[off].fvu[0], rel=1e-6)  # the rule reached the job
    assert sweeps[strict].has_sae(grid[0]) and sweeps[off].has_sae(grid[0])  # both SAEs kept, in their own folders
    assert rows[strict].rows[0] < rows[off].rows[0]  # the strict rule left training rows out


def test_spliced_ce_once_matches_spliced_ce_and_reuses_its_row(tmp_path, tiny_lm, tiny_windows):
    from resa_utils.lm.activations import resid_hook
    from resa_utils.sae import SAE, SAEConfig, spliced_ce

    sae = SAE(SAEConfig(d_in=tiny_lm.d_model, d_sae=16)).init_weights(torch.Generator().manual_seed(0))
    hooks, ids = {1: resid_hook(1)}, tiny_windows[:3]
    got = dense.spliced_ce_once(tmp_path / "ce.jsonl", {"k": 1}, tiny_lm, {1: sae}, hooks, ids)
    want = spliced_ce(tiny_lm, {"L1": (hooks[1], sae)}, ids, entropy=True)
    assert got.ce_clean == pytest.approx(want["ce"]["clean"])
    assert torch.allclose(got.spliced_W[1], want["per_window"]["L1"])
    assert torch.allclose(got.entropy_M, want["entropy_NT"][:, 1:].reshape(-1))  # no entropy at BOS
    again = dense.spliced_ce_once(tmp_path / "ce.jsonl", {"k": 1}, None, {1: sae}, hooks, ids)  # stored: no model needed
    assert torch.equal(again.clean_W, got.clean_W)


def test_spliced_ce_once_keys_its_row_by_the_content_rule(tmp_path, tiny_lm, tiny_windows):
    from dataclasses import asdict

    from resa_utils.core.sweep import read_rows
    from resa_utils.lm.activations import resid_hook
    from resa_utils.lm.content import ContentRule
    from resa_utils.sae import SAE, SAEConfig, spliced_ce

    sae = SAE(SAEConfig(d_in=tiny_lm.d_model, d_sae=16)).init_weights(torch.Generator().manual_seed(0))
    hooks, ids, strict = {1: resid_hook(1)}, tiny_windows[:3], ContentRule(max_norm_ratio=1.05)
    dense.spliced_ce_once(tmp_path / "ce.jsonl", {"k": 1}, tiny_lm, {1: sae}, hooks, ids)
    with pytest.raises(AttributeError):  # another rule: the stored row is not reused, so the (absent) model is needed
        dense.spliced_ce_once(tmp_path / "ce.jsonl", {"k": 1}, None, {1: sae}, hooks, ids, strict)
    got = dense.spliced_ce_once(tmp_path / "ce.jsonl", {"k": 1}, tiny_lm, {1: sae}, hooks, ids, strict)
    want = spliced_ce(tiny_lm, {"L1": (hooks[1], sae)}, ids, rule=strict)["per_window"]["L1"]
    assert torch.allclose(got.spliced_W[1], want)
    assert [r["content_rule"] for r in read_rows(tmp_path / "ce.jsonl").values()] == [asdict(strict)]
    off = dense.spliced_ce_once(tmp_path / "ce.jsonl", {"k": 1}, tiny_lm, {1: sae}, hooks, ids, ContentRule(enabled=False))
    every = spliced_ce(tiny_lm, {"L1": (hooks[1], sae)}, ids, rule=None)["per_window"]["L1"]  # all but the BOS
    assert torch.allclose(off.spliced_W[1], every) and not torch.allclose(off.spliced_W[1], got.spliced_W[1])


def test_delta_ce_interval_and_the_sae_quality_table():
    import math

    import pandas as pd

    ce = dense.SplicedCE(ce_clean=2.0, clean_W=torch.tensor([1.0, 2.0, 3.0, 2.0]),
                         spliced_W={3: torch.tensor([1.5, 2.5, 3.5, 2.5]), 9: torch.tensor([1.0, 3.0, 3.0, 3.0])},
                         entropy_M=torch.zeros(0))
    assert ce.delta(3) == (pytest.approx(0.5), pytest.approx(0.0))
    mean, half = ce.delta(9)  # differences 0, 1, 0, 1: sd 0.577 over 4 windows
    assert mean == pytest.approx(0.5) and half == pytest.approx(1.96 * math.sqrt(1 / 3) / 2)
    one = dense.SplicedCE(1.0, torch.tensor([1.0]), {3: torch.tensor([2.0])}, torch.zeros(0))
    assert math.isnan(one.delta(3)[1])
    originals = pd.DataFrame({"layer": [3, 9], "fvu": [0.1, 0.2], "train_fvu": [0.09, 0.15], "l0": [4.0, 4.0],
                              "dead_frac": [0.0, 0.5], "dense@0.1": [2, 0], "trained epochs": [4, 2], "seconds": [1.0, 2.0],
                              "tokens_per_s": [10.0, 5.0], "curve": [[], []]})
    q = dense.sae_quality(originals, ce, [0.1]).set_index("layer")
    assert q.loc[3, "ΔCE nats"] == pytest.approx(0.5) and q.loc[9, "dense@0.1"] == 0 and q.loc[9, "CE clean"] == 2.0
    assert (q.loc[9, "train fvu"], q.loc[3, "epochs"]) == (0.15, 4)
    assert list(q.columns) == ["fvu", "train fvu", "l0", "dead_frac", "ΔCE nats", "ΔCE ±95%", "CE clean", "dense@0.1",
                               "epochs", "train s", "train tok/s"]


def test_rates_frame_marks_dense_latents():
    df = dense.rates_frame({3: torch.tensor([0.0, 0.05, 0.2]), 9: torch.tensor([0.5])}, 0.1)
    assert df.layer.tolist() == [3, 3, 3, 9] and df.latent.tolist() == [0, 1, 2, 0]
    assert df.dense.tolist() == [False, False, True, True]
    assert df["firing rate"].tolist() == pytest.approx([0.0, 0.05, 0.2, 0.5])


def test_antipodality_by_layer_finds_a_planted_dense_pair():
    from resa_utils.sae import SAE

    g = torch.Generator().manual_seed(0)
    W = torch.randn(40, 16, generator=g)
    W[7] = -W[3]
    sae = relu_sae(W)
    rates = torch.full((40,), 0.01)
    rates[[3, 7]] = 0.5
    init = SAE(sae.cfg).init_weights(torch.Generator().manual_seed(1))
    res = dense.antipodality_by_layer({5: sae}, {5: rates}, {5: torch.tensor([3, 7])}, init, n_sparse=20,
                                      dense_threshold=0.1, antipodal_threshold=0.9, rank_rtol=0.05, seed=0)
    row = res.summary.iloc[0]
    assert (row["dense"], row["dense subspace rank"], row["dense-dense pairs"]) == (2, 1, 1)
    assert row["share s>0.9 (dense)"] == 1.0 and row["share s>0.9 (sparse)"] < 0.5
    pair = res.pairs.iloc[0]
    assert (pair.latent, pair.partner) == (3, 7) and pair["cos dec"] == pytest.approx(-1.0) and pair.s == pytest.approx(1.0)
    assert res.scores.groupby("group").size().to_dict() == {"dense": 2, "random init": 20, "sparse": 20}


def test_ablation_bases_span_the_dense_directions_and_as_many_sparse_ones():
    W = torch.eye(6)
    W[1] = -W[0]  # an antipodal pair: the dense latents 0, 1, 2 span two dimensions
    rates = torch.tensor([0.5, 0.5, 0.5, 0.01, 0.02, 0.0])
    bases = dense.ablation_bases(W, rates, torch.tensor([0, 1, 2]), 0.05, 0.1, seed=0)
    assert bases["ablate-dense"].shape == (2, 6) and bases["ablate-control"].shape == (2, 6)
    assert dense.project_out(W, bases["ablate-dense"])[:3].abs().max() < 1e-6  # e0, -e0 and e2 removed
    assert dense.project_out(W, bases["ablate-dense"])[3:].abs().sum() == 3  # the rest kept
    assert dense.project_out(W, bases["ablate-control"])[3:5].abs().max() < 1e-6  # the two firing sparse latents


def test_ablation_table_reads_each_retrained_sae():
    import pandas as pd

    retrained = pd.DataFrame({"layer": [3, 3, 3, 3], "variant": ["ablate-dense", "ablate-control"] * 2,
                              "seed": [0, 0, 1, 1], "dense@0.1": [1, 9, 2, 7], "fvu": [0.3, 0.2, 0.35, 0.25]})
    bases = {(3, v, s): torch.zeros(4 + s, 8) for v in ("ablate-dense", "ablate-control") for s in (0, 1)}
    t = dense.ablation_table(retrained, {0: {"dense": 10, "fvu": 0.1}, 1: {"dense": 8, "fvu": 0.12}}, bases, 0.1)
    assert t.to_dict("records") == [
        {"layer": 3, "seed": 0, "dense (original)": 10, "dimension removed": 4, "dense after dense-span ablation": 1,
         "dense after control ablation": 9, "FVU original": 0.1, "FVU dense-ablated": 0.3, "FVU control": 0.2},
        {"layer": 3, "seed": 1, "dense (original)": 8, "dimension removed": 5, "dense after dense-span ablation": 2,
         "dense after control ablation": 7, "FVU original": 0.12, "FVU dense-ablated": 0.35, "FVU control": 0.25}]
    assert dense.ablation_table(pd.DataFrame(), {}, {}, 0.1).empty


def test_seed_stability_counts_counterparts_in_the_other_seed():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 8, generator=g)
    W_other = W.clone()
    W_other[[0, 5]] = W[[5, 0]]                        # latent 0 reappears as latent 5 of the other seed
    W_other[10:] = torch.randn(6, 8, generator=g)      # latents 10-15 have no counterpart
    b_other = torch.full((16,), -10.0)
    b_other[5] = 10.0                                  # the other seed's only dense latent is 5
    mine, other = relu_sae(W), relu_sae(W_other, b_other)
    with torch.no_grad():
        other.W_enc.zero_()  # pre-activation = bias: latent 5 always fires, the rest never
    rates = torch.full((16,), 0.01)
    rates[[0, 1]] = 0.5
    t = dense.seed_stability({3: mine}, {3: other}, {3: torch.zeros(20, 8)}, {3: rates}, {3: torch.tensor([0, 1])},
                             0.1, 0.9, n_sparse=14, seeds=(0, 1)).iloc[0]
    assert (t["dense (seed 0)"], t["dense (seed 1)"]) == (2, 1)
    assert t["counterpart among all latents"] == 1.0 and t["counterpart among dense latents"] == 0.5
    assert t["sparse latents: counterpart among all"] == pytest.approx(8 / 14)  # latents 2-9 of the 14 sparse ones


def _label_context(N: int, D: int, positions: torch.Tensor):
    from resa_utils.data.corpora import POS_CLASSES

    g = torch.Generator().manual_seed(6)
    W_U = torch.randn(40, D, generator=g)
    return dense.LabelContext(positions={"window": positions}, doc_N=torch.zeros(N, dtype=torch.long),
                              tag_N=torch.full((N,), -1), class_names=POS_CLASSES, entropy_M=torch.rand(N, generator=g),
                              null_KD=dense.null_basis(W_U, 2), W_U_VD=W_U, token_strings=[f"t{i}" for i in range(40)],
                              pcs_KD=torch.eye(D)[:2])


def test_encode_latents_and_label_latents_label_a_position_latent():
    N, D = 300, 6
    pos = torch.arange(N) % 50
    acts = torch.randn(N, D, generator=torch.Generator().manual_seed(7)) * 0.1
    acts[:, 0] = pos.float()  # latent 0 reads dimension 0: its activation is the position
    sae = relu_sae(torch.eye(D))
    f = dense.encode_latents(sae, acts, torch.tensor([0, 2]), batch=7)
    assert torch.allclose(f, sae.encode(acts)[:, [0, 2]])
    groups = {4: {"dense": torch.tensor([0]), "random sparse": torch.tensor([2, 3])}, 5: {"dense": torch.tensor([], dtype=torch.long)}}
    t = dense.label_latents({4: sae, 5: sae}, {4: acts, 5: acts}, groups, {4: _label_context(N, D, pos)},
                            dense.LabelThresholds(), alphabet_top=10)
    assert t[["layer", "group", "latent"]].values.tolist() == [[4, "dense", 0], [4, "random sparse", 2], [4, "random sparse", 3]]
    assert "position" in t.labels[0].split(", ") and "Spearman" in t.evidence[0]
    assert t.position_rho[0] == pytest.approx(1.0) and t.firing_rate[0] == pytest.approx(49 / 50)


def test_label_shares_split_a_latent_with_several_labels_evenly():
    import pandas as pd

    labels = pd.DataFrame({"layer": [3, 3, 3, 3], "group": ["dense", "dense", "dense", "random sparse"],
                           "labels": ["position", "position, PCA", "unlabelled", "unlabelled"]})
    s = dense.label_shares(labels).set_index(["group", "label"])
    assert s.loc[("dense", "position"), "share"] == pytest.approx(2 / 3)
    assert s.loc[("dense", "position"), "stacked share"] == pytest.approx(0.5)
    assert s.loc[("dense", "PCA"), "stacked share"] == pytest.approx(1 / 6)
    assert s.loc[("random sparse", "unlabelled"), "share"] == 1.0 and s.loc[("dense", "alphabet"), "share"] == 0.0
    assert s.loc[("dense", "unlabelled"), "n"] == 3 and len(s) == 2 * len(dense.LABELS)
    assert dense.label_shares(pd.DataFrame()).empty


def test_label_examples_show_the_first_dense_latent_per_label(tiny_lm):
    import pandas as pd

    ids = torch.tensor([[2, 10, 11, 12, 13], [2, 20, 21, 22, 23]])
    acts = torch.zeros(8, 4)
    acts[6, 1] = 3.0   # latent 1 peaks at window 1, token 22
    acts[1, 0] = 2.0   # latent 0 peaks at window 0, token 11
    sae = relu_sae(torch.eye(4))
    labels = pd.DataFrame({"layer": [3, 5, 3], "group": ["dense", "dense", "random sparse"], "latent": [1, 0, 2],
                           "labels": ["position", "position, PCA", "alphabet"], "evidence": ["ρ", "ρ; cos", "a"]})
    ex = dense.label_examples(labels, {3: sae, 5: sae}, {3: acts, 5: acts}, ids, tiny_lm.tokenizer, n_contexts=2)
    assert ex[["label", "layer", "latent", "rank"]].values.tolist() == [
        ["position", 3, 1, 1], ["position", 3, 1, 2], ["PCA", 5, 0, 1], ["PCA", 5, 0, 2]]  # no alphabet: not dense
    assert f"[[{tiny_lm.tokenizer.decode([22])}]]" in ex.context[0] and ex.context[0].startswith("3.00:")
    assert f"[[{tiny_lm.tokenizer.decode([11])}]]" in ex.context[2]
    assert dense.label_examples(labels, {3: sae, 5: sae}, {3: acts, 5: acts}, ids, tiny_lm.tokenizer, 0).empty
    # content rows: layer 3 kept cache rows 0, 2 and 5 (window 1, token 21); latent 1 peaks at the last
    sub = torch.zeros(3, 4)
    sub[2, 1] = 3.0
    ex = dense.label_examples(labels, {3: sae, 5: sae}, {3: sub, 5: acts}, ids, tiny_lm.tokenizer, n_contexts=1,
                              rows={3: torch.tensor([0, 2, 5]), 5: torch.arange(8)})
    assert f"[[{tiny_lm.tokenizer.decode([21])}]]" in ex.context[0]


# --------------------------------------------------------------------------- ours vs the paper


def test_density_and_antipodal_claims_follow_their_rules():
    import pandas as pd

    assert dense.density_claims({3: 2, 9: 5}, 256, 8, 0.1)[0]["held"] == "yes"
    row = dense.density_claims({3: 2, 9: 0}, 256, 8, 0.1)[0]
    assert (row["held"], row["ours"]) == ("partly", "L3: 2, L9: 0")
    assert dense.density_claims({3: 0}, 256, 8, 0.1)[0]["held"] == "no"
    scores = pd.DataFrame({"layer": 3, "group": ["dense"] * 3 + ["sparse"] * 2 + ["random init"],
                           "s": [0.95, 0.95, 0.1, 0.2, 0.3, 0.1]})
    anti = dense.Antipodality(summary=pd.DataFrame({"dense": [3], "dense subspace rank": [1]}),
                              pairs=pd.DataFrame({"layer": [3]}), scores=scores)
    share, rank = dense.antipodal_claims(anti, 0.9, 0.05)
    assert (share["held"], share["ours"]) == ("yes", "0.67 (sparse 0.00, random init 0.00)")
    assert "1 dense-dense pairs" in share["note"]
    assert (rank["held"], rank["ours"]) == ("yes", "1/3 = 0.33")
    none = dense.Antipodality(pd.DataFrame({"dense": [0], "dense subspace rank": [0]}), pd.DataFrame(),
                              scores[scores.group != "dense"])
    share, rank = dense.antipodal_claims(none, 0.9, 0.05)
    assert share["held"] == rank["held"] == "no" and rank["ours"] == "0/0" and "no dense latents" in share["note"]


def test_ablation_claims_follow_their_rules():
    import pandas as pd

    def table(after, ctrl):
        return pd.DataFrame({"layer": [3], "seed": [0], "dense (original)": [20], "dense after dense-span ablation": [after],
                             "dense after control ablation": [ctrl]})

    removed, control = dense.ablation_claims(table(4, 18))
    assert (removed["held"], removed["ours"], control["held"]) == ("yes", "20 -> 4", "yes")
    assert "L3 seed 0" in removed["metric"]
    two = pd.concat([table(4, 18), table(12, 18).assign(seed=1)])
    removed, _ = dense.ablation_claims(two)  # one seed keeps more than a quarter: not 'yes'
    assert (removed["held"], removed["ours"]) == ("partly", "40 -> 16") and "L3 seed 1" in removed["metric"]
    removed, control = dense.ablation_claims(table(10, 12))
    assert (removed["held"], control["held"]) == ("partly", "partly")
    assert [r["held"] for r in dense.ablation_claims(table(20, 5))] == ["no", "no"]
    assert [r["held"] for r in dense.ablation_claims(pd.DataFrame())] == ["not tested"]


def test_taxonomy_and_stability_claims_follow_their_rules():
    import pandas as pd

    labels = pd.DataFrame({"layer": [3, 3, 16, 3, 3, 16], "group": ["dense"] * 3 + ["random sparse"] * 3,
                           "labels": ["position", "unlabelled", "entropy / null space", "unlabelled", "unlabelled", "PCA"]})
    unl, depth, control = dense.taxonomy_claims(labels, dense.label_shares(labels), [3, 9, 16])
    assert (unl["held"], unl["ours"]) == ("yes", "0.33 of 3")
    assert depth["held"] == "yes" and depth["ours"] == "position: L3 (0.50), entropy / null space: L16 (1.00)"
    assert (control["held"], control["ours"]) == ("yes", "0.67 vs 0.33")
    _, depth, _ = dense.taxonomy_claims(labels, dense.label_shares(labels), [1, 3, 16])
    assert depth["held"] == "partly"  # position peaks at 3, not at the first layer 1
    assert dense.taxonomy_claims(pd.DataFrame(), pd.DataFrame(), [3]) == []
    stab = pd.DataFrame({"layer": [3, 9], "dense (seed 0)": [4, 2], "counterpart among all latents": [0.5, 0.0],
                         "sparse latents: counterpart among all": [0.1, 0.2]})
    (row,) = dense.stability_claims(stab, 0, 1, 0.9)
    assert (row["held"], row["ours"]) == ("no", "0.33") and row["note"].endswith("L3 0.10, L9 0.20")
    assert dense.stability_claims(stab.assign(**{"counterpart among all latents": [1.0, 0.5]}), 0, 1, 0.9)[0]["held"] == "yes"
    assert dense.stability_claims(pd.DataFrame(), 0, 1, 0.9) == []


# --------------------------------------------------------------------------- figures


def test_dense_figures_on_tiny_tables():
    import matplotlib.pyplot as plt
    import pandas as pd

    from resa_utils.harness import plots

    rates = dense.rates_frame({3: torch.tensor([0.0, 0.01, 0.3]), 9: torch.tensor([0.02, 0.5])}, 0.1)
    fig = plots.dense_density(rates, 0.1, 2016)
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "layer 3: 1 dense" and fig.axes[-1].get_legend()
    assert "2,016 tokens" in fig._suptitle.get_text()
    fig = plots.dense_density(rates, 0.1, {3: 2000, 9: 2010})  # content rows differ by layer
    assert "2,000-2,010 tokens by layer" in fig._suptitle.get_text()
    scores = pd.DataFrame({"layer": [3, 3, 3, 9, 9], "group": ["dense", "sparse", "random init", "sparse", "random init"],
                           "s": [0.95, 0.1, 0.05, 0.2, 0.0]})
    fig = plots.dense_antipodality(scores, 0.9)
    legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert len(fig.axes) == 2 and {"dense", "sparse", "random init"} <= set(legend)  # dense listed though layer 9 has none
    abl = pd.DataFrame({"layer": [3, 3], "seed": [0, 1], "dense (original)": [20, 18], "dense after dense-span ablation": [4, 3],
                        "dense after control ablation": [18, 17]})
    fig = plots.dense_ablate_retrain(abl, 0.1, 256)
    (ax,) = fig.axes
    assert len(ax.patches) == 6 and len(ax.get_legend().get_texts()) == 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["L3 seed 0", "L3 seed 1"]
    legend_box, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend_box.x0 >= axes_box.x1  # the legend sits right of the bars
    labels = pd.DataFrame({"layer": [3, 3], "group": ["dense", "random sparse"], "labels": ["position", "unlabelled"]})
    fig = plots.dense_taxonomy(dense.label_shares(labels), dense.LABELS)
    assert len(fig.axes) == 2 and len(fig.axes[1].get_legend().get_texts()) == len(dense.LABELS)
    conv = pd.DataFrame({"seed": [0, 0, 1, 1], "epochs": [1, 2, 1, 2], "fvu": [0.2, 0.1, 0.21, 0.11],
                         "train_fvu": [0.19, 0.09, 0.2, 0.1], "dense": [5, 7, 4, 6], "antipodal share (dense)": [0.0, 0.2, 0.0, 0.5],
                         "seed match (dense)": [0.1, 0.3, 0.1, 0.4], "ΔCE nats": [0.5, 0.4, 0.6, 0.4]})
    fig = plots.dense_convergence(conv, 2, 3)
    assert len(fig.axes) == 4 and "layer 3" in fig._suptitle.get_text()
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert {"seed 0", "seed 1 train", "main run: 2 epochs"} <= set(legend)
    assert any("other seed" in t.get_text() for t in fig.axes[3].get_legend().get_texts())
    plt.close("all")
