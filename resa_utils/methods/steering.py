"""Steering vectors (paper 2, and later notebook 04): contrastive activation addition
(difference of means of the last-token hidden state over two prompt sets), a hook that adds
`α v/‖v‖` at every position of one block's output, and the logit-difference metric; the
dose-response of several vectors across α (a resumable sweep), its correlations with the native
vector's, and steered generations side by side.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from resa_utils.lm.activations import decoder_layers, resid_hook, splice
from resa_utils.lm.generation import check_prompts, left_padding


def diff_of_means(pos_ND: torch.Tensor, neg_ND: torch.Tensor) -> torch.Tensor:
    """CAA direction: mean of the positive set minus mean of the negative set (unnormalised)."""
    if len(pos_ND) == 0 or len(neg_ND) == 0:
        raise ValueError("both prompt sets need at least one prompt")
    return pos_ND.double().mean(0).float() - neg_ND.double().mean(0).float()


def _encode(lm, prompts: list[str]):
    """Left-padded ids: the last position is every prompt's last token."""
    check_prompts(lm.tokenizer, prompts)
    with left_padding(lm.tokenizer) as tok:
        return tok(prompts, return_tensors="pt", padding=True).to(lm.device)


@torch.no_grad()
def last_token_states(lm, prompts: list[str], layer: int, batch_size: int = 16) -> torch.Tensor:
    """Block `layer`'s output at each prompt's last token: `acts_ND` (float32, CPU)."""
    return torch.cat([p.h_BTD[:, -1].float().cpu() for p in run_prefix(lm, prompts, layer, batch_size)])


@contextmanager
def steer(lm, layer: int, v_D: torch.Tensor, alpha: float):
    """Inside the block, block `layer`'s output gets `alpha · v/‖v‖` added at every position;
    the model is as it was on exit."""
    norm = float(v_D.norm())
    if norm == 0:
        raise ValueError("steering vector has zero norm")
    delta = (alpha * v_D / norm).to(device=lm.device, dtype=lm.dtype)
    with splice(lm.model, resid_hook(layer), lambda h: h + delta):
        yield


def generate_steered(lm, prompts: list[str], layer: int, delta_ND: torch.Tensor,
                     max_new_tokens: int, stop: tuple[str, ...] = ()) -> list[dict]:
    """Greedy continuations of `prompts`, prompt i steered by `delta_ND[i]` added at every position
    of block `layer`'s output (a zero row: unsteered). All prompts run as one batch, so prompts
    steered by different vectors share one `generate` (memory-bound on CPU: many rows cost
    about as much as one)."""
    from resa_utils.lm.generation import generate

    if delta_ND.shape[0] != len(prompts):
        raise ValueError(f"{delta_ND.shape[0]} steering rows for {len(prompts)} prompts: give one per prompt")
    delta = delta_ND.to(device=lm.device, dtype=lm.dtype)[:, None, :]
    with splice(lm.model, resid_hook(layer), lambda h: h + delta):
        return generate(lm, prompts, max_new_tokens, batch_size=len(prompts), stop=stop)


@dataclass
class Prefix:
    """Block `layer`'s output for one batch of left-padded prompts: the rest of the model can be
    run from it many times (one per steering vector and α) without redoing blocks 0..layer."""

    layer: int
    h_BTD: torch.Tensor
    attention_mask_BT: torch.Tensor


@torch.no_grad()
def run_prefix(lm, prompts: list[str], layer: int, batch_size: int = 16) -> list[Prefix]:
    """Blocks 0..`layer` over `prompts`, `batch_size` at a time (the model stops there)."""
    from resa_utils.lm.activations import run_with_cache

    n_layers = len(decoder_layers(lm.model))
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer} is out of range for {lm.name} ({n_layers} layers): "
                         f"use 0..{n_layers - 1}")
    out = []
    for a in range(0, len(prompts), batch_size):
        enc = _encode(lm, prompts[a:a + batch_size])
        acts = run_with_cache(lm.model, enc.input_ids, [resid_hook(layer)], enc.attention_mask)
        out.append(Prefix(layer, acts[resid_hook(layer)], enc.attention_mask))
    return out


class _Skip(torch.nn.Module):
    """A decoder block that passes its input through (stands in for blocks already run)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextmanager
def _skip_blocks(model, n: int):
    """Blocks 0..n-1 pass their input through, so `inputs_embeds` enters block n. The blocks stay
    in place (not sliced away): models index per-block settings (sliding or full attention) by
    position in the list."""
    layers = decoder_layers(model)
    saved = [layers[i] for i in range(n)]
    for i in range(n):
        layers[i] = _Skip()
    try:
        yield
    finally:
        for i, block in enumerate(saved):
            layers[i] = block


def _token_ids(lm, pos_token: str | int, neg_token: str | int) -> list[int]:
    ids = []
    for t in (pos_token, neg_token):
        if isinstance(t, int):  # a token id
            ids.append(t)
            continue
        enc = lm.tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"behaviour token {t!r} is {len(enc)} tokens for {lm.name}: pick one "
                             "that is a single token (often with a leading space)")
        ids.append(enc[0])
    return ids


@torch.no_grad()
def logit_diff_from(lm, prefixes: list[Prefix], pos_token: str | int, neg_token: str | int,
                    delta_D: torch.Tensor | None = None) -> torch.Tensor:
    """`logit_diff` of the prompts behind `prefixes`, with `delta_D` added at every position of
    the prefix block's output (None: unsteered), running only the blocks after it: the same
    numbers as `steer` + `logit_diff`, at the cost of the remaining blocks."""
    ids = _token_ids(lm, pos_token, neg_token)
    out = []
    for p in prefixes:
        h = p.h_BTD if delta_D is None else p.h_BTD + delta_D.to(device=p.h_BTD.device, dtype=p.h_BTD.dtype)
        with _skip_blocks(lm.model, p.layer + 1):
            logits = lm.model(inputs_embeds=h, attention_mask=p.attention_mask_BT, use_cache=False,
                              logits_to_keep=1).logits[:, -1].float()
        out.append((logits[:, ids[0]] - logits[:, ids[1]]).cpu())
    return torch.cat(out)


@torch.no_grad()
def logit_diff(lm, prompts: list[str], pos_token: str | int, neg_token: str | int,
               batch_size: int = 16) -> torch.Tensor:
    """Logit(y+) − Logit(y−) of the next token after each prompt: `diff_N`. Each of `pos_token`
    and `neg_token` must be one token (e.g. " Yes" / " No"), or a token id."""
    ids = _token_ids(lm, pos_token, neg_token)
    out = []
    for a in range(0, len(prompts), batch_size):
        enc = _encode(lm, prompts[a:a + batch_size])
        logits = lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                          use_cache=False, logits_to_keep=1).logits[:, -1].float()  # LM head on the last position only
        out.append((logits[:, ids[0]] - logits[:, ids[1]]).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- behaviours

BEHAVIOURS_DIR = Path(__file__).resolve().parents[1] / "data" / "behaviours"


@dataclass
class Behaviour:
    """A contrastive prompt set (`resa_utils/data/behaviours/<name>.json`): prompts are
    `template.format(text=item)`, and the metric is Logit(pos_token) − Logit(neg_token)."""

    name: str
    description: str
    template: str
    pos_token: str
    neg_token: str
    pos: list[str]
    neg: list[str]

    def prompts(self, items: list[str]) -> list[str]:
        return [self.template.format(text=t) for t in items]

    def n_fit(self, fit_share: float) -> int:
        """Prompts a side that fit the vector at `fit_share` of the smaller side (the rest held out)."""
        return int(fit_share * min(len(self.pos), len(self.neg)))

    def split(self, n_fit: int, seed: int) -> tuple[list[str], list[str], list[str], list[str]]:
        """`(fit_pos, fit_neg, eval_pos, eval_neg)` prompts: a seeded shuffle of each side, the
        first `n_fit` for the vector and the rest held out."""
        if not 0 < n_fit < min(len(self.pos), len(self.neg)):
            raise ValueError(f"n_fit={n_fit} must leave held-out prompts: behaviour {self.name!r} has "
                             f"{len(self.pos)} / {len(self.neg)} prompts a side")
        out = []
        for i, side in enumerate((self.pos, self.neg)):
            order = torch.randperm(len(side), generator=torch.Generator().manual_seed(seed + i)).tolist()
            out.append([side[j] for j in order])
        (p, n) = out
        return self.prompts(p[:n_fit]), self.prompts(n[:n_fit]), self.prompts(p[n_fit:]), self.prompts(n[n_fit:])


def behaviour_names() -> list[str]:
    return sorted(f.stem for f in BEHAVIOURS_DIR.glob("*.json"))


MIN_PROMPTS = 8
"""Prompts a side a behaviour file needs (a vector from some, a few held out)."""

_BEHAVIOUR_FIELDS = ("name", "description", "template", "pos_token", "neg_token", "pos", "neg")


def behaviour_path(name: str) -> Path:
    """The JSON file of a behaviour: a name in `resa_utils/data/behaviours/`, or a path to any
    JSON file of the same shape (ending in .json)."""
    path = Path(name).expanduser() if str(name).endswith(".json") else BEHAVIOURS_DIR / f"{name}.json"
    if not path.exists():
        raise ValueError(f"unknown behaviour {name!r}: use one of {behaviour_names()}, or the path of a "
                         f"JSON file of the same shape (fields {list(_BEHAVIOUR_FIELDS)})")
    return path


def load_behaviour(name: str) -> Behaviour:
    """A behaviour by name (`behaviour_names()`) or from any JSON file of the same shape: string
    fields name, description, template (with `{text}`), pos_token and neg_token, and lists `pos`
    and `neg` of at least `MIN_PROMPTS` distinct strings each (any number beyond that)."""
    path = behaviour_path(name)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"behaviour file {path} is not valid JSON: {err}") from None
    missing = [k for k in _BEHAVIOUR_FIELDS if k not in data] if isinstance(data, dict) else list(_BEHAVIOUR_FIELDS)
    if missing:
        raise ValueError(f"behaviour file {path} lacks the fields {missing}")
    for k in ("name", "description", "template", "pos_token", "neg_token"):
        if not isinstance(data[k], str) or (k != "description" and not data[k]):
            raise ValueError(f"behaviour file {path}: {k} must be a non-empty string")
    if "{text}" not in data["template"]:
        raise ValueError(f"behaviour file {path}: the template must contain {{text}}")
    for side in ("pos", "neg"):
        items = data[side]
        if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
            raise ValueError(f"behaviour file {path}: {side} must be a list of non-empty strings")
        if len(set(items)) < MIN_PROMPTS:
            raise ValueError(f"behaviour file {path}: {side} has {len(set(items))} distinct prompts; "
                             f"at least {MIN_PROMPTS} a side are needed")
    return Behaviour(**{k: data[k] for k in _BEHAVIOUR_FIELDS})


def random_like(v_D: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction with the norm of `v_D` (the steering control)."""
    r = torch.randn(v_D.shape, generator=torch.Generator().manual_seed(seed))
    return r / r.norm() * v_D.norm()



def evaluate_steered(lm, problems: list, make_prompt, layer: int, vectors: dict[str, torch.Tensor],
                     scales: list[float], path: str | Path, setup: dict, max_new_tokens: int = 128,
                     batch_size: int = 64, stop: tuple[str, ...] = ("</answer>",)):
    """Greedy answers to `problems` with `scale · v` (v as given, not normalised) added to block
    `layer`'s output at every position, for every named vector and scale (scale 0: unsteered,
    run once). One DataFrame row per (vector, scale, problem): correct, n_tokens, text and the
    reflection-phrase counts. Batches mix settings (each row its own vector) and are sweep rows
    in `path`, keyed by `setup`, so a killed sweep resumes."""
    import pandas as pd

    from resa_utils.core.sweep import config_key, run_sweep
    from resa_utils.data.tasks import REFLECTION_PHRASES, is_correct, reflection_counts

    if not problems or not vectors or not scales:
        raise ValueError("evaluate_steered needs problems, vectors and scales (none may be empty)")
    D = int(lm.model.config.hidden_size)
    for name, v in vectors.items():
        if tuple(v.shape) != (D,):
            raise ValueError(f"steering vector {name!r} has shape {tuple(v.shape)}, the model's width is {D}")
    settings = [("none", 0.0)] if 0 in scales else []
    settings += [(n, float(s)) for n in vectors for s in scales if s != 0]
    jobs = [(n, s, p) for n, s in settings for p in problems]
    keys = {n: config_key({"v": v.tolist()}) for n, v in vectors.items()}  # a changed vector reruns
    configs = [{"setup": setup, "max_new_tokens": max_new_tokens, "stop": list(stop),
                "jobs": [(n, s, keys.get(n, ""), p.uid) for n, s, p in jobs[a:a + batch_size]]}
               for a in range(0, len(jobs), batch_size)]
    by_uid = {p.uid: p for p in problems}

    def run_batch(c: dict) -> dict:
        batch = [(n, s, by_uid[u]) for n, s, _, u in c["jobs"]]
        delta = torch.stack([vectors[n] * s if n in vectors else torch.zeros(D) for n, s, _ in batch])
        gens = generate_steered(lm, [make_prompt(p) for _, _, p in batch], layer, delta, max_new_tokens, stop)
        return {"results": [{"vector": n, "scale": s, "uid": p.uid, "correct": is_correct(g["text"], p.answer),
                             "n_tokens": g["n_tokens"], "text": g["text"], **reflection_counts(g["text"])}
                            for (n, s, p), g in zip(batch, gens)]}

    rows = run_sweep(path, configs, run_batch, desc="steered generations")
    columns = ["vector", "scale", "uid", "correct", "n_tokens", "text", *REFLECTION_PHRASES]
    return pd.DataFrame([r for batch in rows.results for r in batch])[columns]



# --------------------------------------------------------------------------- dose-response of several vectors


@dataclass
class CAAVector:
    """A CAA vector at one block and the unit its strengths are given in."""

    v_D: torch.Tensor
    """difference of means of the last-token states (unnormalised)"""
    scale: float
    """mean last-token norm over both prompt sets at that block (α is in units of it)"""
    pos_ND: torch.Tensor | None = None
    """the last-token states behind it (for label-shuffled vectors)"""
    neg_ND: torch.Tensor | None = None


def caa_vector(lm, pos_prompts: list[str], neg_prompts: list[str], layer: int, batch_size: int = 16) -> CAAVector:
    """The CAA vector of two prompt sets at block `layer`, with the mean last-token norm there."""
    hp, hn = last_token_states(lm, pos_prompts, layer, batch_size), last_token_states(lm, neg_prompts, layer, batch_size)
    return CAAVector(diff_of_means(hp, hn), float(torch.cat([hp, hn]).norm(dim=1).mean()), hp, hn)


def label_shuffled_vectors(caa: CAAVector, n: int, seed: int) -> list[torch.Tensor]:
    """`n` CAA vectors of the same states with the labels permuted (each side keeps its size): the
    null of 'a difference of means of these prompts, unrelated to the behaviour'."""
    if caa.pos_ND is None or caa.neg_ND is None:
        raise ValueError("label-shuffled vectors need the CAA vector's states (from caa_vector)")
    pooled, k = torch.cat([caa.pos_ND, caa.neg_ND]), len(caa.pos_ND)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        perm = torch.randperm(len(pooled), generator=g)
        out.append(diff_of_means(pooled[perm[:k]], pooled[perm[k:]]))
    return out


def scaled_delta(v_D: torch.Tensor, alpha: float, scale: float) -> torch.Tensor:
    """`α · scale · v/‖v‖`: what steering adds at every position (the same as `steer` with `α · scale`)."""
    return alpha * scale * v_D / v_D.norm()


def first_token_ids(lm, b: Behaviour) -> list[int]:
    """The first token id of each behaviour token (for tokens that are not single tokens)."""
    return [lm.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (b.pos_token, b.neg_token)]


def steering_sweep(lm, behaviours: dict[str, Behaviour], splits: dict[str, tuple], vectors: dict[str, dict[str, torch.Tensor]],
                   scale: dict[str, float], alphas: list[float], layer: int, path: str | Path, setup: dict,
                   strict_tokens: bool = True, batch_size: int = 16, short: dict[str, list[str]] | None = None,
                   short_alphas: list[float] = ()):
    """Logit differences of each behaviour's held-out prompts (`splits[name][2] + [3]`) steered at
    block `layer` by every vector of `vectors[name]` at every α (α = 0 once, as vector 'none'),
    except the vectors named in `short[name]` (null and side vectors), which run only at the
    non-zero `short_alphas` (each must be one of `alphas`, so every vector shares those points):
    one row per setting, `diffs` a list over prompts. Rows are sweep rows in `path`, keyed by
    `setup` and digests of the vector, prompts and tokens; blocks 0..layer run once per behaviour."""
    import hashlib

    from resa_utils.core.sweep import run_sweep

    def digest(x: bytes) -> str:
        return hashlib.sha256(x).hexdigest()[:12]

    prefixes: dict[str, list[Prefix]] = {}  # per behaviour: blocks 0..layer over its held-out prompts, for all (vector, α)

    def row(c: dict) -> dict:
        n, b = c["behaviour"], behaviours[c["behaviour"]]
        _, _, ep, en = splits[n]
        pos_t, neg_t = (b.pos_token, b.neg_token) if strict_tokens else first_token_ids(lm, b)
        if n not in prefixes:
            prefixes[n] = run_prefix(lm, ep + en, layer, batch_size)
        delta = None if c["alpha"] == 0 else scaled_delta(vectors[n][c["vector"]], c["alpha"], scale[n])
        return {"diffs": logit_diff_from(lm, prefixes[n], pos_t, neg_t, delta).tolist()}

    def cfg(n: str, v: str, a: float) -> dict:  # keyed by what the row reads: the vector itself, the scale, the prompts, the tokens
        b, ev = behaviours[n], splits[n][2] + splits[n][3]
        return {"behaviour": n, "vector": v, "alpha": a, "setup": setup, "scale": scale[n],
                "vec": None if v == "none" else digest(vectors[n][v].float().contiguous().numpy().tobytes()),
                "tokens": [b.pos_token, b.neg_token], "eval": digest("\x00".join(ev).encode())}

    short = short or {}
    if not set(short_alphas) <= set(alphas) or 0 in short_alphas:
        raise ValueError(f"short_alphas {list(short_alphas)} must be non-zero values of alphas {list(alphas)}")
    grid = [cfg(n, "none" if a == 0 else v, a) for n in behaviours for a in alphas
            for v in (["none"] if a == 0 else [v for v in vectors[n] if v not in short.get(n, ()) or a in short_alphas])]
    return run_sweep(path, grid, row, desc="steering").drop(columns=["setup", "vec", "eval", "tokens"])


def dose_response(steer_df, names: list[str]):
    """Long table, one row per (behaviour, vector, α): the mean logit difference, a normal 95%
    half-width, and the per-prompt `diffs`; the unsteered α = 0 row is repeated for every vector
    of `names` that the behaviour ran (every name when it ran none of them)."""
    import math

    import numpy as np
    import pandas as pd

    present = {n: set(d.vector) - {"none"} for n, d in steer_df.groupby("behaviour")}
    long = []
    for r in steer_df.itertuples():
        ran = [v for v in names if v in present.get(r.behaviour, ())] or names  # only the vectors this behaviour ran
        for v in (ran if r.vector == "none" else [r.vector]):
            long.append({"behaviour": r.behaviour, "vector": v, "alpha": r.alpha, "mean": float(np.mean(r.diffs)),
                         "ci": 1.96 * float(np.std(r.diffs, ddof=1)) / math.sqrt(len(r.diffs)), "diffs": r.diffs})
    return pd.DataFrame(long).sort_values(["behaviour", "vector", "alpha"])


def native_correlations(dose, behaviours: list[str], names: list[str], alphas: list[float], n_boot: int,
                        seed: int):
    """Per behaviour and non-native vector (`names[1:]`; `names[0]` is the native one): the Pearson
    r across α of the mean effects, a bootstrap 95% interval over held-out prompts, and both
    least-squares slopes against α. One generator runs through behaviours and vectors in order."""
    import numpy as np
    import pandas as pd

    gen = np.random.default_rng(seed)
    x = sorted(alphas)
    rows = []
    for n in behaviours:
        piv = {v: np.array(list(dose[(dose.behaviour == n) & (dose.vector == v)].sort_values("alpha").diffs)) for v in names}
        base = piv[names[0]]
        n_prompts = base.shape[1]
        for v in names[1:]:
            r = float(np.corrcoef(base.mean(1), piv[v].mean(1))[0, 1])
            boots = []
            for _ in range(n_boot):
                idx = gen.integers(0, n_prompts, n_prompts)
                a, b = base[:, idx].mean(1), piv[v][:, idx].mean(1)
                if a.std() > 0 and b.std() > 0:
                    boots.append(np.corrcoef(a, b)[0, 1])
            lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan"))
            rows.append({"behaviour": n, "vector": v, "pearson r": r, "r low": float(lo), "r high": float(hi),
                         "slope (native)": float(np.polyfit(x, base.mean(1), 1)[0]),
                         "slope": float(np.polyfit(x, piv[v].mean(1), 1)[0])})
    return pd.DataFrame(rows)


def slopes(dose):
    """Per (behaviour, vector): the least-squares slope of the mean logit difference against α and
    the line's R² (`linear R²`: how far the α grid lies inside the linear range; NaN for a flat
    response)."""
    import numpy as np
    import pandas as pd

    rows = []
    for (n, v), d in dose.groupby(["behaviour", "vector"], sort=False):
        if d.alpha.nunique() < 2:
            continue
        slope, icpt = np.polyfit(d.alpha, d["mean"], 1)
        var = float(np.var(d["mean"]))
        resid = float(np.mean((d["mean"] - (slope * d.alpha + icpt)) ** 2))
        rows.append({"behaviour": n, "vector": v, "slope": float(slope), "linear R²": 1 - resid / var if var > 0 else float("nan"),
                     "n alphas": len(d)})
    return pd.DataFrame(rows, columns=["behaviour", "vector", "slope", "linear R²", "n alphas"])


def paper_statistics(dose, behaviours: list[str], names: list[str]):
    """The paper's statistics: at each α ≠ 0, the Pearson r across held-out prompts between the
    per-prompt logit differences under the native vector (`names[0]`) and under each other vector
    of `names`, and their per-sample mean squared difference. One row per (behaviour, vector, α)
    that both vectors ran at. The r measures how alike the prompts' ordering is under both; it is
    high whenever prompts differ more than the steering moves them, so read it beside the MSE."""
    import numpy as np
    import pandas as pd

    rows = []
    for n in behaviours:
        d = dose[dose.behaviour == n]
        base = {a: np.asarray(x, dtype=float) for a, x in zip(d[d.vector == names[0]].alpha, d[d.vector == names[0]].diffs)}
        for v in names[1:]:
            for a, x in zip(d[d.vector == v].alpha, d[d.vector == v].diffs):
                if a == 0 or a not in base:
                    continue
                x, b = np.asarray(x, dtype=float), base[a]
                r = float(np.corrcoef(b, x)[0, 1]) if b.std() > 0 and x.std() > 0 else float("nan")
                rows.append({"behaviour": n, "vector": v, "alpha": float(a), "pearson r (prompts)": r,
                             "mse": float(np.mean((b - x) ** 2)), "n prompts": len(b)})
    return pd.DataFrame(rows, columns=["behaviour", "vector", "alpha", "pearson r (prompts)", "mse", "n prompts"])


def paper_summary(stats):
    """`paper_statistics` over α per (behaviour, vector): mean, lowest and highest r, and the same
    for the MSE (the paper reports the distribution over α)."""
    g = stats.groupby(["behaviour", "vector"], sort=False)
    out = g["pearson r (prompts)"].agg(["mean", "min", "max"]).add_prefix("r ").join(
        g["mse"].agg(["mean", "min", "max"]).add_prefix("mse ")).join(g.alpha.count().rename("n alphas"))
    return out.reset_index()


def one_sided_slopes(dose, alpha: float):
    """Per (behaviour, vector): (mean logit difference at `alpha` − mean at 0) / `alpha`, the slope
    that every vector (main, null and side) shares: the null vectors run only at that point."""
    import pandas as pd

    rows = []
    for (n, v), d in dose.groupby(["behaviour", "vector"], sort=False):
        at = d.set_index("alpha")["mean"]
        if alpha in at.index and 0.0 in at.index:
            rows.append({"behaviour": n, "vector": v, "slope": float((at[alpha] - at[0.0]) / alpha)})
    return pd.DataFrame(rows, columns=["behaviour", "vector", "slope"])


NULL_PREFIX = "null "
"""Names of null vectors start with it, then their group: `null random 3`, `null shuffled 0`,
`null cross topic`."""


def null_group(name: str) -> str:
    return name[len(NULL_PREFIX):].split(" ")[0] if name.startswith(NULL_PREFIX) else ""


def null_percentiles(slopes, names: list[str], native: str = "native"):
    """Each vector of `names` (per behaviour) placed in the null distribution of slopes (the
    vectors named `null <group> ...`): its slope, its ratio to the native slope, its percentile
    among all null slopes (ties count half) and within each group, and the null's 5th and 95th
    percentiles, overall and per group. A vector 'steers beyond the null' when its percentile is above 95."""
    import numpy as np
    import pandas as pd

    rows = []
    for n, d in slopes.groupby("behaviour", sort=False):
        by = dict(zip(d.vector, d.slope))
        null = d[d.vector.str.startswith(NULL_PREFIX)]
        if null.empty:
            raise ValueError(f"behaviour {n!r} has no null vectors (names starting {NULL_PREFIX!r})")
        groups = {g: null[null.vector.map(null_group) == g].slope.to_numpy() for g in sorted(set(null.vector.map(null_group)))}
        alls = null.slope.to_numpy()
        for v in names:
            if v not in by:
                continue
            s = by[v]
            row = {"behaviour": n, "vector": v, "slope": s, "slope ratio": s / by[native] if by.get(native) else float("nan"),
                   "percentile": _percentile_of(s, alls), "null n": len(alls),
                   "null p5": float(np.percentile(alls, 5)), "null p95": float(np.percentile(alls, 95))}
            row.update({f"percentile ({g}, n={len(x)})": _percentile_of(s, x) for g, x in groups.items()})
            row.update({f"null {q} ({g})": float(np.percentile(x, int(q[1:]))) for g, x in groups.items() for q in ("p5", "p95")})
            rows.append(row)
    return pd.DataFrame(rows)


def _percentile_of(value: float, sample) -> float:
    """100 × the share of `sample` below `value` (ties count half)."""
    import numpy as np

    x = np.asarray(sample, dtype=float)
    return float(100 * ((x < value).mean() + 0.5 * (x == value).mean()))


def steered_generation_table(lm, prompts: dict[str, list[str]], vectors: dict[str, dict[str, torch.Tensor]],
                             scale: dict[str, float], layer: int, alpha: float, names: list[str],
                             max_new_tokens: int):
    """Greedy continuations of each behaviour's `prompts`, one column per name in `names`
    ('unsteered', or a vector of `vectors[behaviour]` at strength α), all in one batch: one row
    per (behaviour, prompt)."""
    import pandas as pd

    jobs = [(n, p, v) for n, ps in prompts.items() for p in ps for v in names]
    rows: dict = {}
    if jobs:
        deltas = torch.stack([torch.zeros_like(next(iter(vectors[n].values()))) if v == "unsteered"
                              else scaled_delta(vectors[n][v], alpha, scale[n]) for n, _, v in jobs])
        texts_out = generate_steered(lm, [p for _, p, _ in jobs], layer, deltas, max_new_tokens)
        for (n, p, v), o in zip(jobs, texts_out):
            rows.setdefault((n, p), {"behaviour": n, "prompt": p})[v] = o["text"]
    return pd.DataFrame(list(rows.values()))
