"""Parameter checks of notebook 01 (`01_resa_sae_tuning`): one check per parameter, and the
conditions between them (models of one architecture and tokenizer, the sweep layers, a split and
chunks that exist, and notebook 00's models registered)."""

from __future__ import annotations

from resa_utils.data import tasks as T
from resa_utils.harness import params as P

_pos = P.integer(min=1)

CHECKS: dict = {
    "profile": P.profile(), "allow_cpu": P.boolean(), "seed": P.integer(min=0),
    "base_model": P.model(), "target_model": P.string(nonempty=False), "source_model": P.string(nonempty=False),
    "task": P.choice(sorted(T.TASKS)), "difficulty": P.integer(min=1, max=4),
    "n_test": P.integer(min=10), "n_dev": P.integer(min=4), "n_layer_test": _pos, "n_tune_problems": _pos,
    "n_heldout_problems": _pos, "n_sae_problems": _pos, "chunk_len": P.integer(min=8, max=4096),
    "content_rows": P.boolean(), "max_norm_ratio": P.real(gt=1, lt=float("inf")), "layer": P.layer("base_model", allow_middle=False),
    "sweep_layers": P.layers("base_model"), "d_sae": P.integer(min=2), "k": _pos, "sae_epochs": P.real(gt=0, max=100),
    "sae_batch": _pos, "lora_r": _pos, "lora_alpha": P.real(gt=0), "lrs": P.list_of(P.real(gt=0, max=1), unique=True),
    "tune_steps": _pos, "tune_batch": _pos, "eval_steps": P.list_of(_pos, unique=True), "through_sae": P.boolean(),
    "train_seeds": P.list_of(P.integer(min=0), unique=True), "n_null": P.integer(min=1),
    "min_gap": P.real(min=0, max=100), "max_fvu": P.real(gt=0, max=10), "max_spliced_kl": P.real(gt=0, max=100),
    "alpha_level": P.real(gt=0, lt=1), "noop_steps": _pos, "max_new_tokens": _pos, "eval_batch_size": _pos,
    "n_examples": P.integer(min=0),
}


def _base_vocab(tok) -> dict:
    """The vocabulary without added special tokens (distilled siblings rename some)."""
    added = tok.get_added_vocab()
    return {t: i for t, i in tok.get_vocab().items() if t not in added}


def _known(name: str) -> bool:
    """A model whose facts can be read now (the rest is refused at the end of `cross`)."""
    from resa_utils.lm.models import resolve_model_name

    try:
        resolve_model_name(name)
        return True
    except ValueError:
        return False


def cross(p: dict) -> None:
    """Conditions between parameters: a GPU (or allow_cpu), a source of the target's architecture
    and tokenizer, the main layer among the sweep layers, kept checkpoints before the last step, a
    split that exists, enough tokens for one batch and one held-out chunk, and notebook 00's models
    registered."""
    from resa_utils.lm import adapters
    from resa_utils.lm.models import load_tokenizer, model_n_layers

    P.gpu_or_allowed(p["allow_cpu"])
    names = {"target_model": p["target_model"] or f"{p['base_model']}-reasoner-early",
             "source_model": p["source_model"] or f"{p['base_model']}-reasoner"}
    P.require(names["target_model"] != names["source_model"] or p["profile"] == "smoke", "source_model", names["source_model"],
              "is the target itself: SAE-Tuning's second SAE already covers that case", "leave it empty for notebook 00's stronger reasoner")
    n_t = model_n_layers(names["target_model"], local_only=True) if _known(names["target_model"]) else None
    for key in ("source_model",):
        if n_t is None or not _known(names[key]):
            continue
        n_o = model_n_layers(names[key], local_only=True)
        P.require(n_t is None or n_o is None or n_o == n_t, key, names[key], f"has {n_o} blocks where the target has {n_t}: "
                  "an SAE or an adapter moves only between models of one architecture", "pick a sibling of the target")
        tok_t, tok_o = load_tokenizer(names["target_model"]), load_tokenizer(names[key])
        if tok_t is not None and tok_o is not None:
            P.require(_base_vocab(tok_t) == _base_vocab(tok_o), key, names[key], "has another tokenizer than the target", "pick a sibling of the target")
    P.require(p["layer"] in p["sweep_layers"], "sweep_layers", p["sweep_layers"], f"must include layer={p['layer']}",
              f"add {p['layer']} to sweep_layers")
    P.require(len(p["sweep_layers"]) >= 3 or p["profile"] == "smoke", "sweep_layers", p["sweep_layers"],
              "needs at least 3 layers for the per-layer comparison")
    n_blocks = model_n_layers(names["target_model"], local_only=True) if _known(names["target_model"]) else None
    P.require(p["through_sae"] or n_blocks is None or max(p["sweep_layers"]) < n_blocks - 1, "sweep_layers", p["sweep_layers"],
              f"holds the last block ({(n_blocks or 1) - 1}): with through_sae=False only the LoRA after the splice trains, "
              "and none comes after the last block", "drop the last block or set through_sae=True")
    P.require(all(s < p["tune_steps"] for s in p["eval_steps"]), "eval_steps", p["eval_steps"],
              f"must all be below tune_steps={p['tune_steps']} (the last step is evaluated anyway)")
    P.require(p["n_layer_test"] <= p["n_test"], "n_layer_test", p["n_layer_test"], f"exceeds n_test={p['n_test']}")
    try:
        T.check_task(p["task"], p["difficulty"])
        T.split_problems(p["task"], p["n_tune_problems"] + p["n_heldout_problems"] + p["n_sae_problems"], p["n_test"] + p["n_dev"],
                         seed=p["seed"], difficulty=p["difficulty"])
    except ValueError as err:
        name = "difficulty" if "difficulty" in str(err) else "task" if "unknown task" in str(err) else "n_test"
        P.fail(name, p[name], str(err))
    per_problem = 24 if p["task"] != "gsm_symbolic" else 120   # answer-only tokens without the system prompt, at least
    P.require(p["n_tune_problems"] * per_problem >= p["chunk_len"] * p["tune_batch"], "n_tune_problems", p["n_tune_problems"],
              f"gives fewer tokens than one batch of {p['tune_batch']} chunks of {p['chunk_len']}: the training set would be empty",
              "raise n_tune_problems or lower chunk_len")
    P.require(p["n_heldout_problems"] * per_problem >= p["chunk_len"], "n_heldout_problems", p["n_heldout_problems"],
              f"gives less than one held-out chunk of {p['chunk_len']} tokens")
    P.require(p["k"] <= p["d_sae"], "k", p["k"], f"exceeds d_sae={p['d_sae']}")
    # last, so every other check has run when a model notebook 00 builds later in this run is missing
    for key, name in names.items():  # the models themselves
        if not adapters.is_registered(name):
            P.require(bool(p[key]), key, name, "is not registered: notebook 00 has not built it here",
                      f"run notebook 00 with base_model={p['base_model']!r} first (it registers {name})")
            P.model()(key, name, p)  # a registry model, a local folder or a reachable hub id
