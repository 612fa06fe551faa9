"""Throughput of the offline evaluator's scoring and generation-cache stages (no model generation).

python benchmarks/eval_scoring.py [--records 4000]
"""

import argparse
import tempfile
import time
from pathlib import Path

from mixed_r1_verl.eval.cache import Completion, GenerationCache
from mixed_r1_verl.eval.generation import eval_request, request_digest
from mixed_r1_verl.eval.records import EvalRecord
from mixed_r1_verl.eval.scoring import ALL, score_records, summarize
from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl

CASES = {
    "matching": ("mmbench", "B", {"options": ["cat", "dog", "bird"]}, "<think>t</think><answer>B</answer>"),
    "chart": ("chartqa", "1,234", {}, "<think>t</think><answer>1234</answer>"),
    "grounding": (
        "refcoco",
        "[10, 10, 200, 200]",
        {"box_frame": "abs", "frame_size": [448, 448]},
        "<think>t</think><answer>[12, 8, 190, 210]</answer>",
    ),
    "open_ended": (
        "coco_caption",
        "A man rides a red bicycle on a sunny street.",
        {},
        "<think>t</think><answer>A man is riding a red bicycle next to a park.</answer>",
    ),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as work:
        measure(Path(work), args.records)


def measure(work: Path, record_count: int) -> None:
    embedding_model = str(build_tiny_qwen25vl(work / "tiny"))

    records, responses = [], {}
    for index in range(record_count):
        task = list(CASES)[index % len(CASES)]
        data_source, ground_truth, extra, response = CASES[task]
        record_id = f"r{index}"
        records.append(EvalRecord(record_id, data_source, task, [], ground_truth, {"task": task, **extra}))
        responses[record_id] = Completion(response, truncated=False)

    digests = {record.id: request_digest(eval_request(record)) for record in records}
    start = time.perf_counter()
    cache = GenerationCache(work / "generations.jsonl")
    for begin in range(0, len(records), 64):
        cache.add({record.id: responses[record.id] for record in records[begin : begin + 64]}, digests)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    reloaded = GenerationCache(work / "generations.jsonl")
    read_s = time.perf_counter() - start
    assert len(reloaded.responses) == len(records)

    start = time.perf_counter()
    rows = score_records(records, responses, embedding_model=embedding_model)
    errors = summarize(rows)["tasks"][ALL]["errors"]
    score_s = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{errors} of {len(records)} responses were not scored (reward errors): no figure")
    print(f"{len(records)} records (1/4 per task; open_ended scored with BMAS on the tiny model's embeddings)")
    print(
        f"cache append: {len(records) / write_s:10.0f} responses/s   cache reload: {len(records) / read_s:10.0f} responses/s"
    )
    print(f"score + summarize: {len(records) / score_s:10.0f} responses/s ({score_s:.2f} s)")


if __name__ == "__main__":
    main()
