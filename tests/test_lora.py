"""The shared LoRA path: response-only labels, only adapter weights train, the loss falls, and a
killed training resumes from its checkpoint to the same adapter."""

import shutil

import pytest
import torch

from resa_utils.lora import LoraTrainConfig, tokenize_examples, train_lora
from resa_utils.models import load_model

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
    a = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    again = train_lora(load_model("tiny-llama"), EXAMPLES, _cfg(), part, progress=False)
    assert again.history == resumed.history  # finished: loaded, not retrained
