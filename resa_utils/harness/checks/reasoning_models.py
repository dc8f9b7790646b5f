"""Parameter checks of notebook 00 (`00_reasoning_models`): one check per parameter, and the
conditions between them (the registered names, the candidates, and a problem split that exists)."""

from __future__ import annotations

from resa_utils.data import tasks as T
from resa_utils.harness import params as P

_pos, _rate = P.integer(min=1), P.real(min=0, max=1)

CHECKS: dict = {
    "profile": P.profile(), "allow_cpu": P.boolean(), "seed": P.integer(min=0),
    "base_model": P.model(), "reasoner_name": P.string(nonempty=False), "candidates": P.list_of(P.model()),
    "candidate_steps": P.integer(min=0, max=50),
    "task": P.choice(sorted(T.TASKS)), "difficulty": P.integer(min=1, max=4),
    "n_distill": _pos, "n_test": P.integer(min=10),
    "wait_rate": _rate, "alternative_rate": _rate, "therefore_rate": _rate, "however_rate": _rate,
    "lora_r": _pos, "lora_alpha": P.real(gt=0), "lr": P.real(gt=0, max=1), "epochs": P.real(gt=0, max=100),
    "batch_size": _pos, "max_length": P.integer(min=16), "max_new_tokens": _pos, "eval_batch_size": _pos,
    "rft_problems": _pos, "rft_k": _pos, "rft_temperature": P.real(gt=0, max=5), "rft_rounds": P.integer(min=0, max=5),
    "rft_lr": P.real(gt=0, max=1), "rft_epochs": P.real(gt=0, max=100), "n_examples": P.integer(min=0),
}


def cross(p: dict) -> None:
    """Conditions between parameters: a GPU (or allow_cpu), a new reasoner name that says its
    base, the base among the timed candidates, and a task, difficulty and split that exist."""
    P.gpu_or_allowed(p["allow_cpu"])
    from resa_utils.lm.registry import REGISTRY

    name = p["reasoner_name"]
    P.require(not name or (name.startswith(p["base_model"] + "-") and name not in REGISTRY and "/" not in name),
              "reasoner_name", name, f"must be empty or a new name starting with '{p['base_model']}-' "
              "(so the name says its base), without '/'")
    P.require(p["base_model"] in p["candidates"], "candidates", p["candidates"],
              f"should include base_model={p['base_model']!r}, so its speed is measured with the others")
    try:
        T.check_task(p["task"], p["difficulty"])
        T.split_problems(p["task"], p["n_distill"] + p["rft_problems"] * p["rft_rounds"], p["n_test"],
                         seed=p["seed"], difficulty=p["difficulty"])  # seconds: generators are fast
    except ValueError as err:
        name = "difficulty" if "difficulty" in str(err) else "task" if "unknown task" in str(err) else "n_test"
        P.fail(name, p[name], str(err))
