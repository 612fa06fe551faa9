"""Time and memory of what a LoRA run's checkpoint costs on disk: the adapters merged into verl's Hugging
Face copy at the save, then the copy exported as a model directory in the config's bfloat16.

Writes a copy as verl saves one (peft's names, float32 as the actor holds its weights, one file) of
decoder layers of Qwen2.5-VL-7B's sizes with rank-64 adapters on every linear layer, merges it in place
as the trainers do, then exports it (`mixed_r1_verl.export`), each in a process of its own, and prints
the seconds per GB and per layer, the estimate for the 7B language model's 28 layers, and each
process's peak memory against the copy's size. The copy takes the tiny test model's processor and
tokenizer files, which an export checks and copies. Everything is written to a temporary directory
(in `--workdir`), removed at the end. `--tiny` gives the layers the tiny test model's widths: a quick
run of the benchmark, whose figures say nothing of the 7B.

    python benchmarks/checkpoint_weights.py [--layers 8] [--rank 64] [--workdir DIR] [--tiny]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from mixed_r1_verl.models.lora import PEFT_PREFIX, TRAIN_META
from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl, resolve_size

# Qwen2.5-VL-7B's language model: hidden 3584, intermediate 18944, 4 key-value heads of 128, 28 layers.
HIDDEN, INTERMEDIATE, KV, LAYERS_7B = 3584, 18944, 512, 28
# What an export checks for and copies beside the weights.
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Runs the statement argv[2] after argv[1] in a process of its own, whose peak memory (Linux's high-water
# mark of its resident set) is the statement's: prints the statement's seconds and that peak in bytes.
MEASURED = """
import re, sys, time
from pathlib import Path
exec(sys.argv[1])
started = time.perf_counter()
exec(sys.argv[2])
seconds = time.perf_counter() - started
print(seconds, int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024)
"""


def projections(hidden: int, intermediate: int, kv: int) -> dict[str, tuple[int, int]]:
    """(rows, columns) of each linear layer of a decoder layer of these widths."""
    return {
        "self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden), "mlp.gate_proj": (intermediate, hidden),
        "mlp.up_proj": (intermediate, hidden), "mlp.down_proj": (hidden, intermediate),
    }  # fmt: skip


def tiny_projections() -> dict[str, tuple[int, int]]:
    size = resolve_size("test")
    kv = size.num_key_value_heads * size.hidden_size // size.num_attention_heads
    return projections(size.hidden_size, size.intermediate_size, kv)


def copy_processor_files(model_dir: Path, target: Path) -> None:
    for name in PROCESSOR_FILES:
        shutil.copy(model_dir / name, target)


def write_copy(directory: Path, layers: int, rank: int, shapes: dict[str, tuple[int, int]]) -> int:
    """A peft-saved copy of `layers` decoder layers of these linear `shapes` in one file, as transformers
    saves up to 50 GB, with the config, and the tiny test model's processor and tokenizer files, that an
    export checks (the weights are what is measured); returns the weights' bytes."""
    copy = directory / "huggingface"
    copy.mkdir(parents=True)
    (directory / TRAIN_META).write_text(json.dumps({"r": rank, "lora_alpha": rank // 2, "task_type": "CAUSAL_LM"}))
    (copy / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "dtype": "bfloat16"}))
    copy_processor_files(build_tiny_qwen25vl(directory / "tiny"), copy)
    weights = {}
    for layer in range(layers):
        for projection, (rows, columns) in shapes.items():
            module = f"{PEFT_PREFIX}model.language_model.layers.{layer}.{projection}"
            weights[f"{module}.base_layer.weight"] = torch.randn(rows, columns) * 0.02
            weights[f"{module}.lora_A.default.weight"] = torch.randn(rank, columns) * 0.01
            weights[f"{module}.lora_B.default.weight"] = torch.randn(rows, rank) * 0.01
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    return sum(tensor.numel() * tensor.element_size() for tensor in weights.values())


def measured(setup: str, statement: str) -> tuple[float, float]:
    """The seconds and peak memory (bytes) of `statement` run after `setup` in a process of its own."""
    run = subprocess.run([sys.executable, "-c", MEASURED, setup, statement], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{statement} failed:\n{run.stderr[-3000:]}")
    seconds, peak = map(float, run.stdout.splitlines()[-1].split())
    return seconds, peak


def report(what: str, seconds: float, peak: float, size: int, layers: int, estimate_7b: bool) -> None:
    gigabytes, per_layer = size / 1e9, seconds / layers
    print(f"{what}: {seconds:.1f} s, {seconds / gigabytes:.2f} s per GB read, {per_layer:.2f} s per layer")
    if estimate_7b:
        print(f"  the 7B language model's {LAYERS_7B} layers: about {per_layer * LAYERS_7B:.0f} s")
    print(f"  peak memory of the process: {peak / 1e9:.2f} GB ({peak / size:.2f} x the copy)")


def measure(work: Path, layers: int, rank: int, tiny: bool) -> None:
    if tiny:
        shapes, sizes = tiny_projections(), "the tiny test model's"
    else:
        shapes, sizes = projections(HIDDEN, INTERMEDIATE, KV), "Qwen2.5-VL-7B's"
    size = write_copy(work, layers, rank, shapes)
    copy, exported = work / "huggingface", work / "exported"
    print(f"{layers} layers of {sizes} sizes, rank {rank}, float32: {size / 1e9:.2f} GB")
    merge = measured(
        "from mixed_r1_verl.models.lora import merge_saved_adapters",
        f"assert merge_saved_adapters(Path({str(copy)!r}))",
    )
    report("merged in place (the trainers' save)", *merge, size, layers, not tiny)
    export = measured(
        "from mixed_r1_verl.export import ExportConfig, export",
        f"export(ExportConfig(checkpoint={str(copy)!r}, out_dir={str(exported)!r}))",
    )
    report("exported in bfloat16 (mixed_r1_verl.export)", *export, size, layers, not tiny)
    written = sum(file.stat().st_size for file in exported.glob("*.safetensors"))
    print(f"  {written / 1e9:.2f} GB written")


def add_work_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, help="where the temporary directory goes (default: the system's)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model's widths (a quick run, no figure)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rank", type=int, default=64)
    add_work_options(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="checkpoint_weights_", dir=args.workdir) as work:
        measure(Path(work), args.layers, args.rank, args.tiny)


if __name__ == "__main__":
    main()
