"""Paper 3's statistics on constructed cases whose answers are known."""

import pytest
import torch

from resa_utils import dense


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
