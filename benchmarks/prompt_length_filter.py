"""Length-filter throughput of MixedR1Dataset: rows whose prompt size the converter wrote
(extra_info.prompt_length) against the same rows measured with the processor (as rows without it are).

    python benchmarks/prompt_length_filter.py [--rows 4000] [--image-size 640x480] [--workers 1]

Converts synthetic rows of all four tasks with the tiny Qwen2.5-VL, then builds the training dataset
twice with filter_overlong_prompts on and prints rows/s for each path and the converter's extra time
for counting.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import OmegaConf
from verl.utils.dataset.rl_dataset import get_dataset_class

from mixed_r1_verl.data.prepare import PrepareConfig, prepare
from mixed_r1_verl.data.processor import load_image_text_processor
from mixed_r1_verl.data.synthetic import TASKS, write_synthetic_dataset
from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl


def without_counts(path: Path, target: Path) -> Path:
    table = pq.read_table(path)
    rows = table.to_pylist()
    for row in rows:
        row["extra_info"]["prompt_length"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), target)
    return target


def dataset_seconds(files: list[str], processor, workers: int, cache_dir: Path) -> float:
    config = OmegaConf.create(
        {
            "max_prompt_length": 2048,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": workers,
            "cache_dir": str(cache_dir),
            "custom_cls": {"path": "pkg://mixed_r1_verl.data.dataset", "name": "MixedR1Dataset"},
        }
    )
    started = time.perf_counter()
    get_dataset_class(config)(files, processor.tokenizer, config, processor=processor)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--image-size", default="640x480")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    width, height = (int(v) for v in args.image_size.split("x"))

    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        model_dir = build_tiny_qwen25vl(workdir / "model")
        jsonl, image_root = write_synthetic_dataset(
            workdir / "src", rows_per_task=args.rows // len(TASKS), seed=0, image_size=(width, height),
            distinct_images_per_task=50, image_format="jpeg",
        )
        # Both paths once on a few rows first, so neither timing holds the first conversion's imports and caches.
        few, few_root = write_synthetic_dataset(
            workdir / "warm-up", rows_per_task=2, seed=1, image_size=(width, height)
        )
        timings = {}
        for name, model_path in (("uncounted", None), ("counted", str(model_dir))):
            prepare(PrepareConfig(input=str(few), image_root=str(few_root), output_dir=str(workdir / f"warm-up-{name}"),
                                  model_path=model_path, val_ratio=0.0, progress=False))  # fmt: skip
        for name, model_path in (("uncounted", None), ("counted", str(model_dir))):
            started = time.perf_counter()
            summary = prepare(
                PrepareConfig(
                    input=str(jsonl), image_root=str(image_root), output_dir=str(workdir / name),
                    model_path=model_path, val_ratio=0.0, progress=False,
                )
            )
            timings[name] = time.perf_counter() - started
        print(f"converter: {summary['rows_written']} rows in {timings['uncounted']:.1f} s without counting, "
              f"{timings['counted']:.1f} s with prompt lengths counted")

        processor = load_image_text_processor(model_dir)
        counted = workdir / "counted" / "train.parquet"
        measured = without_counts(counted, workdir / "measured.parquet")
        rows = pq.read_metadata(counted).num_rows
        for name, path in (("measured (no extra_info.prompt_length)", measured), ("converter's counts", counted)):
            seconds = dataset_seconds([str(path)], processor, args.workers, workdir / "cache")
            print(f"length filter, {name}: {rows} rows in {seconds:.2f} s = {rows / seconds:,.0f} rows/s")


if __name__ == "__main__":
    main()
