"""Step-time overhead of Mixed-Reward over a trivial reward, from two training logs.

Run the smoke recipe twice with verl's file logger (commands in the README, "GPU checks still to run"),
then:

    python benchmarks/train_reward_overhead.py outputs/smoke/naive.jsonl outputs/smoke/mixed.jsonl

Prints the median `timing_s/step` of each run over the steps after warm-up and their ratio
(target: <= 1.02).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

STEP_TIME = "timing_s/step"


def step_times(log_path: Path, warmup_steps: int) -> list[float]:
    """Step times from a verl file-logger JSONL (one {"step": n, "data": {...}} per line), warm-up dropped."""
    times = []
    for line in filter(str.strip, log_path.read_text().splitlines()):
        record = json.loads(line)
        if record["step"] > warmup_steps and STEP_TIME in record["data"]:
            times.append(float(record["data"][STEP_TIME]))
    if not times:
        raise SystemExit(f"{log_path}: no '{STEP_TIME}' after step {warmup_steps}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline_log", type=Path, help="run with the trivial reward")
    parser.add_argument("mixed_log", type=Path, help="run with Mixed-Reward")
    parser.add_argument("--warmup-steps", type=int, default=2)
    args = parser.parse_args()
    baseline = statistics.median(step_times(args.baseline_log, args.warmup_steps))
    mixed = statistics.median(step_times(args.mixed_log, args.warmup_steps))
    print(f"median step time, trivial reward: {baseline:.3f} s")
    print(f"median step time, Mixed-Reward:   {mixed:.3f} s")
    print(f"ratio: {mixed / baseline:.4f} (target <= 1.02)")


if __name__ == "__main__":
    main()
