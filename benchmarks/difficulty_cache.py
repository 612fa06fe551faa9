"""Memory and time of the data engine's response cache (difficulty stage) on a rerun: opening a cache of
sampled responses and reading each prompt's responses back for scoring, as a resumed run does.

    python benchmarks/difficulty_cache.py [--prompts 40000] [--responses 8] [--chars 1600]

The cache is written line by line first (as sampling appends it), so the process's peak memory before
the rerun part is the imports'. Prints the cache's size, the seconds to open it and to read every
prompt's responses back, and the peak RSS before and after.
"""

from __future__ import annotations

import argparse
import random
import resource
import string
import tempfile
import time
from pathlib import Path

from mixed_r1_verl.data.sampling import ResponseCache
from mixed_r1_verl.eval.cache import Completion


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_cache(path: Path, prompts: int, responses: int, chars: int) -> list[str]:
    """A cache of `prompts` keys, each with `responses` texts of about `chars` characters of words."""
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(2000)]
    keys = [f"{rng.getrandbits(256):064x}" for _ in range(prompts)]
    cache = ResponseCache(path, responses)
    for key in keys:
        texts = []
        for _ in range(responses):
            text = " ".join(rng.choices(words, k=chars // 6))
            texts.append(Completion(f"<think>{text}</think><answer>{rng.randint(0, 99)}</answer>", False))
        cache.add({key: texts})
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=40_000)
    parser.add_argument("--responses", type=int, default=8)
    parser.add_argument("--chars", type=int, default=1600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="difficulty-cache-") as work:
        path = Path(work, "difficulty_cache.jsonl")
        keys = write_cache(path, args.prompts, args.responses, args.chars)
        before = peak_rss_mb()
        started = time.perf_counter()
        cache = ResponseCache(path, args.responses)
        opened = time.perf_counter() - started
        started = time.perf_counter()
        read = sum(len(cache.responses(key)) for key in keys)
        read_back = time.perf_counter() - started
        print(f"cache: {args.prompts:,} prompts x {args.responses} responses, {path.stat().st_size / 1e6:,.2f} MB")
        print(f"open: {opened:.2f} s ({len(cache):,} prompts cached)")
        print(f"read back: {read_back:.2f} s ({read:,} responses)")
        print(f"peak RSS: {before:,.0f} MB before the rerun, {peak_rss_mb():,.0f} MB after")


if __name__ == "__main__":
    main()
