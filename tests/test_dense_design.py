"""Notebook 03's design after issue 35: thresholds carried to the model's width, one- and
two-sided dense directions, a planted antipodal pair (the calibration), SAEs trained for several
epochs with snapshots, the epoch rule, and the preconditions that gate the claims."""

import math

import pandas as pd
import pytest
import torch

from resa_utils.methods import dense
from sae_helpers import relu_sae


# --------------------------------------------------------------------------- thresholds


def test_scaled_thresholds_keep_the_papers_sigma_and_share_of_the_space():
    cos = {"nullspace_cos": (0.2, 1), "pca_cos": (0.75, 1), "antipodal_threshold": (0.9, 2)}
    t = dense.scale_thresholds(cos, 10, 2304, 640)
    sigma_paper, sigma_here = dense.cos_sigma(2304), dense.cos_sigma(640)
    assert t.used["nullspace_cos"] / sigma_here == pytest.approx(0.2 / sigma_paper)  # the same number of σ
    assert t.used["nullspace_cos"] > 0.2
    assert t.used["pca_cos"] == 0.75 and t.used["antipodal_threshold"] == 0.9  # the same σ would be a cosine > 1: kept
    assert t.used["null_k"] / 640 == pytest.approx(10 / 2304, abs=0.5 / 640)  # the same share, to the nearest direction
    row = t.table.set_index("threshold").loc["nullspace_cos"]
    assert row["σ at the paper's width"] == pytest.approx(row["used in σ at this width"])
    assert row["paper value in σ at this width"] < row["σ at the paper's width"]
    assert "cosine ≥ 1" in t.table.set_index("threshold").loc["pca_cos", "note"]
    assert dense.cos_sigma(640, 2) == pytest.approx(1 / 640)
    same = dense.scale_thresholds(cos, 10, 2304, 2304)  # the paper's own width: nothing moves
    assert {n: same.used[n] for n in cos} == pytest.approx({n: c for n, (c, _) in cos.items()}) and same.used["null_k"] == 10
    off = dense.scale_thresholds(cos, 10, 2304, 640, scale=False)
    assert off.used["nullspace_cos"] == 0.2 and off.used["null_k"] == 10
    assert dense.scale_thresholds(cos, 10, 2304, 16).used["null_k"] == 1  # never fewer than one direction


def test_a_random_direction_cosine_has_the_stated_sigma():
    g = torch.Generator().manual_seed(0)
    d = 640
    a, b = torch.randn(4000, d, generator=g), torch.randn(4000, d, generator=g)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert float(cos.std()) == pytest.approx(dense.cos_sigma(d), rel=0.05)


# --------------------------------------------------------------------------- sides, planting, the planted pair


def test_sidedness_tells_a_two_sided_direction_from_a_one_sided_one():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 4, generator=g)
    x[:, 1] = x[:, 1].abs() + 0.1           # dimension 1 is always positive: one-sided
    x[:, 2] = x[:, 2] + 5.0                 # dimension 2 is symmetric around 5
    sae = relu_sae(torch.eye(4), b_dec_D=torch.tensor([0.0, 0.0, 5.0, 0.0]))
    side = dense.sidedness(sae, x, torch.tensor([0, 1, 2])).set_index("latent")
    centred = side["negative share (x − b_dec)"]
    assert centred[0] == pytest.approx(0.5, abs=0.05) and centred[1] == 0.0 and centred[2] == pytest.approx(0.5, abs=0.05)
    assert side.loc[2, "negative share (x)"] == 0.0  # around 0 the shifted dimension looks one-sided; around b_dec it is not
    rates = {3: torch.tensor([0.5, 0.5, 0.5, 0.0])}
    geo = dense.geometry_table({3: sae}, {3: x}, {3: torch.tensor([0, 1, 2])}, rates, two_sided_share=0.1)
    assert geo["two-sided"].tolist() == [True, False, True] and geo["firing rate"].tolist() == [0.5] * 3
    assert dense.geometry_table({3: sae}, {3: x}, {3: torch.tensor([], dtype=torch.long)}, rates, 0.1).empty


def test_geometry_table_tells_an_antipodal_partner_from_a_same_sign_duplicate():
    """s is a product of two cosines, so an antipodal pair and a duplicate both score near 1:
    the partner's decoder cosine tells them apart."""
    g = torch.Generator().manual_seed(2)
    e = torch.eye(4)
    sae = relu_sae(torch.stack([e[0], e[1], -e[0], e[1]]))  # 0 and 2 antipodal; 1 and 3 duplicates
    x = torch.randn(500, 4, generator=g)
    geo = dense.geometry_table({3: sae}, {3: x}, {3: torch.arange(4)}, {3: torch.full((4,), 0.5)}, 0.1).set_index("latent")
    assert geo.partner.tolist() == [2, 3, 0, 1] and geo.s.tolist() == pytest.approx([1.0] * 4)
    assert geo["cos dec (partner)"].tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0])
    assert geo["cos enc (partner)"].tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0])


def test_plant_adds_a_symmetric_direction_with_the_asked_share_of_variance():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20000, 16, generator=g) * torch.linspace(0.5, 2, 16)
    u = dense.plant_direction(16, 7)
    assert u.norm() == pytest.approx(1.0) and torch.equal(u, dense.plant_direction(16, 7))
    y = dense.plant(x, u, dense.plant_scale(x, 0.25), seed=3)
    added = (y - x) @ u
    total = float((y - y.mean(0)).pow(2).sum(1).mean())
    assert float(added.var()) / total == pytest.approx(0.25, rel=0.05)
    assert float((added < 0).double().mean()) == pytest.approx(0.5, abs=0.02)  # signed: both sides
    assert torch.allclose((y - x) - torch.outer(added, u), torch.zeros_like(x), atol=1e-5)  # along u only


def test_planted_pair_scores_an_exact_pair_one_and_a_single_latent_low():
    g = torch.Generator().manual_seed(3)
    u = dense.plant_direction(12, 0)
    W = torch.nn.functional.normalize(torch.randn(30, 12, generator=g), dim=1)
    W[4], W[19] = u, -u
    res = dense.planted_pair(relu_sae(W), u)
    assert (res["latent +u"], res["latent −u"]) == (4, 19)
    assert res["recovered"] == pytest.approx(1.0, abs=1e-5) and res["s"] == pytest.approx(1.0, abs=1e-5)
    W[19] = torch.nn.functional.normalize(torch.randn(12, generator=g), dim=0)  # no latent along −u
    assert dense.planted_pair(relu_sae(W), u)["recovered"] < 0.9


# --------------------------------------------------------------------------- epochs, snapshots and the rule


def _probes(fvu: dict[int, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"seed": s, "epochs": e, "fvu": v} for e, vs in fvu.items() for s, v in enumerate(vs)])


def test_the_epoch_rule_stops_when_the_next_probe_gains_little_or_overfits():
    probes = _probes({1: [0.2, 0.22], 2: [0.1, 0.12], 4: [0.099, 0.118], 8: [0.05, 0.06]})
    e, why = dense.choose_epochs(probes, 8, 0.05)
    assert e == 2 and "2 epochs" in why  # 2 -> 4 gains under 5 %, even though 8 would gain more
    assert dense.choose_epochs(probes, 8, 0.001)[0] == 8  # a stricter tolerance: 2 -> 4 counts, and so does 4 -> 8
    rising = _probes({1: [0.2, 0.2], 2: [0.21, 0.22], 4: [0.1, 0.1]})
    assert dense.choose_epochs(rising, 8, 0.05)[0] == 1  # held-out FVU rose: overfitting
    steep = _probes({1: [0.4], 2: [0.2], 4: [0.1], 8: [0.05]})
    e, why = dense.choose_epochs(steep, 4, 0.05)
    assert e == 4 and "capped at max_epochs=4" in why
    assert dense.choose_epochs(steep, 8, 0.05)[0] == 8
    with pytest.raises(ValueError, match="max_epochs"):
        dense.choose_epochs(steep[steep.epochs > 1], 1, 0.05)
    drop, step = dense.convergence_drop(steep, 4)
    assert drop == pytest.approx(0.5) and step == "4 -> 8 epochs"
    drop, step = dense.convergence_drop(steep, 8)  # the last probe: the step into it
    assert drop == pytest.approx(0.5) and step == "4 -> 8 epochs"


def test_dense_job_snapshots_are_the_saes_shorter_runs_end_with(tmp_path, tiny_lm, tiny_windows):
    """With a constant lr the snapshot after one epoch of a two-epoch run is the SAE a one-epoch
    run ends with; each snapshot is scored on held-out and on training rows."""
    from dataclasses import replace

    from resa_utils.core.sweep import config_key
    from resa_utils.lm.activations import resid_hook
    from resa_utils.sae import SAE, TrainConfig

    hook = resid_hook(1)
    dense.harvest_once(tmp_path / "h.jsonl", {"data": "x"}, tmp_path / "acts", tiny_lm,
                       {"train": tiny_windows[:8], "eval": tiny_windows[8:12]}, [hook])
    cfg = TrainConfig(method="topk", d_sae=2 * tiny_lm.d_model, k=4, batch_size=32, n_tokens=32, seed=0, lr_decay_frac=0.0)
    job = dense.DenseJob(str(tmp_path / "acts" / "train"), str(tmp_path / "acts" / "eval"), hook, cfg,
                         {1: str(tmp_path / "e1"), 2: str(tmp_path / "e2")}, density_thresholds=(0.1,))
    short = replace(job, save_dirs={1: str(tmp_path / "only1")})
    row = dense.train_dense_job({"j": 1}, {config_key({"j": 1}): job})
    one = dense.train_dense_job({"j": 2}, {config_key({"j": 2}): short})
    assert [p["epochs"] for p in row["probes"]] == [1, 2] and row["trained epochs"] == 2
    assert row["tokens"] == 2 * (row["rows"] // 32) * 32 and one["tokens"] == row["tokens"] // 2
    a, b = SAE.load(tmp_path / "e1"), SAE.load(tmp_path / "only1")
    assert torch.allclose(a.W_dec, b.W_dec, atol=1e-5) and torch.allclose(a.b_enc, b.b_enc, atol=1e-5)
    assert row["probes"][0]["fvu"] == pytest.approx(one["fvu"], rel=1e-4)
    assert not torch.allclose(SAE.load(tmp_path / "e2").W_dec, a.W_dec)  # the second epoch trained on
    assert {"fvu", "train_fvu", "l0", "dead_frac", "dense@0.1"} <= set(row) and 0 < row["train_fvu"] < 2
    with pytest.raises(ValueError, match="fewer than one batch"):
        big = replace(job, cfg=replace(cfg, batch_size=10**6, n_tokens=10**6), save_dirs={1: str(tmp_path / "big")})
        dense.train_dense_job({"j": 3}, {config_key({"j": 3}): big})


def test_a_dense_job_whose_snapshots_are_cached_rescores_them_instead_of_training(tmp_path, tiny_lm, tiny_windows, monkeypatch):
    """A run's sweep rows live in its staging folder; when that is lost but the SAEs are still in
    the cache, the job scores the cached snapshots again (the same row) and does not train."""
    import resa_utils.sae as sae_pkg
    from resa_utils.core.sweep import config_key
    from resa_utils.lm.activations import resid_hook
    from resa_utils.sae import TrainConfig

    hook = resid_hook(1)
    dense.harvest_once(tmp_path / "h.jsonl", {"data": "x"}, tmp_path / "acts", tiny_lm,
                       {"train": tiny_windows[:8], "eval": tiny_windows[8:12]}, [hook])
    cfg = TrainConfig(method="topk", d_sae=2 * tiny_lm.d_model, k=4, batch_size=32, n_tokens=32, seed=0, lr_decay_frac=0.0)
    job = dense.DenseJob(str(tmp_path / "acts" / "train"), str(tmp_path / "acts" / "eval"), hook, cfg,
                         {1: str(tmp_path / "e1"), 2: str(tmp_path / "e2")}, density_thresholds=(0.1,))
    jobs = {config_key({"j": 1}): job}
    first = dense.train_dense_job({"j": 1}, jobs)
    assert (tmp_path / "e2" / dense.TRAIN_LOG).exists()
    calls = []
    real = sae_pkg.train_sae
    monkeypatch.setattr(sae_pkg, "train_sae", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    again = dense.train_dense_job({"j": 1}, jobs)
    assert calls == []
    for key in ("fvu", "train_fvu", "l0", "dead_frac", "dense@0.1", "trained epochs", "rows", "tokens", "seconds"):
        assert again[key] == pytest.approx(first[key]), key
    assert again["curve"] == first["curve"]
    assert [(p["epochs"], p["tokens"]) for p in again["probes"]] == [(p["epochs"], p["tokens"]) for p in first["probes"]]
    assert [p["fvu"] for p in again["probes"]] == pytest.approx([p["fvu"] for p in first["probes"]])
    (tmp_path / "e1" / "cfg.json").unlink()  # one snapshot gone: train again
    dense.train_dense_job({"j": 1}, jobs)
    assert calls == [1] and (tmp_path / "e1" / "cfg.json").exists()


def test_a_planted_job_trains_on_the_planted_rows(tmp_path, tiny_lm, tiny_windows):
    from dataclasses import replace

    from resa_utils.core.sweep import config_key
    from resa_utils.lm.activations import resid_hook
    from resa_utils.sae import TrainConfig

    hook = resid_hook(1)
    dense.harvest_once(tmp_path / "h.jsonl", {"data": "x"}, tmp_path / "acts", tiny_lm,
                       {"train": tiny_windows[:8], "eval": tiny_windows[8:12]}, [hook])
    cfg = TrainConfig(method="topk", d_sae=2 * tiny_lm.d_model, k=4, batch_size=32, n_tokens=32, seed=0, lr_decay_frac=0.0)
    base = dense.DenseJob(str(tmp_path / "acts" / "train"), str(tmp_path / "acts" / "eval"), hook, cfg, {1: str(tmp_path / "a")})
    planted = replace(base, save_dirs={1: str(tmp_path / "b")}, plant=(0.5, 4))
    rows = [dense.train_dense_job({"j": i}, {config_key({"j": i}): j}) for i, j in enumerate((base, planted))]
    assert rows[0]["rows"] == rows[1]["rows"] and rows[0]["fvu"] != pytest.approx(rows[1]["fvu"], rel=1e-3)


def test_probe_frame_main_rows_and_the_convergence_table():
    g = torch.Generator().manual_seed(5)
    conv = pd.DataFrame([{"layer": 3, "variant": "original", "seed": s, "trained epochs": 2, "seconds": 10.0, "tokens": 200,
                          "tokens_per_s": 20.0, "fvu": 0.1, "train_fvu": 0.09, "l0": 4.0, "dead_frac": 0.0, "dense@0.1": 1,
                          "curve": [{"tokens": 50}, {"tokens": 100}, {"tokens": 200}],
                          "probes": [{"step": 1, "tokens": 100, "epochs": 1, "fvu": 0.2 + s, "train_fvu": 0.19, "l0": 4.0,
                                      "dead_frac": 0.1, "dense@0.1": 2},
                                     {"step": 2, "tokens": 200, "epochs": 2, "fvu": 0.1 + s, "train_fvu": 0.09, "l0": 4.0,
                                      "dead_frac": 0.0, "dense@0.1": 1}]} for s in (0, 1)])
    probes = dense.probe_frame(conv)
    assert probes[["seed", "epochs", "fvu"]].values.tolist() == [[0, 1, 0.2], [0, 2, 0.1], [1, 1, 1.2], [1, 2, 1.1]]
    assert "step" not in probes and "tokens" not in probes
    other = pd.DataFrame([{"layer": 9, "variant": "original", "seed": 0, "trained epochs": 1, "fvu": 0.3}])
    main = dense.main_rows(other, conv, 3, 0, 1)
    assert main.layer.tolist() == [3, 9]
    r = main.iloc[0]
    assert (r.fvu, r["trained epochs"], r.seconds, r.tokens, r["dense@0.1"]) == (0.2, 1, 5.0, 100, 2)
    assert [c["tokens"] for c in r.curve] == [50, 100]
    # the table: seed 1's snapshots are seed 0's, so every dense latent has a counterpart
    W = torch.nn.functional.normalize(torch.randn(20, 6, generator=g), dim=1)
    W[1] = -W[0]
    sae = relu_sae(W)
    with torch.no_grad():
        sae.b_enc[:] = -100.0
        sae.b_enc[[0, 1]] = 100.0  # latents 0 and 1 fire on every row: dense, and an antipodal pair
    snaps = {(s, e): sae for s in (0, 1) for e in (1, 2)}
    t = dense.convergence_table(probes, snaps, torch.zeros(50, 6), 0.1, 0.9, 0.9, {(0, 1): (0.5, 0.1)})
    assert t[["seed", "epochs"]].values.tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]
    assert t.dense.tolist() == [2] * 4 and t["antipodal share (dense)"].tolist() == [1.0] * 4
    assert t["seed match (dense)"].tolist() == [1.0] * 4 and t["ΔCE nats"][0] == 0.5 and math.isnan(t["ΔCE nats"][1])
    alone = dense.convergence_table(probes[probes.seed == 0], {k: v for k, v in snaps.items() if k[0] == 0},
                                    torch.zeros(50, 6), 0.1, 0.9, 0.9)
    assert alone["seed match (dense)"].isna().all()  # no other seed to match


# --------------------------------------------------------------------------- claims and preconditions


def _claims():
    abl = pd.DataFrame({"layer": [3], "seed": [0], "dense (original)": [20], "dense after dense-span ablation": [2],
                        "dense after control ablation": [19]})
    anti = dense.Antipodality(summary=pd.DataFrame({"dense": [2], "dense subspace rank": [1]}), pairs=pd.DataFrame({"layer": [3]}),
                              scores=pd.DataFrame({"layer": 3, "group": ["dense", "dense", "sparse"], "s": [0.95, 0.95, 0.1]}))
    geo = pd.DataFrame({"layer": [3, 3, 9], "two-sided": [True, True, False]})
    stab = pd.DataFrame({"layer": [3], "dense (seed 0)": [4], "counterpart among all latents": [0.75],
                         "sparse latents: counterpart among all": [0.1]})
    return (dense.density_claims({3: 2}, 256, 8, 0.1) + dense.antipodal_claims(anti, 0.9, 0.05)
            + dense.sidedness_claims(geo, 0.1) + dense.ablation_claims(abl) + dense.stability_claims(stab, 0, 1, 0.9))


def test_sidedness_claim_follows_its_rule():
    (row,) = dense.sidedness_claims(pd.DataFrame({"layer": [3, 3, 9], "two-sided": [True, True, False]}), 0.1)
    assert (row["held"], row["ours"]) == ("yes", "0.67 of 3 (L3 1.00, L9 0.00)")
    assert dense.sidedness_claims(pd.DataFrame({"layer": [3], "two-sided": [False]}), 0.1)[0]["held"] == "no"
    assert dense.sidedness_claims(pd.DataFrame(columns=["layer", "two-sided"]), 0.1) == []


def test_preconditions_gate_the_claims_whose_premise_failed():
    from resa_utils.harness.tracking import comparison_frame, gate_claims, preconditions_frame

    claims = _claims()
    names = [c["claim"] for c in claims]
    good = dict(delta_ce={3: 0.4, 9: 0.6}, max_delta_ce=1.0, calibration={"recovered": 0.97}, antipodal_threshold=0.9,
                drop=(0.01, "4 -> 8 epochs"), converge_tol=0.02, ablate_dense={0: 20, 1: 12}, min_ablate_dense=5)
    pre = dense.preconditions(claims, **good)
    assert [p["met"] for p in pre] == ["yes"] * 4
    assert pre[0]["gates"] == " ".join(str(i + 1) for i in range(len(claims)))  # the splice gates every claim
    gated = {p["precondition"]: [names[int(i) - 1] for i in p["gates"].split()] for p in pre}
    calib = gated["calibration: a planted signed dense direction comes back as an antipodal pair"]
    assert len(calib) == 3 and all("antipodal" in c or "two-sided" in c for c in calib)
    assert [c.split()[0] for c in gated["the ablated layer has dense latents to remove, in every seed"]] == ["projecting", "the"]
    assert gated["the SAEs had converged at the chosen epochs"] == ["(control the paper lacked) the dense set is stable across seeds"]
    assert "seed 1: 12" in pre[3]["measure"] and pre[1]["value"] == "0.970"
    bad = dense.preconditions(claims, **{**good, "calibration": {"recovered": 0.5}, "ablate_dense": {0: 20, 1: 3}})
    assert [p["met"] for p in bad] == ["yes", "no", "yes", "no"]
    out = gate_claims(comparison_frame(claims), preconditions_frame(bad)).set_index("claim")
    for c in calib + gated["the ablated layer has dense latents to remove, in every seed"]:
        assert out.loc[c, "held"] == "not tested" and "as measured: yes" in out.loc[c, "note"]
    assert out.loc[names[0], "held"] == "yes"  # the density claim's premises held
    worse = dense.preconditions(claims, **{**good, "delta_ce": {3: 0.4, 9: 1.5}, "drop": (0.1, "4 -> 8 epochs")})
    assert (worse[0]["met"], worse[2]["met"]) == ("no", "no") and "L9" in worse[0]["measure"]
    assert (gate_claims(comparison_frame(claims), preconditions_frame(worse)).held == "not tested").all()


# --------------------------------------------------------------------------- parameter checks


@pytest.mark.parametrize("change,name,text", [
    ({"probe_layer": 3, "layers": [0, 1, 2]}, "probe_layer", "studied layers"),
    ({"probe_epochs": [2, 1]}, "probe_epochs", "increasing"),
    ({"probe_epochs": [2]}, "probe_epochs", "at least 2"),
    ({"probe_epochs": [2, 4], "max_epochs": 1}, "max_epochs", "below every probed"),
    ({"two_sided_share": 0.7}, "two_sided_share", ""),
    ({"plant_share": 0.0}, "plant_share", ""),
])
def test_new_parameters_are_checked_by_name(change, name, text):
    from resa_utils.harness import params as P
    from resa_utils.harness import run

    good = run.load_params("smoke", "03_dense_latents")
    run.check_params("03_dense_latents", good)
    with pytest.raises(P.ParameterError, match=rf"parameter `{name}(\[\d+\])?` = .*{text}"):
        run.check_params("03_dense_latents", {**good, **change})
