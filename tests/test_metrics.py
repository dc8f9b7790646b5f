import pytest
import torch

from resa_utils.lm.activations import resid_hook, splice
from resa_utils.sae import SAE, SAEConfig, ce_loss_recovered


def _identity_sae(d: int) -> SAE:
    """relu(x) - relu(-x) = x: a ReLU SAE that reconstructs perfectly."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_ce_loss_recovered_closed_forms(tiny_lm, tiny_windows):
    d = tiny_lm.d_model
    zero = SAE(SAEConfig(d_in=d, d_sae=4)).init_weights()
    with torch.no_grad():
        zero.W_dec.zero_()
    out = ce_loss_recovered(tiny_lm, {"perfect": _identity_sae(d), "zero": zero}, resid_hook(1),
                            tiny_windows[:4])
    assert out["perfect"]["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert out["perfect"]["ce_sae"] == pytest.approx(out["perfect"]["ce_clean"], abs=1e-4)
    assert out["zero"]["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    single = ce_loss_recovered(tiny_lm, _identity_sae(d), resid_hook(1), tiny_windows[:4])
    assert single["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)


def test_spliced_ce_matches_hand_computed_splices(tiny_lm, tiny_windows):
    from resa_utils.sae import spliced_ce

    d = tiny_lm.d_model
    zero = SAE(SAEConfig(d_in=d, d_sae=4)).init_weights()
    with torch.no_grad():
        zero.W_dec.zero_()
    w = tiny_windows[:4]
    out = spliced_ce(tiny_lm, {"perfect": (resid_hook(1), _identity_sae(d)), "zero@2": (resid_hook(2), zero)},
                     w, batch_size=3, entropy=True)
    V = tiny_lm.model.get_output_embeddings().weight.shape[0]

    def by_hand(fn=None) -> float:  # CE with `fn` replacing block 2's output everywhere, BOS included
        with torch.no_grad():
            if fn is None:
                logits = tiny_lm.model(input_ids=w).logits
            else:
                with splice(tiny_lm.model, resid_hook(2), fn):
                    logits = tiny_lm.model(input_ids=w).logits
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), w[:, 1:].reshape(-1)))

    assert out["ce"]["perfect"] == pytest.approx(out["ce"]["clean"], abs=1e-4)  # a perfect SAE changes nothing
    assert out["ce"]["clean"] == pytest.approx(by_hand(), abs=1e-4)
    no_bos = spliced_ce(tiny_lm, {"sae": (resid_hook(2), zero), "fn": (resid_hook(2), torch.zeros_like)}, w,
                        keep_bos=False, rule=None)["ce"]
    assert no_bos["sae"] == pytest.approx(by_hand(lambda a: zero(a.float()).to(a.dtype)), abs=1e-4)  # its own hook
    assert no_bos["fn"] == pytest.approx(by_hand(torch.zeros_like), abs=1e-4)  # a plain function splices too
    assert abs(no_bos["fn"] - out["ce"]["clean"]) > 1e-3  # and it did change the output
    assert out["per_window"]["clean"].shape == (4,)
    ent = out["entropy_NT"]
    assert ent.shape == w.shape and (ent >= 0).all() and (ent <= torch.log(torch.tensor(float(V))) + 1e-4).all()
    with pytest.raises(ValueError, match="d_in"):
        spliced_ce(tiny_lm, {"bad": (resid_hook(1), _identity_sae(d + 1))}, w)
    with pytest.raises(ValueError, match="named 'clean'"):
        spliced_ce(tiny_lm, {"clean": (resid_hook(1), _identity_sae(d))}, w)
