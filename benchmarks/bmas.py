"""BMAS at Qwen2.5-VL-7B sizes: vocab 151,936 x dim 3,584 (random bf16 table), responses of 1,024
tokens against 128-token references.

    python benchmarks/bmas.py [--responses 2560] [--cpu-sample 64] [--device auto|cuda|cpu] [--vocab 151936]

On a GPU the whole batch is timed. On CPU a sample is timed with one thread and the per-core rate is
extrapolated to the whole batch on 8 reward workers (one core each). Token ids are drawn uniformly
(worst case: nearly every token distinct) and Zipf-distributed (closer to real text, with repeats).
A smaller `--vocab` makes a quick run of the benchmark, not a figure of the 7B.
"""

import argparse
import time

import numpy as np
import torch

from mixed_r1_verl.rewards import bmas_batch, row_norms

VOCAB, DIM, RESPONSE_TOKENS, REFERENCE_TOKENS, WORKERS = 151_936, 3_584, 1_024, 128, 8


def token_ids(rng, count, length, zipf, vocab):
    if zipf:
        return [(rng.zipf(1.2, length) % vocab).tolist() for _ in range(count)]
    return [rng.integers(0, vocab, length).tolist() for _ in range(count)]


def pairs(rng, count, zipf, vocab):
    responses = token_ids(rng, count, RESPONSE_TOKENS, zipf, vocab)
    return list(zip(responses, token_ids(rng, count, REFERENCE_TOKENS, zipf, vocab)))


def timed(table, batch, repeats=3):
    norms = row_norms(table)
    bmas_batch(table, batch[: max(1, len(batch) // 8)], norms)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if table.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        bmas_batch(table, batch, norms)
        if table.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--responses", type=int, default=2560)
    parser.add_argument("--cpu-sample", type=int, default=64)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: the GPU when present, and CPU")
    parser.add_argument("--vocab", type=int, default=VOCAB, help="rows of the embedding table")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU visible")
    on_gpu = args.device in ("auto", "cuda") and torch.cuda.is_available()
    rng = np.random.default_rng(0)
    table = torch.randn(args.vocab, DIM, dtype=torch.bfloat16)
    print(f"table {args.vocab} x {DIM} bf16 = {table.numel() * 2 / 2**30:.2f} GiB")
    for zipf in (False, True):
        label = "zipf tokens" if zipf else "uniform tokens"
        if on_gpu:
            batch = pairs(rng, args.responses, zipf, args.vocab)
            seconds = timed(table.cuda(), batch)
            print(f"GPU {torch.cuda.get_device_name()}: {args.responses} responses, {label}: {seconds * 1000:.1f} ms")
        if args.device == "cuda":
            continue
        torch.set_num_threads(1)
        sample = pairs(rng, args.cpu_sample, zipf, args.vocab)
        seconds = timed(table, sample, repeats=2)
        per_core = args.cpu_sample / seconds
        print(f"CPU, one core, {label}: {per_core:.1f} responses/s -> {args.responses} responses on "
              f"{WORKERS} workers: {args.responses / (per_core * WORKERS):.2f} s")


if __name__ == "__main__":
    main()
