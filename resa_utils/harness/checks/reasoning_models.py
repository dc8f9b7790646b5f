"""Parameter checks of notebook 00 (`00_reasoning_models`): one check per parameter, and the
conditions between them (the registered names, the seeds, and a problem split that exists)."""

from __future__ import annotations

from resa_utils.data import corpora
from resa_utils.data import tasks as T
from resa_utils.harness import params as P
from resa_utils.lm.lora import FINETUNES

_pos, _rate, _frac = P.integer(min=1), P.real(min=0, max=1), P.real(gt=0, max=1)

CHECKS: dict = {
    "profile": P.profile(), "allow_cpu": P.boolean(), "seed": P.integer(min=0),
    "base_model": P.model(), "reasoner_name": P.string(nonempty=False),
    "task": P.choice(sorted(T.TASKS)), "difficulty": P.integer(min=1, max=4),
    "n_distill": _pos, "n_test": P.integer(min=10), "n_dev": P.integer(min=10), "n_select": P.integer(min=4),
    "wait_rate": _rate, "alternative_rate": _rate, "therefore_rate": _rate, "however_rate": _rate,
    "finetune": P.choice(FINETUNES), "train_seeds": P.list_of(P.integer(min=0), unique=True),
    "lora_r": _pos, "lora_alpha": P.real(gt=0), "lr": P.real(gt=0, max=1), "epochs": P.real(gt=0, max=100),
    "batch_size": _pos, "max_length": P.integer(min=16),
    "early_fractions": P.list_of(P.real(gt=0, max=0.95), unique=True),
    "max_new_tokens": _pos, "eval_batch_size": _pos, "behaviour_temperature": P.real(gt=0, max=5),
    "behaviour_seeds": P.integer(min=1),
    "dose_scales": P.list_of(P.real(min=0, max=16), unique=True), "n_dose": P.integer(min=4),
    "repr_windows": _pos, "repr_seq_len": P.integer(min=8), "repr_block": P.integer(min=-1),
    "english_corpus": P.choice(corpora.CORPORA),
    "lift_threshold": P.real(min=0, max=100), "rate_factor": P.real(gt=1, max=100), "max_cos": P.real(gt=-1, max=1),
    "base_max": _frac, "target_margin": P.real(min=0, max=100), "min_format": _rate,
    "gap_threshold": P.real(min=0, max=100), "n_examples": P.integer(min=0),
}


def cross(p: dict) -> None:
    """Conditions between parameters: a GPU (or allow_cpu), a new reasoner name that says its
    base, a scaled model per distinct scale, enough test problems for the dose-response, a block
    inside the model, and a task, difficulty and split that exist."""
    P.gpu_or_allowed(p["allow_cpu"])
    from resa_utils.lm.models import model_n_layers
    from resa_utils.lm.registry import REGISTRY

    name = p["reasoner_name"]
    P.require(not name or (name.startswith(p["base_model"] + "-") and name not in REGISTRY and "/" not in name),
              "reasoner_name", name, f"must be empty or a new name starting with '{p['base_model']}-' "
              "(so the name says its base), without '/'")
    P.require(1.0 not in [float(s) for s in p["dose_scales"]], "dose_scales", p["dose_scales"],
              "must not hold 1: scale 1 is the reasoner itself, measured anyway", "drop 1 from the list")
    P.require(p["behaviour_seeds"] <= len(p["train_seeds"]), "behaviour_seeds", p["behaviour_seeds"],
              f"must be at most the number of train_seeds ({len(p['train_seeds'])})")
    P.require(p["n_dose"] <= p["n_test"], "n_dose", p["n_dose"], f"must be at most n_test={p['n_test']} "
              "(the scaled models answer the first n_dose test problems)")
    n_layers = model_n_layers(p["base_model"], local_only=True)
    P.require(n_layers is None or p["repr_block"] < n_layers, "repr_block", p["repr_block"],
              f"is past the last block of {p['base_model']!r} ({n_layers} blocks): use 0..{(n_layers or 1) - 1} or -1")
    try:
        T.check_task(p["task"], p["difficulty"])
        T.split_problems(p["task"], p["n_distill"], p["n_test"] + p["n_dev"] + p["n_select"],
                         seed=p["seed"], difficulty=p["difficulty"])  # seconds: generators are fast
    except ValueError as err:
        name = "difficulty" if "difficulty" in str(err) else "task" if "unknown task" in str(err) else "n_test"
        P.fail(name, p[name], str(err))
