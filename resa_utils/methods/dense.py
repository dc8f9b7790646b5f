"""Paper 3's analysis of dense SAE latents: firing rates and the dense set, antipodal pairs, the
dense subspace and its projection (ablate-and-retrain), and the statistics that label a dense
latent (position, context binding, entropy / null space, alphabet, part of speech, PCA).

Around them, what makes a verdict possible at our scale: SAEs trained for several epochs with
snapshots (`DenseJob`, `SAESweep`) and the rule that picks the main run's epochs
(`choose_epochs`); cosine thresholds carried from the paper's width to the model's in
random-direction σ (`scale_thresholds`); whether each dense direction is one- or two-sided
(`sidedness`); a planted signed dense direction that must come back as an antipodal pair (the
calibration, `plant` / `planted_pair`); and the preconditions that gate the claims
(`preconditions`).

Every threshold is an argument (no official code exists; the paper's values are defaults in
`LabelThresholds`), and every label comes with the statistic that earned it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pandas as pd
import torch

from resa_utils.core.atomic import atomic_path
from resa_utils.core.stats import _ranks, pearson, spearman
from resa_utils.core.sweep import config_key, run_sweep
from resa_utils.lm.activations import ActivationCache, content_rows, harvest_splits
from resa_utils.lm.content import ContentRule
from resa_utils.sae import SAE, TrainConfig, evaluate_sae, spliced_ce

if TYPE_CHECKING:
    from resa_utils.data.windows import Windows

# --------------------------------------------------------------------------- density


@torch.no_grad()
def firing_rates(sae, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Share of tokens on which each latent is non-zero: `rates_F`."""
    count, n = None, 0
    for x in batches:
        fires = (sae.encode(x.to(sae.W_enc.dtype)) > 0).sum(0, dtype=torch.int64)
        count = fires if count is None else count + fires
        n += x.shape[0]
    if not n:
        raise ValueError("firing_rates got no activations")
    return count.double() / n


def dense_counts(rates_F: torch.Tensor, thresholds=(0.01, 0.05, 0.1, 0.2)) -> dict[float, int]:
    """Number of latents firing on more than each share of tokens."""
    return {t: int((rates_F > t).sum()) for t in thresholds}


# --------------------------------------------------------------------------- antipodality


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def antipodality(W_enc_FD: torch.Tensor, W_dec_FD: torch.Tensor, latents: torch.Tensor,
                 chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """`s_i = max_{j≠i} cos(W_enc,i, W_enc,j) · cos(W_dec,i, W_dec,j)` for each latent in
    `latents` (indices), against every latent; returns `(s_K, partner_K)`. Rows are latents, so
    pass `sae.W_enc.T` for the encoder. An antipodal pair (both cosines ≈ −1) scores ≈ 1."""
    enc, dec = _unit_rows(W_enc_FD.detach().float()), _unit_rows(W_dec_FD.detach().float())
    scores, partners = [], []
    for a in range(0, len(latents), chunk):
        idx = latents[a:a + chunk]
        prod = (enc[idx] @ enc.T) * (dec[idx] @ dec.T)
        prod[torch.arange(len(idx)), idx] = -float("inf")  # not itself
        s, j = prod.max(dim=1)
        scores.append(s.float())
        partners.append(j)
    if not scores:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(scores), torch.cat(partners)


# --------------------------------------------------------------------------- the dense subspace


def subspace_basis(directions_KD: torch.Tensor, rtol: float = 1e-3) -> torch.Tensor:
    """Orthonormal basis `Q_RD` of the span of `directions_KD`; the rank R counts singular values
    above `rtol` times the largest (unit-normed rows first)."""
    if directions_KD.shape[0] == 0:
        return directions_KD.new_zeros(0, directions_KD.shape[1])
    _, s, vh = torch.linalg.svd(_unit_rows(directions_KD.double()), full_matrices=False)
    rank = int((s > rtol * s[0]).sum())
    return vh[:rank].float().contiguous()


def project_out(acts_ND: torch.Tensor, basis_RD: torch.Tensor) -> torch.Tensor:
    """The activations with their component in the span of the orthonormal `basis_RD` removed."""
    from resa_utils.sae.train import _project_out

    return _project_out(acts_ND, basis_RD)


# --------------------------------------------------------------------------- label statistics


def between_group_share(act_N: torch.Tensor, group_N: torch.Tensor) -> float:
    """Context binding: share of the activation's variance that lies between groups (documents
    or passages) rather than within them (η², in [0, 1])."""
    x = act_N.double()
    total = ((x - x.mean()) ** 2).sum()
    if total == 0:
        return 0.0
    uniq, inv = torch.unique(group_N, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, x)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.ones_like(x))
    means = sums / counts
    between = (counts * (means - x.mean()) ** 2).sum()
    return float(between / total)


def roc_auc(score_N: torch.Tensor, label_N: torch.Tensor) -> float:
    """Area under the ROC curve of `score` for the boolean `label` (ties count half)."""
    label = label_N.bool()
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(score_N)  # 0-based: Mann-Whitney U = sum of positive ranks - n_pos(n_pos - 1)/2
    return float((r[label].sum() - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg))


def null_basis(W_U_VD: torch.Tensor, k: int = 10) -> torch.Tensor:
    """The unembedding's `k` last right singular vectors `[k, D]` (the directions the logits
    barely read), from the eigenvectors of the small `W_U^T W_U` rather than an SVD of `W_U`."""
    w = W_U_VD.detach().double()
    _, vecs = torch.linalg.eigh(w.T @ w)  # ascending eigenvalues
    return vecs[:, :k].T.contiguous()


def nullspace_cos(w_D: torch.Tensor, null_KD: torch.Tensor) -> float:
    """Largest |cos| of a direction with the rows of `null_basis(...)`."""
    w = w_D.detach().double()
    return float((null_KD.double() @ (w / w.norm().clamp_min(1e-12))).abs().max())


def nullspace_alignment(w_D: torch.Tensor, W_U_VD: torch.Tensor, k: int = 10) -> float:
    """Largest |cos| of a decoder direction with the unembedding's `k` last right singular
    vectors."""
    return nullspace_cos(w_D, null_basis(W_U_VD, k))


def alphabet_share(w_D: torch.Tensor, W_U_VD: torch.Tensor, token_strings: list[str],
                   top: int = 100) -> tuple[float, str]:
    """Logit lens of a decoder direction: among the `top` tokens it promotes most, the share
    that start with the most common first letter (case-insensitive, leading spaces and
    word-start markers stripped; tokens without a letter count against), and that letter (a tie
    goes to the letter of the more promoted token, so the answer does not depend on hash order)."""
    logits = W_U_VD.float() @ w_D.detach().float()  # float32: a [V, D] copy in float64 per latent is slow
    idx = torch.topk(logits, min(top, len(logits))).indices.tolist()
    firsts = []
    for i in idx:
        s = token_strings[i].lstrip(" Ġ▁")
        firsts.append(s[0].lower() if s and s[0].isalpha() else "")
    letters = [f for f in firsts if f]
    if not letters:
        return 0.0, ""
    best = max(dict.fromkeys(letters), key=letters.count)  # first seen wins a tie
    return letters.count(best) / len(firsts), best


def top_components(acts_ND: torch.Tensor, k: int = 5) -> torch.Tensor:
    """The activations' top `k` principal directions `[k, D]` (centred)."""
    x = acts_ND.double() - acts_ND.double().mean(0)
    _, vecs = torch.linalg.eigh(x.T @ x)
    return vecs[:, -k:].flip(1).T.contiguous()


def component_cos(w_D: torch.Tensor, pcs_KD: torch.Tensor) -> tuple[float, int]:
    """Largest |cos| of a direction with the rows of `pcs_KD`, and which row."""
    w = w_D.detach().double()
    cos = (pcs_KD.double() @ (w / w.norm().clamp_min(1e-12))).abs()
    return float(cos.max()), int(cos.argmax())


def pca_alignment(w_D: torch.Tensor, acts_ND: torch.Tensor, k: int = 5) -> tuple[float, int]:
    """Largest |cos| of a decoder direction with the top `k` principal components of the
    activations, and which component."""
    return component_cos(w_D, top_components(acts_ND, k))


# --------------------------------------------------------------------------- labels


@dataclass
class LabelThresholds:
    """When a dense latent earns each label (the paper's values where it gives them)."""

    position_rho: float = 0.4
    """|Spearman ρ| with position in the document or sentence."""
    context_share: float = 0.5
    """Between-document share of the activation variance (our choice: the paper gives none)."""
    nullspace_cos: float = 0.2
    """|cos| with the unembedding's last singular vectors."""
    entropy_r: float = 0.3
    """|Pearson r| with next-token entropy, the second way to earn 'entropy' (our choice)."""
    alphabet_share: float = 0.9
    """Share of the top-100 promoted tokens starting with one letter."""
    pos_auc: float = 0.75
    """AUC for firing on a part-of-speech class."""
    pca_cos: float = 0.75
    """|cos| with a top principal component."""


def labels_for(stats: dict, t: LabelThresholds) -> list[tuple[str, str]]:
    """`[(label, the statistic that earned it)]` for one latent's `stats` (keys as produced by a
    notebook: position_rho, context_share, nullspace_cos, entropy_r, alphabet_share /
    alphabet_letter, pos_auc / pos_class, pca_cos / pca_component); `[("unlabelled", "")]` if none."""
    out = []
    if abs(stats.get("position_rho", 0.0)) > t.position_rho:
        out.append(("position", f"Spearman ρ = {stats['position_rho']:+.2f}"))
    if stats.get("context_share", 0.0) > t.context_share:
        out.append(("context binding", f"between-document share {stats['context_share']:.2f}"))
    if stats.get("nullspace_cos", 0.0) > t.nullspace_cos or abs(stats.get("entropy_r", 0.0)) > t.entropy_r:
        out.append(("entropy / null space", f"null-space |cos| {stats.get('nullspace_cos', 0):.2f}, "
                                            f"entropy r {stats.get('entropy_r', 0):+.2f}"))
    if stats.get("alphabet_share", 0.0) >= t.alphabet_share:
        out.append(("alphabet", f"{stats['alphabet_share']:.0%} of top tokens start with "
                                f"'{stats.get('alphabet_letter', '?')}'"))
    if stats.get("pos_auc", 0.0) > t.pos_auc:
        out.append(("part of speech", f"AUC {stats['pos_auc']:.2f} for {stats.get('pos_class', '?')}"))
    if stats.get("pca_cos", 0.0) > t.pca_cos:
        out.append(("PCA", f"|cos| {stats['pca_cos']:.2f} with PC{stats.get('pca_component', 0) + 1}"))
    return out or [("unlabelled", "")]


def thresholds_dict(t: LabelThresholds) -> dict:
    return asdict(t)


# --------------------------------------------------------------------------- choosing latents


def random_sparse(rates_F: torch.Tensor, n: int, threshold: float, seed: int) -> torch.Tensor:
    """`n` random latents that fire (rate > 0) but are not dense (rate <= threshold), as the
    controls need; fewer if fewer exist."""
    pool = torch.nonzero((rates_F > 0) & (rates_F <= threshold)).flatten()
    gen = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(len(pool), generator=gen)[:n]].sort().values


def match_share(dirs_KD: torch.Tensor, others_FD: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of the rows of `dirs_KD` whose best cosine with a row of `others_FD` exceeds
    `threshold` (seed stability of a latent set); nan for an empty set."""
    if dirs_KD.shape[0] == 0:
        return float("nan")
    if others_FD.shape[0] == 0:
        return 0.0
    best = (_unit_rows(dirs_KD.detach().float()) @ _unit_rows(others_FD.detach().float()).T).max(1).values
    return float((best > threshold).float().mean())


# --------------------------------------------------------------------------- the statistics of a latent


def sentence_positions(doc_N: torch.Tensor, start_N: torch.Tensor) -> torch.Tensor:
    """Each token's distance from the start of its sentence, for tokens in corpus order
    (`doc_N` its document, -1 for separators; `start_N` True at a sentence's first token). A
    new document starts a new count; -1 where `doc_N` is -1."""
    out = torch.full_like(doc_N, -1)
    count, prev = 0, None
    for i, (d, s) in enumerate(zip(doc_N.tolist(), start_N.tolist())):
        if d < 0:
            prev = None
            continue
        count = 0 if (s or d != prev) else count + 1
        out[i], prev = count, d
    return out


def effective_unembedding(lm) -> torch.Tensor:
    """`W_U · diag(g)` `[V, D]`, with `g` the final norm's per-dimension gain, so a residual
    direction's logit lens reads what the model's last norm passes on (Gemma's `1 + w` or
    Llama's `w`, whichever the module applies)."""
    model = lm.model
    W_U = model.get_output_embeddings().weight.detach().float()
    norm = getattr(getattr(model, "model", model), "norm", None)
    if norm is None:
        return W_U
    with torch.no_grad():
        eye = torch.eye(W_U.shape[1], dtype=W_U.dtype, device=W_U.device)
        gain = norm(eye).diagonal().float()
    return W_U * (gain / gain.abs().max().clamp_min(1e-12))


@dataclass
class LabelContext:
    """What the label statistics of one layer read, for N held-out tokens in corpus order."""

    positions: dict[str, torch.Tensor]
    """Named position counts `[N]` (say 'window', 'document', 'sentence'); -1 = undefined."""
    doc_N: torch.Tensor
    """Document of each token; -1 for separators (left out of every statistic)."""
    tag_N: torch.Tensor
    """Part-of-speech class of each token (index into `class_names`); -1 where untagged."""
    class_names: tuple[str, ...]
    entropy_M: torch.Tensor
    """Clean next-token entropy at the first M tokens (M <= N)."""
    null_KD: torch.Tensor
    """`null_basis` of the effective unembedding."""
    W_U_VD: torch.Tensor
    """Effective unembedding, for the logit lens."""
    token_strings: list[str]
    pcs_KD: torch.Tensor
    """`top_components` of this layer's activations."""
    min_class_tokens: int = 50
    """A part-of-speech class needs this many tagged tokens to be scored."""


def label_stats(act_N: torch.Tensor, w_dec_D: torch.Tensor, ctx: LabelContext,
                alphabet_top: int = 100) -> dict:
    """Every statistic `labels_for` reads, for one latent's activations `act_N` (zeros where it
    does not fire) and its decoder direction."""
    a = act_N.double()
    ok = ctx.doc_N >= 0
    out: dict = {}
    best = ("", 0.0)
    for name, pos in ctx.positions.items():
        m = ok & (pos >= 0)
        rho = spearman(a[m], pos[m].double()) if int(m.sum()) > 2 else 0.0
        if abs(rho) >= abs(best[1]):
            best = (name, rho)
    out["position_rho"], out["position_kind"] = best[1], best[0]
    out["context_share"] = between_group_share(a[ok], ctx.doc_N[ok])
    out["nullspace_cos"] = nullspace_cos(w_dec_D, ctx.null_KD)
    M = len(ctx.entropy_M)
    out["entropy_r"] = pearson(a[:M][ok[:M]], ctx.entropy_M[ok[:M]].double())
    out["alphabet_share"], out["alphabet_letter"] = alphabet_share(w_dec_D, ctx.W_U_VD, ctx.token_strings,
                                                                   alphabet_top)
    tagged = ok & (ctx.tag_N >= 0)
    auc, cls = 0.0, ""
    for c, name in enumerate(ctx.class_names):
        lab = ctx.tag_N[tagged] == c
        if int(lab.sum()) < ctx.min_class_tokens or int((~lab).sum()) < ctx.min_class_tokens:
            continue
        v = roc_auc(a[tagged], lab)
        if v > auc:
            auc, cls = v, name
    out["pos_auc"], out["pos_class"] = auc, cls
    out["pca_cos"], out["pca_component"] = component_cos(w_dec_D, ctx.pcs_KD)
    out["firing_rate"] = float((a > 0).double().mean())
    return out


def top_contexts(act_N: torch.Tensor, ids_NT: torch.Tensor, tokenizer, n: int = 5,
                 width: int = 8, rows_N: torch.Tensor | None = None) -> list[str]:
    """The `n` highest activations' contexts: `width` tokens before, the token in [[ ]], and
    two after. Rows of `act_N` are the tokens of `ids_NT` without each window's first (BOS), or,
    with `rows_N`, the rows of those it names (`HeldOutTokens.row_N` of a content-row subset)."""
    T = ids_NT.shape[1] - 1
    if rows_N is not None and len(rows_N) != len(act_N):
        raise ValueError(f"rows_N names {len(rows_N)} rows, the activations have {len(act_N)}")
    out = []
    for r in torch.topk(act_N, min(n, len(act_N))).indices.tolist():
        w, t = divmod(r if rows_N is None else int(rows_N[r]), T)
        t += 1
        ids = ids_NT[w]
        before = tokenizer.decode(ids[max(1, t - width):t])
        after = tokenizer.decode(ids[t + 1:t + 3])
        out.append(f"{act_N[r]:.2f}: …{before}[[{tokenizer.decode(ids[t:t + 1])}]]{after}…".replace("\n", "⏎"))
    return out


# --------------------------------------------------------------------------- the harvest and the held-out tokens


@dataclass
class Harvest:
    """The one harvest of every studied layer: its throughput, or that an earlier run's cache was reused."""

    tokens: int
    """Tokens this call harvested (0 when every split was already cached)."""
    seconds: float
    tokens_per_s: float
    reused: bool

    def note(self, n_layers: int) -> str:
        """One line saying what the harvest cost (or that it cost nothing)."""
        if self.reused:
            return "the activation cache from an earlier run was reused"
        return f"harvest {self.tokens_per_s:.0f} tok/s over {self.tokens:,} tokens at {n_layers} layers"


def harvest_once(sweep_file: str | Path, config: dict, folder: str | Path, lm, splits: dict[str, torch.Tensor],
                 hooks: list[str], workers: int = 1) -> Harvest:
    """Harvest `hooks` on each split's windows into `folder/<split>` (bfloat16), as a one-row
    resumable sweep keyed by `config`: a rerun with complete caches reuses them and claims no throughput."""
    folder = Path(folder)

    def row(_config: dict) -> dict:
        _, h = harvest_splits(folder, lm, splits, hooks, dtype=torch.bfloat16, workers=workers)
        return {"seconds": h["seconds"] if h["tokens"] else float("nan"), "tokens": h["tokens"],
                "tokens/s": h["tokens/s"], "reused cache": not h["tokens"]}

    def complete(_row: dict) -> bool:
        return all(ActivationCache.is_complete(folder / part) for part in splits)

    r = run_sweep(sweep_file, [config], row, desc="harvest", valid=complete).iloc[0]
    return Harvest(tokens=int(r["tokens"]), seconds=float(r["seconds"]), tokens_per_s=float(r["tokens/s"]),
                   reused=bool(r.get("reused cache", False)))


@dataclass
class HeldOutTokens:
    """Provenance of each held-out token, in the harvest's order (each window without its BOS)."""

    doc_N: torch.Tensor
    """Document of each token; -1 for separators."""
    tag_N: torch.Tensor
    """Part-of-speech class of each token; -1 where untagged."""
    positions: dict[str, torch.Tensor]
    """Position in the window (1 = the first token after BOS), the document and the sentence."""
    row_N: torch.Tensor
    """Row of each token in the held-out cache (corpus order): `arange(N)` until `subset` keeps some."""

    def subset(self, keep_N: torch.Tensor) -> "HeldOutTokens":
        """The tokens where `keep_N` (a bool per token, the mask that chose the activation rows) is
        True, every label subset with the same mask, so they stay aligned with those rows."""
        keep = torch.as_tensor(keep_N, dtype=torch.bool).flatten()
        if keep.numel() != len(self.doc_N):
            raise ValueError(f"the row mask has {keep.numel():,} entries, the held-out tokens {len(self.doc_N):,}")
        return HeldOutTokens(doc_N=self.doc_N[keep], tag_N=self.tag_N[keep],
                             positions={n: p[keep] for n, p in self.positions.items()}, row_N=self.row_N[keep])

    def entropy(self, entropy_M: torch.Tensor) -> torch.Tensor:
        """Of a next-token entropy given for the first M cache rows (corpus order), the values of
        this subset's rows among them: aligned with this subset's first rows."""
        return entropy_M[self.row_N[self.row_N < len(entropy_M)]]


def held_out_tokens(windows: "Windows") -> HeldOutTokens:
    """Document, tag and positions of every harvested token of `windows`, so the label statistics
    can read them next to the activations (BOS, never harvested, is dropped)."""
    def flat(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(-1)

    doc_N = flat(windows.doc)
    return HeldOutTokens(doc_N=doc_N, tag_N=flat(windows.pos_tag), positions={
        "window": torch.arange(1, windows.ids.shape[1]).repeat(len(windows)), "document": flat(windows.pos),
        "sentence": sentence_positions(doc_N, flat(windows.sentence_start))}, row_N=torch.arange(len(doc_N)))


def held_out_content(cache: ActivationCache, hooks: dict[int, str], held: HeldOutTokens,
                     rule: ContentRule = ContentRule()) -> tuple[dict[int, torch.Tensor], dict[int, HeldOutTokens]]:
    """Each layer's held-out content rows under `rule` (`activations.content_rows`: no special
    tokens, no window starts, no rows above the norm ratio), and the held-out tokens' labels
    subset with the same mask (the norm part differs by layer): `({layer: acts_ND}, {layer: HeldOutTokens})`,
    row i of one the token i of the other. Every statistic of a dense latent reads these."""
    if cache.n_tokens != len(held.doc_N):
        raise ValueError(f"the held-out cache has {cache.n_tokens:,} rows but {len(held.doc_N):,} held-out tokens "
                         "are labelled: build both from the same windows")
    acts, rows = {}, {}
    for L, hook in hooks.items():
        kept, _ = content_rows(cache, hook, rule)
        keep = torch.cat([s["keep"] for s in kept.manifest["shards"]])
        acts[L], rows[L] = kept.load(hook), held.subset(keep)
    return acts, rows


# --------------------------------------------------------------------------- the SAEs


@dataclass
class DenseJob:
    """One SAE of this notebook trained from the activation caches, with snapshots: a picklable
    spec, so `run_sweep(workers=N)` runs several in spawned processes (`train_dense_job`)."""

    train_dir: str
    eval_dir: str
    hook: str
    cfg: TrainConfig
    """Training settings; `n_tokens` is set from the epochs and the content rows (whole batches)."""
    save_dirs: dict[int, str]
    """Epochs -> the folder the SAE is saved to after that many passes over the training rows;
    the largest is where training stops. With a constant lr (`cfg.lr_decay_frac` 0) the snapshot
    after E epochs is the SAE a run of E epochs ends with."""
    metadata: dict = field(default_factory=dict)
    basis_file: str | None = None
    """safetensors file whose `basis` (orthonormal rows) is projected out of both sets first."""
    plant: tuple[float, int] | None = None
    """(share, seed): add a signed dense direction carrying this share of the variance
    (`plant_direction`) to both sets first."""
    density_thresholds: tuple[float, ...] = ()
    rule: ContentRule = ContentRule()


def train_dense_job(config: dict, jobs: dict[str, DenseJob]) -> dict:
    """Train `jobs[config_key(config)]` on its content rows for the largest of its epochs,
    saving the SAE after each epoch count of `save_dirs`, and score each on held-out rows (FVU,
    L0, dead fraction, `dense@t`) and on as many training rows (`train_fvu`, for overfitting).
    Resumes from `<final folder>.ckpt`. Module-level, so it runs in worker processes."""
    import shutil

    from resa_utils.core.atomic import read_json, write_json
    from resa_utils.sae import train_sae
    from resa_utils.sae.trainer import CKPT_STATE

    job = jobs[config_key(config)]
    train = content_rows(ActivationCache(job.train_dir), job.hook, job.rule)[0].load(job.hook)
    held = content_rows(ActivationCache(job.eval_dir), job.hook, job.rule)[0].load(job.hook)
    if job.basis_file is not None:
        from safetensors.torch import load_file

        basis = load_file(job.basis_file)["basis"]
        train, held = project_out(train, basis), project_out(held, basis)
    if job.plant is not None:
        share, pseed = job.plant
        u = plant_direction(train.shape[1], pseed)
        scale = plant_scale(train, share)
        train, held = plant(train, u, scale, pseed), plant(held, u, scale, pseed + 1)
    epochs = sorted(job.save_dirs)
    bs = job.cfg.batch_size
    per_epoch = train.shape[0] // bs
    if per_epoch == 0:
        raise ValueError(f"{train.shape[0]} content rows at {job.hook}: fewer than one batch of {bs}")
    cfg = replace(job.cfg, n_tokens=epochs[-1] * per_epoch * bs)
    sample = train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(cfg.seed))[:held.shape[0]]]
    final = Path(job.save_dirs[epochs[-1]])
    ckpt = final.with_name(final.name + ".ckpt")
    done = [len(read_json(ckpt / CKPT_STATE).get("probes", []))] if (ckpt / CKPT_STATE).exists() else [0]

    def score(sae: SAE, E: int) -> dict:
        ev, tr = evaluate_sae(sae, held), evaluate_sae(sae, sample)
        return {"epochs": E, "fvu": ev["fvu"], "train_fvu": tr["fvu"], "l0": ev["l0"], "dead_frac": ev["dead_frac"],
                **{f"dense@{t}": int((ev["density"] > t).sum()) for t in job.density_thresholds}}

    def probe(sae: SAE) -> dict:
        E = epochs[done[0]]  # probes fire in epoch order; a resumed run skips the ones its checkpoint holds
        done[0] += 1
        sae.save(job.save_dirs[E])
        return score(sae, E)

    if all(_is_sae_folder(job.save_dirs[E]) for E in epochs) and not (ckpt / CKPT_STATE).exists():
        # every snapshot is already in the cache (its sweep row was lost, say with a run's staging
        # folder): score them again rather than train for hours; the training log, if kept, comes back too
        log = read_json(final / TRAIN_LOG) if (final / TRAIN_LOG).exists() else {}
        probes = [{"step": E * per_epoch, "tokens": E * per_epoch * bs, **score(SAE.load(job.save_dirs[E]), E)}
                  for E in epochs]
        seconds, tok_s, curve = log.get("seconds", float("nan")), log.get("tokens_per_s", float("nan")), log.get("curve", [])
    else:
        res = train_sae(train, cfg, checkpoint_dir=ckpt, metadata=job.metadata, progress=True, probe=probe,
                        probe_tokens=tuple(E * per_epoch * bs for E in epochs[:-1]), rule=None)
        probes, seconds, tok_s, curve = res.probes, res.seconds, res.tokens_per_s, res.history
        write_json(final / TRAIN_LOG, {"seconds": seconds, "tokens_per_s": tok_s, "curve": curve})
        shutil.rmtree(ckpt, ignore_errors=True)
    last = probes[-1]
    return {**{k: v for k, v in last.items() if k not in ("step", "tokens", "epochs")}, "trained epochs": int(last["epochs"]),
            "rows": int(train.shape[0]), "tokens": int(cfg.n_tokens), "seconds": seconds,
            "tokens_per_s": tok_s, "curve": curve,
            "probes": [{**p, "epochs": int(p["epochs"])} for p in probes]}


TRAIN_LOG = "train_log.json"
"""Written beside the final snapshot of a dense-latents SAE: its training seconds, speed and curve."""


def _is_sae_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a whole saved SAE (weights are written before `cfg.json`)."""
    from resa_utils.sae.model import CFG_FILE, WEIGHTS_FILE

    return (Path(folder) / CFG_FILE).exists() and (Path(folder) / WEIGHTS_FILE).exists()


@dataclass
class SAESweep:
    """Where this notebook's SAEs live and how each is trained from the activation cache: one
    TopK SAE per (layer, variant, seed, epochs), the variant 'original', an ablation whose basis
    is projected out of the activations first ('ablate-dense', 'ablate-control'), or 'planted'
    (the calibration: a signed dense direction added). The folder name hashes every setting the
    SAE depends on."""

    sae_dir: Path
    act_dir: Path
    """Holds the `train` and `eval` activation caches."""
    hooks: dict[int, str]
    cfg: TrainConfig
    """Training settings; each SAE gets its own seed, and `n_tokens` from its epochs."""
    setup: dict
    """Settings every SAE depends on (data key, width, k, batch, lr, lr decay, dead tokens)."""
    variant_setup: dict
    """Further settings the other variants depend on (the dense set, the rank rule, the planted share)."""
    model_name: str
    density_thresholds: tuple[float, ...] = ()
    workers: int = 1
    rule: ContentRule = ContentRule()
    """Content rows of both caches each SAE trains and is evaluated on; in every folder name and sweep
    config, so an SAE or a row made under another rule is never reused."""

    def path(self, layer: int, variant: str = "original", seed: int | None = None, epochs: int = 1) -> Path:
        """The SAE's folder (`cfg.json` + weights) after `epochs` passes over the training rows."""
        c = {"layer": layer, "variant": variant, "seed": self.cfg.seed if seed is None else seed, "epochs": epochs}
        setup = self.setup if variant == "original" else {**self.setup, **self.variant_setup}
        key = config_key({**setup, **c, "content_rule": asdict(self.rule)})
        return Path(self.sae_dir) / f"L{layer}_{variant}_seed{c['seed']}_ep{epochs}_{key}"

    def basis_file(self, layer: int, variant: str, seed: int, epochs: int = 1) -> Path:
        """The file holding the basis an ablated SAE's activations are projected off."""
        p = self.path(layer, variant, seed, epochs)
        return p.with_name(p.name + ".basis.safetensors")

    def has_sae(self, row: dict) -> bool:
        """Whether a sweep row has this layout and its SAE (at its largest epochs) is still in the
        cache; else it is trained again. A row of an earlier design (no `epochs`: the committed
        results' sweeps that a run's staging starts from) is simply not reused."""
        if not all(q in row for q in ("layer", "variant", "seed", "epochs")):
            return False
        return (self.path(row["layer"], row["variant"], row["seed"], max(row["epochs"])) / "cfg.json").exists()

    def load(self, layer: int, variant: str = "original", seed: int | None = None, epochs: int = 1) -> SAE:
        return SAE.load(self.path(layer, variant, seed, epochs))

    def train(self, sweep_file: str | Path, grid: list[dict], desc: str = "SAEs",
              bases: dict[tuple[int, str, int], torch.Tensor] | None = None,
              plant: tuple[float, int] | None = None) -> pd.DataFrame:
        """Train the SAEs of `grid` (dicts of layer, variant, seed and `epochs`, a list: the SAE is
        saved after each, trained to the largest), `workers` at a time in spawned processes; an
        ablated variant projects out `bases[(layer, variant, seed)]`, 'planted' adds `plant`
        (share, seed). One row per SAE with its `probes` (one per epoch count); each config
        carries the content rule, so a row of another rule is trained again."""
        from safetensors.torch import save_file

        grid = [{**c, "epochs": sorted(c["epochs"]), "content_rule": asdict(self.rule)} for c in grid]
        jobs = {}
        for c in grid:
            L, v, s, top = c["layer"], c["variant"], c["seed"], max(c["epochs"])
            if v.startswith("ablate"):
                with atomic_path(self.basis_file(L, v, s, top)) as tmp:
                    save_file({"basis": bases[(L, v, s)].contiguous()}, str(tmp))
            if v == "planted" and plant is None:
                raise ValueError("a 'planted' SAE needs plant=(share, seed)")
            jobs[config_key(c)] = DenseJob(
                str(Path(self.act_dir) / "train"), str(Path(self.act_dir) / "eval"), self.hooks[L],
                replace(self.cfg, seed=s), {E: str(self.path(L, v, s, E)) for E in c["epochs"]},
                {"model_name": self.model_name, "hook_name": self.hooks[L], "variant": v},
                basis_file=str(self.basis_file(L, v, s, top)) if v.startswith("ablate") else None,
                plant=plant if v == "planted" else None, density_thresholds=tuple(self.density_thresholds),
                rule=self.rule)
        return run_sweep(sweep_file, grid, partial(train_dense_job, jobs=jobs), desc=desc,
                         valid=self.has_sae, workers=self.workers)


# --------------------------------------------------------------------------- convergence


def probe_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, variant, seed, epochs) snapshot of the sweep `rows` (their `probes`)."""
    out = [{"layer": r.layer, "variant": r.variant, "seed": r.seed, **p} for r in rows.itertuples() for p in r.probes]
    return pd.DataFrame(out).drop(columns=["step", "tokens"], errors="ignore")


def choose_epochs(probes: pd.DataFrame, max_epochs: int, tol: float) -> tuple[int, str]:
    """The main run's epochs, by the rule fixed before the run: the smallest probed epoch count E
    (at most `max_epochs`) after which the next probe lowers the held-out FVU (mean over seeds)
    by less than `tol` of itself (or raises it: overfitting); if none, the largest probed
    count up to `max_epochs`. Returns (E, the reason in words)."""
    fvu = probes.groupby("epochs").fvu.mean().sort_index()
    eps = [int(e) for e in fvu.index]
    allowed = [e for e in eps if e <= max_epochs]
    if not allowed:
        raise ValueError(f"no probed epoch count is at most max_epochs={max_epochs} (probed: {eps})")
    for e, nxt in zip(eps, eps[1:]):
        if e > max_epochs:
            break
        drop = (fvu[e] - fvu[nxt]) / fvu[e]
        if drop < tol:
            return e, (f"held-out FVU {fvu[e]:.4f} at {e} epochs -> {fvu[nxt]:.4f} at {nxt} "
                       f"({drop:+.1%} lower, under {tol:.0%})")
    last = max(allowed)
    nxt = [e for e in eps if e > last]
    return last, (f"held-out FVU still {(fvu[last] - fvu[nxt[0]]) / fvu[last]:.1%} lower at {nxt[0]} epochs than at "
                  f"{last}: capped at max_epochs={max_epochs}" if nxt else f"the largest probe, {last} epochs")


def convergence_drop(probes: pd.DataFrame, epochs: int) -> tuple[float, str]:
    """Relative held-out FVU drop (mean over seeds) from `epochs` to the next probed count (from the
    previous one to `epochs` if it is the last), and which step that was: the convergence precondition."""
    fvu = probes.groupby("epochs").fvu.mean().sort_index()
    eps = [int(e) for e in fvu.index]
    i = eps.index(epochs)
    a, b = (eps[i], eps[i + 1]) if i + 1 < len(eps) else (eps[max(0, i - 1)], eps[i])
    return (float((fvu[a] - fvu[b]) / fvu[a]) if a != b else float("nan")), f"{a} -> {b} epochs"


def convergence_table(probes: pd.DataFrame, saes: dict[tuple[int, int], SAE], eval_acts: torch.Tensor,
                      dense_threshold: float, antipodal_threshold: float, match_cos: float,
                      delta_ce: dict | None = None) -> pd.DataFrame:
    """One row per (seed, epochs) snapshot of one layer (`saes[(seed, epochs)]`): held-out and train
    FVU, L0, dead share, the dense count, the share of dense latents with s above
    `antipodal_threshold` and their median s, the share of dense latents with a counterpart (decoder
    cos > `match_cos`) among all latents of the other seed's snapshot at the same epochs, and ΔCE
    (`delta_ce[(seed, epochs)]` = (mean, half-width))."""
    rows = []
    for r in probes.sort_values(["seed", "epochs"]).itertuples():
        s, e = int(r.seed), int(r.epochs)
        sae = saes[(s, e)]
        idx = torch.nonzero(evaluate_sae(sae, eval_acts)["density"] > dense_threshold).flatten()
        sc, _ = antipodality(sae.W_enc.detach().T, sae.W_dec.detach(), idx)
        others = [o for (o, oe) in saes if o != s and oe == e]
        match = match_share(sae.W_dec[idx], saes[(others[0], e)].W_dec, match_cos) if others else float("nan")
        d, half = (delta_ce or {}).get((s, e), (float("nan"), float("nan")))
        rows.append({"seed": s, "epochs": e, "fvu": r.fvu, "train_fvu": r.train_fvu, "l0": r.l0,
                     "dead_frac": r.dead_frac, "dense": len(idx),
                     "antipodal share (dense)": float((sc > antipodal_threshold).float().mean()) if len(idx) else float("nan"),
                     "median s (dense)": float(sc.median()) if len(idx) else float("nan"),
                     "seed match (dense)": match, "ΔCE nats": d, "ΔCE ±95%": half})
    return pd.DataFrame(rows)


def snapshot_ce(sweep_file: str | Path, config: dict, lm, hook: str, saes: dict[tuple[int, int], SAE],
                windows_NT: torch.Tensor, rule: ContentRule = ContentRule()) -> dict[tuple[int, int], tuple[float, float]]:
    """`named_ce_once` for the snapshots `saes[(seed, epochs)]` of one layer at `hook`: ΔCE and its
    95 % half-width keyed like `saes`."""
    named = {f"seed{s}_ep{e}": (hook, m) for (s, e), m in saes.items()}
    out = named_ce_once(sweep_file, config, lm, named, windows_NT, rule)
    return {(s, e): out[f"seed{s}_ep{e}"] for s, e in saes}


def named_ce_once(sweep_file: str | Path, config: dict, lm, splices: dict[str, tuple[str, SAE]],
                  windows_NT: torch.Tensor, rule: ContentRule = ContentRule()) -> dict[str, tuple[float, float]]:
    """ΔCE (mean over windows, 95 % half-width) of each named `(hook, SAE)` splice against the
    clean model on `windows_NT`, as a one-row resumable sweep keyed by `config` and the rule."""
    def row(_config: dict) -> dict:
        out = spliced_ce(lm, splices, windows_NT, rule=rule if rule.enabled else None)
        return {"per_window": {n: v.tolist() for n, v in out["per_window"].items()}}

    r = run_sweep(sweep_file, [{**config, "content_rule": asdict(rule)}], row, desc="CE").iloc[0]
    clean = torch.tensor(r["per_window"]["clean"])
    out = {}
    for n in splices:
        diff = torch.tensor(r["per_window"][n]) - clean
        half = 1.96 * float(diff.std()) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        out[n] = (float(diff.mean()), half)
    return out


@dataclass
class SplicedCE:
    """Held-out next-token CE per window (nats), clean and with each layer's SAE spliced in, and
    the clean next-token entropy of each harvested token of those windows."""

    ce_clean: float
    clean_W: torch.Tensor
    spliced_W: dict[int, torch.Tensor]
    entropy_M: torch.Tensor

    def delta(self, layer: int) -> tuple[float, float]:
        """Mean ΔCE of the layer's splice over windows, and its 95 % half-width (nan for one window)."""
        diff = self.spliced_W[layer] - self.clean_W
        half = 1.96 * float(diff.std()) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        return float(diff.mean()), half


def spliced_ce_once(sweep_file: str | Path, config: dict, lm, saes: dict[int, SAE], hooks: dict[int, str],
                    windows_NT: torch.Tensor, rule: ContentRule = ContentRule()) -> SplicedCE:
    """CE of the clean model and of each layer's SAE spliced in, one pass per splice, as a one-row
    resumable sweep keyed by `config` and the content `rule` (`content_rule`, so a row computed under
    another rule is never reused). The splice leaves the clean activation where `rule` leaves a row
    out (special tokens, window starts, norms above the ratio; `sae.metrics.spliced_ce`); with the
    rule off, everywhere but the BOS, which the harvest never stores (the SAE's rows either way)."""
    def row(_config: dict) -> dict:
        out = spliced_ce(lm, {f"L{L}": (hooks[L], saes[L]) for L in saes}, windows_NT, entropy=True,
                         rule=rule if rule.enabled else None)
        return {"ce": out["ce"], "per_window": {n: v.tolist() for n, v in out["per_window"].items()},
                "entropy": out["entropy_NT"][:, 1:].reshape(-1).tolist()}

    r = run_sweep(sweep_file, [{**config, "content_rule": asdict(rule)}], row, desc="CE").iloc[0]
    return SplicedCE(ce_clean=r["ce"]["clean"], clean_W=torch.tensor(r["per_window"]["clean"]),
                     spliced_W={L: torch.tensor(r["per_window"][f"L{L}"]) for L in saes},
                     entropy_M=torch.tensor(r["entropy"]))


def main_rows(trained: pd.DataFrame, convergence: pd.DataFrame, layer: int, seed: int, epochs: int) -> pd.DataFrame:
    """The main SAEs' sweep rows, one per layer in layer order: those `trained` at the chosen epochs,
    and `layer`'s from the `convergence` run of `seed`, its snapshot at `epochs` (the same SAE a run
    of that length ends with; its training seconds prorated by epochs)."""
    r = convergence[convergence.seed == seed].iloc[0]
    snap = next(p for p in r.probes if int(p["epochs"]) == epochs)
    frac = epochs / int(r["trained epochs"])
    row = {**r.to_dict(), **{k: v for k, v in snap.items() if k not in ("step", "tokens", "epochs")},
           "trained epochs": epochs, "seconds": r.seconds * frac, "tokens": int(r.tokens * frac),
           "curve": [c for c in r.curve if c["tokens"] <= r.tokens * frac]}
    out = pd.concat([trained, pd.DataFrame([row])], ignore_index=True) if len(trained) else pd.DataFrame([row])
    return out.sort_values("layer", kind="stable").reset_index(drop=True)


def sae_quality(originals: pd.DataFrame, ce: SplicedCE, density_sweep: Iterable[float]) -> pd.DataFrame:
    """One row per layer: held-out and training FVU, L0, dead fraction, ΔCE with its interval, dense
    counts at each threshold of the sweep, epochs, and the training cost."""
    rows = []
    for _, r in originals.iterrows():
        delta, half = ce.delta(r.layer)
        rows.append({"layer": r.layer, "fvu": r.fvu, "train fvu": r.train_fvu, "l0": r.l0, "dead_frac": r.dead_frac,
                     "ΔCE nats": delta, "ΔCE ±95%": half, "CE clean": ce.ce_clean,
                     **{f"dense@{t}": int(r[f"dense@{t}"]) for t in density_sweep},
                     "epochs": int(r["trained epochs"]), "train s": r.seconds, "train tok/s": r.tokens_per_s})
    return pd.DataFrame(rows)


def rates_frame(rates: dict[int, torch.Tensor], dense_threshold: float) -> pd.DataFrame:
    """Every latent's held-out firing rate and whether it is dense (rate above `dense_threshold`),
    one row per (layer, latent), for the density figure."""
    return pd.concat([pd.DataFrame({"layer": L, "latent": range(len(r)), "firing rate": r.double().numpy(),
                                    "dense": (r > dense_threshold).numpy()}) for L, r in rates.items()],
                     ignore_index=True)


# --------------------------------------------------------------------------- antipodality by layer


@dataclass
class Antipodality:
    """Antipodality of dense latents against sparse ones and a random initialisation, by layer."""

    summary: pd.DataFrame
    """One row per layer: dense count, dense subspace rank, median s and share above the threshold per group."""
    pairs: pd.DataFrame
    """Dense-dense pairs above the threshold, with both cosines and both firing rates."""
    scores: pd.DataFrame
    """Every latent's s: layer, group, s."""


def antipodality_by_layer(saes: dict[int, SAE], rates: dict[int, torch.Tensor], dense_idx: dict[int, torch.Tensor],
                          init: SAE, n_sparse: int, dense_threshold: float, antipodal_threshold: float,
                          rank_rtol: float, seed: int) -> Antipodality:
    """`antipodality` of each layer's dense latents, of `n_sparse` random sparse latents and of
    `n_sparse` latents of the untrained `init`, the dense subspace's rank, and the dense-dense pairs."""
    anti_rows, pair_rows, s_values = [], [], []
    for L, sae in saes.items():
        W_enc, W_dec = sae.W_enc.detach().T, sae.W_dec.detach()
        groups = {"dense": dense_idx[L], "sparse": random_sparse(rates[L], n_sparse, dense_threshold, seed)}
        res = {g: antipodality(W_enc, W_dec, idx) for g, idx in groups.items()}
        init_idx = torch.randperm(init.cfg.d_sae, generator=torch.Generator().manual_seed(seed))[:n_sparse]
        res["random init"] = antipodality(init.W_enc.detach().T, init.W_dec.detach(), init_idx)
        for g, (s, _) in res.items():
            s_values += [{"layer": L, "group": g, "s": float(v)} for v in s]
        s_d, partner = res["dense"]
        basis = subspace_basis(W_dec[dense_idx[L]], rank_rtol)
        in_pair = [(int(i), int(j)) for i, j, v in zip(dense_idx[L], partner, s_d) if v > antipodal_threshold]
        pairs = {tuple(sorted(p)) for p in in_pair if p[1] in set(dense_idx[L].tolist())}
        for i, j in sorted(pairs):
            ce_enc = float(torch.cosine_similarity(W_enc[i], W_enc[j], dim=0))
            ce_dec = float(torch.cosine_similarity(W_dec[i], W_dec[j], dim=0))
            pair_rows.append({"layer": L, "latent": i, "partner": j, "cos enc": ce_enc, "cos dec": ce_dec,
                              "s": ce_enc * ce_dec, "rate i": float(rates[L][i]), "rate j": float(rates[L][j])})
        anti_rows.append({"layer": L, "dense": len(dense_idx[L]), "dense subspace rank": basis.shape[0],
                          **{f"median s ({g})": float(s.median()) if len(s) else float("nan") for g, (s, _) in res.items()},
                          **{f"share s>{antipodal_threshold} ({g})": float((s > antipodal_threshold).float().mean())
                             if len(s) else float("nan") for g, (s, _) in res.items()},
                          "dense-dense pairs": len(pairs)})
    return Antipodality(summary=pd.DataFrame(anti_rows), scores=pd.DataFrame(s_values), pairs=pd.DataFrame(
        pair_rows, columns=["layer", "latent", "partner", "cos enc", "cos dec", "s", "rate i", "rate j"]))


# --------------------------------------------------------------------------- thresholds scaled to the width


def cos_sigma(d: int, factors: int = 1) -> float:
    """Standard deviation of the cosine of two random directions in `d` dimensions (1/√d), or of a
    product of `factors` independent such cosines (d^(-factors/2)), like the antipodality score s."""
    return float(d) ** (-factors / 2)


@dataclass
class ScaledThresholds:
    """Cosine thresholds carried from the paper's width to this model's: `used` maps each name to
    the value applied, `table` states each beside the paper's value in random-direction σ."""

    used: dict
    table: pd.DataFrame


def scale_thresholds(cosines: dict[str, tuple[float, int]], null_k: int, d_paper: int, d: int,
                     scale: bool = True) -> ScaledThresholds:
    """Each cosine threshold `cosines[name] = (paper value, factors)` (factors: how many cosines
    the statistic multiplies, 2 for s) expressed as random-direction σ at `d_paper`, and, with
    `scale`, the value with the same σ at width `d`: `c · (d_paper / d)^(factors/2)`, kept at the
    paper's value when that would be a cosine of 1 or more (a near-identity threshold, already many σ
    at `d`). `null_k` is scaled to the same share of the space: `max(1, round(null_k · d / d_paper))`."""
    rows, used = [], {}
    for name, (c, f) in cosines.items():
        same = c / cos_sigma(d_paper, f) * cos_sigma(d, f)  # the paper's value in σ, times σ at this width
        val = same if scale and same < 1 else c
        note = ("the same σ at this width" if scale and same < 1 else
                "kept: the same σ would need a cosine ≥ 1" if scale else "not scaled (scale_thresholds off)")
        used[name] = float(val)
        rows.append({"threshold": name, "paper value": c, "σ at the paper's width": c / cos_sigma(d_paper, f),
                     "paper value in σ at this width": c / cos_sigma(d, f), "used": val,
                     "used in σ at this width": val / cos_sigma(d, f), "note": note})
    k = max(1, round(null_k * d / d_paper)) if scale else null_k
    used["null_k"] = int(k)
    rows.append({"threshold": "null_k", "paper value": null_k, "σ at the paper's width": float("nan"),
                 "paper value in σ at this width": float("nan"), "used": k, "used in σ at this width": float("nan"),
                 "note": f"share of the space: paper {null_k / d_paper:.2%}, here {k / d:.2%}"})
    return ScaledThresholds(used=used, table=pd.DataFrame(rows))


# --------------------------------------------------------------------------- geometry: sides and a planted pair


@torch.no_grad()
def sidedness(sae: SAE, acts_ND: torch.Tensor, latents: torch.Tensor) -> pd.DataFrame:
    """For each latent, the share of rows whose projection on its decoder direction is negative:
    of `x − b_dec` (what the SAE reads, so a direction an antipodal pair covers is split about
    evenly) and of the raw `x`. A one-sided direction has one share near 0 (or 1)."""
    d = _unit_rows(sae.W_dec.detach().float()[latents])
    x = acts_ND.float()
    centred = (x - sae.b_dec.detach().float()) @ d.T
    raw = x @ d.T
    return pd.DataFrame({"latent": latents.tolist(), "negative share (x − b_dec)": (centred < 0).double().mean(0).tolist(),
                         "negative share (x)": (raw < 0).double().mean(0).tolist()})


def geometry_table(saes: dict[int, SAE], eval_acts: dict[int, torch.Tensor], dense_idx: dict[int, torch.Tensor],
                   rates: dict[int, torch.Tensor], two_sided_share: float) -> pd.DataFrame:
    """One row per dense latent: its firing rate, s and partner with the partner's encoder and
    decoder cosines (s, their product, is also high for a same-sign duplicate, and is capped by
    the weaker of the two), both negative shares (`sidedness`) and whether its direction is
    two-sided (the smaller side of `x − b_dec` holds at least `two_sided_share` of the rows)."""
    rows = []
    for L, sae in saes.items():
        idx = dense_idx[L]
        if not len(idx):
            continue
        enc, dec = sae.W_enc.detach().T, sae.W_dec.detach()
        s, partner = antipodality(enc, dec, idx)
        cos = {name: torch.nn.functional.cosine_similarity(W[idx].double(), W[partner].double(), dim=1).numpy()
               for name, W in (("cos enc (partner)", enc), ("cos dec (partner)", dec))}
        side = sidedness(sae, eval_acts[L], idx)
        neg = side["negative share (x − b_dec)"]
        rows.append(side.assign(layer=L, **{"firing rate": rates[L][idx].double().numpy(), "s": s.numpy(),
                                            "partner": partner.numpy(), **cos,
                                            "two-sided": (neg.clip(upper=1 - neg) >= two_sided_share).to_numpy()}))
    cols = ["layer", "latent", "firing rate", "s", "partner", "cos enc (partner)", "cos dec (partner)",
            "negative share (x − b_dec)", "negative share (x)", "two-sided"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


def plant_direction(d: int, seed: int) -> torch.Tensor:
    """The planted direction: a random unit vector in `d` dimensions drawn from `seed`."""
    u = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (u / u.norm()).float()


def plant_scale(acts_ND: torch.Tensor, share: float) -> float:
    """The standard deviation a planted coefficient needs for the direction to carry `share` of the
    centred variance once added (`σ² = share / (1 − share) · total variance`)."""
    x = acts_ND.double()
    total = float((x - x.mean(0)).pow(2).sum(1).mean())
    return math.sqrt(share / (1 - share) * total)


def plant(acts_ND: torch.Tensor, u_D: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """`acts + g · scale · u` with one standard-normal `g` per row (drawn from `seed`): a signed,
    symmetric dense direction, positive on half the rows and negative on the other half."""
    g = torch.randn(acts_ND.shape[0], generator=torch.Generator().manual_seed(seed))
    return acts_ND + (g * scale)[:, None].to(acts_ND.dtype) * u_D.to(acts_ND.dtype)[None]


def planted_pair(sae: SAE, u_D: torch.Tensor) -> dict:
    """The latents whose decoder directions are closest to `+u` and to `−u`, those cosines, and the
    pair's antipodality `cos(enc) · cos(dec)`; `recovered` is the smallest of the three (1 for an
    exact antipodal pair on the planted direction)."""
    enc, dec = _unit_rows(sae.W_enc.detach().T.float()), _unit_rows(sae.W_dec.detach().float())
    cos = dec @ (u_D.float() / u_D.float().norm())
    i, j = int(cos.argmax()), int(cos.argmin())
    s = float((enc[i] @ enc[j]) * (dec[i] @ dec[j])) if i != j else 0.0
    return {"latent +u": i, "cos +u": float(cos[i]), "latent −u": j, "cos −u": float(-cos[j]), "s": s,
            "recovered": min(float(cos[i]), float(-cos[j]), s)}


# --------------------------------------------------------------------------- ablate and retrain, seed stability


def ablation_bases(W_dec_FD: torch.Tensor, rates_F: torch.Tensor, dense_K: torch.Tensor, rank_rtol: float,
                   dense_threshold: float, seed: int) -> dict[str, torch.Tensor]:
    """The bases projected out before retraining: 'ablate-dense', the span of the dense decoder
    directions (rank rule `rank_rtol`), and 'ablate-control', the span of as many random sparse
    latents' directions as that rank (the control)."""
    W_dec = W_dec_FD.detach()
    dense_basis = subspace_basis(W_dec[dense_K], rank_rtol)
    ctrl = random_sparse(rates_F, dense_basis.shape[0], dense_threshold, seed)
    return {"ablate-dense": dense_basis, "ablate-control": subspace_basis(W_dec[ctrl], 1e-6)}


def ablation_table(retrained: pd.DataFrame, originals: dict[int, dict], bases: dict[tuple[int, str, int], torch.Tensor],
                   dense_threshold: float) -> pd.DataFrame:
    """One row per ablated (layer, seed): dense latents of that seed's original SAE (`originals[seed]`:
    {'dense', 'fvu'}), the dimension removed, the dense latents of the SAEs retrained (same seed)
    after the dense-span and the control ablations, and their FVUs."""
    key, rows = f"dense@{dense_threshold}", []
    for L, _, s in [k for k in bases if k[1] == "ablate-dense"]:
        pick = {v: retrained[(retrained.layer == L) & (retrained.variant == v) & (retrained.seed == s)].iloc[0]
                for v in ("ablate-dense", "ablate-control")}
        rows.append({"layer": L, "seed": s, "dense (original)": originals[s]["dense"],
                     "dimension removed": bases[(L, "ablate-dense", s)].shape[0],
                     "dense after dense-span ablation": int(pick["ablate-dense"][key]),
                     "dense after control ablation": int(pick["ablate-control"][key]),
                     "FVU original": float(originals[s]["fvu"]), "FVU dense-ablated": float(pick["ablate-dense"].fvu),
                     "FVU control": float(pick["ablate-control"].fvu)})
    return pd.DataFrame(rows)


def seed_stability(saes: dict[int, SAE], others: dict[int, SAE], eval_acts: dict[int, torch.Tensor],
                   rates: dict[int, torch.Tensor], dense_idx: dict[int, torch.Tensor], dense_threshold: float,
                   match_cos: float, n_sparse: int, seeds: tuple[int, int]) -> pd.DataFrame:
    """For each layer of `others` (SAEs of the second seed): dense counts of both seeds and the
    share of dense (and of random sparse) latents with a counterpart above `match_cos` in the other."""
    seed, second = seeds
    rows = []
    for L, other in others.items():
        o_dense = torch.nonzero(evaluate_sae(other, eval_acts[L])["density"] > dense_threshold).flatten()
        mine = saes[L].W_dec[dense_idx[L]]
        sparse = saes[L].W_dec[random_sparse(rates[L], n_sparse, dense_threshold, seed)]
        rows.append({"layer": L, f"dense (seed {seed})": len(dense_idx[L]), f"dense (seed {second})": len(o_dense),
                     "counterpart among all latents": match_share(mine, other.W_dec, match_cos),
                     "counterpart among dense latents": match_share(mine, other.W_dec[o_dense], match_cos),
                     "sparse latents: counterpart among all": match_share(sparse, other.W_dec, match_cos)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the taxonomy


LABELS = ["position", "context binding", "entropy / null space", "alphabet", "part of speech", "PCA", "unlabelled"]
"""Every label, in the order the tables and figures show them."""


@torch.no_grad()
def encode_latents(sae: SAE, acts_ND: torch.Tensor, latents_K: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Activations `[N, K]` of the chosen latents on every token, encoded `batch` tokens at a time."""
    return torch.cat([sae.encode(acts_ND[a:a + batch])[:, latents_K] for a in range(0, acts_ND.shape[0], batch)])


def label_latents(saes: dict[int, SAE], eval_acts: dict[int, torch.Tensor], groups: dict[int, dict[str, torch.Tensor]],
                  contexts: dict[int, LabelContext], thresholds: LabelThresholds, alphabet_top: int = 100) -> pd.DataFrame:
    """Every label each latent of `groups[layer][group]` earns, the evidence, and all its
    statistics: one row per (layer, group, latent)."""
    rows = []
    for L, by_group in groups.items():
        for g, idx in by_group.items():
            if not len(idx):
                continue
            f = encode_latents(saes[L], eval_acts[L], idx)
            for j, i in enumerate(idx.tolist()):
                st = label_stats(f[:, j], saes[L].W_dec[i].detach(), contexts[L], alphabet_top)
                labs = labels_for(st, thresholds)
                rows.append({"layer": L, "group": g, "latent": i, "labels": ", ".join(lab for lab, _ in labs),
                             "evidence": "; ".join(e for _, e in labs if e), **st})
    return pd.DataFrame(rows)


def label_shares(labels: pd.DataFrame, names: list[str] = LABELS) -> pd.DataFrame:
    """Per (layer, group, label): the share of latents with the label, and the stacked share
    (a latent with several labels counts 1/n for each), with the group's size n."""
    rows = []
    for (L, g), df in labels.groupby(["layer", "group"]) if len(labels) else []:
        split = df["labels"].str.split(", ")
        for lab in names:
            has = split.map(lambda ls: lab in ls)
            weight = split.map(lambda ls: (lab in ls) / len(ls))
            rows.append({"layer": L, "group": g, "label": lab, "share": float(has.mean()),
                         "stacked share": float(weight.mean()), "n": len(df)})
    return pd.DataFrame(rows, columns=["layer", "group", "label", "share", "stacked share", "n"])


def label_examples(labels: pd.DataFrame, saes: dict[int, SAE], eval_acts: dict[int, torch.Tensor],
                   ids_NT: torch.Tensor, tokenizer, n_contexts: int, names: list[str] = LABELS,
                   rows: dict[int, torch.Tensor] | None = None) -> pd.DataFrame:
    """The top-activating held-out contexts of the first dense latent (shallowest layer first) to
    earn each label: one row per (label, rank). `rows[layer]`: the cache row of each of
    `eval_acts[layer]`'s rows (`HeldOutTokens.row_N` of `held_out_content`); None: every row."""
    out = []
    dense_labels = labels[labels.group == "dense"] if len(labels) else labels
    for lab in names:
        hit = dense_labels[dense_labels["labels"].str.split(", ").map(lambda ls: lab in ls)] if len(dense_labels) else dense_labels
        if not len(hit) or not n_contexts:
            continue
        row = hit.iloc[0]
        L, i = int(row.layer), int(row.latent)
        act = encode_latents(saes[L], eval_acts[L], torch.tensor([i]))[:, 0]
        for rank, text in enumerate(top_contexts(act, ids_NT, tokenizer, n_contexts,
                                                 rows_N=None if rows is None else rows[L])):
            out.append({"label": lab, "layer": L, "latent": i, "evidence": row.evidence, "rank": rank + 1, "context": text})
    return pd.DataFrame(out, columns=["label", "layer", "latent", "evidence", "rank", "context"])


# --------------------------------------------------------------------------- ours vs the paper (each rule fixed before the run)


def density_claims(counts: dict[int, int], d_sae: int, k: int, dense_threshold: float) -> list[dict]:
    """Paper-comparison row: dense latents exist ('yes' = at every studied layer)."""
    n_dense = sum(counts.values())
    return [{"claim": f"SAEs have dense latents (firing on > {dense_threshold:.0%} of tokens)",
             "metric": f"dense latents per layer ({d_sae} latents, TopK k={k})", "paper": "~150 of 16k (Gemma Scope, Gemma 2 2B)",
             "ours": ", ".join(f"L{L}: {c}" for L, c in counts.items()),
             "held": "yes" if all(counts.values()) else "partly" if n_dense else "no",
             "note": "'yes' = every studied layer has some; width and model differ from the paper's"}]


def antipodal_claims(anti: Antipodality, antipodal_threshold: float, rank_rtol: float) -> list[dict]:
    """Paper-comparison rows: dense latents are antipodal, and their subspace is half as wide as the set."""
    def pooled(group: str) -> float:
        v = anti.scores[anti.scores.group == group].s
        return float((v > antipodal_threshold).mean()) if len(v) else float("nan")

    n_dense, rank = int(anti.summary["dense"].sum()), int(anti.summary["dense subspace rank"].sum())
    sd, ss, si = pooled("dense"), pooled("sparse"), pooled("random init")
    return [{"claim": f"dense latents are antipodal (s > {antipodal_threshold})",
             "metric": "share of dense latents with s above the threshold (pooled over layers)", "paper": "most (> 0.9 typical)",
             "ours": f"{sd:.2f} (sparse {ss:.2f}, random init {si:.2f})",
             "held": "yes" if sd >= 0.5 and sd > ss else "partly" if sd > ss else "no",
             "note": "'yes' = at least half, and more than the sparse latents; "
                     + (f"{len(anti.pairs)} dense-dense pairs" if n_dense else "no dense latents")},
            {"claim": "antipodal pairs reconstruct one direction: the dense subspace is about half as wide as the dense set",
             "metric": f"rank of dense decoder directions / dense latents (rtol {rank_rtol})", "paper": "~0.5",
             "ours": f"{rank}/{n_dense}" + (f" = {rank / n_dense:.2f}" if n_dense else ""),
             "held": "yes" if n_dense and rank / n_dense <= 0.6 else "partly" if n_dense and rank < n_dense else "no",
             "note": "'yes' = at most 0.6"}]


def sidedness_claims(geometry: pd.DataFrame, two_sided_share: float) -> list[dict]:
    """Paper-comparison row (our check of the pairs' premise): dense latents sit on two-sided
    directions ('yes' = at least half of them, pooled over layers)."""
    if not len(geometry):
        return []
    share = float(geometry["two-sided"].astype(bool).mean())
    by = geometry.groupby("layer")["two-sided"].apply(lambda v: v.astype(bool).mean())
    return [{"claim": "(our check) dense latents lie on two-sided directions, as an antipodal pair needs",
             "metric": f"share of dense latents whose smaller side of x − b_dec holds ≥ {two_sided_share:.0%} of rows",
             "paper": "implied by the pairs", "ours": f"{share:.2f} of {len(geometry)} ("
             + ", ".join(f"L{L} {v:.2f}" for L, v in by.items()) + ")",
             "held": "yes" if share >= 0.5 else "partly" if share > 0 else "no", "note": "'yes' = at least half"}]


def ablation_claims(abl: pd.DataFrame) -> list[dict]:
    """Paper-comparison rows: the dense-span ablation removes the dense latents, the control does not."""
    if not len(abl):
        return [{"claim": "projecting out the dense subspace and retraining removes the dense latents",
                 "metric": "dense latents before -> after", "paper": "~150 -> ~10", "ours": "no dense latents to ablate",
                 "held": "not tested", "note": ""}]
    before, after, ctrl = abl["dense (original)"].sum(), abl["dense after dense-span ablation"].sum(), abl["dense after control ablation"].sum()
    each = all(r["dense after dense-span ablation"] <= 0.25 * r["dense (original)"] for _, r in abl.iterrows())
    keep = all(r["dense after control ablation"] >= 0.75 * r["dense (original)"] for _, r in abl.iterrows())
    return [{"claim": "projecting out the dense subspace and retraining removes the dense latents",
             "metric": "dense latents before -> after, summed over " + ", ".join(
                 f"L{int(r.layer)} seed {int(r.seed)}" for r in abl.itertuples()),
             "paper": "~150 -> ~10", "ours": f"{before} -> {after}",
             "held": "yes" if each else "partly" if after < before else "no", "note": "'yes' = at most a quarter remain at each layer"},
            {"claim": "the control (an equal-dimension span of random sparse latents) leaves the dense latents",
             "metric": "dense latents before -> after control ablation", "paper": "~150 -> ~145", "ours": f"{before} -> {ctrl}",
             "held": "yes" if keep else "partly" if ctrl > after else "no", "note": "'yes' = at least three quarters remain at each layer"}]


def taxonomy_claims(labels: pd.DataFrame, shares: pd.DataFrame, layers: list[int]) -> list[dict]:
    """Paper-comparison rows: about half the dense latents unlabelled, labels follow depth, and
    (our control) dense latents earn labels more often than random sparse ones; none without labels."""
    dl = labels[labels.group == "dense"] if len(labels) else labels
    if not len(dl):
        return []
    unl = float((dl["labels"] == "unlabelled").mean())
    dense_shares = shares[shares.group == "dense"]
    peak = {lab: dense_shares[dense_shares.label == lab].sort_values("share").iloc[-1]
            for lab in ("position", "entropy / null space") if (dense_shares[dense_shares.label == lab].share > 0).any()}
    ok = ["position" in peak and int(peak["position"].layer) == min(layers),
          "entropy / null space" in peak and int(peak["entropy / null space"].layer) in sorted(layers)[-2:]]
    ctl = labels[labels.group == "random sparse"]
    lab_d, lab_c = float((dl["labels"] != "unlabelled").mean()), float((ctl["labels"] != "unlabelled").mean()) if len(ctl) else float("nan")
    return [{"claim": "about half of the dense latents earn no label", "metric": "share of dense latents unlabelled (all layers)",
             "paper": "~0.5", "ours": f"{unl:.2f} of {len(dl)}", "held": "yes" if 0.3 <= unl <= 0.7 else "no",
             "note": "'yes' = between 0.3 and 0.7; thresholds as stated in the taxonomy section"},
            {"claim": "labels follow depth: position early, entropy / null space in the last layers",
             "metric": "layer where each label's share of dense latents peaks", "paper": "position early; entropy last",
             "ours": ", ".join(f"{lab}: L{int(r.layer)} ({r.share:.2f})" for lab, r in peak.items()) or "neither label earned",
             "held": "yes" if all(ok) else "partly" if any(ok) else "no", "note": "'partly' = one of the two"},
            {"claim": "(control the paper lacked) dense latents earn labels more often than random sparse latents",
             "metric": "share labelled: dense vs random sparse (same thresholds, same count per layer)", "paper": "not measured",
             "ours": f"{lab_d:.2f} vs {lab_c:.2f}", "held": "yes" if lab_d > lab_c else "no", "note": ""}]


def stability_claims(stab: pd.DataFrame, seed: int, second_seed: int, match_cos: float) -> list[dict]:
    """Paper-comparison row (our control): the share of dense latents with a counterpart in the
    second seed ('yes' = at least half); none when no layer was retrained."""
    if not len(stab):
        return []
    m = float((stab["counterpart among all latents"] * stab[f"dense (seed {seed})"]).sum() / max(1, stab[f"dense (seed {seed})"].sum()))
    return [{"claim": "(control the paper lacked) the dense set is stable across seeds",
             "metric": f"share of dense latents with a counterpart (decoder cos > {match_cos}) in seed {second_seed}",
             "paper": "not measured", "ours": f"{m:.2f}", "held": "yes" if m >= 0.5 else "no",
             "note": "sparse latents for comparison: " + ", ".join(
                 f"L{int(r.layer)} {r['sparse latents: counterpart among all']:.2f}" for _, r in stab.iterrows())}]


# --------------------------------------------------------------------------- preconditions (measured before the claims they gate)

GATES = {"splice": ("",),
         "calibration": ("dense latents are antipodal", "antipodal pairs reconstruct", "(our check) dense latents lie on two-sided"),
         "ablation": ("projecting out the dense subspace", "the control (an equal-dimension span"),
         "converged": ("(control the paper lacked) the dense set is stable",)}
"""Which claims each precondition gates, by the start of the claim's text ('' = every claim)."""


def _gates(claims: list[dict], starts: tuple[str, ...]) -> str:
    return " ".join(str(i + 1) for i, c in enumerate(claims) if any(c["claim"].startswith(p) for p in starts))


def preconditions(claims: list[dict], delta_ce: dict[int, float], max_delta_ce: float, calibration: dict,
                  antipodal_threshold: float, drop: tuple[float, str], converge_tol: float,
                  ablate_dense: dict[int, int], min_ablate_dense: int) -> list[dict]:
    """The premises of the claims, each with its threshold (parameters fixed before the run):
    every main SAE splices in with ΔCE at most `max_delta_ce` (gates every claim); the planted
    signed dense direction comes back as an antipodal pair (`planted_pair`'s `recovered` above
    `antipodal_threshold`; gates the antipodality claims); the SAEs had converged at the chosen
    epochs (relative held-out FVU drop to the next probe below `converge_tol`; gates seed
    stability); each seed's original SAE at the ablated layer has at least `min_ablate_dense` dense
    latents (gates ablate-and-retrain)."""
    worst = max(delta_ce, key=lambda L: delta_ce[L]) if delta_ce else None
    rows = [{"precondition": "every SAE splices into the model without breaking it",
             "measure": "largest held-out ΔCE over the main SAEs (nats)" + (f", at L{worst}" if worst is not None else ""),
             "threshold": f"<= {max_delta_ce}", "value": f"{delta_ce[worst]:.3f}" if worst is not None else "nan",
             "met": "yes" if worst is not None and delta_ce[worst] <= max_delta_ce else "no",
             "gates": _gates(claims, GATES["splice"])},
            {"precondition": "calibration: a planted signed dense direction comes back as an antipodal pair",
             "measure": "min(decoder cos with +u, with −u, the pair's s)", "threshold": f"> {antipodal_threshold}",
             "value": f"{calibration['recovered']:.3f}",
             "met": "yes" if calibration["recovered"] > antipodal_threshold else "no",
             "gates": _gates(claims, GATES["calibration"])},
            {"precondition": "the SAEs had converged at the chosen epochs",
             "measure": f"relative drop of held-out FVU (mean over seeds), {drop[1]}", "threshold": f"< {converge_tol}",
             "value": f"{drop[0]:.4f}", "met": "yes" if drop[0] < converge_tol else "no",
             "gates": _gates(claims, GATES["converged"])},
            {"precondition": "the ablated layer has dense latents to remove, in every seed",
             "measure": "fewest dense latents of an original SAE at the ablated layer ("
                        + ", ".join(f"seed {s}: {n}" for s, n in ablate_dense.items()) + ")",
             "threshold": f">= {min_ablate_dense}", "value": str(min(ablate_dense.values(), default=0)),
             "met": "yes" if min(ablate_dense.values(), default=0) >= min_ablate_dense else "no",
             "gates": _gates(claims, GATES["ablation"])}]
    return rows
