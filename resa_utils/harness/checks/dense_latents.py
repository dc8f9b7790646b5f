"""Parameter checks of notebook 03_dense_latents: one check per parameter (`CHECKS`) and the
conditions between parameters (`cross`), run before the model loads or anything is harvested."""

from __future__ import annotations

from resa_utils.data import corpora
from resa_utils.harness import params as P

MIN_EVAL = 2000
"""Held-out tokens the statistics need: 200 firings of a latent at 10 percent, 40 tagged tokens per class."""

_unit = P.real(gt=0, lt=1)

CHECKS: dict = {
    "profile": P.profile(), "allow_cpu": P.boolean(), "seed": P.integer(min=0),
    "model_name": P.model(), "layers": P.layers("model_name"), "corpus": P.choice(corpora.CORPORA),
    "content_rows": P.boolean(), "max_norm_ratio": P.real(gt=1, lt=float("inf")),
    "eval_frac": P.real(gt=0, max=0.5), "seq_len": P.integer(min=8, max=4096),
    "train_tokens": P.integer(min=1), "eval_tokens": P.integer(min=1), "ce_tokens": P.integer(min=1),
    "d_sae": P.integer(min=2), "k": P.integer(min=1), "batch_size": P.integer(min=1),
    "sae_lr": P.real(min=0, max=1), "dead_tokens": P.integer(min=1),
    "dense_threshold": _unit, "density_sweep": P.list_of(_unit), "antipodal_threshold": _unit,
    "rank_rtol": _unit, "probe_layer": P.layer("model_name", allow_middle=False), "second_seed": P.integer(min=0),
    "probe_epochs": P.list_of(P.integer(min=1, max=64), min_len=2, unique=True), "max_epochs": P.integer(min=1, max=64),
    "converge_tol": _unit, "plant_share": P.real(gt=0, max=0.5), "two_sided_share": P.real(gt=0, max=0.5),
    "paper_d_model": P.integer(min=1), "scale_thresholds": P.boolean(),
    "max_delta_ce": P.real(gt=0, lt=float("inf")), "min_ablate_dense": P.integer(min=1),
    "seed_match_cos": _unit, "n_sparse_baseline": P.integer(min=10), "position_rho": _unit,
    "context_share": _unit, "nullspace_cos": _unit, "null_k": P.integer(min=1, max=64), "entropy_r": _unit,
    "alphabet_share": _unit, "alphabet_top": P.integer(min=10, max=1000), "pos_auc": P.real(gt=0.5, lt=1),
    "pos_analysis": P.boolean(), "pca_cos": _unit, "pca_k": P.integer(min=1, max=64),
    "n_contexts": P.integer(min=0, max=50), "workers": P.integer(min=1, max=64),
}


def cross(p: dict) -> None:
    """Conditions between parameters: a GPU or `allow_cpu`, enough tokens for one batch and for
    the statistics, the CE windows inside the held-out ones, a tagged corpus for part of speech,
    the probe layer among the studied ones, probe epochs increasing, and one of them allowed."""
    P.gpu_or_allowed(p["allow_cpu"])
    P.require(p["train_tokens"] >= p["batch_size"], "train_tokens", p["train_tokens"],
              f"is less than one batch of batch_size={p['batch_size']}", "raise train_tokens or lower batch_size")
    P.require(p["eval_tokens"] >= MIN_EVAL, "eval_tokens", p["eval_tokens"],
              f"is too few for the statistics: they need at least {MIN_EVAL} held-out tokens")
    P.require(p["ce_tokens"] <= p["eval_tokens"], "ce_tokens", p["ce_tokens"],
              f"must not exceed eval_tokens={p['eval_tokens']} (its windows are the first held-out ones)")
    P.require(p["ce_tokens"] >= p["seq_len"] - 1, "ce_tokens", p["ce_tokens"],
              f"must hold at least one window of seq_len - 1 = {p['seq_len'] - 1} tokens")
    P.require(p["k"] <= p["d_sae"], "k", p["k"], f"must not exceed d_sae={p['d_sae']}")
    P.require(p["dense_threshold"] in p["density_sweep"], "density_sweep", p["density_sweep"],
              f"should include dense_threshold={p['dense_threshold']}, so the sweep shows the count used")
    P.require(p["second_seed"] != p["seed"], "second_seed", p["second_seed"], "must differ from seed")
    P.require(not (p["pos_analysis"] and p["corpus"] == "wiki-vital"), "pos_analysis", p["pos_analysis"],
              "asks for part of speech, but corpus='wiki-vital' has no tags",
              "use corpus='english' or 'brown', or set pos_analysis=False")
    P.require(p["probe_layer"] in p["layers"], "probe_layer", p["probe_layer"],
              f"must be one of the studied layers {p['layers']}", "add it to layers or pick one of them")
    P.require(list(p["probe_epochs"]) == sorted(p["probe_epochs"]), "probe_epochs", p["probe_epochs"],
              "must list epoch counts in increasing order (the rule compares each with the next)")
    P.require(min(p["probe_epochs"]) <= p["max_epochs"], "max_epochs", p["max_epochs"],
              f"is below every probed epoch count {p['probe_epochs']}: the rule would have nothing to choose")
