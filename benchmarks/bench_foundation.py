"""Foundation benchmarks for resa_utils: every number is measured in this run, and every ratio
is against a baseline measured in this same run (no stored reference numbers).

1. SAE training step (d=640, d_sae=8192, k=32, batch 4096, Adam, fp32): tokens/s of our
   sparse TopK trainer vs EleutherAI sparsify, SAELens and a plain dense PyTorch TopK, plus
   our ReLU-family trainers (relu_l1, gba with ReLU and with JumpReLU), and for them at a
   sparse firing pattern (encoder biases -0.1) the dense path against the sparse ReLU kernel.
   Methods run round-robin
   (one step each per round, so background load hits all alike); the median step time is
   reported. Achieved FLOP/s is divided by this machine's fp32 matmul peak, measured here as
   the best of two `torch.mm`s.
2. Harvest: `harvest()` at the middle layer vs a bare forward of a model truncated to that
   depth (inner model, no LM head); `harvest()` of four layers (early, middle, the last two)
   in one forward vs a bare forward to the deepest; the full forward with LM head for context.
3. Model load: `load_model("gemma-3-270m")` from its safetensors cache vs transformers'
   GGUF loader (full run only: the GGUF load takes 30-50 s).

Run:  python benchmarks/bench_foundation.py          # full, ~5-8 min on 2 cores
      python benchmarks/bench_foundation.py --quick  # < 2 min, tiny model for section 2
      python benchmarks/bench_foundation.py --tiny   # seconds: tiny sizes, 1 step (the tests run it)
Env:  BENCH_TINY=1 uses the tiny random model in section 2 and skips section 3.
Peer libraries (sae-lens, eai-sparsify) are optional: rows print 'not installed'.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

D, F, K, B = 640, 8192, 32, 4096
"""SAE sizes: input width, latents, active latents, tokens per step."""
N_SAMPLE = 16_384
REAL_MODEL, TINY_MODEL = "gemma-3-270m", "tiny-gemma3"

Step = Callable[[torch.Tensor], None]


@dataclass
class Goal:
    name: str
    value: float | None
    target: float
    unit: str = ""

    def line(self) -> str:
        if self.value is None:
            return f"{self.name}: skipped (goal >= {self.target:g}{self.unit})"
        verdict = "PASS" if self.value >= self.target else "BELOW"
        goal = f"goal >= {self.target:g}{self.unit}"
        return f"{self.name}: {self.value:.2f}{self.unit} ({goal}) {verdict}"


@dataclass
class Row:
    name: str
    step: Step | None
    flops: float | None = None
    """Useful FLOPs per step, when a FLOP fraction is reported for this row."""
    note: str = ""


# --------------------------------------------------------------------------- timing helpers


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_time(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(reps))


def matmul_rows() -> list[Row]:
    """fp32 `torch.mm` of the SAE encoder's shape [B,D]x[D,F] and of a square 2048^3: the
    faster one is this machine's peak. Timed inside the round-robin, under the same load."""

    def mm_row(m: int, k: int, n: int) -> Row:
        a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)

        def step(_x: torch.Tensor) -> None:
            torch.mm(a, b, out=c)

        return Row(f"mm [{m}x{k}]@[{k}x{n}]", step, 2 * m * k * n)

    return [mm_row(B, D, F), mm_row(2048, 2048, 2048)]


# --------------------------------------------------------------------------- SAE steppers


def ours_step(method: str, sample: torch.Tensor, bias: float | None = None,
              relu_path: str | None = None, **overrides) -> Step:
    """One training step of our trainer. `bias` sets every encoder bias after set-up (a
    ReLU-family SAE then fires on few latents, as after training); `relu_path` forces the ReLU
    kernel's 'sparse' or 'dense' path (default: its own switch)."""
    from resa_utils.sae import TrainConfig, kernels
    from resa_utils.sae.train import make_trainer

    cfg = TrainConfig(method=method, d_sae=F, k=K, batch_size=B, n_tokens=B * 1000, **overrides)
    tr = make_trainer(cfg, d_in=D)
    tr.setup(sample)
    if bias is not None:
        with torch.no_grad():
            tr.sae.b_enc.fill_(bias)
    share = {None: kernels.RELU_SPARSE_MAX_ACTIVE, "sparse": 1.0, "dense": -1.0}[relu_path]

    def step(x: torch.Tensor) -> None:
        saved, kernels.RELU_SPARSE_MAX_ACTIVE = kernels.RELU_SPARSE_MAX_ACTIVE, share
        try:
            tr.train_step(x)
        finally:
            kernels.RELU_SPARSE_MAX_ACTIVE = saved

    return step


def sparsify_step(sample: torch.Tensor) -> Step | None:
    """One step as `sparsify.Trainer.fit` does it (loss_fn='fvu', optimizer='adam', no AuxK)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a note about Triton
            from sparsify import SaeConfig, SparseCoder
    except ImportError:
        return None
    sae = SparseCoder(D, SaeConfig(num_latents=F, k=K))
    sae.b_dec.data = sample.mean(0)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (F / 2**14) ** 0.5)
    did_fire = torch.zeros(F, dtype=torch.bool)

    def step(x: torch.Tensor) -> None:
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=None, total_variance=total_variance)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        did_fire[out.latent_indices.flatten()] = True

    return step


def saelens_step(sparse_acts: bool) -> Step | None:
    """One step as `sae_lens.SAETrainer._train_step` does it (TopK, no dead latents).

    With sparse (COO) activations the default `rescale_acts_by_decoder_norm=True` fails in
    backward on CPU (no `aten::view` for SparseCPU), so that variant turns the rescale off.
    """
    try:
        from sae_lens.saes.sae import TrainStepInput
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    except ImportError:
        return None
    cfg = TopKTrainingSAEConfig(d_in=D, d_sae=F, k=K, use_sparse_activations=sparse_acts,
                                rescale_acts_by_decoder_norm=not sparse_acts)
    sae = TopKTrainingSAE(cfg)
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4)
    dead = torch.zeros(F, dtype=torch.bool)
    since_fired, freq = torch.zeros(F), torch.zeros(F)

    def step(x: torch.Tensor) -> None:
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0,
            is_logging_step=False))
        with torch.no_grad():
            firing = out.feature_acts.bool().float()
            fired = firing.sum(-2).bool()
            since_fired.add_(1)[fired.to_dense() if fired.is_sparse else fired] = 0
            freq.add_(firing.sum(0).to_dense() if firing.is_sparse else firing.sum(0))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step


def dense_topk_step(sample: torch.Tensor) -> Step:
    """Plain PyTorch TopK SAE: dense latents, dense decode, FVU loss, autograd, Adam."""
    gen = torch.Generator().manual_seed(0)
    W_enc = torch.nn.Parameter(torch.randn(D, F, generator=gen) / D**0.5)
    W_dec = torch.nn.Parameter(W_enc.detach().t() / W_enc.detach().t().norm(dim=1, keepdim=True))
    b_enc = torch.nn.Parameter(torch.zeros(F))
    b_dec = torch.nn.Parameter(sample.mean(0).clone())
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=2e-4)

    def step(x: torch.Tensor) -> None:
        pre = (x - b_dec) @ W_enc + b_enc
        top = pre.topk(K, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        x_hat = z @ W_dec + b_dec
        fvu = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        fvu.backward()
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))

    return step


def round_robin(rows: list[Row], batches: list[torch.Tensor], warmup: int,
                n: int) -> dict[str, float]:
    """Median seconds per step of each row, interleaving the rows step by step."""
    live = [r for r in rows if r.step is not None]
    times: dict[str, list[float]] = {r.name: [] for r in live}
    for i in range(warmup + n):
        x = batches[i % len(batches)]
        for r in live:
            dt = timed(lambda: r.step(x))
            if i >= warmup:
                times[r.name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}


# --------------------------------------------------------------------------- section 1


def bench_sae(quick: bool) -> list[Goal]:
    warmup, n = (1, 2) if quick else (2, 6)
    print(f"\n== 1. SAE training step: d={D}, d_sae={F}, k={K}, batch={B}, Adam, fp32; "
          f"median of {n} steps after {warmup} warmup, round-robin ==")
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(N_SAMPLE, D, generator=gen) + torch.randn(D, generator=gen)
    batches = list(sample.split(B))
    sparse_flops = 2 * B * D * F + 10 * B * K * D
    dense_flops = 10 * B * D * F
    rows = [
        Row("resa topk (sparse, AuxK off)", ours_step("topk", sample, aux_coefficient=0.0),
            sparse_flops),
        Row("resa topk (AuxK, all dead)", ours_step("topk", sample, dead_tokens=1),
            note=f"dead after 1 silent token: aux_k = d_in//2 = {D // 2} dead latents every step"),
        Row("sparsify SparseCoder", sparsify_step(sample)),
        Row("SAELens TopK (dense acts)", saelens_step(sparse_acts=False)),
        Row("SAELens TopK (sparse acts)", saelens_step(sparse_acts=True),
            note="rescale_acts_by_decoder_norm off"),
        Row("dense PyTorch TopK", dense_topk_step(sample), dense_flops),
        Row("resa relu_l1", ours_step("relu_l1", sample), dense_flops),
        Row("resa gba (tied)", ours_step("gba", sample), dense_flops),
        Row("resa gba (tied, JumpReLU)", ours_step("gba", sample, gba_activation="jumprelu"), dense_flops),
        Row("resa gba (tied, b=-0.1) dense", ours_step("gba", sample, bias=-0.1, relu_path="dense"),
            dense_flops, note="b = -0.1: few latents fire, as GBA's ladder makes them"),
        Row("resa gba (tied, b=-0.1) sparse", ours_step("gba", sample, bias=-0.1, relu_path="sparse"),
            note="sparse ReLU kernel; compare with the row above"),
        Row("resa relu_l1 (b=-0.1) dense", ours_step("relu_l1", sample, bias=-0.1, relu_path="dense"),
            dense_flops),
        Row("resa relu_l1 (b=-0.1) sparse", ours_step("relu_l1", sample, bias=-0.1, relu_path="sparse")),
        Row("resa crosscoder (2 x d/2)", ours_step("crosscoder", sample), dense_flops,
            note="two models of width d/2: the same matmuls as relu_l1 above, plus decoder norms"),
        Row("resa crosscoder BatchTopK", ours_step("crosscoder", sample, crosscoder_activation="batchtopk"),
            dense_flops, note="k x B kept per batch by activation x decoder norm; compare with the row above"),
    ]
    mms = matmul_rows()
    secs = round_robin(mms + rows, batches, warmup, n)
    ours = secs[rows[0].name]
    peaks = [r.flops / secs[r.name] for r in mms]
    peak = max(peaks)
    print("fp32 matmul: " + ", ".join(f"{r.name} {p / 1e9:.1f} GFLOP/s" for r, p in zip(mms, peaks))
          + f" -> peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'method':<30}{'ms/step':>9}{'tok/s':>10}{'ours/this':>11}{'GFLOP/s':>9}{'of peak':>9}")
    for r in rows:
        if r.step is None:
            print(f"{r.name:<30}{'not installed':>20}")
            continue
        s = secs[r.name]
        flop = (f"{r.flops / s / 1e9:>9.1f}{r.flops / s / peak:>9.2f}" if r.flops
                else f"{'-':>9}{'-':>9}")
        print(f"{r.name:<30}{s * 1e3:>9.0f}{B / s:>10.0f}{s / ours:>10.2f}x{flop}"
              + (f"  ({r.note})" if r.note else ""))
    print("useful FLOPs/step: sparse TopK 2BdF + 10Bkd (enc fwd, sparse dec fwd, sparse bwd of dec"
          " and enc);\n  dense rows 10BdF (5 matmuls: enc fwd, dec fwd, dec dgrad, dec wgrad, enc"
          " wgrad; no input grad)")
    print("gba: no bias update falls in the timed steps (every 50 steps); its buffering is timed.")
    cc = secs["resa crosscoder (2 x d/2)"]
    return [Goal("resa topk FLOP/s fraction of peak", sparse_flops / ours / peak, 0.5),
            Goal("resa crosscoder FLOP/s fraction of peak", dense_flops / cc / peak, 0.5)]


# --------------------------------------------------------------------------- section 2


@contextlib.contextmanager
def truncated(lm, n_layers: int) -> Iterator[torch.nn.Module]:
    """The inner (no LM head) model with only its first `n_layers` blocks; restored on exit."""
    inner = lm.model.model
    full = inner.layers
    inner.layers = torch.nn.ModuleList(list(full)[:n_layers])
    try:
        yield inner
    finally:
        inner.layers = full


def bench_harvest(model_name: str) -> list[Goal]:
    from resa_utils.lm.activations import harvest, resid_hook
    from resa_utils.data.corpora import load_texts
    from resa_utils.data.windows import token_windows
    from resa_utils.lm.models import load_model

    lm = load_model(model_name)
    tiny = model_name == TINY_MODEL
    reps = 5 if tiny else 3
    windows = token_windows(load_texts(), lm.tokenizer, 128, n_windows=32)
    layer = lm.n_layers // 2
    batches = windows.split(8)
    print(f"\n== 2. Harvest vs bare forward: {model_name}, {windows.shape[0]}x{windows.shape[1]} "
          f"tokens, batch 8, layer {layer}/{lm.n_layers}; median of {reps}, round-robin ==")

    @torch.no_grad()
    def bare() -> None:
        with truncated(lm, layer + 1) as inner:
            for ids in batches:
                inner(input_ids=ids, use_cache=False)

    @torch.no_grad()
    def full() -> None:
        for ids in batches:
            lm.model(input_ids=ids, use_cache=False)

    deep = sorted({1, layer, lm.n_layers - 2, lm.n_layers - 1})

    @torch.no_grad()
    def bare_deep() -> None:
        with truncated(lm, deep[-1] + 1) as inner:
            for ids in batches:
                inner(input_ids=ids, use_cache=False)

    runs = {
        f"harvest(resid_hook({layer}))": lambda: harvest(lm, windows, [resid_hook(layer)],
                                                          batch_size=8, progress=False),
        f"bare inner forward, {layer + 1} layers": bare,
        f"harvest {len(deep)} layers {deep}": lambda: harvest(
            lm, windows, [resid_hook(i) for i in deep], batch_size=8, progress=False),
        f"bare inner forward, {deep[-1] + 1} layers": bare_deep,
    }
    secs = round_robin([Row(name, lambda _x, f=fn: f()) for name, fn in runs.items()],
                       [windows], warmup=1, n=reps)
    # context only; with a 262k vocabulary the LM head dominates, so one timed run on the real model
    secs["full forward + LM head"] = median_time(full, reps=3 if tiny else 1, warmup=int(tiny))
    n_tok = windows.numel()
    for name, s in secs.items():
        print(f"{name:<36}{s * 1e3:>9.0f} ms{n_tok / s:>10.0f} tok/s")
    h, b, hd, bd = (secs[name] for name in runs)
    print("(bare also runs the final norm; harvest keeps non-BOS activations and copies them)"
          + ("\n(tiny model: per-call overhead dominates; the full run uses the real model)"
             if tiny else ""))
    return [Goal("harvest / bare forward tok/s", b / h, 0.9),
            Goal(f"harvest of {len(deep)} layers in one forward / bare forward to the deepest",
                 bd / hd, 0.9)]


# --------------------------------------------------------------------------- section 3


def bench_load(quick: bool) -> list[Goal]:
    from resa_utils.lm.registry import REGISTRY
    from resa_utils.core.paths import cache_dir
    from resa_utils.lm.models import load_model

    print(f"\n== 3. Model load: {REAL_MODEL} ==")
    if not (cache_dir() / "models" / REAL_MODEL / "resa_source.json").exists():
        print(f"skipped: no cache yet (run load_model({REAL_MODEL!r}) once)")
        return [Goal("cached load speedup vs GGUF", None, 10, "x")]

    def cached() -> None:
        load_model(REAL_MODEL)
        gc.collect()

    t_cache = median_time(cached, reps=1 if quick else 3)
    print(f"{'load_model (safetensors cache + tokenizer)':<46}{t_cache:>8.2f} s")
    if quick:
        print(f"{'transformers GGUF from_pretrained':<46}{'skipped (--quick)':>18}")
        return [Goal("cached load speedup vs GGUF", None, 10, "x")]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        path = REGISTRY[REAL_MODEL].locate_gguf()
    except (ImportError, ValueError) as err:
        print(f"GGUF skipped: {err}")
        return [Goal("cached load speedup vs GGUF", None, 10, "x")]
    folder = cache_dir() / "models" / REAL_MODEL
    t_cache_model = median_time(lambda: AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32), reps=1 if quick else 3)
    with contextlib.redirect_stderr(io.StringIO()):  # its de-quantizing progress bar
        t_gguf_model = timed(lambda: AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32))
        t_gguf_tok = timed(lambda: AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))
    gc.collect()
    t_gguf = t_gguf_model + t_gguf_tok
    print(f"{'cached weights only (from_pretrained folder)':<46}{t_cache_model:>8.2f} s")
    print(f"{'GGUF weights only (dequantise)':<46}{t_gguf_model:>8.2f} s"
          f"{t_gguf_model / t_cache_model:>8.1f}x")
    print(f"{'GGUF weights + tokenizer (what load_model replaces)':<46}{t_gguf:>8.2f} s"
          f"{t_gguf / t_cache:>8.1f}x vs load_model")
    return [Goal("cached load speedup vs GGUF (weights + tokenizer)", t_gguf / t_cache, 10, "x"),
            Goal("cached weights speedup vs GGUF (weights only)", t_gguf_model / t_cache_model, 10, "x")]


# --------------------------------------------------------------------------- main


def main() -> None:
    from resa_utils.core.perf import tune_allocator

    tune_allocator()  # as every notebook does (start_run): all rows share it
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, tiny model, no GGUF")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes and one step per row: checks every section still runs")
    args = parser.parse_args()
    if args.tiny:  # every code path, none of the numbers: D=64, 1024 latents (sparse kernels)
        global D, F, K, B, N_SAMPLE
        D, F, K, B, N_SAMPLE = 64, 1024, 8, 256, 1024
        args.quick = True
        os.environ["BENCH_TINY"] = "1"
    warnings.filterwarnings("ignore", message="Sparse invariant checks")
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # 'Loading weights' bars
    tiny = args.quick or os.environ.get("BENCH_TINY") == "1"
    t0 = time.perf_counter()
    print(f"resa_utils foundation benchmark ({'quick' if args.quick else 'full'}): "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    goals = bench_sae(args.quick)
    goals += bench_harvest(TINY_MODEL if tiny else REAL_MODEL)
    if os.environ.get("BENCH_TINY") == "1":
        print("\n== 3. Model load: skipped (BENCH_TINY=1) ==")
        goals.append(Goal("cached load speedup vs GGUF", None, 10, "x"))
    else:
        goals += bench_load(args.quick)
    print(f"\n== Summary ({time.perf_counter() - t0:.0f} s) ==")
    for g in goals:
        print(g.line())


if __name__ == "__main__":
    main()
