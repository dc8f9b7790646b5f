import pytest
import torch

from resa_utils.sae import SAE, SAEConfig, TrainConfig, evaluate_sae, fvu, train_sae
from resa_utils.sae.kernels import topk_forward
from resa_utils.sae.train import make_trainer
from resa_utils.data.synthetic import SyntheticConfig, make_dataset, recovery_rate


def _data(n=4096, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 3.0


# ----------------------------------------------------------------------------- metrics
def test_fvu_closed_forms():
    x = _data()
    assert fvu(x, x) == 0.0
    assert fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0, abs=1e-9)
    assert fvu(x, torch.zeros_like(x)) > 1.0  # variance is around the mean, not zero


def test_evaluate_topk_l0_equals_k_and_dead_fraction():
    cfg = SAEConfig(d_in=16, d_sae=64, architecture="topk", k=5)
    sae = SAE(cfg).init_weights(torch.Generator().manual_seed(0))
    ev = evaluate_sae(sae, _data())
    assert ev["l0"] == pytest.approx(5.0)
    with torch.no_grad():
        sae.W_enc[:, :10] = 0.0
        sae.b_enc[:10] = -1e3  # latents 0..9 can never win a top-k slot
    ev = evaluate_sae(sae, _data())
    assert ev["dead_frac"] >= 10 / 64 and (ev["density"][:10] == 0).all()


def test_bad_configs_name_the_parameter():
    with pytest.raises(ValueError, match="k=65 must be in 1..d_sae=64"):
        SAEConfig(d_in=16, d_sae=64, architecture="topk", k=65)
    with pytest.raises(ValueError, match="k=100 must be in 1..d_sae=64"):
        TrainConfig(method="topk", d_sae=64, k=100)
    with pytest.raises(ValueError, match="method 'jumprelu' unknown"):
        TrainConfig(method="jumprelu")
    with pytest.raises(ValueError, match="gba_p_high"):
        TrainConfig(method="gba", gba_p_high=0.001, gba_p_low=0.1)


def test_nan_training_data_is_refused_before_training():
    x = _data()
    x[7, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        train_sae(x, TrainConfig(method="topk", d_sae=32, k=4, n_tokens=1024, batch_size=256),
                  progress=False)


# ----------------------------------------------------------------------------- kernels
def test_sparse_topk_kernel_matches_dense_autograd():
    g = torch.Generator().manual_seed(0)
    B, D, F, K = 64, 12, 48, 6
    x = torch.randn(B, D, generator=g)
    params = [torch.randn(D, F, generator=g), torch.randn(F, generator=g) * 0.1,
              torch.randn(F, D, generator=g), torch.randn(D, generator=g) * 0.1]
    sparse_p = [p.clone().requires_grad_() for p in params]
    dense_p = [p.clone().requires_grad_() for p in params]
    x_hat, *_ = topk_forward(x, *sparse_p, K)
    target = torch.randn(B, D, generator=g)
    ((x_hat - target) ** 2).sum().backward()
    W_enc, b_enc, W_dec, b_dec = dense_p
    pre = (x - b_dec) @ W_enc + b_enc
    top = pre.topk(K, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    x_hat_dense = f @ W_dec + b_dec
    ((x_hat_dense - target) ** 2).sum().backward()
    assert torch.allclose(x_hat, x_hat_dense, atol=1e-5)
    for s, d in zip(sparse_p, dense_p):
        assert torch.allclose(s.grad, d.grad, rtol=1e-4, atol=1e-4), (s.grad - d.grad).abs().max()


@pytest.mark.parametrize("n_dead", [5, 200])  # fewer dead latents than aux_k, and more
def test_dense_auxk_over_dead_latents_matches_the_sparse_path(monkeypatch, n_dead):
    from resa_utils.sae import topk as topk_mod
    from resa_utils.sae.train import make_trainer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    cfg = TrainConfig(method="topk", d_sae=1024, k=4, aux_k=8, dead_tokens=10, n_tokens=1024, batch_size=128)
    grads = []
    for ratio in (10**9, 0):  # dense over the dead latents, then sparse over all
        monkeypatch.setattr(topk_mod, "AUX_DENSE_MAX_RATIO", ratio)
        tr = make_trainer(cfg, 16)
        tr.setup(x)
        tr.tokens_since_fired[torch.randperm(1024, generator=torch.Generator().manual_seed(1))[:n_dead]] = 100
        loss, out = tr.loss(x, stats=True)
        assert out["auxk"] > 0
        tr.sae.zero_grad()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in tr.sae.parameters()]))
    (l_dense, g_dense), (l_sparse, g_sparse) = grads
    assert torch.allclose(l_dense, l_sparse, rtol=1e-5)
    for a, b in zip(g_dense, g_sparse):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("method,kw", [("topk", {"k": 4}), ("topk", {"k": 4, "d_sae": 1024}),
                                        ("relu_l1", {"l1_coefficient": 1e-3}), ("gba", {}),
                                        ("gba", {"gba_activation": "jumprelu"})])
def test_each_method_learns_and_keeps_unit_decoder(method, kw):
    x = _data()
    cfg = TrainConfig(**{"method": method, "d_sae": 64, "n_tokens": 40_000, "batch_size": 256,
                         "lr": 3e-3, **kw})
    result = train_sae(x, cfg, progress=False)
    ev = evaluate_sae(result.sae, x)
    assert ev["fvu"] < 0.5, ev["fvu"]
    assert result.history[0]["fvu"] > result.history[-1]["fvu"]
    if method != "gba":  # GBA exports W_dec rows scaled by its per-latent output scale
        scale = result.sae.cfg.metadata["input_scale_folded"]
        norms = result.sae.W_dec.norm(dim=1) * scale
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


def test_gba_biases_get_no_gradient_and_stay_in_range():
    x, _ = make_dataset(SyntheticConfig(n_features=32, d=16, sparsities=(2,), n_samples=8000))
    cfg = TrainConfig(method="gba", d_sae=64, n_tokens=51_200, batch_size=256, gba_interval=10)
    tr = make_trainer(cfg, 16)
    tr.setup(x[:4096])
    assert all(p is not tr.sae.b_enc for p in tr.trainable_parameters())
    start = tr.sae.b_enc.clone()
    for i in range(cfg.n_steps):
        tr.train_step(x[(i * 256) % 7936:(i * 256) % 7936 + 256])
    b = tr.sae.b_enc
    assert not torch.equal(b, start)
    assert (b <= 0).all() and (b >= -1).all()


@pytest.mark.parametrize("tied", [True, False])
def test_gba_jumprelu_export_matches_training_latents(tied):
    """The exported JumpReLU SAE (threshold −b, no encoder bias, input scale folded) gives the
    training-time latents w·x · 1[w·x + b > 0] and reconstruction on raw activations."""
    x = _data() * 30
    cfg = TrainConfig(method="gba", d_sae=64, n_tokens=256 * 40, batch_size=256, gba_interval=5,
                      gba_activation="jumprelu", gba_tied=tied, lr=3e-3)
    tr = make_trainer(cfg, 16)
    tr.setup(x[:4096])
    for i in range(cfg.n_steps):
        a = (i * 256) % (len(x) - 256)
        tr.train_step(x[a:a + 256])
    assert (tr.sae.b_enc < 0).any()  # the biases moved, so the gate is not trivial
    out = tr.export()
    assert out.cfg.architecture == "jumprelu" and torch.equal(out.b_enc, torch.zeros(64))
    assert torch.allclose(out.threshold, -tr.sae.b_enc)
    xs = x[:512] * tr.input_scale
    with torch.no_grad():
        W_enc = tr.sae.W_dec.t() if tied else tr.sae.W_enc
        pre = torch.addmm(tr.sae.b_enc, xs - tr.sae.b_dec, W_enc)
        f = (pre - tr.sae.b_enc) * (pre > 0)
        x_hat = tr.sae.decode(f * tr.out_scale_F if tied else f)
        assert torch.allclose(out.encode(x[:512]), f, atol=1e-4)
        assert torch.allclose(out(x[:512]) * tr.input_scale, x_hat, atol=1e-3)
        loss_fvu = tr.loss(xs, True)[1]["fvu"]  # the trainer's own forward, not the formula above
        assert float(loss_fvu) == pytest.approx(float(tr.batch_fvu(xs, out(x[:512]) * tr.input_scale)), abs=1e-4)
        assert ((out.encode(x[:512]) > 0) & (out.encode(x[:512]) <= out.threshold)).sum() == 0  # a jump at the threshold
    with pytest.raises(ValueError, match="gba_activation"):
        TrainConfig(method="gba", gba_activation="gelu")


def test_gba_recovers_features_on_an_easy_case():
    """Paper 5's claim at small scale: 32 features in 24 dims, 2 active per sample."""
    syn = SyntheticConfig(n_features=32, d=24, sparsities=(2,), n_samples=40_000, coef_low=0.2)
    x, features = make_dataset(syn)
    cfg = TrainConfig(method="gba", d_sae=128, n_tokens=400_000, batch_size=512,
                      gba_gamma=0.05, gba_interval=20)
    sae = train_sae(x, cfg, progress=False).sae
    assert recovery_rate(features, sae.W_dec.detach(), (0.9,))[0.9] >= 0.95


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    x = _data()
    for method in ("topk", "gba"):
        cfg = TrainConfig(method=method, d_sae=32, k=4, n_tokens=256 * 20, batch_size=256,
                          checkpoint_every=7, lr=1e-3, gba_interval=5)
        full = train_sae(x, cfg, progress=False).sae
        ckpt = tmp_path / method
        # a run "killed" after step 14: train a shorter config, then copy its step-14 checkpoint
        first = make_trainer(cfg, 16)
        first.setup(x[:16_384])
        from resa_utils.sae.trainer import batch_stream
        stream = batch_stream(x, cfg.batch_size, cfg.seed)
        for _ in range(14):
            first.train_step(next(stream))
        first.save_checkpoint(ckpt)
        resumed = train_sae(x, cfg, checkpoint_dir=ckpt, progress=False).sae
        for name, p in full.state_dict().items():
            assert torch.allclose(p, resumed.state_dict()[name], atol=1e-6), (method, name)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    x = _data()
    cfg = TrainConfig(method="topk", d_sae=32, k=4, n_tokens=256 * 4, batch_size=256)
    train_sae(x, cfg, checkpoint_dir=tmp_path, progress=False)
    other = TrainConfig(method="topk", d_sae=32, k=5, n_tokens=256 * 4, batch_size=256)
    with pytest.raises(ValueError, match="another TrainConfig"):
        train_sae(x, other, checkpoint_dir=tmp_path, progress=False)


# ----------------------------------------------------------------------------- io
@pytest.mark.parametrize("method", ["topk", "gba"])
def test_save_load_roundtrip_and_input_scale_fold(tmp_path, method):
    x = _data() * 50  # far from unit norm: the folded scale matters
    sae = train_sae(x, TrainConfig(method=method, d_sae=32, k=4, n_tokens=2048, batch_size=256),
                    progress=False).sae
    sae.save(tmp_path)
    again = SAE.load(tmp_path)
    assert torch.allclose(sae(x[:100]), again(x[:100]))
    assert again.cfg.metadata["method"] == method
    # the exported SAE reads raw activations: its FVU is as good as the training-space one
    assert evaluate_sae(again, x)["fvu"] < 0.9


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    SAE(SAEConfig(d_in=4, d_sae=8)).init_weights().save(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        SAE.load(tmp_path)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_sae_lens_loads_our_files(tmp_path, arch):
    sae_lens = pytest.importorskip("sae_lens")
    cfg = SAEConfig(d_in=16, d_sae=48, architecture=arch, k=5 if arch == "topk" else None,
                    metadata={"model_name": "tiny", "hook_name": "blocks.1.hook_resid_post"})
    ours = SAE(cfg).init_weights(torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours.b_enc.normal_(0, 0.1)
        if arch == "jumprelu":
            ours.threshold.uniform_(0, 0.5)
    ours.save(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    x = _data()[:64]
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-5)
        assert torch.allclose(theirs.decode(ours.encode(x)), ours(x), atol=1e-5)


def test_probes_score_the_sae_along_training_and_survive_resume(tmp_path):
    x = _data()
    cfg = TrainConfig(method="topk", d_sae=32, k=4, n_tokens=256 * 20, batch_size=256, lr=1e-3,
                      checkpoint_every=5)
    fvu = lambda sae: {"fvu": evaluate_sae(sae, x[:2000])["fvu"]}  # noqa: E731
    res = train_sae(x, cfg, progress=False, probe=fvu, probe_tokens=(1000, 2560, 9999_999))
    assert [p["tokens"] for p in res.probes] == [1024, 2560, 5120]  # first step reaching each, and the end
    assert res.probes[-1]["fvu"] == pytest.approx(fvu(res.sae)["fvu"], abs=1e-6)
    assert res.probes[0]["fvu"] > res.probes[-1]["fvu"]
    plain = train_sae(x, cfg, progress=False)
    assert res.history == plain.history and plain.probes == []  # probes leave training alone
    with pytest.raises(ValueError, match="may not be named"):
        train_sae(x, cfg, progress=False, probe=lambda sae: {"step": 1.0})
    # killed inside the step-10 probe (last checkpoint: step 5): the resumed run keeps the step-4
    # probe row from the checkpoint and writes the later ones once
    calls = []

    def dies_once(sae):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fvu(sae)

    with pytest.raises(KeyboardInterrupt):
        train_sae(x, cfg, progress=False, probe=dies_once, probe_tokens=(1000, 2560), checkpoint_dir=tmp_path)
    again = train_sae(x, cfg, progress=False, probe=dies_once, probe_tokens=(1000, 2560), checkpoint_dir=tmp_path)
    assert [p["tokens"] for p in again.probes] == [1024, 2560, 5120]
    assert again.probes[0]["fvu"] == pytest.approx(res.probes[0]["fvu"], abs=1e-6)


@pytest.mark.parametrize("jump", [False, True])
def test_sparse_relu_kernel_matches_dense_autograd(jump):
    from resa_utils.sae.kernels import relu_forward

    g = torch.Generator().manual_seed(1)
    B, D, F = 64, 12, 48
    x = torch.randn(B, D, generator=g)
    params = [torch.randn(D, F, generator=g), torch.randn(F, generator=g) - 1.0,
              torch.randn(F, D, generator=g), torch.randn(D, generator=g) * 0.1]
    sparse_p = [p.clone().requires_grad_() for p in params]
    dense_p = [p.clone().requires_grad_() for p in params]
    target = torch.randn(B, D, generator=g)
    x_hat, f_sum, pre = relu_forward(x, *sparse_p, jump=jump, max_active=1.0)  # always the kernel
    assert "SparseReLU" in type(x_hat.grad_fn).__name__  # the kernel ran, not dense autograd
    ((x_hat - target) ** 2).sum().add(0.3 * f_sum).backward()
    W_enc, b_enc, W_dec, b_dec = dense_p
    pre_d = (x - b_dec) @ W_enc + b_enc
    f = (pre_d - b_enc) * (pre_d > 0) if jump else pre_d.relu()
    assert 0.05 < float((pre_d > 0).float().mean()) < 0.6  # a sparse pattern, not all or nothing
    ((f @ W_dec + b_dec - target) ** 2).sum().add(0.3 * f.sum()).backward()
    assert torch.allclose(x_hat, f @ W_dec + b_dec, atol=1e-5) and torch.allclose(f_sum, f.sum(), rtol=1e-5)
    for name, s, d in zip(("W_enc", "b_enc", "W_dec", "b_dec"), sparse_p, dense_p):
        assert torch.allclose(s.grad, d.grad, rtol=1e-4, atol=1e-4), (name, (s.grad - d.grad).abs().max())


@pytest.mark.parametrize("method,kw", [("relu_l1", {"l1_coefficient": 1e-2}),
                                        ("gba", {}), ("gba", {"gba_tied": False}),
                                        ("gba", {"gba_activation": "jumprelu"}),
                                        ("gba", {"gba_train_b_dec": True, "gba_tied": False})])
def test_relu_trainers_sparse_path_matches_dense(monkeypatch, method, kw):
    """Wide ReLU-family SAEs take the sparse kernel when few latents fire: the loss and every
    gradient equal the dense path's (tied GBA: W_enc is W_decᵀ, so both grads meet in W_dec)."""
    from resa_utils.sae import kernels
    from resa_utils.sae.train import make_trainer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    cfg = TrainConfig(method=method, d_sae=1024, n_tokens=2048, batch_size=256, **kw)
    out = []
    for share in (1.0, -1.0):  # always sparse, then always dense
        monkeypatch.setattr(kernels, "RELU_SPARSE_MAX_ACTIVE", share)
        tr = make_trainer(cfg, 16)
        tr.setup(x)
        with torch.no_grad():  # GBA starts at b = 0 (half fire): push most latents off
            tr.sae.b_enc.fill_(-0.15)
        xs = x * tr.input_scale
        loss, st = tr.loss(xs, stats=True)
        assert 5 < float(st["l0"]) < 300  # of 1024 latents: a sparse pattern, neither none nor all
        params = [p for p in tr.trainable_parameters()]
        out.append((loss.detach(), torch.autograd.grad(loss, params)))
    (l_s, g_s), (l_d, g_d) = out
    assert torch.allclose(l_s, l_d, rtol=1e-5)
    for a, b in zip(g_s, g_d):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
