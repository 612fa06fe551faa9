"""Helpers shared by the data tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from mixed_r1_verl.data.prepare import PrepareConfig, prepare
from mixed_r1_verl.data.synthetic import write_synthetic_dataset
from mixed_r1_verl.eval.cli import main as eval_main

REPO = Path(__file__).resolve().parents[1]


def checkout_env(*path_dirs, **variables: str) -> dict[str, str]:
    """This process's environment with this checkout, then `path_dirs`, first on the path, plus `variables`."""
    path = os.pathsep.join(filter(None, [str(REPO), *map(str, path_dirs), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **variables}


def run_module(module: str, *args: str) -> str:
    """Run `python -m module args...` with this checkout first on the path; return its stdout."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=checkout_env(), capture_output=True, text=True, check=True
    ).stdout


# What the training entries need on CPU (tests/run_on_cpu.py): FSDP2 (FSDP1 needs an accelerator) and,
# for GRPO, the transformers rollout and one logical GPU for verl's resource pools.
CPU_SFT_SETTINGS = ("trainer.device=cpu", "engine.strategy=fsdp2", "data.num_workers=0")
CPU_GRPO_SETTINGS = (
    "trainer.device=cpu", "actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.ref.strategy=fsdp2",
    "actor_rollout_ref.rollout.name=transformers", "ray_kwargs.ray_init.num_cpus=16", "+ray_kwargs.ray_init.num_gpus=1",
)  # fmt: skip


def run_on_cpu(
    entry: str, cwd: Path, settings: list[str], timeout: int, python_path=(), **variables: str
) -> subprocess.CompletedProcess:
    """A training entry (`sft` or `grpo`) run on CPU through tests/run_on_cpu.py in `cwd`, with the
    directories `python_path` on its path (and its Ray workers')."""
    return subprocess.run(
        [sys.executable, str(REPO / "tests" / "run_on_cpu.py"), entry, *settings],
        env=checkout_env(*python_path, **variables), cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def convert_synthetic(src_dir: Path, output_dir: Path, *, rows_per_task: int, seed: int, synthetic=None, **settings):
    """The synthetic four-task set (`synthetic`: more generator options) written to `src_dir` and
    converted into `output_dir` with the converter `settings`; returns (jsonl, image_root)."""
    jsonl, image_root = write_synthetic_dataset(src_dir, rows_per_task=rows_per_task, seed=seed, **(synthetic or {}))
    prepare(
        PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(output_dir), progress=False, **settings)
    )
    return jsonl, image_root


def score_saved(parquet, responses, out_dir, embedding_model=None, *settings):
    """Score ``responses`` (id -> text) saved as a generations file, as a user would from the shell."""
    generations = out_dir.parent / f"{out_dir.name}.jsonl"
    generations.write_text("".join(json.dumps({"id": key, "response": text}) + "\n" for key, text in responses.items()))
    args = [f"data={parquet}", f"generations={generations}", f"out_dir={out_dir}", *settings]
    return eval_main(args + ([f"embedding_model={embedding_model}"] if embedding_model else []))


def card_parts(card: str) -> tuple[dict, str, dict[str, str]]:
    """A model card's metadata, its first paragraph and its table's rows (label: value)."""
    _, metadata, body = card.split("---\n", 2)
    paragraphs = body.strip().split("\n\n")
    rows = [line.strip("|").split(" | ", 1) for line in body.splitlines() if line.startswith("| ")]
    return yaml.safe_load(metadata), paragraphs[1], {label.strip(): value.strip() for label, value in rows if label.strip()}


def rows_with_embedded_images(jsonl: Path, image_root: Path, parquet: Path, read_from_files=()) -> list[dict]:
    """The canonical rows of `jsonl` written to `parquet` with their images embedded as Hugging Face datasets
    store them ({bytes, path}); the rows whose ids are in `read_from_files` keep theirs as files (bytes
    null). Returns the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            **row,
            "images": [
                {"bytes": None if row["id"] in read_from_files else (image_root / path).read_bytes(), "path": path}
                for path in row["images"]
            ],
        }
        for row in read_jsonl(jsonl)
    ]
    # Every row with every field (null where it has none): pyarrow takes the columns from the first row.
    fields = dict.fromkeys(name for row in rows for name in row)
    pq.write_table(pa.Table.from_pylist([{**fields, **row} for row in rows]), parquet)
    return rows
