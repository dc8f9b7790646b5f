"""Steering: the hook adds exactly α v/‖v‖ at the chosen block and nowhere else, and the model is
as it was on exit; difference of means on a constructed case; last-token states and logit
differences do not depend on batching."""

import pytest
import torch

from resa_utils import steering
from resa_utils.activations import resid_hook, run_with_cache
from resa_utils.models import load_model


def test_difference_of_means_on_a_constructed_case():
    pos = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    neg = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 2.0]])
    assert torch.equal(steering.diff_of_means(pos, neg), torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError):
        steering.diff_of_means(pos, neg[:0])


def test_steer_adds_exactly_alpha_unit_v_at_the_layer_and_restores():
    lm = load_model("tiny-llama")
    ids = lm.tokenizer("the quick brown fox", return_tensors="pt").input_ids
    v = torch.randn(lm.d_model)
    before = run_with_cache(lm.model, ids, [resid_hook(1), resid_hook(2)])
    with steering.steer(lm, 1, v, alpha=3.0):
        inside = run_with_cache(lm.model, ids, [resid_hook(1)])
    delta = inside[resid_hook(1)] - before[resid_hook(1)]
    assert torch.allclose(delta, (3.0 * v / v.norm()).expand_as(delta), atol=1e-5)
    after = run_with_cache(lm.model, ids, [resid_hook(1), resid_hook(2)])
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="zero norm"):
        with steering.steer(lm, 1, torch.zeros(lm.d_model), 1.0):
            pass


def test_last_token_states_and_logit_diff_do_not_depend_on_batching():
    lm = load_model("tiny-llama")
    prompts = ["a b c d e", "f", "g h i"]
    together = steering.last_token_states(lm, prompts, 2, batch_size=3)
    alone = torch.cat([steering.last_token_states(lm, [p], 2) for p in prompts])
    assert torch.allclose(together, alone, atol=1e-4)
    tok = lm.tokenizer
    one = [t for t in ("a", "b", "c") if len(tok(t, add_special_tokens=False)["input_ids"]) == 1]
    d = steering.logit_diff(lm, prompts, one[0], one[1], batch_size=2)
    assert d.shape == (3,) and torch.allclose(d, torch.cat(
        [steering.logit_diff(lm, [p], one[0], one[1]) for p in prompts]), atol=1e-4)
    with pytest.raises(ValueError, match="layer=9 is out of range"):
        steering.last_token_states(lm, prompts, 9)
    with pytest.raises(ValueError, match="tokenize to nothing"):
        steering.last_token_states(lm, ["ok", ""], 1)


def test_behaviour_files_load_and_split_without_overlap():
    from resa_utils import steering

    names = steering.behaviour_names()
    assert len(names) >= 4
    for name in names:
        b = steering.load_behaviour(name)
        assert len(b.pos) >= 64 and len(b.neg) >= 64 and "{text}" in b.template
        assert not set(b.pos) & set(b.neg)
        fp, fn, ep, en = b.split(48, seed=0)
        assert len(fp) == len(fn) == 48 and len(ep) == len(b.pos) - 48 and len(en) == len(b.neg) - 48
        assert not set(fp) & set(ep) and not set(fn) & set(en)
        assert fp == b.split(48, seed=0)[0] and fp != b.split(48, seed=1)[0]  # seeded
        assert all(p.startswith(b.template.split("{text}")[0]) for p in fp)
    with pytest.raises(ValueError, match="held-out"):
        steering.load_behaviour(names[0]).split(64, seed=0)
    with pytest.raises(ValueError, match="unknown behaviour"):
        steering.load_behaviour("no-such-behaviour")


def test_random_like_and_token_ids_in_logit_diff(tiny_lm):
    from resa_utils import steering

    v = torch.randn(tiny_lm.d_model)
    r = steering.random_like(v, seed=3)
    assert torch.isclose(r.norm(), v.norm()) and torch.equal(r, steering.random_like(v, seed=3))
    ids = tiny_lm.tokenizer(" the", add_special_tokens=False)["input_ids"]
    prompts = ["Once upon a time", "The cat sat"]
    by_id = steering.logit_diff(tiny_lm, prompts, ids[0], 5)
    assert by_id.shape == (2,) and torch.isfinite(by_id).all()
    assert torch.allclose(by_id, -steering.logit_diff(tiny_lm, prompts, 5, ids[0]))
