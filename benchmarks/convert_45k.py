"""Converter throughput: 45,000 synthetic rows with ~50 KB JPEG images to verl parquet.

    python benchmarks/convert_45k.py [--rows 45000] [--distinct-images 400] [--embedded] [--engine] [--workdir DIR]

Rows share a pool of distinct images (as a real mix reuses COCO/ChartQA images across questions);
every row's image bytes are still written into the parquet. `--embedded` converts the rows from a parquet
that embeds each row's image bytes, as a Hub dataset holds them, instead of from JSONL and image files.
`--engine` runs the data engine on the same input instead (validate, dedup, verify, balance with no
targets, then convert; the difficulty stage is off, as it needs a model), so its memory is measured too.
Prints wall time, peak RSS of the converter process and output size. Target on a 2-core CPU machine:
<= 60 s wall, <= 2 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mixed_r1_verl.data.synthetic import TASKS, write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


def embedded_parquet(jsonl: Path, image_root: Path, parquet: Path, rows_per_group: int = 1000) -> Path:
    """The rows of `jsonl` as parquet with each image's bytes in it, a struct {bytes, path}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mixed_r1_verl.data.engine import selection_schema

    schema = selection_schema({})
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    with pq.ParquetWriter(parquet, schema) as writer:
        for start in range(0, len(rows), rows_per_group):
            group = rows[start : start + rows_per_group]
            for row in group:
                row["images"] = [{"bytes": (image_root / path).read_bytes(), "path": path} for path in row["images"]]
            writer.write_table(pa.Table.from_pylist(group, schema=schema))
            for row in group:
                row["images"] = None
    return parquet


def engine_rows_read(output_dir: Path) -> int:
    """The rows the data engine read (its first stage's input); its conversion sees only those it selected."""
    report = json.loads((output_dir / "report.json").read_text())
    return sum(report["stages"][0]["rows_in"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=45_000)
    parser.add_argument("--distinct-images", type=int, default=400)
    parser.add_argument("--embedded", action="store_true")
    parser.add_argument("--engine", action="store_true")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        workdir = Path(workdir)
        rows_per_task = args.rows // len(TASKS)
        jsonl, image_root = write_synthetic_dataset(
            workdir / "src",
            rows_per_task=rows_per_task,
            seed=0,
            image_size=(640, 480),
            distinct_images_per_task=args.distinct_images // len(TASKS),
            image_format="jpeg",
            texture=5.0,
        )
        image_files = [p for p in image_root.rglob("*") if p.is_file()]
        mean_image_kb = sum(p.stat().st_size for p in image_files) / len(image_files) / 1024

        source = [f"input={jsonl}", f"image_root={image_root}"]
        if args.embedded:
            source = [f"input={embedded_parquet(jsonl, image_root, workdir / 'embedded.parquet')}"]
        if args.engine:
            module, output_dir = "mixed_r1_verl.data.engine", workdir / "engine"
            converted, stage_settings = output_dir / "parquet", ["difficulty.enabled=false", "convert=true"]
        else:
            module, output_dir = "mixed_r1_verl.data.prepare", workdir / "out"
            converted, stage_settings = output_dir, []
        command = [sys.executable, "-m", module, *source, f"output_dir={output_dir}", *stage_settings]
        command += ["model_family=qwen2_5_vl", "progress=false"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        summary = json.loads((converted / "summary.json").read_text())
        rows_read = engine_rows_read(output_dir) if args.engine else summary["rows_in"]
        output_mb = sum(p.stat().st_size for p in converted.glob("*.parquet")) / 2**20

    print(
        json.dumps(
            {
                "input": "parquet, images embedded" if args.embedded else "JSONL and image files",
                "command": module,
                "rows": rows_read,
                "rows_written": summary["rows_written"],
                "rows_rejected": summary["rows_rejected"],
                "distinct_images": len(image_files),
                "mean_image_kb": round(mean_image_kb, 1),
                "wall_s": round(wall, 2),
                "rows_per_s": round(rows_read / wall),
                "peak_rss_mb": round(peak_rss_mb),
                "parquet_mb": round(output_mb),
                "cpu_count": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
