"""Paper 3's statistics on constructed cases whose answers are known."""

import pytest
import torch

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


def test_choosing_layers_random_sparse_latents_and_seed_matches():
    assert dense.choose_layers({3: 5, 9: 12, 16: 5, 17: 0}, 2) == [9, 16]  # ties go deeper
    assert dense.choose_layers({3: 0, 9: 1}, 2) == [9]                    # never an empty layer
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


def test_cache_job_trains_on_the_projected_cache(tmp_path, tiny_lm, tiny_windows):
    """A CacheJob reads its caches, projects the basis out of training and held-out tokens, and
    gives the row `train_and_evaluate` gives on those projected tokens, in a spawned worker too;
    streamed from disk it trains on the cache shard by shard."""
    from functools import partial

    from safetensors.torch import save_file

    from resa_utils.lm.activations import ActivationCache, resid_hook
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
    x, e = dense.project_out(tr.load(hook), basis), dense.project_out(ev.load(hook), basis)
    _, direct = train_and_evaluate(x, e, cfg, tmp_path / "direct")
    assert rows.loc["ablate"].fvu == pytest.approx(direct["fvu"], rel=1e-4)
    assert rows.loc["original"].fvu != pytest.approx(direct["fvu"], rel=1e-4)
    _, streamed = train_and_evaluate((tr, hook), ev.load(hook), cfg, tmp_path / "direct_streamed")
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
