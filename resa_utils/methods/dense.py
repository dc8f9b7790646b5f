"""Paper 3's analysis of dense SAE latents: firing rates and the dense set, antipodal pairs, the
dense subspace and its projection (ablate-and-retrain), and the statistics that label a dense
latent (position, context binding, entropy / null space, alphabet, part of speech, PCA).

Every threshold is an argument (no official code exists; the paper's values are defaults in
`LabelThresholds`), and every label comes with the statistic that earned it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import torch

from resa_utils.core.stats import _ranks, pearson, spearman

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
    word-start markers stripped; tokens without a letter count against), and that letter."""
    logits = W_U_VD.float() @ w_D.detach().float()  # float32: a [V, D] copy in float64 per latent is slow
    idx = torch.topk(logits, min(top, len(logits))).indices.tolist()
    firsts = []
    for i in idx:
        s = token_strings[i].lstrip(" Ġ▁")
        firsts.append(s[0].lower() if s and s[0].isalpha() else "")
    letters = [f for f in firsts if f]
    if not letters:
        return 0.0, ""
    best = max(set(letters), key=letters.count)
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


def choose_layers(counts: dict[int, int], n: int) -> list[int]:
    """The `n` layers with the most dense latents (ties go to the deeper layer), ascending;
    layers without any dense latent are never chosen (ablating nothing tests nothing)."""
    ranked = sorted((c, layer) for layer, c in counts.items() if c > 0)[::-1]
    return sorted(layer for _, layer in ranked[:n])


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
                 width: int = 8) -> list[str]:
    """The `n` highest activations' contexts: `width` tokens before, the token in [[ ]], and
    two after. Rows of `act_N` are the tokens of `ids_NT` without each window's first (BOS)."""
    T = ids_NT.shape[1] - 1
    out = []
    for r in torch.topk(act_N, min(n, len(act_N))).indices.tolist():
        w, t = divmod(r, T)
        t += 1
        ids = ids_NT[w]
        before = tokenizer.decode(ids[max(1, t - width):t])
        after = tokenizer.decode(ids[t + 1:t + 3])
        out.append(f"{act_N[r]:.2f}: …{before}[[{tokenizer.decode(ids[t:t + 1])}]]{after}…".replace("\n", "⏎"))
    return out
