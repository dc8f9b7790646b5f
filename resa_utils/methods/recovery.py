"""Paper 5's experiments as functions: feature recovery on synthetic data, and the
reconstruction-sparsity frontier and seed consistency on real activations."""

from __future__ import annotations

import torch

from resa_utils.data.synthetic import (SyntheticConfig, fresh_samples, make_dataset,
                                       matched_firing_corr, max_cosines, recovery_rate)
from resa_utils.sae import SAE, TrainConfig, evaluate_sae, train_sae
from resa_utils.sae.train import train_and_evaluate  # noqa: F401  (notebook 05 imports it from here)

THRESHOLDS = (0.8, 0.9, 0.95, 0.99)


def synthetic_recovery(syn: SyntheticConfig, train: TrainConfig,
                       thresholds: tuple[float, ...] = THRESHOLDS, device=None) -> dict:
    """Train one SAE on synthetic data; return recovery at each τ plus FVU, L0, dead fraction
    (measured on the first 20k training samples: the generator is the distribution)."""
    x_ND, features = make_dataset(syn)
    result = train_sae(x_ND, train, progress=False, device=device)
    ev = evaluate_sae(result.sae, x_ND[:20_000])
    rec = recovery_rate(features, result.sae.W_dec.detach(), thresholds)
    return {**{f"recovery@{t}": r for t, r in rec.items()}, "fvu": ev["fvu"], "l0": ev["l0"],
            "dead_frac": ev["dead_frac"], "seconds": result.seconds, "curve": result.history}


FIRING_R = 0.9
"""A feature counts as recovered by firing when its best live decoder match also fires with its
coefficient: Pearson r ≥ this between `h_i` and the latent's activation on held-out samples."""


@torch.no_grad()
def synthetic_scores(sae: SAE, features_FD: torch.Tensor, x_ND: torch.Tensor, codes_NF: torch.Tensor,
                     thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, float]:
    """Recovery of known features by `sae`, scored on held-out samples `x_ND` (codes `codes_NF`):
    `recovery@τ` over live latents only (a dead latent's decoder row can sit on a feature
    without ever reconstructing it), `recovery_all@τ` over every row (the old metric, for
    contrast), `firing@r` (share of features whose best live match fires with r ≥ FIRING_R),
    the mean of that r, and FVU, L0 and dead fraction on the same samples."""
    ev = evaluate_sae(sae, x_ND)
    alive = ev["density"] > 0
    W = sae.W_dec.detach().float().cpu()
    live = recovery_rate(features_FD, W, thresholds, alive_M=alive)
    every = recovery_rate(features_FD, W, thresholds)
    lat = torch.cat([sae.encode(x_ND[a:a + 8192].to(sae.W_enc.device)).cpu() for a in range(0, len(x_ND), 8192)])
    r = matched_firing_corr(features_FD, W, codes_NF, lat)
    return {**{f"recovery@{t}": v for t, v in live.items()}, **{f"recovery_all@{t}": v for t, v in every.items()},
            f"firing@{FIRING_R}": float((r >= FIRING_R).float().mean()), "firing_r_mean": float(r.mean()),
            "fvu": ev["fvu"], "l0": ev["l0"], "dead_frac": ev["dead_frac"]}


def synthetic_run(syn: SyntheticConfig, train: TrainConfig, probe_samples: tuple[int, ...] = (),
                  n_eval: int = 20_000, thresholds: tuple[float, ...] = THRESHOLDS,
                  checkpoint_dir=None, device=None) -> dict:
    """Train one SAE on synthetic data and score it (`synthetic_scores`) on `n_eval` fresh
    held-out samples of the same features, at each of `probe_samples` training samples and at
    the end (`train.n_tokens`, the stopping rule fixed before the run). Returns the final
    scores, `seconds` (training only) and `curve`: one row per probe with `samples`."""
    x_ND, features = make_dataset(syn)
    x_ev, codes_ev = fresh_samples(syn, features, n_eval, seed=syn.seed + 1_000_003)
    probe = lambda sae: synthetic_scores(sae, features, x_ev, codes_ev, thresholds)  # noqa: E731
    result = train_sae(x_ND, train, progress=False, device=device, probe=probe,
                       probe_tokens=tuple(probe_samples), checkpoint_dir=checkpoint_dir)
    curve = [{"samples": p["tokens"], **{k: v for k, v in p.items() if k not in ("step", "tokens")}}
             for p in result.probes]
    final = {k: v for k, v in curve[-1].items() if k != "samples"}
    return {**final, "seconds": result.seconds, "curve": curve}


def synthetic_row(c: dict) -> dict:
    """`synthetic_run` from a sweep config (a module-level function, so `run_sweep` can run it
    in worker processes): `c["syn"]` and `c["train"]` hold `SyntheticConfig` / `TrainConfig`
    fields, `c["probe_samples"]` and `c["n_eval"]` the probes; other keys are labels."""
    return synthetic_run(SyntheticConfig(**c["syn"]), TrainConfig(**c["train"]),
                         tuple(c["probe_samples"]), c["n_eval"])


def pairwise_consistency(saes: list[SAE], thresholds: tuple[float, ...] = (0.9, 0.7),
                         eval_ND: torch.Tensor | None = None) -> dict[str, float]:
    """Seed consistency over ordered pairs (A, B) of SAEs: the share of A's latents (alive on
    `eval_ND`, if given) whose best decoder match in B has cosine > τ, averaged over pairs,
    for each τ; plus the median best-match cosine (`seed_match_cosines` summarised)."""
    pairs = seed_match_cosines(saes, eval_ND)
    nan = float("nan")
    out = {f"consistency@{t}": sum(float((p > t).float().mean()) for p in pairs) / len(pairs) if pairs else nan
           for t in thresholds}
    out["median_max_cos"] = sum(float(p.median()) for p in pairs) / len(pairs) if pairs else nan
    return out


def best_match_cosines(a: SAE, b: SAE, alive_a: torch.Tensor | None = None) -> torch.Tensor:
    """For each latent of `a` (only those in the mask `alive_a`, if given), the cosine of its
    decoder row with the best-matching row of `b`: `[M]`, whose distribution is seed consistency."""
    dec_a = a.W_dec.detach().float().cpu()
    if alive_a is not None:
        dec_a = dec_a[alive_a.cpu()]
    return max_cosines(dec_a, b.W_dec.detach().float().cpu())


def random_match_cosines(n_a: int, n_b: int, d: int, seed: int = 0) -> torch.Tensor:
    """The same statistic for two sets of random Gaussian directions (`n_a` against `n_b` in d
    dims): the floor a real consistency has to clear."""
    g = torch.Generator().manual_seed(seed)
    return max_cosines(torch.randn(n_a, d, generator=g), torch.randn(n_b, d, generator=g))


def seed_match_cosines(saes: list[SAE], eval_ND: torch.Tensor | None,
                       min_density: float = 0.0) -> list[torch.Tensor]:
    """Seed consistency as distributions: for each ordered pair (A, B) of `saes` (one per seed),
    the best-match cosine in B of every latent of A firing on more than `min_density` of the
    tokens `eval_ND` (0 = every live latent; `eval_ND` None = every latent). One `[M_A]` tensor
    per pair, A-major order."""
    masks = [None if eval_ND is None else evaluate_sae(s, eval_ND)["density"] > min_density for s in saes]
    return [best_match_cosines(a, b, masks[i]) for i, a in enumerate(saes)
            for j, b in enumerate(saes) if i != j]
