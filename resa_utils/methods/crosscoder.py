"""Paper 4 (Baek & Tegmark 2025): what a crosscoder over a base and a distilled model says about
their differences. Training is `TrainConfig(method="crosscoder")` (`sae/crosscoder.py`); this
module builds its data (the reasoner's answers mixed with English, both models' activations
paired token by token) and reads a trained crosscoder: per-model decoder norms, the relative
norm r_i and the model-specific / shared split, word categories, token-logit ablations, steering
directions, and the comparison with the paper."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from resa_utils.lm.content import ContentRule
from resa_utils.methods.crosscoder_scoring import monotone, null_percentile
from resa_utils.sae import SAE
from resa_utils.sae.crosscoder import block_norms

if TYPE_CHECKING:
    import pandas as pd

    from resa_utils.lm.activations import ActivationCache, KeptRows, PairedCache
    from resa_utils.lm.content import LeftOut
    from resa_utils.sae import TrainConfig


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
    limits the ablation to those positions (e.g. `PairedData.content`: the positions of the rows
    the content rule kept, the only ones the crosscoder learned from)."""
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


def predicting_positions(mask_BT: torch.Tensor) -> torch.Tensor:
    """`[B, T]` True at the position before each marked token: where the model predicts that
    token (a token at the window's start has no such position; the last position is never marked)."""
    return torch.cat([mask_BT[:, 1:], torch.zeros_like(mask_BT[:, :1])], 1)


def cache_rows(mask_BT: torch.Tensor) -> torch.Tensor:
    """`[B·(T−1)]`: a `[B, T]` position mask as the rows of a cache harvested without BOS."""
    return mask_BT[:, 1:].reshape(-1)


def category_masks(words_BT: dict[str, torch.Tensor], offset: int = 0) -> dict[str, torch.Tensor]:
    """`{category: [B·(T−1)]}` cache rows the category rule reads: the word's first token
    (`offset` 0) or the position that predicts it (`offset` −1)."""
    if offset not in (0, -1):
        raise ValueError(f"offset={offset}: use 0 (the word) or -1 (the token before it)")
    return {c: cache_rows(m if offset == 0 else predicting_positions(m)) for c, m in words_BT.items()}


def label_latents(acts_NF: torch.Tensor, masks: dict[str, torch.Tensor], r: dict[str, torch.Tensor],
                  live_F: torch.Tensor, r_low: float, r_high: float, min_share: float,
                  min_firings: int) -> "pd.DataFrame":
    """`latent_categories` with each latent's relative norms (`r`: `{"L2" | "L1": [F]}`), whether
    it fires on held-out tokens (`live`) and its group by the L2 norm: base-only (r < r_low),
    reasoner-only (r > r_high) or shared."""
    cats = latent_categories(acts_NF, masks, min_share=min_share, min_firings=min_firings)
    cats["r (L2)"], cats["r (L1)"], cats["live"] = r["L2"].tolist(), r["L1"].tolist(), live_F.tolist()
    cats["group"] = np.select([cats["r (L2)"] < r_low, cats["r (L2)"] > r_high], ["base-only", "reasoner-only"], "shared")
    return cats


def categories_by_group(cats: "pd.DataFrame") -> "pd.DataFrame":
    """Live latents per (relative-norm group, category), with each group's categorised share:
    do the model-specific latents carry the reasoning words more often than the shared ones?"""
    by_group = cats[cats.live].groupby(["group", "category"]).size().unstack(fill_value=0)
    by_group["categorised share"] = 1 - by_group.get("other", 0) / by_group.sum(axis=1)
    return by_group


def mean_ci(values) -> tuple[float, float]:
    """Mean and half-width of its normal 95 % interval (1.96 · sd / √n; NaN under two values)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (1.96 * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else float("nan"))


# --------------------------------------------------------------------------- data


def answer_documents(problems: list, texts, make_prompt, prefix: str = "answer") -> list:
    """One `corpora.Document` per answer (`<prefix>-<uid>`): its prompt followed by the answer (a
    model's, or a teacher trace), the text the model saw and wrote."""
    from resa_utils.data.corpora import Document

    return [Document(doc_id=f"{prefix}-{p.uid}", text=make_prompt(p) + a) for p, a in zip(problems, texts)]


def dose_names(reasoner: str, dose_models: list[str]) -> list[str]:
    """The dose-response models: an entry starting with "-" is a suffix of the reasoner's name
    (notebook 00's scaled reasoners, `-x2` -> `<reasoner>-x2`), anything else a model name."""
    return [f"{reasoner}{m}" if m.startswith("-") else m for m in dose_models]


def choose_layer(reps: "pd.DataFrame", candidates: list[int], text: str = "reasoning") -> tuple[int, "pd.DataFrame"]:
    """The layer rule fixed before the run: among `candidates`, the block where the two models'
    same-token activations differ most on `text` (lowest median cosine; `distill.representation_change`
    rows). Returns the block and the candidates' rows with a `chosen` column."""
    rows = reps[(reps.text == text) & reps.block.isin(candidates)].copy()
    if rows.empty:
        raise ValueError(f"no {text!r} rows at the candidate blocks {candidates}")
    block = int(rows.loc[rows["median cos"].idxmin(), "block"])
    rows["chosen"] = rows.block == block
    return block, rows.reset_index(drop=True)


@dataclass
class MixedWindows:
    """Training and held-out windows of answers mixed with English text."""

    ids: dict[str, torch.Tensor]
    """`{"train" | "eval": [N, T]}` token windows (BOS first), in a seeded random order."""
    from_answers: dict[str, torch.Tensor]
    """`{split: [N]}` True where the window was cut from the answers."""

    def n_tokens(self, split: str) -> int:
        """Tokens after BOS in the split's windows."""
        return int(self.ids[split].shape[0]) * (int(self.ids[split].shape[1]) - 1)


def mixed_windows(answer_docs: list, text_docs: list, tokenizer, seq_len: int, train_tokens: int,
                  eval_tokens: int, eval_frac: float, seed: int) -> MixedWindows:
    """Answers and texts each split by document (`eval_frac` held out, so no document is in both),
    shuffled and packed into windows of `seq_len`; answers fill at most half of each split's
    windows, texts the rest, and each split's windows are put in a seeded random order. A split
    may hold fewer tokens than asked when the documents run out (check `n_tokens`)."""
    from resa_utils.data.windows import document_windows, split_by_document

    body = seq_len - 1
    want = {"train": train_tokens, "eval": eval_tokens}
    gen_train, gen_held = split_by_document(answer_docs, eval_frac, seed=seed)
    txt_train, txt_held = split_by_document(text_docs, eval_frac, seed=seed)
    for docs in (gen_train, gen_held, txt_train, txt_held):
        random.Random(seed).shuffle(docs)
    windows_of = partial(document_windows, tokenizer=tokenizer, seq_len=seq_len)
    gen_w = {"train": windows_of(gen_train, n_windows=math.ceil(train_tokens / body)),
             "eval": windows_of(gen_held, n_windows=math.ceil(eval_tokens / body))}
    n_gen = {s: min(len(w), math.ceil(want[s] / body) // 2) for s, w in gen_w.items()}  # answers: at most half
    txt_w = {s: windows_of(docs, n_windows=math.ceil((want[s] - n_gen[s] * body) / body))
             for s, docs in (("train", txt_train), ("eval", txt_held))}
    ids, from_answers = {}, {}
    for s in ("train", "eval"):
        both = torch.cat([gen_w[s].ids[:n_gen[s]], txt_w[s].ids])
        src = torch.cat([torch.ones(n_gen[s], dtype=torch.bool), torch.zeros(len(txt_w[s]), dtype=torch.bool)])
        order = torch.randperm(len(both), generator=torch.Generator().manual_seed(seed))
        ids[s], from_answers[s] = both[order], src[order]
    return MixedWindows(ids, from_answers)


@dataclass
class PairedData:
    """Two models' activations at one hook over the same windows, and the rows a crosscoder reads:
    the content rows of the pairs under one `ContentRule` (`lm.content`)."""

    paired: dict[str, "PairedCache"]
    """`{split: PairedCache}`: row i holds the same token in both models (BOS dropped), every row."""
    rows: dict[str, "KeptRows"]
    """`{split: KeptRows}`: the content rows of `paired` (what the crosscoder trains on and is judged on)."""
    content: dict[str, torch.Tensor]
    """`{split: [N, T]}` True at the positions of the content rows (never at position 0, whose BOS
    is not harvested): where an ablation may act."""
    keep: dict[str, torch.Tensor]
    """`{split: [N·(T−1)]}` the same as cache rows (`cache_rows(content)`)."""
    left_out: dict[str, "LeftOut"]
    """`{split: LeftOut}` what the rule left out of the pairs, with its share of the centred variance."""
    rule: ContentRule
    """The rule the rows were chosen by."""
    caches: dict[str, dict[str, "ActivationCache"]]
    """`{model: {split: ActivationCache}}`: each model's own harvest."""
    harvest: dict[str, dict]
    """`{model: {tokens, seconds, tokens/s}}` of what this call harvested."""


def harvest_pairs(root: str | Path, models: dict, key: str, splits: dict[str, torch.Tensor], hook: str,
                  rule: ContentRule, workers: int = 1) -> PairedData:
    """Both models' residual at `hook` over the same windows (cached in `root/<model>_<key>`),
    paired row by row, and the content rows of the pairs under `rule`
    (`activations.content_rows` with one block per model): special tokens and window starts
    (attention sinks, like BOS) are left out, and rows whose norm in either model exceeds
    `rule.max_norm_ratio` times that model's median (sinks that are not special tokens).
    A cache harvested before the position record existed is refused when the rule is on."""
    from resa_utils.lm.activations import PairedCache, content_rows, harvest_splits

    caches, stats = {}, {}
    for name, lm in models.items():
        folder = Path(root) / f"{lm.name.replace('/', '--')}_{key}"
        caches[name], stats[name] = harvest_splits(folder, lm, splits, [hook], workers=workers)
    first, second = list(models)
    paired = {s: PairedCache(caches[first][s], hook, caches[second][s], hook) for s in splits}
    rows, left, content = {}, {}, {}
    for s, ids in splits.items():
        if rule.enabled:
            _check_positions(paired[s], ids, models[first].tokenizer)
        rows[s], left[s] = content_rows(paired[s], PairedCache.HOOK, rule, n_blocks=2)
        keep = torch.cat([sh["keep"] for sh in rows[s].manifest["shards"]])
        content[s] = torch.cat([torch.zeros(len(ids), 1, dtype=torch.bool), keep.view(len(ids), -1)], 1)
    by_model = {name: {s: caches[name][s] for s in splits} for name in models}
    return PairedData(paired, rows, content, {s: cache_rows(c) for s, c in content.items()}, left, rule,
                      by_model, stats)


def _check_positions(paired: "PairedCache", ids_NT: torch.Tensor, tokenizer) -> None:
    """Refuse a cache whose recorded content positions admit a special token or a window start of
    `ids_NT` (a harvest from before the record existed reads as every position passing)."""
    from resa_utils.lm.content import content_positions

    recorded = torch.cat([paired.read_positions(s) for s in paired.manifest["shards"]])
    expected = cache_rows(content_positions(ids_NT, tokenizer))
    if recorded.shape != expected.shape or (recorded & ~expected).any():
        raise ValueError(f"the activation caches {paired.a.folder} / {paired.b.folder} do not record which rows are "
                         "special tokens (harvested before the content rule existed, or from other windows): delete "
                         "them and rerun, so the harvest records the positions")


def left_out_frame(data: PairedData, hook: str) -> "pd.DataFrame":
    """What `data.rule` leaves out, one row per cache (`LeftOut.as_row()` with its name): each
    model's own harvest (`model/split`, its own median; `activations.left_out_table`) and the
    pairs the crosscoder reads (`paired/split`: left out when either model's block is)."""
    import pandas as pd

    from resa_utils.lm.activations import left_out_table

    own = left_out_table({f"{m}/{s}": c for m, by_split in data.caches.items() for s, c in by_split.items()},
                         [hook], data.rule)
    pairs = pd.DataFrame([{"cache": f"paired/{s}", **lo.as_row()} for s, lo in data.left_out.items()])
    return pd.concat([own, pairs], ignore_index=True)[list(pairs.columns)]   # one column order, recorded or computed


def describe_data(answers: "pd.DataFrame", mix: MixedWindows, data: PairedData, eval_x_ND: torch.Tensor) -> str:
    """What the crosscoder reads, in two lines: the answers (pass@1, "Wait"), the windows and the
    answers' share of them, the harvest speeds, the rows left out, and the activation norms."""
    answer_share = {s: float(f.float().mean()) for s, f in mix.from_answers.items()}
    keep_eval, lo, D = data.keep["eval"], data.left_out, eval_x_ND.shape[1] // 2
    norms = eval_x_ND[:, :D].float().norm(dim=1)
    left_out = float(norms[~keep_eval].max()) if (~keep_eval).any() else float("nan")
    dropped = (f"rows left out: special tokens and window starts {lo['train'].by_position} train / "
               f"{lo['eval'].by_position} held-out, then norm above {data.rule.max_norm_ratio:g}x the median in either "
               f"model {lo['train'].by_norm} / {lo['eval'].by_norm}" if data.rule.enabled
               else "rows left out: none (the content rule is off)")
    return (f"{len(answers)} answers (reasoner pass@1 on these training problems {answers.correct.mean():.2f}; "
            f"'Wait' in {(answers.Wait > 0).mean():.0%} of them); windows: {len(mix.ids['train'])} train / {len(mix.ids['eval'])} held-out, "
            f"answers {answer_share['train']:.0%} / {answer_share['eval']:.0%} of them; "
            + "; ".join(f"{n} harvest " + (f"{h['tokens/s']:.0f} tok/s" if h["tokens"] else "cached") for n, h in data.harvest.items())
            + f"; {dropped}"
            + f"\nbase activation norm at the hook: median {float(norms[keep_eval].median()):.4g}, max over the kept rows "
            f"{float(norms[keep_eval].max()):.4g}, max over the rows left out {left_out:.4g}")


# --------------------------------------------------------------------------- training and quality


def crosscoder_key(data_key: str, hook: str, cfg: "TrainConfig", rule: ContentRule, n_rows: int) -> dict:
    """The crosscoder's sweep config, whose `config_key` also names its weights' folder: the data,
    the hook, the training config, the content rule and how many rows it kept, so nothing
    trained under another rule (or on other rows) is reused."""
    from resa_utils.core.sweep import config_key

    return {"data": data_key, "hook": hook, "cfg": config_key(cfg.__dict__), "content_rule": asdict(rule),
            "kept": int(n_rows)}


def train_crosscoder(sweep_path: str | Path, sweep_config: dict, train_rows, eval_ND: torch.Tensor,
                     cfg: "TrainConfig", path: str | Path, metadata: dict, *, rule: ContentRule) -> "pd.Series":
    """The crosscoder trained on `train_rows` and saved to `path`, once: its sweep row (held-out
    metrics on `eval_ND`, seconds, tokens/s, curve) is reused while the weights are still in
    `path`. `train_rows`: rows `[N, 2D]` or a `KeptRows`, already chosen by `rule`, or a raw
    `PairedCache`, read through `rule` here. The sweep config gets `content_rule`, so a row
    trained under another rule is never reused."""
    from resa_utils.core.sweep import run_sweep
    from resa_utils.lm.activations import PairedCache
    from resa_utils.sae import train_and_evaluate
    from resa_utils.sae.train import with_content_rows

    path = Path(path)
    sweep_config = {**sweep_config, "content_rule": asdict(rule)}
    data = train_rows if isinstance(train_rows, torch.Tensor) else with_content_rows((train_rows, PairedCache.HOOK), rule)

    def train(_config: dict) -> dict:
        return train_and_evaluate(data, eval_ND, cfg, path, metadata=metadata)[1]

    def weights_there(_row: dict) -> bool:
        return (path / "cfg.json").exists()

    return run_sweep(sweep_path, [sweep_config], train, desc="crosscoder", valid=weights_there).iloc[0]


@dataclass
class HeldOut:
    """A crosscoder on the held-out rows: its latents' activations, which latents live, and its quality."""

    acts_NF: torch.Tensor
    """`[rows, latents]` activations of every held-out row; rows left out are zero."""
    live_F: torch.Tensor
    """`[latents]` True for latents that fire on a kept held-out row."""
    quality: "pd.DataFrame"
    """One row per model: held-out FVU, L0, dead share, training seconds and tokens/s."""
    metrics: dict
    """`fvu_base`, `fvu_reasoner`, `l0`, `dead_share` to record."""


def held_out_quality(cc: SAE, eval_x_ND: torch.Tensor, keep_N: torch.Tensor, model_names: list[str],
                     trained: "pd.Series") -> HeldOut:
    """Each model's held-out FVU (its block of the reconstruction), the mean L0 and the share of
    latents that never fire, over the kept held-out rows (`keep_N`)."""
    import pandas as pd

    acts_NF = encode_batches(cc, eval_x_ND) * keep_N[:, None]
    live = (acts_NF > 0).sum(0) > 0
    fvu_m = per_model_fvu(cc, eval_x_ND[keep_N])
    quality = pd.DataFrame([{"model": m, "held-out FVU": f} for m, f in zip(model_names, fvu_m)])
    quality["L0"], quality["dead share"] = float((acts_NF[keep_N] > 0).sum(1).float().mean()), float((~live).float().mean())
    quality["train s"], quality["train tok/s"] = trained.seconds, trained.tokens_per_s
    metrics = {"fvu_base": fvu_m[0], "fvu_reasoner": fvu_m[1], "l0": float(quality.L0[0]),
               "dead_share": float(quality["dead share"][0])}
    return HeldOut(acts_NF, live, quality, metrics)


def relative_norm_counts(r: dict[str, torch.Tensor], live_F: torch.Tensor, r_low: float, r_high: float,
                         r_lean: float) -> "pd.DataFrame":
    """Live latents per relative-norm group, one row per norm (`r`: `{"L2" | "L1": [F]}`):
    base-only (r < r_low), shared, reasoner-only (r > r_high), reasoner-leaning (r > r_lean)."""
    import pandas as pd

    rows = []
    for norm, rr in r.items():
        g = split_latents(rr, r_low, r_high)
        rows.append({"norm": norm, **{f"{k} (live)": int(live_F[v].sum()) for k, v in g.items()},
                     f"reasoner-leaning r>{r_lean} (live)": int((live_F & (rr > r_lean)).sum()), "live": int(live_F.sum())})
    return pd.DataFrame(rows).rename(columns={"first only (live)": f"base-only r<{r_low}",
                                              "second only (live)": f"reasoner-only r>{r_high}", "shared (live)": "shared"})


def relative_norm_frame(r: dict[str, torch.Tensor], live_F: torch.Tensor) -> "pd.DataFrame":
    """The live latents' relative norms, tidy: one row per (norm, latent) with columns norm, latent, r."""
    import pandas as pd

    idx = torch.nonzero(live_F).flatten()
    return pd.concat([pd.DataFrame({"norm": norm, "latent": idx.tolist(), "r": rr[idx].tolist()}) for norm, rr in r.items()],
                     ignore_index=True)


def top_latent_contexts(cats: "pd.DataFrame", group: str, acts_NF: torch.Tensor, ids_NT: torch.Tensor, tokenizer,
                        n_latents: int, n_contexts: int) -> "pd.DataFrame":
    """The top-activating contexts (`dense.top_contexts`) of a group's live latents, categorised
    ones first, then by firings: what the model-specific latents read."""
    import pandas as pd

    from resa_utils.methods.dense import top_contexts

    chosen = cats[cats.live & (cats.group == group)].copy()
    chosen["categorised"] = chosen.category != "other"
    chosen = chosen.sort_values(["categorised", "firings"], ascending=False).head(n_latents)
    rows = []
    for row in chosen.itertuples():
        for k, text in enumerate(top_contexts(acts_NF[:, row.latent], ids_NT, tokenizer, n=n_contexts)):
            rows.append({"latent": row.latent, "r (L2)": round(float(cats.loc[row.latent, "r (L2)"]), 3),
                         "category": row.category, "rank": k + 1, "context": text})
    return pd.DataFrame(rows, columns=["latent", "r (L2)", "category", "rank", "context"])


# --------------------------------------------------------------------------- geometry


@dataclass
class Geometry:
    """How far apart two models put the same tokens."""

    table: "pd.DataFrame"
    """Median cosine between a token's two activations, for the answers, English and the words."""
    points: "pd.DataFrame"
    """PCA projection (columns `model`, `PC 1`, `PC 2`): a seeded sample of tokens in both
    models, and the reasoning words in the second (`model` "reasoning words (reasoner)")."""
    cos: "pd.DataFrame"
    """One row per token: `tokens` (answers or English) and `cos`."""


def geometry(x_ND: torch.Tensor, is_answer_N: torch.Tensor, word_N: torch.Tensor, seed: int,
             n_points: int = 3000, n_words: int = 300) -> Geometry:
    """Both models' activations of the same tokens (`x_ND` = `[x_base, x_reasoner]`, each scaled
    to mean norm √d, as the crosscoder sees them) on the top two principal components of their
    union, and the cosine between each token's two activations."""
    import pandas as pd

    D = x_ND.shape[1] // 2
    xb, xr = x_ND[:, :D].float(), x_ND[:, D:].float()
    xb, xr = xb * (math.sqrt(D) / xb.norm(dim=1).mean()), xr * (math.sqrt(D) / xr.norm(dim=1).mean())
    both = torch.cat([xb, xr])
    mu = both.mean(0)
    _, _, V = torch.pca_lowrank(both - mu, q=2, center=False, niter=4)
    sub = torch.randperm(len(xb), generator=torch.Generator().manual_seed(seed))[:n_points]
    words = word_N.nonzero().flatten()[:n_words]
    parts = [("base", ((xb - mu) @ V)[sub]), ("reasoner", ((xr - mu) @ V)[sub]),
             ("reasoning words (reasoner)", ((xr - mu) @ V)[words])]
    points = pd.concat([pd.DataFrame({"model": m, "PC 1": p[:, 0].tolist(), "PC 2": p[:, 1].tolist()}) for m, p in parts],
                       ignore_index=True)
    cos = torch.nn.functional.cosine_similarity(xb, xr, dim=1)
    table = pd.DataFrame([{"tokens": n, "n": int(m.sum()), "median cos(base, reasoner)": float(cos[m].median()) if m.any() else float("nan")}
                          for n, m in (("answers", is_answer_N), ("English", ~is_answer_N), ("reasoning words", word_N))])
    per_token = pd.DataFrame({"tokens": np.where(is_answer_N.numpy(), "answers", "English"), "cos": cos.numpy()})
    return Geometry(table, points, per_token)


# --------------------------------------------------------------------------- token-logit ablation


@dataclass
class LatentPool:
    """The latents the ablation and steering draw from."""

    lean_F: torch.Tensor
    """`[F]` live latents leaning to the second model (r (L2) > r_lean)."""
    pool_F: torch.Tensor
    """`[F]` the pool: the leaning latents, or every live latent if none leans."""
    note: str
    """Which of the two, in words."""


def latent_pool(cats: "pd.DataFrame", live_F: torch.Tensor, r_lean: float) -> LatentPool:
    """The reasoner-leaning live latents (r (L2) > `r_lean`), or every live latent if none leans
    (then the tests are of the latents' role, not of their specificity)."""
    lean = torch.from_numpy(((cats["r (L2)"] > r_lean) & cats.live).to_numpy(copy=True))
    pool = lean if lean.any() else live_F
    note = f"reasoner-leaning latents (r > {r_lean})" if lean.any() else f"all live latents (none has r > {r_lean})"
    return LatentPool(lean, pool, note)


def busiest_windows(words_NT: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """`[n]` indices of the windows with the most marked tokens of any category, most first (ties
    in window order)."""
    per_window = torch.stack(list(words_NT.values())).any(0).sum(1)
    return torch.argsort(per_window, descending=True, stable=True)[:n]


@dataclass
class AblationPlan:
    """Which latents the ablation zeroes per category, chosen on other windows than it reads."""

    cats_pred: "pd.DataFrame"
    """`latent_categories` on the positions predicting each word, over the windows not ablated."""
    configs: list[dict]
    """One sweep config per category with latents: category, latents, windows, cc, measures."""


def ablation_plan(acts_NF: torch.Tensor, words_NT: dict[str, torch.Tensor], windows: torch.Tensor,
                  pool_F: torch.Tensor, n_ablate: int, min_share: float, min_firings: int, cc_name: str,
                  rule: ContentRule) -> AblationPlan:
    """Per category, the `n_ablate` pool latents (firing `min_firings`+ times) with the largest share
    of their activation mass on the positions that predict the category's word, measured on the
    held-out windows other than `windows` (those the ablation reads). A category none of whose
    latents fires there gets no config. Each config names the content `rule` (which rows the
    latents were read on and where the ablation acts), so a row measured under another is not reused."""
    T_body = next(iter(words_NT.values())).shape[1] - 1
    select = torch.ones(len(next(iter(words_NT.values()))), dtype=torch.bool)
    select[windows] = False
    pred = {c: cache_rows(predicting_positions(m)[select]) for c, m in words_NT.items()}
    cats_pred = latent_categories(acts_NF[select.repeat_interleave(T_body)], pred, min_share=min_share, min_firings=min_firings)
    eligible = pool_F.numpy() & (cats_pred.firings >= min_firings).to_numpy()
    configs = []
    for cat in words_NT:
        cand = cats_pred[eligible & (cats_pred[f"share {cat}"] > 0).to_numpy()]
        chosen = cand.nlargest(n_ablate, f"share {cat}").latent.tolist()
        if chosen:
            configs.append({"category": cat, "latents": chosen, "windows": windows.tolist(), "cc": cc_name,
                            "measures": ["logit", "log-prob"], "content_rule": asdict(rule)})
    return AblationPlan(cats_pred, configs)


def control_sets(chosen: list[int], pool_F: torch.Tensor, active_F: torch.Tensor, n_draws: int,
                 seed: int) -> tuple[dict[str, torch.Tensor], int]:
    """The chosen latents and `n_draws` random sets of as many other pool latents, drawn from those
    active at the measured positions (`active_F`), or from the whole pool when too few are; with the
    size of the pool drawn from. Seeded: the same draws every run."""
    chosen_t = torch.tensor(chosen, dtype=torch.long)
    pool = torch.nonzero(pool_F & active_F).flatten()
    pool = pool[~torch.isin(pool, chosen_t)]
    if len(pool) < len(chosen_t):
        pool = torch.nonzero(pool_F).flatten()
        pool = pool[~torch.isin(pool, chosen_t)]
    g = torch.Generator().manual_seed(seed)
    sets = {"category latents": chosen_t}
    for k in range(n_draws):
        sets[f"random {k}"] = pool[torch.randperm(len(pool), generator=g)[:len(chosen_t)]]
    return sets, len(pool)


def ablation_drops(config: dict, first_lm, second_lm, cc: SAE, hook: str, ids_BT: torch.Tensor,
                   words_BT: dict[str, torch.Tensor], acts_BTF: torch.Tensor, pool_F: torch.Tensor,
                   n_draws: int, seed: int, where_BT: torch.Tensor) -> dict:
    """One category's sweep row: the falls of the word's logit and log-probability at every position
    that predicts it (`token_drops`), zeroing the config's latents and each of `n_draws` control
    sets (`control_sets`, seeded by `seed`); `acts_BTF` are the latents' activations of the same
    windows without BOS."""
    at = predicting_positions(words_BT[config["category"]])
    active = acts_BTF.reshape(-1, acts_BTF.shape[-1])[cache_rows(at)].gt(0).any(0)
    sets, n_pool = control_sets(config["latents"], pool_F, active, n_draws, seed)
    drops = token_drops(first_lm, second_lm, cc, hook, ids_BT, at, sets, where_BT=where_BT)
    return {"drops": {n: v.tolist() for n, v in drops["logit"].items()},
            "drops_lp": {n: v.tolist() for n, v in drops["log-prob"].items()}, "pool": n_pool}


def run_ablation(sweep_path: str | Path, configs: list[dict], first_lm, second_lm, cc: SAE, hook: str,
                 ids_NT: torch.Tensor, words_NT: dict[str, torch.Tensor], acts_NF: torch.Tensor,
                 windows: torch.Tensor, pool_F: torch.Tensor, n_draws: int, seed: int,
                 where_NT: torch.Tensor) -> "pd.DataFrame":
    """`ablation_drops` for every config (resumable sweep rows in `sweep_path`) on the held-out
    `windows` of `ids_NT`, the controls drawn with seed `seed + 17`, the latents zeroed only at
    `where_NT` (the content rows' positions, `PairedData.content`); an empty frame without configs."""
    import pandas as pd

    from resa_utils.core.sweep import run_sweep

    if not configs:
        return pd.DataFrame()
    N, T = ids_NT.shape
    row = partial(ablation_drops, first_lm=first_lm, second_lm=second_lm, cc=cc, hook=hook, ids_BT=ids_NT[windows],
                  words_BT={c: m[windows] for c, m in words_NT.items()}, acts_BTF=acts_NF.view(N, T - 1, -1)[windows],
                  pool_F=pool_F, n_draws=n_draws, seed=seed + 17, where_BT=where_NT[windows])
    return run_sweep(sweep_path, configs, row, desc="ablation")


def ablation_table(abl: "pd.DataFrame", cats_pred: "pd.DataFrame") -> "pd.DataFrame":
    """One row per category: the mean logit and log-probability falls of the category latents with
    95 % intervals over occurrences, against the random draws' (mean, range, and the largest
    draw's log-probability fall)."""
    import pandas as pd

    rows = []
    for c in abl.itertuples():
        d_set = torch.tensor(c.drops["category latents"])
        ctrl_means = torch.stack([torch.tensor(v) for n, v in c.drops.items() if n.startswith("random")]).mean(1)
        lp_set = torch.tensor(c.drops_lp["category latents"])
        lp_ctrl = torch.stack([torch.tensor(v) for n, v in c.drops_lp.items() if n.startswith("random")]).mean(1)
        share = cats_pred.loc[c.latents, f"share {c.category}"]
        pct = null_percentile(float(d_set.mean()), ctrl_means.tolist())
        rows.append({"category": c.category, "latents ablated": len(c.latents), "their share there": f"{share.min():.2f}..{share.max():.2f}",
                     "occurrences": len(d_set), "logit fall (category latents)": float(d_set.mean()), "± 95%": mean_ci(d_set)[1],
                     "logit fall (random, mean of draws)": float(ctrl_means.mean()),
                     "random draws min..max": f"{float(ctrl_means.min()):.3f}..{float(ctrl_means.max()):.3f}",
                     "percentile in random draws": pct, "random draws": len(ctrl_means),
                     "log-prob fall (category latents)": float(lp_set.mean()), "lp ± 95%": mean_ci(lp_set)[1],
                     "log-prob fall (random, max of draws)": float(lp_ctrl.max()), "control pool": c.pool})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- steering

STEER_CATEGORIES = ("self-reflection", "deduction")
"""The categories with a steering claim in the paper (longer with "Wait", shorter)."""


def steering_directions(cats: "pd.DataFrame", pool_F: torch.Tensor, W_dec_FD: torch.Tensor, mean_norm: float,
                        min_firings: int, categories: tuple[str, ...] = STEER_CATEGORIES) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Per category, the pool latent (firing `min_firings`+ times) that the rule labels so with the
    largest share on its word, else the pool's largest share on it at all; its decoder row in
    `W_dec_FD` (the steered model's block) at norm `mean_norm`. Returns `{"<category> (latent i)":
    [D]}` and one row per direction (latent, r, share, whether the rule labels it so, firings)."""
    directions, picked = {}, []
    for cat in categories:
        pool = cats[pool_F.numpy() & (cats.firings >= min_firings).to_numpy()]
        own = pool[pool.category == cat]
        src = own if len(own) else pool
        if not len(src):
            continue
        i = int(src.sort_values(f"share {cat}", ascending=False).latent.iloc[0])
        v = W_dec_FD[i].detach().float()
        directions[f"{cat} (latent {i})"] = v / v.norm() * mean_norm
        picked.append({"direction": cat, "latent": i, "r (L2)": float(cats.loc[i, "r (L2)"]), "share on its word": float(cats.loc[i, f"share {cat}"]),
                       "labelled so by the rule": bool(len(own)), "firings": int(cats.loc[i, "firings"])})
    return directions, picked


def steering_table(steered: "pd.DataFrame") -> "pd.DataFrame":
    """One row per (direction, scale) of `steering.evaluate_steered`'s answers: accuracy with its
    Wilson interval, and mean length, "Wait" and "Therefore" counts with 95 % intervals."""
    import pandas as pd

    from resa_utils.data.tasks import wilson

    rows = []
    for (vec, scale), part in steered.groupby(["vector", "scale"], sort=False):
        lo, hi = wilson(int(part.correct.sum()), len(part))
        row = {"direction": vec, "scale (× mean norm)": scale, "n": len(part), "accuracy": part.correct.mean(), "acc low": lo, "acc high": hi}
        for col, name in (("n_tokens", "length"), ("Wait", "Wait"), ("Therefore", "Therefore")):
            row[name], row[f"{name} ±95%"] = mean_ci(part[col])
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the paper's claims


def claim_specific_latents(counts: "pd.DataFrame", r_low: float, r_high: float, base_name: str,
                           n_latents: int, n_tokens: int) -> dict:
    """The paper-comparison row of model-specific latents: "yes" when reasoner-only latents (L2)
    are at least 1 % of the live ones."""
    g = counts.set_index("norm").loc["L2"]
    n_ro, n_bo, n_live = int(g[f"reasoner-only r>{r_high}"]), int(g[f"base-only r<{r_low}"]), int(g["live"])
    return {"claim": "the crosscoder finds latents specific to the distilled model",
            "metric": f"reasoner-only (r>{r_high}) / base-only (r<{r_low}) live latents, L2",
            "paper": "distill-only latents exist", "ours": f"{n_ro} / {n_bo} of {n_live}",
            "held": "yes" if n_ro >= 0.01 * n_live else "partly" if n_ro > 0 else "no",
            "note": f"{base_name} vs its distilled reasoner (notebook 00), {n_latents} latents, {n_tokens:,} tokens "
                    "(paper: Qwen 1.5B pair, 32k latents, 400M tokens)"}


def _categorised_share(cats: "pd.DataFrame") -> float:
    return float((cats.category != "other").mean()) if len(cats) else float("nan")


def claim_categories(cats: "pd.DataFrame", lean_F: torch.Tensor, r_lean: float, category_share: float) -> dict:
    """The paper-comparison row of categories: "yes" when the categorised share among reasoner-
    leaning latents is more than twice that among shared ones (with at least two categorised)."""
    leaning = cats[lean_F.numpy()]
    s_lean, s_shared = _categorised_share(leaning), _categorised_share(cats[cats.live & (cats.group == "shared")])
    held = ("not tested" if s_lean != s_lean else "yes" if s_lean > 2 * s_shared and (leaning.category != "other").sum() >= 2
            else "partly" if s_lean > s_shared else "no")
    return {"claim": "reasoner-specific latents carry the reasoning categories", "metric": "categorised share: reasoner-leaning vs shared latents",
            "paper": "self-reflection, deduction, alternative, contrast latents",
            "ours": f"{s_lean:.3f} vs {s_shared:.3f}" if lean_F.any() else f"no reasoner-leaning latent (r > {r_lean}); shared {s_shared:.3f}",
            "held": held,
            "note": f"word rule: share >= {category_share} of a latent's activation mass on the word (LLM labels in the paper); "
                    "the traces were templated with these words"}


def claim_ablation(abl_table: "pd.DataFrame", pool_note: str, n_control_draws: int) -> list[dict]:
    """The paper-comparison rows of the ablation, one per category: "yes" when the category latents'
    logit fall beats the random mean by more than its interval and every draw, and their
    log-probability fall, less its interval, beats every draw's; "partly" when it beats the mean."""
    rows = []
    for a in abl_table.to_dict(orient="records"):
        ctrl = [float(x) for x in a["random draws min..max"].split("..")]
        margin = a["logit fall (category latents)"] - a["logit fall (random, mean of draws)"]
        lp_ok = a["log-prob fall (category latents)"] - a["lp ± 95%"] > a["log-prob fall (random, max of draws)"]  # the prediction itself moved
        rows.append({"claim": f"ablating {a['category']} latents lowers that word's logit more than random latents",
                     "metric": "mean logit fall: category latents vs random", "paper": "category > random",
                     "ours": f"{a['logit fall (category latents)']:.3f} ± {a['± 95%']:.3f} vs {a['logit fall (random, mean of draws)']:.3f}; "
                             f"log-prob {a['log-prob fall (category latents)']:.3f} ± {a['lp ± 95%']:.3f} vs {a['log-prob fall (random, max of draws)']:.3f}",
                     "held": "yes" if margin > a["± 95%"] and a["logit fall (category latents)"] > ctrl[1] and lp_ok else "partly" if margin > 0 else "no",
                     "note": f"{a['latents ablated']} latents from the pool of {pool_note}, {a['occurrences']} occurrences; "
                             f"percentile {a['percentile in random draws']:.0f} of {n_control_draws} random draws ({a['random draws min..max']})"})
    return rows


def report_scale(scales: list[float]) -> float | None:
    """The steering scale the claims are judged at (fixed before the run): the middle non-zero one
    (the lower middle of an even count); None without a non-zero scale."""
    nonzero = sorted(s for s in scales if s > 0)
    return nonzero[(len(nonzero) - 1) // 2] if nonzero else None


def claim_steering(steer_table: "pd.DataFrame", directions: list[str], picked: list[dict], scales: list[float],
                   pool_note: str, n_problems: int, max_new_tokens: int) -> list[dict]:
    """The paper-comparison rows of steering at `report_scale`: the steered mean length and that of
    the random direction that moves furthest the paper's way must differ by more than the sum of
    their intervals, the steered one on the paper's side of both ("partly"); self-reflection "yes"
    with a length at least 1.5× the unsteered one and more "Wait", deduction at most 2/3 of it."""
    base_row = steer_table[steer_table.direction == "none"].iloc[0]
    lat_of = {p["direction"]: p for p in picked}
    scale = report_scale(scales)
    rows = []
    for cat, want in (("self-reflection", "longer"), ("deduction", "shorter")):
        name = next((v for v in directions if v.startswith(cat)), None)
        if name is None or scale is None:
            rows.append({"claim": f"steering along a {cat} direction makes answers {want}", "metric": "", "paper": "", "ours": "",
                         "held": "not tested", "note": "no direction"})
            continue
        at = steer_table[(steer_table.direction == name) & (steer_table["scale (× mean norm)"] == scale)].iloc[0]
        rnds = steer_table[steer_table.direction.str.startswith("random") & (steer_table["scale (× mean norm)"] == scale)]
        rnd = rnds.loc[rnds.length.idxmax() if want == "longer" else rnds.length.idxmin()]  # the random draw that moves most the paper's way
        ratio, r_ratio = at.length / base_row.length, rnd.length / base_row.length
        pct = null_percentile(float(at.length), rnds.length.tolist())
        apart = abs(at.length - rnd.length) > at["length ±95%"] + rnd["length ±95%"]  # the two intervals do not overlap
        if want == "longer":
            way = apart and ratio > 1 and at.length > rnd.length
            ok = way and ratio >= 1.5 and at.Wait > base_row.Wait
            paper = "≈3× longer, repeated 'Wait'"
        else:
            way = apart and ratio < 1 and at.length < rnd.length
            ok = way and ratio <= 2 / 3
            paper = "≈2× shorter"
        lat = lat_of[cat]
        rows.append({"claim": f"steering along a {cat} direction makes answers {want}", "metric": f"length ratio to unsteered at scale {scale}",
                     "paper": paper, "ours": f"{ratio:.2f} (percentile {pct:.0f} of {len(rnds)} random directions, the closest {r_ratio:.2f}); Wait {at.Wait:.2f} vs {base_row.Wait:.2f}; "
                                             f"accuracy {at.accuracy:.2f} vs {base_row.accuracy:.2f}",
                     "held": "yes" if ok else "partly" if way else "no",
                     "note": f"latent {lat['latent']} (r {lat['r (L2)']:.2f}{'' if lat['labelled so by the rule'] else ', not labelled ' + cat + ' by the rule'}) "
                             f"from {pool_note}; {n_problems} held-out problems, greedy, at most {max_new_tokens} new tokens"})
    return rows


# --------------------------------------------------------------------------- premises and the new claims


def preconditions(layer_rows: "pd.DataFrame", block: int, max_cos: float, near: dict | None,
                  min_recovery: float, change: dict | None) -> list[dict]:
    """Notebook 04's premises: the two models differ at the chosen block (median same-token
    cosine on reasoning text at most `max_cos`), and a reasoner-only feature planted at the real
    change's frequency and size comes back (`crosscoder_calibration.recovery_near` share at
    least `min_recovery`). Each row names the claims it gates."""
    at = layer_rows[layer_rows.block == block]
    cos = float(at["median cos"].iloc[0]) if len(at) else float("nan")
    share = float("nan") if near is None else float(near["recovered_share"])
    where = "" if change is None else f" (frequency {change['freq']:.3f}, size {change['amp_median']:.2f} of the mean norm)"
    return [
        {"precondition": f"the reasoner's activations differ from the base's at block {block} (reasoning text, dev windows)",
         "measure": "median same-token cosine", "threshold": f"<= {max_cos}", "value": cos,
         "met": "yes" if cos <= max_cos else "no", "gates": "1 2 3"},
        {"precondition": f"a reasoner-only feature planted at the real change's scale is recovered{where}",
         "measure": "share of the nearest planted directions with r > 0.9 and cos > 0.9", "threshold": f">= {min_recovery}",
         "value": share, "met": "yes" if share >= min_recovery else "no", "gates": "1"},
    ]


def claim_authors_scoring(auth: dict, spear: dict, top_share: float, pool_r: float, n_perm: int) -> dict:
    """The authors' scoring: their top `top_share` latents by r are "reasoner-specific" and carry
    reasoning. "yes" when the top set leans to the reasoner (smallest r above `pool_r`) and r
    ranks latents by their activation share on reasoning tokens (Spearman > 0, permutation p < 0.05)."""
    lean = auth["top_r_min"] > pool_r
    tied = spear["rho"] > 0 and spear["p_greater"] < 0.05
    return {"claim": "the authors' scoring: the top latents by r are reasoner-specific and track reasoning text",
            "metric": f"top {top_share:.1%} by r: smallest r; Spearman(r, share of mass on reasoning tokens)",
            "paper": "top 100 of 32,768 by r (r up to ~0.85); r > 0.5 pool",
            "ours": f"{auth['n_top']} latents, r >= {auth['top_r_min']:.3f}; pool r > {pool_r}: {auth['n_pool']} of {auth['n_live']}; "
                    f"Spearman {spear['rho']:.3f} (permutation p {spear['p_greater']:.3g}, null 95% {spear['null_q025']:.3f}..{spear['null_q975']:.3f})",
            "held": "yes" if lean and tied else "partly" if lean or tied else "no",
            "note": f"{n_perm} permutations of the shares over the live latents; the paper reports no such test"}


def claim_dose(dist: "pd.DataFrame", thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)) -> dict:
    """The dose-response (rule fixed before the run): "yes" when r's 95th percentile and the count
    over the lowest threshold both increase with the distillation scale (rows in scale order),
    "partly" when one does."""
    q95, n_over = monotone(dist["r q95"].tolist()), monotone(dist[f"n r>{thresholds[0]}"].tolist())
    up = [q95 == "increasing", n_over == "increasing"]
    return {"claim": "a stronger distillation gives more reasoner-leaning latents", "metric": "r q95 and count over r > "
            f"{thresholds[0]} across {', '.join(map(str, dist.index))}", "paper": "(not in the paper: our dose-response)",
            "ours": "; ".join(f"{m}: q95 {row['r q95']:.3f}, {int(row[f'n r>{thresholds[0]}'])} / {int(row['live'])}" for m, row in dist.iterrows()),
            "held": "yes" if all(up) else "partly" if any(up) else "no",
            "note": f"r q95 {q95}, count {n_over}; each crosscoder on the same windows, the base's activations shared"}


def scoring_note(scoring: "pd.DataFrame", r_high: float) -> str:
    """Every crosscoder's and seed's reasoner-only count, top-set floor and Spearman in one line, so
    a headline row shows whether the other seed and the other activation agree."""
    return "; ".join(f"{r.activation} seed {r.seed}: {int(r[f'reasoner-only r>{r_high}'])} over r {r_high}, top r >= {r['top r min']:.3f}, "
                     f"Spearman {r['Spearman(r, reasoning share)']:.3f}" for _, r in scoring.iterrows())
