"""SAE quality metrics: FVU, L0, dead fraction, latent density, CE loss recovered."""

from __future__ import annotations

import copy
from typing import Callable

import torch

from resa_utils.lm.activations import splice
from resa_utils.lm.content import ContentRule, clean_positions, keep_clean
from resa_utils.sae.model import SAE


def fvu(x_ND: torch.Tensor, x_hat_ND: torch.Tensor) -> float:
    """‖x − x̂‖² / ‖x − mean(x)‖² over the whole set (variance around the mean, not zero)."""
    x, xh = x_ND.double(), x_hat_ND.double()
    return float((x - xh).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30))


@torch.no_grad()
def evaluate_sae(sae: SAE, acts_ND: torch.Tensor, batch_size: int = 4096) -> dict:
    """FVU, L0, dead fraction and per-latent density of `sae` on held-out `acts_ND`."""
    if acts_ND.shape[0] == 0:
        raise ValueError("evaluate_sae got no activations: pass a non-empty acts_ND")
    device = sae.W_enc.device
    err = torch.zeros((), dtype=torch.float64)
    l0_sum = 0.0
    fires_F = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for a in range(0, acts_ND.shape[0], batch_size):
        x = acts_ND[a:a + batch_size].to(device, torch.float32)
        f = sae.encode(x)
        x_hat = sae.decode(f)
        err += (x - x_hat).double().pow(2).sum().cpu()
        active = f > 0
        l0_sum += float(active.sum())
        fires_F += active.sum(0).double().cpu()
    x64 = acts_ND.double()
    total = (x64 - x64.mean(0)).pow(2).sum()
    n = acts_ND.shape[0]
    density = fires_F / n
    return {"fvu": float(err / total.clamp_min(1e-30)), "l0": l0_sum / n,
            "dead_frac": float((fires_F == 0).double().mean()), "density": density.float(),
            "n_tokens": n}


@torch.no_grad()
def ce_loss_recovered(lm, saes: SAE | dict[str, SAE], hook: str, windows_NT: torch.Tensor,
                      batch_size: int = 4, keep_bos: bool = True,
                      rule: ContentRule | None = ContentRule()) -> dict:
    """(CE_zero − CE_sae) / (CE_zero − CE_clean) with each SAE spliced in at `hook`.

    `saes` is one SAE (returns one dict) or `{name: SAE}` (returns `{name: dict}`; the clean and
    zero-ablated passes run once for all). The SAE replaces the activations at every position
    the content `rule` leaves out (special tokens, window starts, massive-norm rows: the SAE never
    learned them); with `rule=None`, every position but, with `keep_bos`, the BOS (see `spliced_ce`).
    """
    single = isinstance(saes, SAE)
    named = {"sae": saes} if single else dict(saes)
    zero = "\0zero-ablation"  # a key no caller's SAE name collides with
    ce = spliced_ce(lm, {zero: (hook, torch.zeros_like), **{n: (hook, s) for n, s in named.items()}},
                    windows_NT, batch_size, keep_bos, rule=rule)["ce"]
    denom = ce[zero] - ce["clean"]
    out = {name: {"ce_clean": ce["clean"], "ce_sae": ce[name], "ce_zero": ce[zero],
                  "ce_loss_recovered": (ce[zero] - ce[name]) / denom if denom else float("nan")}
           for name in named}
    return out["sae"] if single else out


@torch.no_grad()
def spliced_ce(lm, splices: dict[str, tuple[str, "SAE | Callable"]], windows_NT: torch.Tensor,
               batch_size: int = 4, keep_bos: bool = True, entropy: bool = False,
               rule: ContentRule | None = ContentRule()) -> dict:
    """Next-token CE (nats) of the clean model and of each `{name: (hook, sae)}` splice, each SAE
    replacing the activations at its own hook. One clean pass serves all splices, so SAEs at several layers
    cost one pass each. Returns `{"ce": {name: mean CE}, "per_window": {name: CE_N}}` with the
    clean pass under "clean", plus `"entropy_NT"`, the clean next-token entropy, if asked. A splice
    may also be any function of the activations (e.g. `torch.zeros_like` for zero ablation).
    Every splice leaves the clean activation at the positions the content `rule` leaves out
    (`lm.content.ContentRule`: special tokens, position 0, rows above the norm ratio times the
    batch's median): the dictionary never learned them. `rule=None`: the splice covers every
    position but, with `keep_bos`, a leading BOS."""
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    per_window: dict[str, list[torch.Tensor]] = {"clean": [], **{n: [] for n in splices}}
    ent: list[torch.Tensor] = []
    if "clean" in splices:
        raise ValueError("a splice may not be named 'clean' (the unspliced pass's name)")
    moved = {n: (h, _as_splice(lm, n, f)) for n, (h, f) in splices.items()}
    for a in range(0, windows_NT.shape[0], batch_size):
        ids = windows_NT[a:a + batch_size].to(lm.device)
        at_bos = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        if keep_bos and bos is not None:
            at_bos[:, 0] = ids[:, 0] == bos

        def reconstruct(fn):
            if rule is not None:
                return lambda acts: keep_clean(fn, clean_positions(acts, ids, lm.tokenizer, rule))(acts)
            return lambda acts: torch.where(at_bos[..., None], acts, fn(acts))

        def ce_of(logits):
            lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            return -lp.gather(-1, ids[:, 1:, None])[..., 0].mean(1).cpu()

        logits = lm.model(input_ids=ids, use_cache=False).logits
        per_window["clean"].append(ce_of(logits))
        if entropy:
            lp = torch.log_softmax(logits.float(), dim=-1)
            ent.append(-(lp.exp() * lp).sum(-1).cpu())
        del logits
        for name, (hook, sae) in moved.items():
            with splice(lm.model, hook, reconstruct(sae)):
                per_window[name].append(ce_of(lm.model(input_ids=ids, use_cache=False).logits))
    pw = {k: torch.cat(v) for k, v in per_window.items()}
    out = {"ce": {k: float(v.mean()) for k, v in pw.items()}, "per_window": pw}
    if entropy:
        out["entropy_NT"] = torch.cat(ent)
    return out


Splice = Callable[[torch.Tensor], torch.Tensor]


def _as_splice(lm, name: str, fn: "SAE | Splice") -> Splice:
    """An SAE (checked against the model's width, copied to its device, run in float32) or a
    plain function of the activations, as a function acts -> replacement."""
    if not isinstance(fn, SAE):
        return fn
    if fn.cfg.d_in != lm.d_model:
        raise ValueError(f"SAE {name!r} reads d_in={fn.cfg.d_in} but {lm.name} has d={lm.d_model}")
    sae = copy.deepcopy(fn).to(lm.device)  # leave the caller's SAE where it is
    return lambda acts: sae(acts.float()).to(acts.dtype)
