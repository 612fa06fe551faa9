"""Rule-reward throughput on realistic responses (300-1,000 tokens), one CPU core.

    python benchmarks/rule_rewards.py [--samples 20000]
"""

import argparse
import random
import time

from mixed_r1_verl.rewards import compute_score

WORDS = ("the image shows a chart with several bars and the tallest one reaches about value while the "
         "smallest is near zero so we compare them carefully and check the legend axis label region box "
         "object left right top bottom person dog cat bicycle street").split()
CASES = [
    ("matching", "B", {"options": ["cat", "dog", "bird", "fish"]}, "The answer is B"),
    ("matching", "yes", {}, "Yes"),
    ("chart", "45%", {}, "45"),
    ("chart", "1,234", {}, "1,230 units"),
    ("grounding", "[120, 80, 360, 300]", {"box_frame": "abs", "frame_size": [640, 480]}, "[118, 85, 355, 310]"),
    ("grounding", "[100, 100, 500, 700]", {"box_frame": "norm1000"}, '[{"bbox_2d": [90, 110, 480, 690], "label": "dog"}]'),
]


def response(rng: random.Random) -> tuple[str, str, dict, str]:
    task, ground_truth, extra, answer = rng.choice(CASES)
    tokens = rng.randint(300, 1000)
    thinking = " ".join(rng.choice(WORDS) if rng.random() > 0.1 else str(rng.randint(0, 999)) for _ in range(tokens))
    return f"<think>{thinking}</think>\n<answer>{answer}</answer>", ground_truth, {"task": task, **extra}, task


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20000)
    args = parser.parse_args()
    rng = random.Random(0)
    samples = [response(rng) for _ in range(args.samples)]
    chars = sum(len(text) for text, *_ in samples) / len(samples)
    start = time.perf_counter()
    results = [compute_score("bench", text, ground_truth, extra) for text, ground_truth, extra, _ in samples]
    elapsed = time.perf_counter() - start
    errors = sum(result["error"] > 0 for result in results)
    if errors:
        raise SystemExit(f"{errors} of {len(samples)} samples were not scored (reward errors): no figure")
    print(f"rule rewards: {len(samples)} samples, mean {chars:.0f} chars, {elapsed:.3f} s, "
          f"{len(samples) / elapsed:,.0f} samples/s on one core")
    for payload in ("<answer>" + "9" * 5000 + "</answer>", "<answer>1e999999</answer>", "<answer>" + "[" * 10000 + "</answer>",
                    "<answer>B</answer>" * 10000, "<think>" * 10000, "\\boxed{" * 10000,
                    '<answer>[{"bbox_2d": [135' + " " * 32000 + '"label": "x"}]</answer>',
                    "<answer>(1, 2)" + " " * 32000 + "x</answer>", "<answer>1" + ",12" * 10000 + "</answer>",
                    "<answer>1" + ",000" * 4000 + ".5.5</answer>"):
        start = time.perf_counter()
        for task, ground_truth, extra, _ in CASES:
            compute_score("bench", payload, ground_truth, {"task": task, **extra})
        print(f"pathological {payload[:20]!r}... ({len(payload)} chars): {(time.perf_counter() - start) * 1000:.2f} ms for all tasks")


if __name__ == "__main__":
    main()
