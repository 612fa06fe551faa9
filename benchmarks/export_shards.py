"""Time and memory of exporting a checkpoint that verl saved as FSDP shards only (the default
save_contents), against verl's model merger on the same checkpoint.

Saves a Qwen2.5-VL of the 7B's sizes with fewer decoder layers and vision blocks (random weights) from
`--ranks` CPU processes as verl's checkpoint manager saves the actor (tests/fsdp_checkpoint.py), then
exports it in bfloat16 with `mixed_r1_verl.export` and merges it with `verl.model_merger`, each in a
process of its own, and prints the seconds and each process's peak memory against the checkpoint's size.
Everything is written to a temporary directory (in `--workdir`), removed at the end. `--tiny` saves the
tiny test model's widths instead: a quick run of the benchmark, whose figures say nothing of the 7B.

    python benchmarks/export_shards.py [--layers 4] [--vision-blocks 2] [--ranks 4] [--workdir DIR] [--tiny]
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from checkpoint_weights import add_work_options, copy_processor_files, measured
from transformers import Qwen2_5_VLConfig

from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl, resolve_size

REPO = Path(__file__).resolve().parents[1]


def config_of_7b_sizes(layers: int, vision_blocks: int) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B-Instruct's config with `layers` decoder layers and `vision_blocks` vision blocks."""
    text = {
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": layers,
        "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
        "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
        "tie_word_embeddings": False,
    }  # fmt: skip
    vision = {
        "depth": vision_blocks, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "out_hidden_size": 3584, "fullatt_block_indexes": [vision_blocks - 1], "window_size": 112,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    }  # fmt: skip
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, dtype="bfloat16", tie_word_embeddings=False,
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )  # fmt: skip


def save_shards(work: Path, ranks: int, config_dir: Path, processor_dir: Path) -> Path:
    """A checkpoint of the model `config_dir` configures, random weights saved by `ranks` CPU processes as verl
    saves the actor, with the processor and tokenizer files of `processor_dir` (the weights are what is
    measured); returns its actor directory."""
    # torchrun's log directories and verl's checkpoint locks go to the temporary directory, removed with `work`.
    temp = work / "tmp"
    temp.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
         str(REPO / "tests" / "fsdp_checkpoint.py"), str(config_dir), str(work), "--random-init"],
        capture_output=True, text=True, env={**os.environ, "TMPDIR": str(temp)},
    )  # fmt: skip
    if run.returncode:
        raise SystemExit(f"saving the checkpoint failed:\n{run.stderr[-3000:]}")
    actor = work / "actor"
    copy_processor_files(processor_dir, actor / "huggingface")
    return actor


def measure(work: Path, layers: int, vision_blocks: int, ranks: int, tiny: bool) -> None:
    depths = resolve_size("test", num_hidden_layers=layers, vision_depth=vision_blocks)
    tiny_model = build_tiny_qwen25vl(work / "tiny", size=depths)
    config_dir = tiny_model if tiny else work / "config"
    if not tiny:
        config_of_7b_sizes(layers, vision_blocks).save_pretrained(config_dir)
    actor = save_shards(work, ranks, config_dir, tiny_model)
    size = sum(file.stat().st_size for file in actor.glob("model_world_size_*.pt"))
    sizes = "the tiny test model's widths" if tiny else "the 7B's sizes"
    print(
        f"Qwen2.5-VL of {sizes}, {layers} decoder layers and {vision_blocks} vision blocks, saved "
        f"by {ranks} ranks in float32: {size / 1e9:.2f} GB of shards"
    )
    runs = {
        "mixed_r1_verl.export (bfloat16)": (
            "from mixed_r1_verl.export import ExportConfig, export",
            f"export(ExportConfig(checkpoint={str(actor)!r}, out_dir={str(work / 'exported')!r}))",
        ),
        "verl.model_merger (bfloat16)": (
            "from verl.model_merger.__main__ import main as merge",
            "sys.argv = ['verl.model_merger', 'merge', '--backend', 'fsdp', '--local_dir', "
            f"{str(actor)!r}, '--target_dir', {str(work / 'merged')!r}]; merge()",
        ),
    }
    for what, (setup, statement) in runs.items():
        seconds, peak = measured(setup, statement)
        print(f"{what}: {seconds:.1f} s, {size / 1e9 / seconds:.2f} GB of shards per s")
        print(f"  peak memory: {peak / 1e9:.2f} GB ({peak / size:.2f} x the shards)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vision-blocks", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=4)
    add_work_options(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="export_shards_", dir=args.workdir) as work:
        measure(Path(work), args.layers, args.vision_blocks, args.ranks, args.tiny)


if __name__ == "__main__":
    main()
