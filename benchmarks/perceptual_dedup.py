"""The data engine's dedup stage with `dedup.perceptual=true` on a caption set: every row asks one question
("Describe the image."), each of its own image, so every row is compared with the rows kept before it.

    python benchmarks/perceptual_dedup.py [--rows 45000 11250] [--workdir DIR]

Prints, for each size, the stage's wall time and rows per second (the stage alone: validation, which reads
and checks the images, runs first and is not timed). Rows per second that holds as the set grows is a stage
linear in its rows; a comparison of every pair of rows would lose a factor of 4 per 4 times the rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mixed_r1_verl.data.engine import DedupConfig, DifficultyConfig, Engine, EngineConfig


def caption_set(directory: Path, rows: int) -> tuple[Path, Path]:
    """`rows` caption rows, each on a distinct 64x48 noise JPEG (no two near each other)."""
    images = directory / "images"
    images.mkdir(parents=True)
    jsonl = directory / "captions.jsonl"
    with jsonl.open("w") as lines:
        for number in range(rows):
            noise = np.random.default_rng(number).integers(0, 255, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(noise).save(images / f"{number:06d}.jpg", quality=90)
            row = {
                "id": f"caption-{number}", "task": "open_ended", "data_source": "coco_caption",
                "images": [f"{number:06d}.jpg"], "problem": "<image>Describe the image.",
                "answer": f"a street scene, photo {number}",
            }  # fmt: skip
            lines.write(json.dumps(row) + "\n")
    return jsonl, images


def timed_dedup(directory: Path, rows: int) -> tuple[int, float]:
    """(rows kept, seconds) of the dedup stage on a caption set of `rows` rows."""
    jsonl, images = caption_set(directory, rows)
    config = EngineConfig(
        input=str(jsonl), image_root=str(images), output_dir=str(directory / "engine"), progress=False,
        difficulty=DifficultyConfig(enabled=False), dedup=DedupConfig(perceptual=True),
    )  # fmt: skip
    engine = Engine(config)
    validated = engine.validate()
    started = time.perf_counter()
    kept = engine.dedup(validated)
    seconds = time.perf_counter() - started
    engine.dropped.close()
    return len(kept), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[45_000, 11_250])
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    for rows in args.rows:
        with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
            kept, seconds = timed_dedup(Path(workdir), rows)
        print(f"perceptual dedup, one question: {rows:,} rows, {kept:,} kept, {seconds:.2f} s, "
              f"{rows / seconds:,.0f} rows/s")  # fmt: skip


if __name__ == "__main__":
    main()
