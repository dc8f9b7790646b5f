"""The content-row rule: special tokens, window starts and massive-norm rows are left out of
training data and metrics, their share of rows and of the centred variance is reported, and a
splice leaves those positions clean."""

from __future__ import annotations

import math

import pytest
import torch

from resa_utils.lm.activations import ActivationCache, KeptRows, content_rows, resid_hook
from resa_utils.lm.content import (ContentRule, clean_positions, content_positions, keep_clean,
                                   select_rows)
from resa_utils.lm.models import load_model
from resa_utils.sae import SAE, SAEConfig, evaluate_sae
from memcache import MemCache


def _planted(n=2000, d=16, n_sink=6, scale=60.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    sinks = torch.randperm(n, generator=g)[:n_sink]
    x[sinks] = x[sinks] * scale + scale  # massive and off-centre: attention-sink-like rows
    return x, sinks


def _centred_share(x, rows):
    mu = x.double().mean(0)
    ss = (x.double() - mu).pow(2).sum(1)
    return float(ss[rows].sum() / ss.sum())


def test_planted_massive_rows_are_left_out_with_their_variance_share():
    x, sinks = _planted()
    keep, left = select_rows(x, None, ContentRule(max_norm_ratio=10), hook="h")
    assert set(torch.nonzero(~keep).flatten().tolist()) == set(sinks.tolist())
    assert left.by_norm == len(sinks) and left.by_position == 0 and left.kept == len(x) - len(sinks)
    assert left.variance_share == pytest.approx(_centred_share(x, sinks), rel=1e-9)
    assert left.variance_share > 0.5  # a handful of rows dominate the centred variance
    assert "left out 6 of 2,000 rows" in left.summary()


def test_positions_and_norms_combine_and_shares_add_up():
    x, sinks = _planted(seed=1)
    pos = torch.ones(len(x), dtype=torch.bool)
    pos[:10] = False  # window starts / special tokens
    pos[sinks[:2]] = False  # two sinks that are also window starts count once, as positions
    keep, left = select_rows(x, pos, ContentRule(), hook="h")
    dropped_pos = torch.nonzero(~pos).flatten()
    dropped_norm = torch.tensor(sorted(set(sinks.tolist()) - set(dropped_pos.tolist())))
    assert left.by_position == len(dropped_pos) and left.by_norm == len(dropped_norm)
    assert left.position_variance_share == pytest.approx(_centred_share(x, dropped_pos), rel=1e-9)
    assert left.norm_variance_share == pytest.approx(_centred_share(x, dropped_norm), rel=1e-9)
    assert int(keep.sum()) == left.kept


def test_rule_off_keeps_every_row():
    x, _ = _planted()
    keep, left = select_rows(x, None, ContentRule(enabled=False))
    assert keep.all() and left.row_share == 0 and left.variance_share == 0


@pytest.mark.parametrize("bad", [float("nan"), -3.0, 0.5, 1.0, float("inf")])
def test_bad_norm_ratio_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="max_norm_ratio"):
        ContentRule(max_norm_ratio=bad)


def test_content_positions_drop_special_tokens_and_every_window_start():
    ids = torch.tensor([[5, 6, 2, 7], [1, 8, 9, 1]])  # 1 = BOS, 2 = EOS: windows need not start on BOS
    keep = content_positions(ids, [1, 2, None])
    assert keep.tolist() == [[False, True, False, True], [False, True, True, False]]


def test_cache_content_rows_stream_the_same_rows_and_report_as_in_memory():
    x, _ = _planted(n=1700, seed=2)
    pos = torch.rand(len(x), generator=torch.Generator().manual_seed(3)) > 0.05
    kept, left = content_rows(MemCache(x, pos), "h", ContentRule())
    keep, want = select_rows(x, pos, ContentRule(), hook="h")
    assert torch.equal(kept.load("h"), x[keep])
    assert left.as_row() == pytest.approx(want.as_row())


def test_fvu_on_content_rows_equals_the_hand_computation():
    x, _ = _planted(n=1200, d=8, seed=4)
    pos = torch.ones(len(x), dtype=torch.bool)
    pos[::50] = False
    kept, _ = content_rows(MemCache(x, pos), "h", ContentRule())
    sae = SAE(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2)).init_weights()
    torch.nn.init.normal_(sae.W_enc, generator=torch.Generator().manual_seed(0))
    rows = kept.load("h")
    with torch.no_grad():
        xh = sae(rows)
    hand = float(((rows - xh).double().pow(2).sum()) / (rows.double() - rows.double().mean(0)).pow(2).sum())
    assert evaluate_sae(sae, rows)["fvu"] == pytest.approx(hand, rel=1e-6)
    assert len(rows) < len(x)  # the rule did leave rows out


def test_harvest_records_positions_and_left_out_rows(tmp_path):
    lm = load_model("tiny-llama")
    bos, eos = lm.tokenizer.bos_token_id, lm.tokenizer.eos_token_id
    ids = torch.randint(10, 200, (6, 12), generator=torch.Generator().manual_seed(0))
    ids[:3, 0] = bos  # three windows start on BOS (dropped at harvest), three on ordinary tokens
    ids[1, 5] = eos
    cache = ActivationCache.build(tmp_path / "c", lm, ids, [resid_hook(1)], progress=False)
    rows = cache.load(resid_hook(1))
    assert rows.shape[0] == 6 * 12 - 3
    kept, left = content_rows(cache, resid_hook(1), ContentRule(max_norm_ratio=1e6))
    assert left.by_position == 3 + 1  # the non-BOS window starts and the EOS
    assert left.by_norm == 0 and kept.n_tokens == rows.shape[0] - 4
    assert cache.left_out(resid_hook(1))["rows"] == rows.shape[0]
    assert isinstance(kept, KeptRows)


def test_splice_keeps_clean_activations_where_the_rule_leaves_rows_out():
    ids = torch.tensor([[7, 8, 2, 9, 10]])
    acts = torch.ones(1, 5, 4)
    acts[0, 3] *= 100  # a massive row
    clean = clean_positions(acts, ids, [1, 2], ContentRule(max_norm_ratio=10))
    assert clean.tolist() == [[True, False, True, True, False]]
    out = keep_clean(torch.zeros_like, clean)(acts)
    assert torch.equal(out[clean], acts[clean]) and (out[~clean] == 0).all()
    assert not clean_positions(acts, ids, [1, 2], ContentRule(enabled=False)).any()


def test_spliced_ce_with_the_rule_leaves_window_starts_clean():
    from resa_utils.sae.metrics import spliced_ce

    lm = load_model("tiny-llama")
    ids = torch.randint(10, 200, (2, 10), generator=torch.Generator().manual_seed(1))
    seen = {}

    def record(acts):
        seen["in"] = acts.clone()
        return torch.zeros_like(acts)

    from resa_utils.lm.activations import run_with_cache

    hook = resid_hook(1)
    out = spliced_ce(lm, {"zero": (hook, record)}, ids, rule=ContentRule())
    # position 0 stays clean, so the spliced CE of the first prediction differs from a full ablation
    full = spliced_ce(lm, {"zero": (hook, torch.zeros_like)}, ids, keep_bos=False, rule=None)
    assert not math.isclose(out["ce"]["zero"], full["ce"]["zero"])
    assert run_with_cache(lm.model, ids, [hook])[hook].shape == seen["in"].shape


def test_left_out_table_reuses_the_harvest_record_and_recomputes_for_another_rule(tmp_path):
    from resa_utils.lm.activations import left_out_table

    lm = load_model("tiny-llama")
    ids = torch.randint(10, 200, (4, 10), generator=torch.Generator().manual_seed(2))
    cache = ActivationCache.build(tmp_path / "c", lm, ids, [resid_hook(0), resid_hook(1)], progress=False)
    df = left_out_table({"train": cache}, [resid_hook(0), resid_hook(1)])
    assert list(df.cache) == ["train", "train"] and list(df.rows) == [40, 40]
    assert list(df.by_position) == [4, 4]  # no BOS in these windows: each start is left out
    off = left_out_table({"train": cache}, [resid_hook(1)], ContentRule(enabled=False))
    assert int(off.by_position[0]) == 0 and float(off.variance_share[0]) == 0.0


def test_train_sae_reads_a_raw_cache_through_the_rule(tmp_path):
    from resa_utils.sae import TrainConfig, train_sae
    from resa_utils.sae.train import with_content_rows

    lm = load_model("tiny-llama")
    ids = torch.randint(10, 200, (8, 16), generator=torch.Generator().manual_seed(3))
    cache = ActivationCache.build(tmp_path / "c", lm, ids, [resid_hook(1)], progress=False)
    kept, _ = with_content_rows((cache, resid_hook(1)), ContentRule())
    assert kept.n_tokens == cache.n_tokens - 8  # the 8 window starts
    assert with_content_rows((cache, resid_hook(1)), None)[0] is cache
    cfg = TrainConfig(method="topk", d_sae=32, k=4, n_tokens=256, batch_size=32)
    assert train_sae((cache, resid_hook(1)), cfg, progress=False, device="cpu").sae.cfg.d_in == lm.d_model
