"""Resa's SAE-Tuning: the splice, the KL to the frozen target, gradients on LoRA only, the merge,
the data packing, the refusals before compute, and the reasoning-feature count."""

import pytest
import torch

from resa_utils.methods import sae_tuning as S
from resa_utils.lm.activations import run_with_cache, resid_hook
from resa_utils.lm.lora import LoraTrainConfig, add_lora
from resa_utils.lm.models import load_model
from resa_utils.sae import SAE, SAEConfig
from resa_utils.data.tasks import split_problems


def _sae(d: int, seed: int = 0, k: int = 4) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d, d_sae=32, architecture="topk", k=k)).init_weights(g)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=g)
    return sae


def _cfg(**kw):
    return LoraTrainConfig(**{"r": 4, "alpha": 8, "lr": 1e-2, "max_steps": 6, "batch_size": 2,
                              "save_steps": 3, "logging_steps": 1, "warmup_ratio": 0.0, **kw})


def _chunks(lm, n_problems: int = 12, length: int = 32) -> torch.Tensor:
    probs, _ = split_problems("chain_sum", n_problems, 2, seed=0)
    return S.pack_chunks(lm.tokenizer, S.tuning_texts(probs), length)


def test_splice_makes_the_block_output_the_reconstruction_and_is_removed():
    lm = load_model("tiny-llama")
    sae = _sae(lm.d_model)
    ids = _chunks(lm)[:2]
    hook = resid_hook(1)
    clean = lm.model(input_ids=ids).logits
    with S.sae_spliced(lm.model, 1, sae):
        seen = run_with_cache(lm.model, ids, [hook])[hook]
        pre = run_with_cache(lm.model, ids, [resid_hook(0)])  # the block's input is untouched
    raw = run_with_cache(lm.model, ids, [hook])[hook]
    torch.testing.assert_close(seen, sae(raw))            # output = reconstruction, no error term
    assert not torch.allclose(seen, raw)
    assert torch.equal(pre[resid_hook(0)], run_with_cache(lm.model, ids, [resid_hook(0)])[resid_hook(0)])
    assert torch.equal(lm.model(input_ids=ids).logits, clean)  # removed cleanly


def test_kl_is_zero_at_init_without_the_sae_and_positive_with_it():
    lm = load_model("tiny-llama")
    ids = _chunks(lm)[:2]
    model = add_lora(lm.model, _cfg())
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    assert float(S.kl_loss_fn(1, None)(model, batch)) == 0.0
    assert float(S.kl_loss_fn(1, _sae(lm.d_model))(model, batch)) > 1e-4
    # the KL itself: zero for equal logits, and equal to a direct computation otherwise
    a, b = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    want = (a.softmax(-1) * (a.log_softmax(-1) - b.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(S.kl_to_teacher(b, a), want)
    assert float(S.kl_to_teacher(a, a)) == pytest.approx(0.0, abs=1e-7)
    # its analytic gradient equals autograd's, is exactly zero for equal logits, and skips masked tokens
    s1, s2 = b.clone().requires_grad_(), b.clone().requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    S.kl_to_teacher(s1, a, mask).backward()
    m = mask.float() / mask.sum()
    ((a.softmax(-1) * (a.log_softmax(-1) - s2.log_softmax(-1))).sum(-1) * m).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    assert float(s1.grad[0, 2].abs().max()) == 0.0
    same = a.clone().requires_grad_()
    S.kl_to_teacher(same, a).backward()
    assert float(same.grad.abs().max()) == 0.0


def test_gradients_reach_lora_parameters_only():
    lm = load_model("tiny-llama")
    sae = _sae(lm.d_model)
    ids = _chunks(lm)[:2]
    model = add_lora(lm.model, _cfg())
    with torch.no_grad():  # B = 0 at init: give it weight so A gets a gradient too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    loss = S.kl_loss_fn(1, sae)(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    loss.backward()
    graded = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert graded and all("lora_" in n for n in graded)
    # LoRA before the splice gets gradient through the SAE, not only the blocks after it
    assert any(".layers.0." in n for n in graded)
    assert all(p.grad is None for p in sae.parameters())


def test_sae_tuning_lowers_the_kl_then_merges_to_the_same_logits(tmp_path):
    lm = load_model("tiny-llama")
    sae = _sae(lm.d_model)
    chunks = _chunks(lm, 24)
    teacher = lm.model(input_ids=chunks[:2]).logits
    res = S.sae_tune(lm, chunks, _cfg(max_steps=10), tmp_path / "t", sae, 1, progress=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert res.flops == pytest.approx(6.0 * sum(p.numel() for p in lm.model.parameters()) * res.tokens)
    on = lm.model(input_ids=chunks[:2]).logits               # adapter on, no SAE
    assert not torch.allclose(on, teacher)
    S.merge_adapter(lm)
    assert not hasattr(lm.model, "peft_config")
    torch.testing.assert_close(lm.model(input_ids=chunks[:2]).logits, on, atol=1e-4, rtol=1e-4)
    # a rerun on the same data and config returns the finished adapter without training
    lm2 = load_model("tiny-llama")
    again = S.sae_tune(lm2, chunks, _cfg(max_steps=10), tmp_path / "t", sae, 1, progress=False)
    assert again.history == res.history
    torch.testing.assert_close(S.merge_adapter(lm2).model(input_ids=chunks[:2]).logits, on, atol=1e-4, rtol=1e-4)


def test_kl_without_the_sae_is_a_no_op(tmp_path):
    lm = load_model("tiny-llama")
    chunks = _chunks(lm)
    clean = lm.model(input_ids=chunks[:2]).logits
    res = S.sae_tune(lm, chunks, _cfg(max_steps=4), tmp_path / "n", None, 1, progress=False)
    assert all(r["loss"] == 0.0 for r in res.history)
    assert all(float(p.abs().max()) == 0 for n, p in lm.model.named_parameters() if "lora_B" in n)
    assert torch.equal(S.merge_adapter(lm).model(input_ids=chunks[:2]).logits, clean)


def test_ce_option_and_heldout_losses(tmp_path):
    lm = load_model("tiny-llama")
    sae = _sae(lm.d_model)
    chunks = _chunks(lm, 24)
    res = S.sae_tune(lm, chunks, _cfg(max_steps=6), tmp_path / "c", sae, 1, loss="ce", progress=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    kl = S.heldout_loss(lm, chunks[:3], 1, sae, "kl")
    ce = S.heldout_loss(lm, chunks[:3], 1, None, "ce")
    assert kl > 0 and ce > 0
    with pytest.raises(ValueError, match="loss="):
        S.sae_tune(lm, chunks, _cfg(), tmp_path / "x", sae, 1, loss="mse")


def test_packing_joins_texts_with_eos_into_full_chunks():
    tok = load_model("tiny-llama").tokenizer
    texts = ["one two three", "four five", "six"]
    ids = []
    for t in texts:
        ids += tok(t)["input_ids"] + [tok.eos_token_id]
    chunks = S.pack_chunks(tok, texts, 4)
    assert chunks.shape == (len(ids) // 4, 4)
    assert chunks.flatten().tolist() == ids[: chunks.numel()]
    with pytest.raises(ValueError, match="less than one chunk"):
        S.pack_chunks(tok, ["a"], 512)


def test_bad_inputs_are_refused_before_compute(tmp_path):
    lm = load_model("tiny-llama")
    with pytest.raises(ValueError, match="hidden size"):
        S.check_sae_fits(_sae(lm.d_model + 1), lm.model, 0)
    with pytest.raises(ValueError, match="out of range"):
        S.check_sae_fits(_sae(lm.d_model), lm.model, lm.n_layers)
    with pytest.raises(ValueError, match="empty"):
        S.sae_tune(lm, torch.zeros(0, 8, dtype=torch.long), _cfg(), tmp_path / "e", None, 0)
    # an adapter that does not match the model: a module it lacks, or another width
    from safetensors.torch import load_file, save_file
    S.sae_tune(lm, _chunks(lm), _cfg(max_steps=1), tmp_path / "g", None, 0, progress=False)
    folder = tmp_path / "g" / "adapter"
    S.check_adapter_fits(load_model("tiny-llama").model, folder)   # the matching one passes
    state = load_file(str(folder / "adapter_model.safetensors"))
    key = next(k for k in state if ".lora_A." in k and "q_proj" in k)
    save_file({**state, key: torch.zeros(4, lm.d_model + 8)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="features"):
        S.check_adapter_fits(load_model("tiny-llama").model, folder)
    save_file({k.replace("q_proj", "qq_proj"): v for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="does not have"):
        S.check_adapter_fits(load_model("tiny-llama").model, folder)
    with pytest.raises(FileNotFoundError):
        S.check_adapter_fits(lm.model, tmp_path)


def test_an_adapter_moves_to_a_sibling_model(tmp_path):
    lm = load_model("tiny-llama")
    chunks = _chunks(lm, 24)
    S.sae_tune(lm, chunks, _cfg(max_steps=3), tmp_path / "p", _sae(lm.d_model), 1, progress=False)
    on = lm.model(input_ids=chunks[:1]).logits
    sibling = S.attach_merged(load_model("tiny-llama"), tmp_path / "p" / "adapter")
    torch.testing.assert_close(sibling.model(input_ids=chunks[:1]).logits, on, atol=1e-4, rtol=1e-4)


def test_reasoning_features_are_active_at_tags_and_nowhere_else():
    lat = torch.zeros(5, 6)
    is_tag = torch.tensor([False, True, False, True, False])
    lat[1, 0] = lat[3, 0] = 1.0        # only at tags: counted
    lat[1, 1] = lat[2, 1] = 1.0        # at a tag and elsewhere: not
    lat[2, 2] = 1.0                    # elsewhere only: not
    lat[3, 3] = 2.0                    # at one tag only: counted
    lat[0, 4] = lat[3, 4] = 1.0        # at a tag, and at an ignored position: counted
    assert S.reasoning_features(lat, is_tag, ignore_T=torch.tensor([True, False, False, False, False])).tolist() == [0, 3, 4]
    assert S.reasoning_features(lat, is_tag).tolist() == [0, 3]


def test_tag_mask_marks_every_token_of_each_tag():
    tok = load_model("tiny-llama").tokenizer
    text = "think first <think> then </think> done"
    ids, is_tag = S.tag_mask(tok, text)
    tagged = tok.decode(ids[is_tag].tolist()).replace(" ", "")
    assert tagged == "<think></think>"
    with pytest.raises(ValueError, match="none of the tags"):
        S.tag_mask(tok, "no tags here")


def test_spearman_interval():
    out = S.spearman_interval([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    assert out["low"] < out["rho"] < out["high"] and out["rho"] == pytest.approx(0.8286, abs=1e-3)
    assert S.spearman_interval([1, 2, 3], [3, 2, 1])["rho"] == pytest.approx(-1.0)
