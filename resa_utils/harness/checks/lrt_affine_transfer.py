"""Parameter checks of `02_lrt_affine_transfer`: one check per parameter (`CHECKS`) and the
conditions between parameters (`cross`), run before any model loads."""

from __future__ import annotations

import math

from resa_utils.harness import params as P
from resa_utils.methods import steering as S


def _tokenizers_allow(p: dict, a: str, b: str, mode_name: str):
    """The two models' tokenizers (None where not converted yet); refuses one-to-one token
    pairing (`mode_name` = 'tokens') when they tokenize differently."""
    from resa_utils.lm.models import load_tokenizer
    from resa_utils.methods.transfer import same_tokenizer
    ta, tb = load_tokenizer(p[a]), load_tokenizer(p[b])
    if p[mode_name] == "tokens" and ta is not None and tb is not None and not same_tokenizer(ta, tb):
        P.fail(mode_name, p[mode_name], f"pairs tokens one to one, but {p[a]} and {p[b]} tokenize differently",
               f"set {mode_name}='word_end' (positions paired by character offsets at word ends)")
    return ta, tb


def cross(p: dict) -> None:
    """Conditions between parameters: models, steering strengths, enough windows and tokens for
    the fit, tokenizers that allow the pairing, and behaviour tokens and prompts that tokenize."""
    P.gpu_or_allowed(p["allow_cpu"])
    P.require(p["source_model"] != p["target_model"], "target_model", p["target_model"], "must differ from source_model")
    if p["cross_source"] or p["cross_target"]:
        P.require(bool(p["cross_source"] and p["cross_target"]), "cross_target", p["cross_target"],
                  "cross_source and cross_target go together: set both, or both to an empty string")
        P.require(p["cross_source"] != p["cross_target"], "cross_target", p["cross_target"], "must differ from cross_source")
        P.model()("cross_source", p["cross_source"], p); P.model()("cross_target", p["cross_target"], p)
    P.layer("target_model")("steer_target_layer", p["steer_target_layer"], p)
    P.require(0 in p["alphas"], "alphas", p["alphas"], "must include 0 (the unsteered baseline)")
    P.require(max(p["alphas"]) > 0, "alphas", p["alphas"], "needs a positive strength (the steered generations use the largest)")
    nw = math.ceil(p["fit_tokens"] / (p["seq_len"] - 1))
    P.require(max(1, round(nw * p["val_frac"])) + max(1, round(nw * p["test_frac"])) < nw, "fit_tokens", p["fit_tokens"],
              f"gives only {nw} windows of seq_len={p['seq_len']}: too few for train, validation and test windows")
    P.require(len(set(p["alphas"])) >= 3, "alphas", p["alphas"], "needs at least 3 distinct values for a correlation")
    P.require(p["null_alpha"] in p["alphas"], "null_alpha", p["null_alpha"],
              f"must be one of alphas {p['alphas']}: the null vectors' slopes are read at it, beside the main vectors' there",
              f"use one of {[a for a in p['alphas'] if a > 0]}")
    P.require(p["n_random_null"] + p["n_shuffled_null"] + len(p["behaviours"]) - 1 >= 1, "n_random_null", p["n_random_null"],
              "leaves the null empty (no random, shuffled or other-behaviour vectors)")
    from resa_utils.lm.registry import REGISTRY
    width = getattr(REGISTRY.get(p["source_model"]), "d_model", None) or 0
    n_train = int(p["fit_tokens"] * (1 - p["val_frac"] - p["test_frac"]))
    P.require(n_train > width, "fit_tokens", p["fit_tokens"],
              f"leaves {n_train} training tokens, fewer than the source width {width} (the least-squares fit "
              f"would be underdetermined)", f"use at least {math.ceil((width + 1) / (1 - p['val_frac'] - p['test_frac']))}")
    ta, tb = _tokenizers_allow(p, "source_model", "target_model", "pairing")
    for name in p["behaviours"]:
        b = S.load_behaviour(name)
        m, n_fit = min(len(b.pos), len(b.neg)), b.n_fit(p["fit_share"])
        P.require(n_fit >= 2, "fit_share", p["fit_share"],
                  f"fits behaviour {name!r}'s vector on {n_fit} prompt(s) a side ({len(b.pos)} / {len(b.neg)} a side)",
                  f"raise fit_share to at least {2 / m:.2f}, or give the behaviour more prompts")
        P.require(m - n_fit >= 2, "fit_share", p["fit_share"],
                  f"leaves {m - n_fit} held-out prompt(s) a side for behaviour {name!r} ({len(b.pos)} / {len(b.neg)} a side): "
                  "the paper's r across prompts needs at least 2", f"lower fit_share to at most {(m - 2) / m:.2f} (0.75 is a good default)")
        for tok, model in ((ta, p["source_model"]), (tb, p["target_model"])):
            if tok is None:
                continue
            for t in (b.pos_token, b.neg_token):
                n = len(tok(t, add_special_tokens=False)["input_ids"])
                P.require(n >= 1, "behaviours", p["behaviours"], f"token {t!r} of {name!r} tokenizes to nothing")
                P.require(n == 1 or not p["strict_tokens"], "strict_tokens", p["strict_tokens"],
                          f"token {t!r} of behaviour {name!r} is {n} tokens for {model}",
                          "pick single-token behaviour tokens, or set strict_tokens=False to use each one's first token")
        if ta is not None:
            empty = [x for x in b.prompts(b.pos + b.neg) if not ta(x, add_special_tokens=False)["input_ids"]]
            P.require(not empty, "behaviours", p["behaviours"], f"{len(empty)} prompts of {name!r} tokenize to nothing")
    if p["cross_source"]:
        _tokenizers_allow(p, "cross_source", "cross_target", "cross_pairing")


def _behaviour():
    """A behaviour name (`resa_utils/data/behaviours/`) or the path of a JSON file of the same shape."""
    def check(name, v, _p):
        if not isinstance(v, str) or not v:
            P.fail(name, v, "must be a behaviour name or the path of a .json prompt set")
        try:
            S.load_behaviour(v)
        except ValueError as err:
            P.fail(name, v, str(err))
    return check


CHECKS: dict = {
    "profile": P.profile(), "allow_cpu": P.boolean(), "seed": P.integer(min=0),
    "source_model": P.model(), "target_model": P.model(), "pairing": P.choice(["tokens", "word_end"]),
    "cross_source": P.string(nonempty=False), "cross_target": P.string(nonempty=False),
    "cross_pairing": P.choice(["tokens", "word_end"]),
    "corpus": P.corpus(), "seq_len": P.integer(min=8, max=4096), "fit_tokens": P.integer(min=1000),
    "content_rows": P.boolean(), "max_norm_ratio": P.real(gt=1, lt=float("inf")),
    "val_frac": P.real(gt=0, lt=0.5), "test_frac": P.real(gt=0, lt=0.5), "layer_stride": P.integer(min=1),
    "lambdas": P.list_of(P.real(min=0, max=100)), "behaviours": P.list_of(_behaviour(), unique=True),
    "fit_share": P.real(gt=0, lt=1), "steer_source_layer": P.layer("source_model"), "steer_target_layer": P.integer(min=-1),
    "alphas": P.list_of(P.real(min=-100, max=100)), "strict_tokens": P.boolean(), "n_boot": P.integer(min=10),
    "n_generations": P.integer(min=0, max=16), "max_new_tokens": P.integer(min=1, max=512), "batch_size": P.integer(min=1),
    "null_alpha": P.real(gt=0, max=100), "n_random_null": P.integer(min=0, max=1000), "n_shuffled_null": P.integer(min=0, max=1000),
    "bias_scales": P.list_of(P.real(min=0, max=10), unique=True), "adamw_lr": P.real(gt=0, max=1.0),
    "adamw_batch": P.integer(min=1), "adamw_steps": P.integer(min=1, max=1_000_000), "min_source_slope": P.threshold(),
}
