"""Adapter models by name: registered from a trained LoRA, loaded by `load_model` as base +
merged adapter (same outputs as the peft model), checked against their base, and a clear error
for a name notebook 00 has not made yet."""

import pytest
import torch

from resa_utils.lm import adapters
from resa_utils.lm.lora import LoraTrainConfig, train_lora
from resa_utils.lm.models import check_layer, load_model, resolve_model_name

EXAMPLES = [(f"Q: {a} plus {b}?", f" A: {a + b}.") for a, b in [(1, 2), (3, 4), (5, 6)]] * 4


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _trained(tmp_path, name="tiny-llama"):
    lm = load_model(name)
    cfg = LoraTrainConfig(r=4, alpha=8, lr=1e-2, max_steps=3, batch_size=4, warmup_ratio=0.0)
    res = train_lora(lm, EXAMPLES, cfg, tmp_path / f"train-{name}", progress=False)
    return lm, res


def test_registered_adapter_loads_by_name_with_the_same_outputs(cache):
    lm, res = _trained(cache)
    ids = lm.tokenizer("Q: 2 plus 2?", return_tensors="pt").input_ids
    with torch.no_grad():
        want = lm.model(input_ids=ids).logits
    adapters.register_adapter("tiny-llama-reasoner", lm, res.adapter_dir, {"stage": "test"})
    assert adapters.registered() == ["tiny-llama-reasoner"]
    assert resolve_model_name("tiny-llama-reasoner") == "tiny-llama-reasoner"
    assert check_layer("tiny-llama-reasoner", 3) == 3
    got_lm = load_model("tiny-llama-reasoner")
    assert got_lm.name == "tiny-llama-reasoner" and got_lm.base_name == "tiny-llama"
    assert not hasattr(got_lm.model, "peft_config")  # merged: a plain model
    with torch.no_grad():
        got = got_lm.model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    base = load_model("tiny-llama")
    with torch.no_grad():
        assert not torch.allclose(base.model(input_ids=ids).logits, want, atol=1e-4)


def test_adapter_on_the_wrong_base_names_both(cache):
    lm, res = _trained(cache)
    adapters.register_adapter("tiny-llama-reasoner", lm, res.adapter_dir)
    other = load_model("tiny-qwen2")
    with pytest.raises(ValueError, match=r"trained on base model 'tiny-llama'.*not on 'tiny-qwen2'"):
        adapters.attach_adapter(other, adapters.adapter_path("tiny-llama-reasoner"))


def test_unmade_reasoner_names_say_how_to_make_them(cache):
    with pytest.raises(ValueError, match="made by notebook 00.*base_model=smollm2-135m-instruct"):
        resolve_model_name("smollm2-135m-instruct-reasoner-early")
    with pytest.raises(ValueError, match="registry model"):
        lm, res = _trained(cache)
        adapters.register_adapter("tiny-llama", lm, res.adapter_dir)


def test_a_hub_id_ending_in_reasoner_passes_through(cache):
    assert resolve_model_name("some-org/tiny-reasoner") == "some-org/tiny-reasoner"


def test_scaled_adapters_scale_the_weight_change(cache):
    """A dose-response of a distillation: the merged weights of `register_scaled(s)` are
    base + s * (reasoner - base), exactly (LoRA B scaled); s = 0 is the base."""
    lm, res = _trained(cache)
    adapters.register_adapter("tiny-llama-reasoner", lm, res.adapter_dir)
    base = dict(load_model("tiny-llama").model.named_parameters())
    full = dict(load_model("tiny-llama-reasoner").model.named_parameters())
    changed = [n for n in base if not torch.equal(base[n], full[n])]
    assert changed
    for s in (0.0, 2.0):
        adapters.register_scaled(f"tiny-llama-reasoner-x{s:g}", "tiny-llama-reasoner", s)
        got = dict(load_model(f"tiny-llama-reasoner-x{s:g}").model.named_parameters())
        for n in changed:
            assert torch.allclose(got[n] - base[n], s * (full[n] - base[n]), atol=1e-6), n
    meta = adapters.read_json(adapters.adapter_path("tiny-llama-reasoner-x2") / adapters.META)
    assert meta["scale"] == 2.0 and meta["scaled_from"] == "tiny-llama-reasoner" and meta["base"] == "tiny-llama"
    for bad in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="scale"):
            adapters.register_scaled("tiny-llama-reasoner-bad", "tiny-llama-reasoner", bad)
    with pytest.raises(ValueError, match="not a registered adapter"):
        adapters.register_scaled("x", "tiny-llama-nothing", 2.0)


def test_full_models_register_load_and_scale(cache):
    """A fully fine-tuned model registers as "full" and loads with its own weights; a scaled
    model of it is base + s * (full - base), computed on load, and stores no weights."""
    lm = load_model("tiny-llama")
    cfg = LoraTrainConfig(finetune="full", lr=1e-2, max_steps=3, batch_size=4, warmup_ratio=0.0)
    res = train_lora(lm, EXAMPLES, cfg, cache / "full", progress=False)
    adapters.register_adapter("tiny-llama-reasoner", load_model("tiny-llama"), res.adapter_dir, {"stage": "test"})
    assert adapters.kind_of("tiny-llama-reasoner") == "full"
    got = load_model("tiny-llama-reasoner")
    assert got.name == "tiny-llama-reasoner" and got.base_name == "tiny-llama"
    want = dict(lm.model.named_parameters())
    assert all(torch.equal(p, want[n]) for n, p in got.model.named_parameters())
    base = dict(load_model("tiny-llama").model.named_parameters())
    adapters.register_scaled("tiny-llama-reasoner-x0.5", "tiny-llama-reasoner", 0.5)
    assert adapters.kind_of("tiny-llama-reasoner-x0.5") == "scaled"
    assert not list(adapters.adapter_path("tiny-llama-reasoner-x0.5").glob("*.safetensors"))
    half = dict(load_model("tiny-llama-reasoner-x0.5").model.named_parameters())
    assert all(torch.allclose(half[n] - base[n], 0.5 * (want[n] - base[n]), atol=1e-6) for n in base)
    with pytest.raises(ValueError, match="scaled model"):
        adapters.attach_adapter(load_model("tiny-llama"), adapters.adapter_path("tiny-llama-reasoner-x0.5"))
    with pytest.raises(ValueError, match="neither a peft adapter"):
        adapters.register_adapter("tiny-llama-x", lm, cache)


def test_every_name_notebook_00_makes_says_how_to_make_it(cache):
    for suffix in ("-reasoner", "-reasoner-early", "-reasoner-seed1", "-reasoner-x0.5", "-reasoner-x4"):
        with pytest.raises(ValueError, match="made by notebook 00.*base_model=smollm2-135m-instruct`"):
            resolve_model_name("smollm2-135m-instruct" + suffix)
