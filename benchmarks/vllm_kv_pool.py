"""What the size of vLLM's KV pool costs in Python for the tiny `test` model (recipe=smoke, the GPU
suite): vLLM's own BlockPool built with the block count a KV budget gives, and one prefix-cache reset
(verl resets it at every wake-up of the rollout). Needs vLLM; runs on the CPU.

    python benchmarks/vllm_kv_pool.py [--gpu-memory-gib 139.8] [--utilizations 0.3 0.9]

The block count of a `gpu_memory_utilization` is that share of the GPU's memory over the bytes of a
block, an upper bound that the tiny model's weights and activations barely lower.
"""

import argparse
import gc
import tempfile
import time

from mixed_r1_verl.models.tiny_qwen25vl import TEST_SIZE_VLLM_KV_CACHE_BYTES, build_tiny_qwen25vl, kv_cache_bytes_per_token

BLOCK_TOKENS = 16  # vLLM's block size for the FlashAttention backend
GIB = 1 << 30


def vllm_block_pool():
    """vLLM's version and its BlockPool class; without vLLM, the benchmark ends saying so."""
    try:
        import vllm
        from vllm.v1.core.block_pool import BlockPool
    except ImportError as error:
        raise SystemExit(f"vllm_kv_pool.py times vLLM's own block pool: install vLLM first ({error})") from None
    return vllm.__version__, BlockPool


def time_pool(block_pool_class, blocks: int) -> tuple[float, float]:
    started = time.perf_counter()
    pool = block_pool_class(num_gpu_blocks=blocks, enable_caching=True, hash_block_size=BLOCK_TOKENS)
    built = time.perf_counter() - started
    started = time.perf_counter()
    if not pool.reset_prefix_cache():
        raise RuntimeError("the fresh pool refused a prefix-cache reset")
    reset = time.perf_counter() - started
    del pool
    gc.collect()
    return built, reset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-memory-gib", type=float, default=139.8, help="default: an H200 as torch sees it")
    parser.add_argument("--utilizations", type=float, nargs="+", default=[0.3, 0.9])
    args = parser.parse_args()
    version, block_pool_class = vllm_block_pool()
    with tempfile.TemporaryDirectory() as model_dir:
        block_bytes = BLOCK_TOKENS * kv_cache_bytes_per_token(build_tiny_qwen25vl(model_dir))
    budgets = [(f"kv_cache_memory_bytes={TEST_SIZE_VLLM_KV_CACHE_BYTES / GIB:g} GiB", TEST_SIZE_VLLM_KV_CACHE_BYTES)]
    budgets += [
        (f"gpu_memory_utilization={share:g} of {args.gpu_memory_gib:g} GiB", int(share * args.gpu_memory_gib * GIB))
        for share in args.utilizations
    ]
    print(f"vLLM {version} BlockPool, tiny test model: {block_bytes} bytes a {BLOCK_TOKENS}-token block")
    for label, budget in budgets:
        blocks = budget // block_bytes
        built, reset = time_pool(block_pool_class, blocks)
        print(f"  {label}: {blocks:,} blocks, built in {built:.2f} s, prefix-cache reset {reset:.2f} s")


if __name__ == "__main__":
    main()
