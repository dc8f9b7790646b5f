"""Paper 4 (Baek & Tegmark 2025): what a crosscoder over a base and a distilled model says about
their differences. Training is `TrainConfig(method="crosscoder")` (`sae/crosscoder.py`); this
module reads a trained crosscoder: per-model decoder norms, the relative norm r_i, and the
model-specific / shared split."""

from __future__ import annotations

import torch

from resa_utils.sae import SAE
from resa_utils.sae.crosscoder import block_norms


def n_models(sae: SAE) -> int:
    """How many models a crosscoder reads (from its metadata); 1 for a plain SAE."""
    return int(sae.cfg.metadata.get("n_models", 1))


def decoder_norms(sae: SAE, ord: int = 2) -> torch.Tensor:
    """`[F, M]`: the L`ord` norm of each latent's decoder block for each model, in the raw
    activation scale of that model (the saved crosscoder has the normalisation folded in)."""
    return block_norms(sae.W_dec.detach().float(), n_models(sae), ord)


def relative_norms(sae: SAE, ord: int = 2, scale_M: torch.Tensor | None = None) -> torch.Tensor:
    """`r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖)` for a two-model crosscoder (A = first, B = second):
    ≈0 A-only, ≈0.5 shared, ≈1 B-only. `ord` 2 is the common replications' norm, 1 the
    authors' code. Norms are compared in the training scale (each model's activations at mean
    norm √d) when `scale_M` holds the per-model factors that were folded in (metadata), so a
    model with larger activations does not look more important."""
    if n_models(sae) != 2:
        raise ValueError(f"relative norms need a two-model crosscoder, this one reads {n_models(sae)}")
    norms = decoder_norms(sae, ord)
    if scale_M is None:
        scale_M = folded_scales(sae)
    norms = norms * scale_M.to(norms)
    return norms[:, 1] / (norms[:, 0] + norms[:, 1]).clamp_min(1e-12)


def folded_scales(sae: SAE) -> torch.Tensor:
    """`[M]` per-model input scales folded into the saved crosscoder (ones if none)."""
    M = n_models(sae)
    s = sae.cfg.metadata.get("input_scale_folded")
    if s is None:
        return torch.ones(M)
    s = torch.as_tensor(s, dtype=torch.float32).flatten()
    return s.view(M, -1)[:, 0] if s.numel() > 1 else s.expand(M)


def split_latents(r_F: torch.Tensor, low: float = 0.1, high: float = 0.9) -> dict[str, torch.Tensor]:
    """Index sets by relative norm: first-model-only (r < low), second-model-only (r > high),
    shared (the rest)."""
    if not 0 <= low < high <= 1:
        raise ValueError(f"need 0 <= low ({low}) < high ({high}) <= 1")
    return {"first only": torch.nonzero(r_F < low).flatten(),
            "shared": torch.nonzero((r_F >= low) & (r_F <= high)).flatten(),
            "second only": torch.nonzero(r_F > high).flatten()}


@torch.no_grad()
def ablated_logits(first_lm, second_lm, cc: SAE, hook: str, ids_BT: torch.Tensor,
                   ablate: torch.Tensor | list[int], where_BT: torch.Tensor | None = None) -> torch.Tensor:
    """The second model's logits `[B, T, V]` with the crosscoder spliced in at `hook` and the
    latents `ablate` zeroed: the block output becomes `x_2 + (x̂_2' − x̂_2)`, i.e. the
    reconstruction with those latents removed plus the crosscoder's error term, so an empty
    ablation reproduces the clean forward exactly. The encoder reads both models'
    activations of the same tokens (the first model runs up to `hook` once). `where_BT` (bool)
    limits the ablation to those positions (e.g. `activations.content_positions`: the
    crosscoder never saw BOS or special tokens)."""
    from resa_utils.lm.activations import run_with_cache, splice

    if n_models(cc) != 2:
        raise ValueError(f"ablated_logits needs a two-model crosscoder, this one reads {n_models(cc)}")
    idx = torch.as_tensor(ablate, dtype=torch.long)
    if idx.numel() == 0:  # nothing removed: the error term gives back the clean activations
        return second_lm.model(input_ids=ids_BT, use_cache=False).logits
    x_1 = run_with_cache(first_lm.model, ids_BT, [hook])[hook]
    D = x_1.shape[-1]

    def replace(x_2: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x_1, x_2], -1).reshape(-1, 2 * D).float()
        f = cc.encode(x)
        f_abl = f.clone()
        f_abl[:, idx] = 0
        delta = (cc.decode(f_abl) - cc.decode(f))[:, D:].reshape(x_2.shape)
        if where_BT is not None:
            delta = delta * where_BT[..., None].to(delta)
        return x_2 + delta.to(x_2.dtype)

    with splice(second_lm.model, hook, replace):
        return second_lm.model(input_ids=ids_BT, use_cache=False).logits


@torch.no_grad()
def encode_batches(cc: SAE, x_ND: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Latent activations `[N, F]` of the (paired) activations `x_ND`, `batch_size` rows at a time."""
    return torch.cat([cc.encode(x_ND[a:a + batch_size].float()) for a in range(0, x_ND.shape[0], batch_size)])


@torch.no_grad()
def per_model_fvu(cc: SAE, x_ND: torch.Tensor, batch_size: int = 4096) -> list[float]:
    """Held-out FVU of each model's block of the reconstruction (squared error over the block's
    variance around its mean), in the models' order."""
    M = n_models(cc)
    D = x_ND.shape[1] // M
    err, var = torch.zeros(M, dtype=torch.float64), torch.zeros(M, dtype=torch.float64)
    mean = x_ND.float().mean(0)
    for a in range(0, x_ND.shape[0], batch_size):
        x = x_ND[a:a + batch_size].float()
        e = (x - cc.decode(cc.encode(x))).pow(2).view(len(x), M, D).sum((0, 2))
        v = (x - mean).pow(2).view(len(x), M, D).sum((0, 2))
        err += e.double()
        var += v.double()
    return (err / var.clamp_min(1e-12)).tolist()


# --------------------------------------------------------------------------- reasoning categories

CATEGORIES = {"self-reflection": ("Wait",), "deduction": ("Therefore",),
              "alternative": ("Alternatively",), "contrast": ("However",)}
"""The paper's reasoning categories and the words that mark them (its LLM labels read
top-activating contexts; ours is this stated word rule)."""


def word_variants(tokenizer, word: str) -> list[list[int]]:
    """Token sequences of `word` as it appears in text: capitalised or not, with or without a
    leading space (each distinct encoding once)."""
    seqs: list[list[int]] = []
    for w in dict.fromkeys([word, word.lower(), word.capitalize()]):
        for form in (w, " " + w):
            ids = tokenizer(form, add_special_tokens=False)["input_ids"]
            if ids and ids not in seqs:
                seqs.append(ids)
    return seqs


def category_positions(ids_NT: torch.Tensor, tokenizer,
                       categories: dict[str, tuple[str, ...]] | None = None) -> dict[str, torch.Tensor]:
    """`{category: bool [N, T]}`: True at the first token of every occurrence of one of the
    category's words (any `word_variants` encoding) in the windows; a leading space that the
    tokenizer splits off does not count as the word's first token."""
    categories = CATEGORIES if categories is None else categories
    out = {}
    for cat, words in categories.items():
        mask = torch.zeros(ids_NT.shape, dtype=torch.bool)
        for word in words:
            for seq in word_variants(tokenizer, word):
                L = len(seq)
                if L > ids_NT.shape[1]:
                    continue
                hit = (ids_NT.unfold(1, L, 1) == torch.tensor(seq)).all(-1)  # [N, T - L + 1]
                lead = next(i for i, t in enumerate(seq) if tokenizer.decode([t]).strip())
                mask[:, lead:lead + hit.shape[1]] |= hit
        out[cat] = mask
    return out


def latent_categories(acts_NF: torch.Tensor, masks: dict[str, torch.Tensor], min_share: float = 0.5,
                      min_firings: int = 5) -> "pd.DataFrame":
    """A category per latent by its token association: the share of its activation mass (sum of
    its activations over the tokens) that falls on each category's marked tokens (`masks`, flat
    `[N]` over the same tokens as `acts_NF`). A latent whose largest share reaches `min_share`
    and that fires on at least `min_firings` tokens gets that category, else "other"; the
    shares are returned beside it (and the lift: share over the category's share of tokens)."""
    import pandas as pd

    acts = acts_NF.float().clamp_min(0)
    mass = acts.sum(0)
    fires = (acts > 0).sum(0)
    cats = list(masks)
    share = torch.stack([acts[masks[c].flatten()].sum(0) for c in cats], 1) / mass.clamp_min(1e-12)[:, None]
    base = torch.tensor([float(masks[c].float().mean()) for c in cats])
    best, arg = share.max(1) if cats else (torch.zeros(len(mass)), torch.zeros(len(mass), dtype=torch.long))
    label = [cats[a] if (b >= min_share and f >= min_firings) else "other"
             for a, b, f in zip(arg.tolist(), best.tolist(), fires.tolist())]
    df = pd.DataFrame({"latent": range(len(mass)), "category": label, "firings": fires.tolist(),
                       **{f"share {c}": share[:, i].tolist() for i, c in enumerate(cats)}})
    df["lift"] = [float(b / base[a]) if base[a] > 0 else float("nan") for a, b in zip(arg.tolist(), best.tolist())]
    return df


@torch.no_grad()
def token_drops(first_lm, second_lm, cc: SAE, hook: str, ids_BT: torch.Tensor,
                at_BT: torch.Tensor, latent_sets: dict[str, torch.Tensor | list[int]],
                batch_size: int = 8, where_BT: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """For each named latent set, the fall of the second model's logit and of its log-probability
    of the next token, clean minus ablated (`ablated_logits`: crosscoder spliced in with its error
    term, the set zeroed, at `where_BT` positions if given), at every marked position `at_BT`
    (the position before a category token predicts it). A logit can fall with every other
    logit, leaving the prediction as it was; the log-probability cannot. Returns
    `{"logit" | "log-prob": {name: [n_marked]}}` in the marked positions' order."""
    out: dict[str, dict[str, list[torch.Tensor]]] = {k: {n: [] for n in latent_sets} for k in ("logit", "log-prob")}
    for a in range(0, ids_BT.shape[0], batch_size):
        ids, at = ids_BT[a:a + batch_size], at_BT[a:a + batch_size, :-1]
        if not at.any():
            continue
        nxt = ids[:, 1:][at]

        def next_token(logits_BTV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rows = logits_BTV[:, :-1][at].float()
            return rows.gather(1, nxt[:, None]).squeeze(1), rows.log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)

        clean = next_token(ablated_logits(first_lm, second_lm, cc, hook, ids, []))
        where = None if where_BT is None else where_BT[a:a + batch_size]
        for name, idx in latent_sets.items():
            moved = next_token(ablated_logits(first_lm, second_lm, cc, hook, ids, idx, where))
            for k, c, m in zip(("logit", "log-prob"), clean, moved):
                out[k][name].append(c - m)
    return {k: {n: torch.cat(v) if v else torch.zeros(0) for n, v in d.items()} for k, d in out.items()}


def token_logit_drops(first_lm, second_lm, cc: SAE, hook: str, ids_BT: torch.Tensor,
                      at_BT: torch.Tensor, latent_sets: dict[str, torch.Tensor | list[int]],
                      batch_size: int = 8, where_BT: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The logit part of `token_drops`: `{name: [n_marked]}`."""
    return token_drops(first_lm, second_lm, cc, hook, ids_BT, at_BT, latent_sets, batch_size, where_BT)["logit"]
