"""Parameter checks of `05_gba_recovery`: one check per parameter (`CHECKS`) and the conditions
between parameters (`cross`), run before any model load or training."""

from __future__ import annotations

from resa_utils.harness import params as P

_pos_int, _unit = P.integer(min=1), P.real(gt=0, max=1)
_gba_setting = P.list_of(P.real(gt=0), min_len=4, max_len=4)
_variant = P.pair(P.choice(["tied", "untied"]), P.choice(["relu", "jumprelu"]))


def _hi_above_lo(hi: float, lo: float) -> bool:
    return hi > lo


CHECKS: dict = {
    "profile": P.profile(), "allow_cpu": P.boolean(), "seeds": P.list_of(P.integer(min=0), min_len=2, unique=True),
    "workers": _pos_int, "n_features": P.integer(min=2), "d": _pos_int,
    "n_samples": _pos_int, "n_eval": P.integer(min=1000), "paper_mix": P.list_of(_pos_int), "syn_width": _pos_int,
    "syn_samples": _pos_int, "probe_samples": P.list_of(_pos_int, unique=True), "syn_batch": _pos_int,
    "topk_grid": P.list_of(_pos_int, unique=True), "l1_grid": P.list_of(P.real(gt=0), unique=True),
    "gba_grid": P.list_of(_gba_setting), "paper_topk_k": _pos_int, "paper_l1": P.real(gt=0), "paper_gba": _gba_setting,
    "wrong_ladders": P.list_of(P.pair(_unit, _unit, _hi_above_lo, "p_high > p_low")),
    "easy_mix": P.list_of(_pos_int), "diag_lr": P.real(gt=0, max=0.1), "diag_a_init": P.real(gt=0),
    "easy_min_recovery": _unit,
    "model_name": P.model(), "layer": P.layer("model_name"), "corpus": P.corpus(), "seq_len": P.integer(min=8),
    "eval_frac": P.real(gt=0, lt=1), "content_rows": P.boolean(),
    "shared_cache": P.choice(["", "03_dense_latents"]), "cache_layers": P.layers("model_name"), "max_norm_ratio": P.real(gt=1, lt=float("inf")),
    "real_harvest_tokens": _pos_int, "real_train_tokens": _pos_int, "real_eval_tokens": P.integer(min=1000),
    "max_train_ram_gb": P.real(min=0),
    "real_d_sae": _pos_int, "real_batch": _pos_int, "real_lr": P.real(gt=0), "real_dead_tokens": _pos_int,
    "real_topk_ks": P.list_of(_pos_int, min_len=2, unique=True), "real_l1s": P.list_of(P.real(gt=0), min_len=2, unique=True),
    "real_gba_p_highs": P.list_of(_unit, min_len=2, unique=True), "real_gba_schedule": P.pair(P.real(gt=0), _pos_int),
    "gba_variants": P.list_of(_variant, unique=True),
    "frequent_density": P.real(gt=0, lt=1), "min_consistency_margin": P.real(min=0, max=1),
    "ce_windows": P.integer(min=1), "ce_seq_len": P.integer(min=2),
}


def true_frequency(p: dict) -> float:
    """The true feature frequency f = mean(s) / n of the toy (half the samples at each sparsity)."""
    return sum(p["paper_mix"]) / len(p["paper_mix"]) / p["n_features"]


def cross(p: dict) -> None:
    """Conditions between parameters: grids hold their named settings, equal tuning budgets,
    wrong ladders miss f and tuning ladders contain it, probes before the stopping point."""
    P.gpu_or_allowed(p["allow_cpu"])
    for s in p["paper_mix"]:
        P.require(s <= p["n_features"], "paper_mix", p["paper_mix"], f"sparsity {s} exceeds n_features={p['n_features']}")
    P.require(max(p["topk_grid"] + [p["paper_topk_k"]]) <= p["syn_width"], "topk_grid", p["topk_grid"],
              f"every k must be <= syn_width={p['syn_width']}")
    P.require(len(p["topk_grid"]) == len(p["l1_grid"]) == len(p["gba_grid"]), "gba_grid", p["gba_grid"],
              "every method gets the same tuning budget: topk_grid, l1_grid and gba_grid need equal lengths")
    for name, grid in (("paper_topk_k", "topk_grid"), ("paper_l1", "l1_grid"), ("paper_gba", "gba_grid")):
        P.require(p[name] in p[grid], name, p[name], f"is not in `{grid}` {p[grid]}", f"add it to `{grid}`")
    P.require(len(p["real_topk_ks"]) == len(p["real_l1s"]) == len(p["real_gba_p_highs"]), "real_gba_p_highs",
              p["real_gba_p_highs"], "every method gets the same number of L0 points: real_topk_ks, real_l1s and "
              "real_gba_p_highs need equal lengths")
    for s in p["easy_mix"]:
        P.require(s <= p["n_features"], "easy_mix", p["easy_mix"], f"sparsity {s} exceeds n_features={p['n_features']}")
    P.require(p["syn_width"] >= p["n_features"], "syn_width", p["syn_width"],
              f"is below n_features={p['n_features']}: the 'start at truth' diagnostic puts every true feature in the decoder",
              f"raise syn_width to at least {p['n_features']}")
    P.require(p["syn_samples"] >= p["syn_batch"], "syn_samples", p["syn_samples"], f"is less than one batch of syn_batch={p['syn_batch']}")
    P.require(all(t < p["syn_samples"] for t in p["probe_samples"]), "probe_samples", p["probe_samples"],
              f"must lie before the stopping point syn_samples={p['syn_samples']}")
    f = true_frequency(p)
    for hi, lo in p["wrong_ladders"]:
        P.require(hi < f or lo > f, "wrong_ladders", p["wrong_ladders"], f"[{lo}, {hi}] contains f = {f:.3f}, so it is not wrong")
    for hi, lo, *_ in p["gba_grid"]:
        P.require(lo <= f <= hi, "gba_grid", p["gba_grid"], f"the ladder [{lo}, {hi}] misses f = {f:.3f}",
                  "tuning ladders must contain f; a wrong range belongs in wrong_ladders")
    P.require(min(p["real_gba_p_highs"]) / 100 > 1e-6, "real_gba_p_highs", p["real_gba_p_highs"],
              "the ladder runs p_high -> p_high/100, which must stay above GBA's eps 1e-6")
    P.require(max(p["real_topk_ks"]) <= p["real_d_sae"], "real_topk_ks", p["real_topk_ks"], f"every k must be <= real_d_sae={p['real_d_sae']}")
    P.require(p["real_train_tokens"] >= p["real_batch"], "real_train_tokens", p["real_train_tokens"],
              f"is less than one batch of real_batch={p['real_batch']}")
    P.require(p["ce_seq_len"] <= p["seq_len"], "ce_seq_len", p["ce_seq_len"], f"exceeds seq_len={p['seq_len']}")
    n_eval_windows = -(-p["real_eval_tokens"] // (p["seq_len"] - 1))
    P.require(p["ce_windows"] <= n_eval_windows, "ce_windows", p["ce_windows"],
              f"exceeds the {n_eval_windows} held-out windows that real_eval_tokens={p['real_eval_tokens']} makes",
              f"raise real_eval_tokens to at least {p['ce_windows'] * (p['seq_len'] - 1)} or lower ce_windows")
