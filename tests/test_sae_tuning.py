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


@pytest.mark.parametrize("through_sae", [False, True])
def test_gradients_reach_lora_parameters_only_and_before_the_splice_only_through_the_sae(through_sae):
    lm = load_model("tiny-llama")
    sae = _sae(lm.d_model)
    ids = _chunks(lm)[:2]
    model = add_lora(lm.model, _cfg())
    with torch.no_grad():  # B = 0 at init: give it weight so A gets a gradient too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    loss = S.kl_loss_fn(1, sae, through_sae=through_sae)(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    loss.backward()
    graded = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert graded and all("lora_" in n for n in graded)
    before = {n for n in graded if ".layers.0." in n or ".layers.1." in n}
    assert any(".layers.2." in n for n in graded)             # after the splice: always
    # before the splice (blocks 0 and 1): only when the gradient runs through the SAE; the authors'
    # no-grad splice leaves those adapters at their initial values
    assert bool(before) == through_sae
    assert all(p.grad is None for p in sae.parameters())


def test_sae_tuning_lowers_the_kl_then_merges_to_the_same_logits(tmp_path):
    lm = load_model("tiny-llama")
    sae = _sae(lm.d_model)
    chunks = _chunks(lm, 24)
    teacher = lm.model(input_ids=chunks[:2]).logits
    before = S.heldout_loss(lm, chunks[:8], 1, sae, "kl")       # a plain model: the spliced KL
    res = S.sae_tune(lm, chunks, _cfg(max_steps=10), tmp_path / "t", sae, 1, progress=False)
    assert S.heldout_loss(lm, chunks[:8], 1, sae, "kl") < before  # the LoRA after the splice undoes part of the SAE
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


# --------------------------------------------------------------------------- notebook 01's steps

import json  # noqa: E402

import pandas as pd  # noqa: E402

from resa_utils.data import tasks as T  # noqa: E402
from resa_utils.methods import distill  # noqa: E402


def _answers(k: int, n: int) -> pd.DataFrame:
    """A graded-answers frame: `k` of `n` strictly correct, 10 tokens each."""
    return pd.DataFrame({"uid": [f"u{i}" for i in range(n)], "answer": ["1"] * n, "text": [f"out {i}" for i in range(n)],
                         "correct": [True] * k + [False] * (n - k), "lenient": [True] * k + [False] * (n - k),
                         "n_tokens": [10] * n, **{w: [0] * n for w in T.REFLECTION_PHRASES}})


def test_evaluator_names_its_sweep_files_records_and_keys_batches_by_the_weights(tmp_path):
    lm = load_model("tiny-llama")
    _, probs = split_problems("chain_sum", 2, 3, seed=0)
    recorded = {}
    ev = S.Evaluator(probs, distill.TaskPrompt(lm.tokenizer), lambda name: tmp_path / f"{name}.jsonl",
                     {"seed": 0}, 2, 2, record=recorded.update)
    out = ev("tgt", lm, n=2, verbose=False)
    assert len(out.answers) == 2 and ev.done["tgt"] is out and out.row["n"] == 2
    assert recorded == {"tgt/pass@1": out.row["pass@1"], "tgt/mean_tokens": out.row["mean tokens"]}
    path = tmp_path / "eval_tgt.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["setup"]["weights"] for r in rows} == {S.weights_fingerprint(lm.model)}
    assert {r["setup"]["model"] for r in rows} == {"tgt"}
    stamp = path.read_text()
    ev("tgt", lm, n=2, verbose=False)                    # the same weights: the batch is reused
    assert path.read_text() == stamp
    old = S.weights_fingerprint(lm.model)
    with torch.no_grad():
        next(lm.model.parameters()).add_(1.0)            # other weights: evaluated again
    ev("tgt", lm, n=2, verbose=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["setup"]["weights"] for r in rows} == {S.weights_fingerprint(lm.model)} != {old}
    assert len(ev("tgt", lm, verbose=False).answers) == 3  # n=None: every problem


def test_harvest_and_train_saes_resume_and_retrain_a_lost_sae(tmp_path, monkeypatch):
    import resa_utils.sae.train as train_mod
    from resa_utils.sae import TrainConfig

    lm = load_model("tiny-llama")
    chunks = _chunks(lm, 24)
    hooks = {"source": [resid_hook(0), resid_hook(1)], "target": [resid_hook(1)]}
    caches, secs = {}, {}
    for who in hooks:
        caches[who], secs[who] = S.harvest(tmp_path / f"acts_{who}", lm, chunks[:3], chunks[3:4], hooks[who])
    assert caches["source"][0].folder.name == "acts_source_train" and caches["source"][1].folder.name == "acts_source_eval"
    assert secs["source"] > 0 and 3 * (chunks.shape[1] - 1) <= caches["source"][0].n_tokens < chunks[:3].numel()  # BOS left out
    assert 0 < caches["source"][1].n_tokens <= chunks.shape[1] and caches["target"][0].n_tokens == caches["source"][0].n_tokens
    cfg = TrainConfig(method="topk", d_sae=16, k=2, aux_coefficient=0.0, batch_size=16, n_tokens=64, seed=0)
    out = S.train_saes(tmp_path / "saes.jsonl", caches, hooks, cfg, tmp_path / "saes")
    assert list(out.saes) == [("source", resid_hook(0)), ("source", resid_hook(1)), ("target", resid_hook(1))]
    assert out.rows[["model", "hook"]].values.tolist() == [list(k) for k in out.saes]
    assert all(s.cfg.d_sae == 16 and s.cfg.d_in == lm.d_model for s in out.saes.values())
    calls = []
    real = train_mod.train_cache_job
    monkeypatch.setattr(train_mod, "train_cache_job", lambda c, jobs: calls.append(c["hook"]) or real(c, jobs))
    S.train_saes(tmp_path / "saes.jsonl", caches, hooks, cfg, tmp_path / "saes")
    assert calls == []                                   # every SAE is reused
    lost = next((tmp_path / "saes").glob(f"sae_target_{resid_hook(1)}_*"))
    (lost / "cfg.json").unlink()
    S.train_saes(tmp_path / "saes.jsonl", caches, hooks, cfg, tmp_path / "saes")
    assert calls == [resid_hook(1)] and (lost / "cfg.json").exists()


class _Identity:
    """An 'SAE' whose latents are its input, so a test can place latents directly."""

    def encode(self, x):
        return x


def test_reasoning_feature_table_counts_per_layer_and_skips_the_first_token():
    is_tag = torch.tensor([False, True, False, True])
    a = torch.zeros(4, 5)
    a[1, 0] = a[3, 1] = 1.0        # two latents only at tags
    a[0, 2] = a[1, 2] = 1.0        # at a tag and at the skipped first token: counted
    a[1, 3] = a[2, 3] = 1.0        # at a tag and elsewhere: not counted, but active at a tag
    b = torch.zeros(4, 5)
    b[2, 0] = 1.0                  # nothing at the tags
    out = S.reasoning_feature_table({3: _Identity(), 8: _Identity()}, {3: a, 8: b}, is_tag)
    assert out.layer.tolist() == [3, 8] and out["reasoning features"].tolist() == [3, 0]
    assert out["latents active at tags"].tolist() == [4, 0] and out.features.tolist() == [[0, 1, 2], []]


def test_noop_check_measures_an_exact_no_op(tmp_path):
    lm = load_model("tiny-llama")
    chunks = _chunks(lm)
    out = S.noop_check(lm, chunks, chunks[:2], _cfg(max_steps=2), tmp_path / "n", 1)
    assert (out.steps, out.max_loss, out.b_max, out.logit_change) == (2, 0.0, 0.0, 0.0) and out.holds
    assert not hasattr(lm.model, "peft_config")
    assert not S.NoopCheck(2, 0.0, 1e-3, 0.0).holds and not S.NoopCheck(2, 0.0, 0.0, 1e-6).holds


def test_per_layer_table_pairs_accuracy_with_feature_counts():
    features = pd.DataFrame({"layer": [3, 8], "reasoning features": [5, 2]})
    out = S.per_layer_table({3: _answers(4, 8), 8: _answers(0, 8)}, features)
    assert out.columns.tolist() == ["layer", "pass@1", "ci_low", "ci_high", "reasoning features"]
    assert out["pass@1"].tolist() == [0.5, 0.0] and out["reasoning features"].tolist() == [5, 2]
    lo, hi = T.wilson(4, 8)
    assert (out.ci_low[0], out.ci_high[0]) == (lo, hi)


def test_examples_text_groups_each_question():
    probs, _ = split_problems("chain_sum", 2, 2, seed=0)
    shown = pd.DataFrame({"model": ["a", "b", "a"], "uid": [probs[0].uid, probs[0].uid, probs[1].uid],
                          "answer": ["1", "1", "2"], "correct": [True, False, True], "output": [" x ", "y" * 500, "z"]})
    text = S.examples_text(shown, probs)
    assert text.count("=" * 100) == 2 and probs[0].question in text
    assert "--- a (correct):\nx" in text and "--- b (wrong):\n" + "y" * 400 + "\n" in text


# --------------------------------------------------------------------------- content rows (issue 30)

from dataclasses import asdict  # noqa: E402

from resa_utils.lm.content import ContentRule  # noqa: E402


def test_the_splice_leaves_the_rules_positions_clean():
    lm = load_model("tiny-llama")
    sae = _sae(lm.d_model)
    chunks = _chunks(lm)
    inside = torch.isin(chunks, torch.tensor(lm.tokenizer.all_special_ids))[:, 1:].any(1)
    ids = torch.cat([chunks[inside][:1], chunks[~inside][:1]])   # one chunk holds EOS / BOS inside, one not
    hook = resid_hook(1)
    raw = run_with_cache(lm.model, ids, [hook])[hook]
    special = torch.isin(ids, torch.tensor(lm.tokenizer.all_special_ids))
    assert special[0, 1:].any() and len(ids) == 2
    rule = ContentRule(max_norm_ratio=1.01)                       # a tight ratio: some content rows are outliers
    with S.sae_spliced(lm.model, 1, sae, rule, ids, lm.tokenizer):
        seen = run_with_cache(lm.model, ids, [hook])[hook]
    clean = (seen == raw).all(-1)
    recon = torch.isclose(seen, sae(raw), atol=1e-5).all(-1)
    assert clean[:, 0].all() and clean[special].all()             # position 0 (the sink) and special tokens
    content = ~special
    content[:, 0] = False
    norms = raw.norm(dim=-1)
    outlier = content & (norms > 1.01 * norms[content].median())
    assert outlier.any() and (content & ~outlier).any()
    assert clean[outlier].all() and recon[content & ~outlier].all() and not recon[outlier].any()
    # the rule off splices every position, as no rule does
    with S.sae_spliced(lm.model, 1, sae, S.RULE_OFF, ids, lm.tokenizer):
        torch.testing.assert_close(run_with_cache(lm.model, ids, [hook])[hook], sae(raw))
    with pytest.raises(ValueError, match="input_ids"):
        with S.sae_spliced(lm.model, 1, sae, ContentRule()):
            pass


def test_kl_through_the_splice_under_the_rule_keeps_the_no_op_and_differs_from_the_rule_off():
    lm = load_model("tiny-llama")
    sae = _sae(lm.d_model)
    ids = _chunks(lm)[:2]
    model = add_lora(lm.model, _cfg())
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    tok = lm.tokenizer
    assert float(S.kl_loss_fn(1, None, ContentRule(), tok)(model, batch)) == 0.0
    on = float(S.kl_loss_fn(1, sae, ContentRule(), tok)(model, batch))
    off = float(S.kl_loss_fn(1, sae, S.RULE_OFF, tok)(model, batch))
    assert on > 1e-4 and off > 1e-4 and on != pytest.approx(off)
    assert off == pytest.approx(float(S.kl_loss_fn(1, sae)(model, batch)))      # rule off = no rule


def test_spliced_kl_leaves_the_sink_clean_and_matches_the_heldout_kl():
    lm = load_model("tiny-llama")
    sae = _sae(lm.d_model)
    chunks = _chunks(lm, 24)
    rules = {"on": ContentRule(), "off": S.RULE_OFF}
    first = S.spliced_kl(lm, chunks[:3, :1], 1, sae, rules)      # one position: the window start only
    assert first["on"] == 0.0 and first["off"] > 0                # clean under the rule, spliced with it off
    kl = S.spliced_kl(lm, chunks[:5], 1, sae, rules, batch_size=2)
    assert kl["on"] > 0 and kl["off"] > 0 and kl["on"] != pytest.approx(kl["off"])
    # on a plain model, the held-out KL is the same quantity (equal-length chunks)
    assert kl["on"] == pytest.approx(S.heldout_loss(lm, chunks[:5], 1, sae, "kl", 2, ContentRule()), rel=1e-5)
    assert kl["off"] == pytest.approx(S.heldout_loss(lm, chunks[:5], 1, sae, "kl", 2, S.RULE_OFF), rel=1e-5)


def test_a_tuning_run_under_another_rule_is_not_reused(tmp_path):
    chunks = _chunks(load_model("tiny-llama"), 24)
    sae = _sae(64)
    runs = {}
    for name, rule in (("on", ContentRule()), ("off", S.RULE_OFF), ("on again", ContentRule())):
        lm = load_model("tiny-llama")
        runs[name] = S.sae_tune(lm, chunks, _cfg(max_steps=3), tmp_path / "t", sae, 1, progress=False, rule=rule)
    assert runs["on"].history != runs["off"].history               # trained again, on other losses
    assert runs["on again"].history[0]["loss"] == pytest.approx(runs["on"].history[0]["loss"])
    key = json.loads((tmp_path / "t" / "run_key.json").read_text())
    assert key["extra"]["content_rule"] == asdict(ContentRule())


def test_train_saes_puts_the_rule_in_each_config_and_keeps_the_sink_out(tmp_path, monkeypatch):
    import resa_utils.sae.train as train_mod
    from resa_utils.sae import TrainConfig

    lm = load_model("tiny-llama")
    chunks = _chunks(lm, 24)
    hooks = {"source": [resid_hook(1)]}
    caches = {"source": S.harvest(tmp_path / "acts", lm, chunks[:3], chunks[3:5], hooks["source"])[0]}
    cfg = TrainConfig(method="topk", d_sae=16, k=2, aux_coefficient=0.0, batch_size=16, n_tokens=64, seed=0)
    jobs_seen = []
    real = train_mod.train_cache_job
    monkeypatch.setattr(train_mod, "train_cache_job", lambda c, jobs: jobs_seen.append(jobs[_key(c)]) or real(c, jobs))
    on = S.train_saes(tmp_path / "saes.jsonl", caches, hooks, cfg, tmp_path / "saes", ContentRule())
    off = S.train_saes(tmp_path / "saes.jsonl", caches, hooks, cfg, tmp_path / "saes", S.RULE_OFF)
    assert on.rows.content_rule.tolist() == [asdict(ContentRule())] and off.rows.content_rule.tolist() == [asdict(S.RULE_OFF)]
    assert [j.rule for j in jobs_seen] == [ContentRule(), S.RULE_OFF]   # the rule off was trained, not reused
    assert jobs_seen[0].save_dir != jobs_seen[1].save_dir
    # the rows the rule's job reads: no window start, no special token (the sink and BOS / EOS stay out)
    from resa_utils.lm.activations import ActivationCache, content_rows
    cache = ActivationCache(jobs_seen[0].train_dir)
    kept, left = content_rows(cache, resid_hook(1), jobs_seen[0].rule)
    bos, special = lm.tokenizer.bos_token_id, torch.tensor(lm.tokenizer.all_special_ids)
    starts_with_bos = chunks[:3, 0] == bos                        # the harvest drops a leading BOS itself
    first_rows = (torch.arange(3) * chunks.shape[1] - torch.cumsum(starts_with_bos.long(), 0) + starts_with_bos.long())
    sinks = first_rows[~starts_with_bos]                          # window starts on an ordinary token
    assert len(sinks) >= 1
    assert left.by_position == len(sinks) + int(torch.isin(chunks[:3, 1:], special).sum())
    full, rows = cache.load(resid_hook(1)), kept.load(resid_hook(1))
    assert rows.shape[0] == left.kept < full.shape[0]
    assert not any(torch.isclose(rows, full[i]).all(-1).any() for i in sinks.tolist())   # no sink row is trained on
    assert on.rows.fvu.iloc[0] != pytest.approx(off.rows.fvu.iloc[0])


def _key(config: dict) -> str:
    from resa_utils.core.sweep import config_key
    return config_key(config)


def test_reasoning_feature_table_skips_the_positions_the_rule_leaves_out():
    is_tag = torch.tensor([False, True, False, False, True, False])
    ids = torch.tensor([5, 6, 7, 2, 8, 9])       # 2: a special token (EOS)
    a = torch.zeros(6, 6)
    a[:, 5] = 1.0                                # a latent active everywhere: never a reasoning feature
    a[1, 0] = a[3, 0] = 1.0                      # at a tag and at the special token
    a[4, 1] = a[2, 1] = 1.0                      # at a tag and at a massive row
    a[2, 5] = 50.0                               # position 2: ~35x the median norm
    plain = S.reasoning_feature_table({3: _Identity()}, {3: a}, is_tag)
    assert plain.features.iloc[0] == []          # 0 and 1 also fire elsewhere
    ruled = S.reasoning_feature_table({3: _Identity()}, {3: a}, is_tag, ids, [2], ContentRule())
    assert ruled.features.iloc[0] == [0, 1] and ruled["reasoning features"].iloc[0] == 2
    off = S.reasoning_feature_table({3: _Identity()}, {3: a}, is_tag, ids, [2], S.RULE_OFF)
    assert off.features.iloc[0] == []            # the rule off: only the first token is skipped
    with pytest.raises(ValueError, match="ids_T"):
        S.reasoning_feature_table({3: _Identity()}, {3: a}, is_tag, rule=ContentRule())
