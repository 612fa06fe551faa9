"""Step-time overhead of Mixed-Reward over a trivial reward, from two training logs.

Run the smoke recipe twice with verl's file logger (commands in the README, "GPU checks still to run"),
then:

    python benchmarks/train_reward_overhead.py outputs/smoke/naive.jsonl outputs/smoke/mixed.jsonl

Prints the median `timing_s/step` of each run over the steps after warm-up and their ratio
(target: <= 1.02).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mixed_r1_verl.run_logs import median_step_time, read_metrics_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline_log", type=Path, help="run with the trivial reward")
    parser.add_argument("mixed_log", type=Path, help="run with Mixed-Reward")
    parser.add_argument("--warmup-steps", type=int, default=2)
    args = parser.parse_args()
    baseline = median_step_time(read_metrics_log(args.baseline_log), args.warmup_steps)
    mixed = median_step_time(read_metrics_log(args.mixed_log), args.warmup_steps)
    print(f"median step time, trivial reward: {baseline:.3f} s")
    print(f"median step time, Mixed-Reward:   {mixed:.3f} s")
    print(f"ratio: {mixed / baseline:.4f} (target <= 1.02)")


if __name__ == "__main__":
    main()
