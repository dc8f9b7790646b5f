"""Reasoning-stage benchmarks (notebook 00, and 01/04 after it): every number is measured in this
run, every ratio against a baseline measured in this same run.

1. Generation: `resa_utils.lm.generation.generate` at batch 32 (left padding, one KV cache per
   batch) vs unbatched `model.generate`, one prompt at a time, greedy, same prompts and
   `max_new_tokens`; generated tokens/s. Goal: >= 5x, for the chosen base and the Qwen 0.5B.
2. LoRA training tokens/s of each candidate base through the real training path
   (`lora_tokens_per_s`: transformers Trainer + peft, batch 8 of notebook 00's traces), and the
   achieved FLOP/s (4 · params · tokens/s) as a share of this machine's fp32 matmul peak,
   measured here.

Run:  python benchmarks/bench_reasoning.py          # full, ~10 min on 2 cores
      python benchmarks/bench_reasoning.py --tiny   # seconds: tiny random models (the tests run it)
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time

import torch
from bench_foundation import timed  # this folder is on sys.path when a script here runs

FULL_GEN = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
FULL_LORA = ["smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct"]
TINY = ["tiny-llama", "tiny-qwen2"]


def prompts_for(lm, n: int) -> list[str]:
    from resa_utils.data import tasks as T
    from resa_utils.lm.generation import chat_prompt

    probs = T.make_problems("chain_sum", n, seed=123)
    return [chat_prompt(lm.tokenizer, T.prompt(p)) for p in probs]


@torch.no_grad()
def unbatched(lm, prompts: list[str], max_new: int) -> tuple[int, float]:
    """Generated tokens and seconds, one prompt at a time with `model.generate` (greedy)."""
    tok, n = lm.tokenizer, 0
    t0 = time.perf_counter()
    for p in prompts:
        enc = tok(p, return_tensors="pt").to(lm.device)
        out = lm.model.generate(**enc, max_new_tokens=max_new, do_sample=False,
                                pad_token_id=tok.pad_token_id, temperature=None, top_p=None,
                                top_k=None)
        n += out.shape[1] - enc.input_ids.shape[1]
    return n, time.perf_counter() - t0


def bench_generation(names: list[str], batch: int, n_unbatched: int, max_new: int) -> list[str]:
    from resa_utils.lm.generation import generate
    from resa_utils.lm.models import load_model

    print(f"\n== 1. Generation: batch {batch} vs one prompt at a time, greedy, "
          f"{max_new} new tokens max ==")
    goals = []
    for name in names:
        lm = load_model(name)
        prompts = prompts_for(lm, batch)
        generate(lm, prompts[:2], 4, 2)  # warm-up
        t0 = time.perf_counter()
        outs = generate(lm, prompts, max_new, batch)
        b_s = time.perf_counter() - t0
        b_tok = sum(o["n_tokens"] for o in outs)
        u_tok, u_s = unbatched(lm, prompts[:n_unbatched], max_new)
        ratio = (b_tok / b_s) / (u_tok / u_s)
        print(f"{name:<32} batched {b_tok / b_s:>7.1f} tok/s ({b_tok} tokens, {b_s:.1f} s)   "
              f"unbatched {u_tok / u_s:>6.1f} tok/s ({n_unbatched} prompts, {u_s:.1f} s)   "
              f"{ratio:.1f}x")
        goals.append(f"batched / unbatched generation, {name}: {ratio:.2f}x (goal >= 5x) "
                     f"{'PASS' if ratio >= 5 else 'BELOW'}")
        del lm
    return goals


def matmul_peak() -> float:
    """fp32 FLOP/s of the best of two 2048^3 matmuls."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(2))
    return 2 * 2048 ** 3 / best


def bench_lora(names: list[str], steps: int, full: list[str]) -> list[str]:
    """Training tokens/s through the real path (`train_lora`), LoRA (r 32, every projection) for
    each of `names`, and full fine-tuning (every weight, 6 N T FLOPs) for those in `full`: notebook
    00 picks its `finetune` by this ratio, measured in the same run."""
    from resa_utils.data import tasks as T
    from resa_utils.methods.distill import trace_examples
    from resa_utils.lm.generation import chat_prompt
    from resa_utils.lm.lora import LoraTrainConfig, lora_tokens_per_s
    from resa_utils.lm.models import load_model

    peak = matmul_peak()
    print(f"\n== 2. Training: LoRA (r 32, all projections) and full fine-tuning, batch 8, notebook 00's traces; "
          f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s ==")
    goals = []
    for name in names:
        speed = {}
        for finetune in ("lora", "full") if name in full else ("lora",):
            lm = load_model(name)
            n_params = sum(p.numel() for p in lm.model.parameters())
            probs = T.make_problems("chain_sum", 8 * (steps + 1), seed=7)
            ex = trace_examples(probs, T.TraceStyle(), lambda p: chat_prompt(lm.tokenizer, T.prompt(p)))
            out = lora_tokens_per_s(lm, ex, LoraTrainConfig(finetune=finetune, batch_size=8, max_length=256), steps)
            share = (6 if finetune == "full" else 4) * n_params * out["tokens/s"] / peak
            speed[finetune] = out["tokens/s"]
            print(f"{name:<32} {finetune:<5} {n_params / 1e6:>7.1f}M params {out['tokens/s']:>7.1f} tok/s "
                  f"{out['seconds_per_step']:>6.1f} s/step   {share:.2f} of the matmul peak")
            goals.append(f"{finetune} training, {name}: {out['tokens/s']:.1f} tok/s, {share:.2f} of the matmul peak")
            del lm
        if "full" in speed:
            goals.append(f"full / LoRA tokens/s, {name}: {speed['full'] / speed['lora']:.2f}x")
    return goals


def main() -> None:
    from resa_utils.core.perf import tune_allocator

    tune_allocator()  # as every notebook does (start_run): all rows share it
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models: checks it runs")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    random.seed(0)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    print(f"resa_utils reasoning benchmark ({'tiny' if args.tiny else 'full'}): torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    goals = bench_generation(TINY if args.tiny else FULL_GEN, 32, 4 if args.tiny else 6,
                             8 if args.tiny else 48)
    goals += bench_lora(TINY if args.tiny else FULL_LORA, 1 if args.tiny else 3,
                        TINY[:1] if args.tiny else FULL_LORA[:1])
    print(f"\n== Summary ({time.perf_counter() - t0:.0f} s) ==")
    for g in goals:
        print(g)


if __name__ == "__main__":
    main()
