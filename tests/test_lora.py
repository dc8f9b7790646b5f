"""The shared LoRA path: response-only labels, only adapter weights train, the loss falls, and a
killed training resumes from its checkpoint to the same adapter."""

import shutil

import pytest
import torch

from resa_utils.lm.lora import LoraTrainConfig, tokenize_examples, train_lora
from resa_utils.lm.models import load_model

EXAMPLES = [(f"Q: {a} plus {b}?", f" A: {a + b}.") for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]] * 4


def test_labels_cover_the_response_only():
    tok = load_model("tiny-llama").tokenizer
    row = tokenize_examples(tok, [("Q: 1 plus 2?", " A: 3.")], 64)[0]
    n_prompt = len(tok("Q: 1 plus 2?")["input_ids"])
    assert row["labels"][:n_prompt] == [-100] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    with pytest.raises(ValueError, match="no training example"):
        tokenize_examples(tok, [("Q: 1 plus 2?", " A: 3.")], 2)


def _cfg(**kw):
    return LoraTrainConfig(**{"r": 4, "alpha": 8, "lr": 5e-3, "max_steps": 8, "batch_size": 4,
                              "save_steps": 4, "logging_steps": 1, "warmup_ratio": 0.0, **kw})


def test_only_adapters_train_and_the_loss_falls(tmp_path):
    lm = load_model("tiny-llama")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    res = train_lora(lm, EXAMPLES, _cfg(), tmp_path, progress=False)
    assert res.history[0]["loss"] > res.history[-1]["loss"]
    for n, p in lm.model.named_parameters():
        base = n.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" in n:
            assert p.requires_grad
        else:
            assert not p.requires_grad and torch.equal(p, before[base]), n
    assert (res.adapter_dir / "adapter_model.safetensors").exists() and res.flops > 0


def test_killed_training_resumes_to_the_same_adapter(tmp_path):
    from safetensors.torch import load_file

    full = train_lora(load_model("tiny-llama"), EXAMPLES, _cfg(), tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train_lora(load_model("tiny-llama"), EXAMPLES, _cfg(), part, progress=False)
    # as if killed after step 4: only the step-4 checkpoint remains
    (part / "result.json").unlink()
    shutil.rmtree(part / "adapter")
    shutil.rmtree(part / "checkpoints" / "checkpoint-8")
    resumed = train_lora(load_model("tiny-llama"), EXAMPLES, _cfg(), part, progress=False)
    # the resumed run's cost includes the first half's training time
    first_half = __import__("json").loads((part / "checkpoints" / "checkpoint-4" / "resa_elapsed.json").read_text())
    assert resumed.seconds > first_half["seconds"] > 0
    a = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    again = train_lora(load_model("tiny-llama"), EXAMPLES, _cfg(), part, progress=False)
    assert again.history == resumed.history  # finished: loaded, not retrained


def test_new_examples_retrain_and_init_adapter_continues(tmp_path):
    from safetensors.torch import load_file

    first = train_lora(load_model("tiny-llama"), EXAMPLES, _cfg(), tmp_path / "a", progress=False)
    other = [(q, a.replace(".", "!")) for q, a in EXAMPLES]
    again = train_lora(load_model("tiny-llama"), other, _cfg(), tmp_path / "a", progress=False)
    assert again.history != first.history  # other data: trained afresh, not the cached adapter
    # continuing from an adapter: one step at a negligible lr stays next to it
    saved = load_file(str(again.adapter_dir / "adapter_model.safetensors"))
    cont = train_lora(load_model("tiny-llama"), EXAMPLES, _cfg(lr=1e-9, max_steps=1),
                      tmp_path / "c", progress=False, init_adapter=again.adapter_dir)
    got = load_file(str(cont.adapter_dir / "adapter_model.safetensors"))
    assert got.keys() == saved.keys()
    assert all(torch.allclose(got[k], saved[k], atol=1e-5) for k in got)
    with pytest.raises(ValueError, match="does not fit"):
        train_lora(load_model("tiny-llama"), EXAMPLES, _cfg(r=8, alpha=16), tmp_path / "d",
                   progress=False, init_adapter=again.adapter_dir)


def test_a_model_marked_gguf_quantised_still_trains(tmp_path):
    """Dequantised GGUF caches carry `quantization_config: gguf`, which Trainer refuses."""
    import json

    lm = load_model("tiny-llama")
    folder = tmp_path / "m"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gguf", "dequantize": False}
    (folder / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(str(folder))
    assert getattr(loaded.model.config, "quantization_config", None) is None
    res = train_lora(loaded, EXAMPLES, _cfg(max_steps=1), tmp_path / "out", progress=False)
    assert res.tokens > 0


def test_lora_speed_is_measured_on_the_real_path():
    from resa_utils.lm.lora import lora_tokens_per_s

    out = lora_tokens_per_s(load_model("tiny-llama"), EXAMPLES, _cfg(), steps=2)
    assert out["tokens/s"] > 0 and out["tokens_per_example"] > 1


def test_command_line_trains_the_same_adapter(tmp_path):
    from safetensors.torch import load_file

    from resa_utils.lm.lora import main, save_examples

    want = train_lora(load_model("tiny-llama"), EXAMPLES, _cfg(max_steps=2), tmp_path / "nb", progress=False)
    path = save_examples(tmp_path / "ex.jsonl", EXAMPLES, _cfg(max_steps=2))
    main(["--model", "tiny-llama", "--examples", str(path), "--out", str(tmp_path / "cli")])
    a = load_file(str(want.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cli" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("ratio", [0.0, 0.03])
def test_first_optimizer_step_runs_at_a_positive_lr(tmp_path, ratio):
    """One step from a fresh adapter (LoRA B starts at 0): with lr 0 on step 0, B would stay 0.
    A warm-up ratio that rounds to no whole step (0.03 of 1) must not cost the step either."""
    lm = load_model("tiny-llama")
    train_lora(lm, EXAMPLES, _cfg(max_steps=1, warmup_ratio=ratio), tmp_path, progress=False)
    b = [p for n, p in lm.model.named_parameters() if "lora_B" in n]
    assert b and max(float(p.detach().abs().max()) for p in b) > 0


def test_lr_schedule_warms_up_from_a_positive_lr_then_decays_or_stays():
    from resa_utils.lm.lora import lr_factor, warmup_steps

    lin = LoraTrainConfig(warmup_ratio=0.25)
    f = lr_factor(lin, 8)
    assert warmup_steps(lin, 8) == 2 and warmup_steps(lin, 3) == 0
    assert [round(f(s), 4) for s in range(8)] == [round(x, 4) for x in
                                                  [1 / 3, 2 / 3, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]]
    const = lr_factor(LoraTrainConfig(warmup_ratio=0.0, lr_schedule="constant"), 5)
    assert [const(s) for s in range(5)] == [1.0] * 5
    with pytest.raises(ValueError, match="lr_schedule"):
        LoraTrainConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="warmup_ratio"):
        LoraTrainConfig(warmup_ratio=1.5)


def test_full_finetuning_trains_every_weight_resumes_and_reloads(tmp_path):
    """finetune="full" goes through the same Trainer path: every weight moves, the loss falls, a
    killed run resumes to the same weights, a finished one is reloaded, and FLOPs count 6 N T."""
    from resa_utils.lm.lora import load_weights

    lm = load_model("tiny-llama")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    cfg = _cfg(finetune="full", lr=1e-3, keep_steps=(2,))
    res = train_lora(lm, EXAMPLES, cfg, tmp_path / "a", progress=False)
    assert res.history[0]["loss"] > res.history[-1]["loss"] and (res.adapter_dir / "model.safetensors").exists()
    moved = [n for n, p in lm.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)
    n_params = sum(p.numel() for p in lm.model.parameters())
    assert res.flops == pytest.approx(6 * n_params * res.tokens)
    assert (tmp_path / "a" / "step-2" / "model.safetensors").exists()
    part = tmp_path / "b"
    train_lora(load_model("tiny-llama"), EXAMPLES, cfg, part, progress=False)
    (part / "result.json").unlink()
    shutil.rmtree(part / "model")
    shutil.rmtree(part / "checkpoints" / "checkpoint-8")
    resumed_lm = load_model("tiny-llama")
    train_lora(resumed_lm, EXAMPLES, cfg, part, progress=False)
    got = dict(resumed_lm.model.named_parameters())
    assert all(torch.allclose(p, got[n], atol=1e-5) for n, p in lm.model.named_parameters())
    fresh = load_model("tiny-llama")
    load_weights(fresh.model, tmp_path / "a" / "model", "full")
    assert all(torch.equal(p, dict(fresh.model.named_parameters())[n]) for n, p in lm.model.named_parameters())
    early = load_model("tiny-llama")
    load_weights(early.model, tmp_path / "a" / "step-2", "full")
    assert not torch.equal(dict(early.model.named_parameters())[moved[-1]], dict(lm.model.named_parameters())[moved[-1]])
    with pytest.raises(ValueError, match="do not fit"):
        load_weights(load_model("tiny-qwen2").model, tmp_path / "a" / "model", "full")


def test_config_refuses_an_unknown_finetune_and_bad_keep_steps():
    with pytest.raises(ValueError, match="finetune"):
        LoraTrainConfig(finetune="qlora")
    with pytest.raises(ValueError, match="keep_steps"):
        LoraTrainConfig(keep_steps=(0,))
