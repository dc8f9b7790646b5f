import json
from collections import Counter

import pytest
import torch

from resa_utils.lm.activations import (ActivationCache, check_finite, harvest, harvest_splits, parse_hook, resid_hook, run_with_cache, splice, token_mask)
from resa_utils.lm.models import load_model


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-llama", "tiny-qwen2"])
def test_resid_hook_equals_hidden_states(name):
    lm = load_model(name)
    ids = torch.randint(3, 200, (2, 12))
    with torch.no_grad():
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in range(lm.n_layers - 1):  # HF's last entry is after the final norm
        got = run_with_cache(lm.model, ids, [resid_hook(layer)])[resid_hook(layer)]
        assert torch.allclose(got, hs[layer + 1], atol=1e-5), layer


def test_forward_stops_after_deepest_hook(tiny_lm):
    calls = []
    handle = tiny_lm.model.model.layers[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        out = run_with_cache(tiny_lm.model, torch.randint(3, 200, (1, 8)),
                             [resid_hook(1), "blocks.0.hook_mlp_out"])
    finally:
        handle.remove()
    assert calls == [] and set(out) == {resid_hook(1), "blocks.0.hook_mlp_out"}


def test_bad_hooks_name_the_fix(tiny_lm):
    with pytest.raises(ValueError, match="out of range.*0..3"):
        parse_hook(resid_hook(4), tiny_lm.n_layers)
    with pytest.raises(ValueError, match="not understood"):
        parse_hook("layer9", 4)


def test_padding_and_bos_never_enter_the_data(tiny_lm):
    tok = tiny_lm.tokenizer
    tok.padding_side = "left"
    batch = tok(["short", "a much longer piece of text here"], return_tensors="pt", padding=True)
    mask = token_mask(batch.input_ids, batch.attention_mask, tok.bos_token_id, drop_bos=True)
    assert int(mask.sum()) == int(batch.attention_mask.sum()) - 2
    acts = harvest(tiny_lm, batch.input_ids, [resid_hook(1)], attention_mask_NT=batch.attention_mask,
                   progress=False)[resid_hook(1)]
    assert acts.shape == (int(mask.sum()), tiny_lm.d_model)
    # the short row's real tokens give the same activations as running it alone, unpadded
    alone = tok(["short"], return_tensors="pt")
    solo = harvest(tiny_lm, alone.input_ids, [resid_hook(1)], progress=False)[resid_hook(1)]
    n_short = solo.shape[0]
    assert torch.allclose(acts[:n_short], solo, atol=1e-4)


def test_nan_activations_are_refused():
    with pytest.raises(ValueError, match="NaN/inf"):
        check_finite(torch.tensor([[1.0, float("nan")]]), "test acts")


def test_splice_replaces_the_block_output(tiny_lm):
    ids = torch.randint(3, 200, (1, 6))
    with torch.no_grad():
        clean = tiny_lm.model(input_ids=ids).logits
        with splice(tiny_lm.model, resid_hook(1), lambda a: a):
            same = tiny_lm.model(input_ids=ids).logits
        with splice(tiny_lm.model, resid_hook(1), torch.zeros_like):
            zeroed = tiny_lm.model(input_ids=ids).logits
    assert torch.allclose(clean, same) and not torch.allclose(clean, zeroed)


def _counting(lm):
    """Count windows the model is run on."""
    seen = []
    handle = lm.model.model.layers[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    return seen, handle


def test_cache_roundtrip_and_resume(tmp_path, tiny_lm, tiny_windows):
    hooks = [resid_hook(1), resid_hook(2)]
    direct = harvest(tiny_lm, tiny_windows, hooks, progress=False)
    assert not ActivationCache.is_complete(tmp_path / "c")  # nothing there yet
    cache = ActivationCache.build(tmp_path / "c", tiny_lm, tiny_windows, hooks, windows_per_shard=5,
                                  progress=False)
    assert ActivationCache.is_complete(tmp_path / "c")
    assert cache.n_tokens == direct[hooks[0]].shape[0]
    for h in hooks:
        assert torch.equal(cache.load(h), direct[h])
    # simulate a harvest killed after 3 of 5 shards: only the missing windows are recomputed
    manifest = json.loads(cache.manifest_path.read_text())
    dropped = manifest["shards"][3:]
    manifest["shards"] = manifest["shards"][:3]
    manifest["complete"] = False
    cache.manifest_path.write_text(json.dumps(manifest))
    for s in dropped:
        (tmp_path / "c" / s["file"]).unlink()
    assert not ActivationCache.is_complete(tmp_path / "c")  # a killed harvest is not complete
    seen, handle = _counting(tiny_lm)
    try:
        resumed = ActivationCache.build(tmp_path / "c", tiny_lm, tiny_windows, hooks,
                                        windows_per_shard=5, progress=False)
    finally:
        handle.remove()
    assert sum(seen) == sum(s["stop"] - s["start"] for s in dropped)
    assert torch.equal(resumed.load(hooks[1]), direct[hooks[1]])


def test_cache_built_in_worker_processes_equals_one_process(tmp_path, tiny_lm, tiny_windows):
    """Two spawned workers write the same shards, manifest entries and values as one process,
    and resume a killed build the same way."""
    hooks = [resid_hook(0), resid_hook(2)]
    one = ActivationCache.build(tmp_path / "one", tiny_lm, tiny_windows, hooks, windows_per_shard=3,
                                progress=False, dtype=torch.bfloat16)
    two = ActivationCache.build(tmp_path / "two", tiny_lm, tiny_windows, hooks, windows_per_shard=3,
                                progress=False, dtype=torch.bfloat16, workers=2)
    assert two.manifest == one.manifest and len(two.manifest["shards"]) > 2
    for h in hooks:
        assert torch.equal(two.load(h), one.load(h))
    manifest = json.loads(two.manifest_path.read_text())
    for s in manifest["shards"][1:]:
        (tmp_path / "two" / s["file"]).unlink()
    manifest["shards"], manifest["complete"] = manifest["shards"][:1], False
    two.manifest_path.write_text(json.dumps(manifest))
    again = ActivationCache.build(tmp_path / "two", tiny_lm, tiny_windows, hooks, windows_per_shard=3,
                                  progress=False, dtype=torch.bfloat16, workers=2)
    assert again.manifest == one.manifest


def test_harvest_splits_counts_only_what_it_harvested(tmp_path, tiny_lm, tiny_windows):
    hooks = [resid_hook(1)]
    splits = {"train": tiny_windows[:6], "eval": tiny_windows[6:]}
    caches, stats = harvest_splits(tmp_path / "h", tiny_lm, splits, hooks, dtype=torch.float32)
    assert set(caches) == {"train", "eval"}
    assert stats["tokens"] == caches["train"].n_tokens + caches["eval"].n_tokens > 0
    assert stats["tokens/s"] > 0
    direct = harvest(tiny_lm, tiny_windows[6:], hooks, progress=False)[hooks[0]]
    assert torch.equal(caches["eval"].load(hooks[0]), direct)
    again, stats2 = harvest_splits(tmp_path / "h", tiny_lm, splits, hooks, dtype=torch.float32)
    assert stats2["tokens"] == 0 and stats2["tokens/s"] != stats2["tokens/s"]  # reused: NaN


def test_cache_refuses_other_inputs_and_corrupt_shards(tmp_path, tiny_lm, tiny_windows):
    cache = ActivationCache.build(tmp_path / "c", tiny_lm, tiny_windows, [resid_hook(1)],
                                  windows_per_shard=8, progress=False)
    with pytest.raises(ValueError, match="built from other inputs"):
        ActivationCache.build(tmp_path / "c", tiny_lm, tiny_windows[:10], [resid_hook(1)], progress=False)
    cache.load(resid_hook(1))  # hashes every shard once; a later change must still be caught
    shard = tmp_path / "c" / cache.manifest["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="corrupt or truncated.*rerun the harvest"):
        cache.load(resid_hook(1))
    with pytest.raises(ValueError, match="not in the cache"):
        cache.load(resid_hook(3))


def test_cache_batches_are_shuffled_and_complete(tmp_path, tiny_lm, tiny_windows):
    cache = ActivationCache.build(tmp_path / "c", tiny_lm, tiny_windows, [resid_hook(0)],
                                  windows_per_shard=4, progress=False)
    full = cache.load(resid_hook(0))
    batches = list(cache.batches(resid_hook(0), batch_size=31, seed=1, buffer_tokens=200))
    got = torch.cat(batches)
    assert all(b.shape == (31, tiny_lm.d_model) for b in batches)
    assert full.shape[0] - got.shape[0] < 31 * 6  # at most one partial batch per buffer flush
    assert not torch.equal(got[:50], full[:50])  # shuffled
    # every served row is a real row, and no row is served more often than it occurs
    def count(rows):
        return Counter(tuple(r.tolist()) for r in rows)

    assert not count(got) - count(full)


def test_a_16_bit_cache_halves_the_disk_and_reads_float32(tmp_path):
    from resa_utils.lm.activations import ActivationCache, resid_hook
    from resa_utils.lm.models import load_model

    lm = load_model("tiny-llama")
    windows = torch.randint(5, 100, (6, 12))
    hooks = [resid_hook(1), resid_hook(3)]
    full = ActivationCache.build(tmp_path / "f32", lm, windows, hooks, windows_per_shard=3, progress=False)
    half = ActivationCache.build(tmp_path / "f16", lm, windows, hooks, windows_per_shard=3,
                                 progress=False, dtype=torch.float16)
    size = lambda c: sum(p.stat().st_size for p in c.folder.glob("shard_*"))
    assert size(half) < 0.6 * size(full) and half.manifest["dtype"] == "float16"
    a, b = full.load(hooks[1]), half.load(hooks[1])
    assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="other inputs"):  # same folder, other storage type
        ActivationCache.build(tmp_path / "f16", lm, windows, hooks, windows_per_shard=3, progress=False)


def test_float16_storage_refuses_values_beyond_its_range_and_bfloat16_keeps_them(tmp_path):
    from resa_utils.lm.activations import ActivationCache, resid_hook, splice
    from resa_utils.lm.models import load_model

    lm = load_model("tiny-llama")
    windows = torch.randint(5, 100, (4, 10))
    hook = resid_hook(1)

    def massive(h):  # a Gemma-3-like massive activation in one dimension
        h = h.clone()
        h[..., 3] = 70_000.0
        return h

    with splice(lm.model, hook, massive):
        with pytest.raises(ValueError, match="beyond torch.float16's range.*bfloat16"):
            ActivationCache.build(tmp_path / "f16", lm, windows, [hook], progress=False, dtype=torch.float16)
        bf = ActivationCache.build(tmp_path / "bf16", lm, windows, [hook], progress=False, dtype=torch.bfloat16)
    got = bf.load(hook)
    assert torch.isfinite(got).all() and float(got[:, 3].min()) == pytest.approx(70_000.0, rel=1e-2)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_shard_is_re_harvested_by_the_next_build(tmp_path, tiny_lm, tiny_windows, damage):
    """Truncated (size), corrupt (a read finds the hash wrong and flags it) or missing shards are
    rebuilt by running the harvest again; the other shards are kept, the values equal the first build's."""
    hooks = [resid_hook(1)]
    cache = ActivationCache.build(tmp_path / "c", tiny_lm, tiny_windows, hooks, windows_per_shard=8,
                                  progress=False)
    want = cache.load(hooks[0])
    files = [tmp_path / "c" / s["file"] for s in cache.manifest["shards"]]
    kept_stamp = files[0].stat().st_mtime_ns
    if damage == "truncate":
        files[1].write_bytes(files[1].read_bytes()[:100])
    elif damage == "flip":
        raw = bytearray(files[1].read_bytes())
        raw[-5] ^= 0xFF  # same size, wrong bytes: only a hash finds it
        files[1].write_bytes(bytes(raw))
        with pytest.raises(ValueError, match="rerun the harvest"):
            ActivationCache(tmp_path / "c").load(hooks[0])
    else:
        files[1].unlink()
    again = ActivationCache.build(tmp_path / "c", tiny_lm, tiny_windows, hooks, windows_per_shard=8,
                                  progress=False)
    assert torch.equal(again.load(hooks[0]), want)
    assert files[0].stat().st_mtime_ns == kept_stamp  # the undamaged shard was not rewritten
