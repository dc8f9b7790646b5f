"""Parameter checks of `04_distill_crosscoders`: one check per parameter (`CHECKS`) and the
conditions between parameters (`cross`), run before any model load, generation or training."""

from __future__ import annotations

from resa_utils.data import corpora
from resa_utils.data import tasks as T
from resa_utils.harness import params as P

_pos_int, _unit = P.integer(min=1), P.real(gt=0, lt=1)
_ACTS = ["relu", "batchtopk", "topk"]

CHECKS: dict = {
    "profile": P.profile(), "allow_cpu": P.boolean(), "seed": P.integer(min=0), "seeds": P.list_of(P.integer(min=0), unique=True),
    "base_model": P.model(), "reasoner_model": P.string(nonempty=False), "dose_models": P.list_of(P.string(), unique=True),
    "layer_candidates": P.layers("base_model"), "layer": P.layer("base_model"), "workers": P.integer(min=1, max=64),
    "task": P.choice(sorted(T.TASKS)), "difficulty": P.integer(min=1, max=4), "n_gen_problems": _pos_int, "n_trace_problems": P.integer(min=0),
    "n_dev_problems": _pos_int, "gen_temperature": P.real(min=0, max=2),
    "gen_max_new_tokens": P.integer(min=8), "gen_batch_size": _pos_int, "corpus": P.choice(corpora.CORPORA),
    "seq_len": P.integer(min=8, max=4096), "eval_frac": P.real(gt=0, max=0.5), "train_tokens": _pos_int, "eval_tokens": _pos_int,
    "cc_latents": P.integer(min=2), "activations": P.list_of(P.choice(_ACTS), unique=True), "cc_l1": P.real(min=0),
    "l1_warmup_frac": P.real(min=0, max=1), "cc_k": _pos_int, "cc_lr": P.real(gt=0, max=1), "dose_activation": P.choice(_ACTS),
    "cc_batch": _pos_int, "content_rows": P.boolean(), "max_norm_ratio": P.real(gt=1, lt=float("inf")),
    "plant_freqs": P.list_of(P.real(gt=0, max=1), unique=True), "plant_amps": P.list_of(P.real(gt=0), unique=True),
    "min_recovery": P.real(min=0, max=1), "max_cos": P.real(gt=0, max=1), "top_share": _unit, "pool_r": _unit, "n_perm": P.integer(min=20),
    "n_ablate": _pos_int, "r_low": _unit, "r_high": _unit, "category_share": _unit,
    "category_offset": P.choice([0, -1]), "min_firings": _pos_int, "n_contexts": P.integer(min=0, max=50),
    "n_context_latents": P.integer(min=0, max=100), "n_control_draws": _pos_int, "ablation_windows": _pos_int,
    "n_steer_problems": _pos_int, "steer_scales": P.list_of(P.real(min=0), unique=True),
    "steer_max_new_tokens": P.integer(min=8), "n_random_dirs": _pos_int, "steer_batch_size": _pos_int,
}


def cross(p: dict) -> None:
    """Conditions between parameters: a GPU or allow_cpu, a registered reasoner with the base's
    tokenizer, a problem split that exists, ordered relative-norm thresholds, enough tokens for
    one batch and one window, ablation windows within the held-out ones, an unsteered scale."""
    from resa_utils.lm import adapters

    P.gpu_or_allowed(p["allow_cpu"])
    reasoner = p["reasoner_model"] or f"{p['base_model']}-reasoner"
    P.require(reasoner != p["base_model"] or p["profile"] == "smoke", "reasoner_model", reasoner,
              "is the base model itself: the crosscoder would compare a model with itself",
              "leave it empty for notebook 00's reasoner, or name another model")
    if not adapters.is_registered(reasoner):
        P.require(bool(p["reasoner_model"]), "reasoner_model", reasoner, "is not registered: notebook 00 has not built it here",
                  f"run notebook 00 with base_model={p['base_model']!r} first (it registers {p['base_model']}-reasoner)")
        P.model()("reasoner_model", reasoner, p)  # a registry model, a local folder or a reachable hub id
    from resa_utils.lm.models import load_tokenizer
    tok_b, tok_r = load_tokenizer(p["base_model"]), load_tokenizer(reasoner)   # None where it needs a conversion: then after loading
    if tok_b is not None and tok_r is not None:
        P.require(tok_b.get_vocab() == tok_r.get_vocab(), "reasoner_model", reasoner,
                  f"has another tokenizer than base_model={p['base_model']!r}: a crosscoder pairs the two models' "
                  "activations token by token", "pick two models with one tokenizer")
    try:
        T.check_task(p["task"], p["difficulty"])
        T.split_problems(p["task"], 2 * p["n_gen_problems"] + p["n_trace_problems"], p["n_steer_problems"] + p["n_dev_problems"],
                         p["seed"], p["difficulty"])
    except ValueError as err:
        P.fail("n_trace_problems", p["n_trace_problems"], str(err), "lower n_gen_problems, n_trace_problems, n_steer_problems or n_dev_problems")
    P.require(p["r_low"] < 0.5 <= p["pool_r"] < p["r_high"], "pool_r", p["pool_r"],
              f"needs r_low ({p['r_low']}) < 0.5 <= pool_r < r_high ({p['r_high']})")
    P.require(p["dose_activation"] in p["activations"], "dose_activation", p["dose_activation"],
              f"must be one of activations={p['activations']} (the dose-response's x1 is that crosscoder)")
    P.require(p["layer"] >= 0 or len(p["layer_candidates"]) >= 1, "layer_candidates", p["layer_candidates"],
              "needs at least one block when layer = -1 (the rule picks among them)")
    P.require(all(("batchtopk" != a and "topk" != a) or p["cc_k"] <= p["cc_latents"] for a in p["activations"]), "cc_k", p["cc_k"],
              f"exceeds cc_latents={p['cc_latents']}")
    for name in p["dose_models"]:
        full = f"{reasoner}{name}" if name.startswith("-") else name
        if not adapters.is_registered(full):
            P.require(not name.startswith("-"), "dose_models", p["dose_models"], f"names {full!r}, which notebook 00 has not registered here",
                      f"run notebook 00 with base_model={p['base_model']!r} first (it registers its scaled reasoners), or drop {name!r}")
            P.model()("dose_models", full, p)
    P.require(p["train_tokens"] >= p["cc_batch"], "train_tokens", p["train_tokens"], f"is less than one batch of cc_batch={p['cc_batch']}")
    P.require(p["eval_tokens"] >= p["seq_len"] - 1, "eval_tokens", p["eval_tokens"], f"must hold one window of seq_len - 1 = {p['seq_len'] - 1} tokens")
    n_eval_windows = -(-p["eval_tokens"] // (p["seq_len"] - 1))
    P.require(p["ablation_windows"] <= n_eval_windows, "ablation_windows", p["ablation_windows"],
              f"exceeds the {n_eval_windows} held-out windows of eval_tokens={p['eval_tokens']}",
              f"raise eval_tokens to {p['ablation_windows'] * (p['seq_len'] - 1)} or lower ablation_windows")
    P.require(0 in p["steer_scales"], "steer_scales", p["steer_scales"], "must include 0 (the unsteered baseline)")
