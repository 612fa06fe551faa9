"""Time and memory of what a LoRA run's checkpoint costs on disk: the adapters merged into verl's Hugging
Face copy at the save, then the copy exported as a model directory in the config's bfloat16.

Writes a copy as verl saves one (peft's names, float32 as the actor holds its weights, one file) of
decoder layers of Qwen2.5-VL-7B's sizes with rank-64 adapters on every linear layer, merges it in place
as the trainers do, then exports it (`mixed_r1_verl.export`), each in a process of its own, and prints
the seconds per GB and per layer, the estimate for the 7B language model's 28 layers, and each
process's peak memory against the copy's size.

    python benchmarks/checkpoint_weights.py [--layers 8] [--rank 64] [--dir /tmp/checkpoint_weights]
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from mixed_r1_verl.models.lora import PEFT_PREFIX, TRAIN_META

# Qwen2.5-VL-7B's language model: hidden 3584, intermediate 18944, 4 key-value heads of 128, 28 layers.
HIDDEN, INTERMEDIATE, KV, LAYERS_7B = 3584, 18944, 512, 28
PROJECTIONS = {
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV, HIDDEN), "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN), "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}  # fmt: skip
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


def write_copy(directory: Path, layers: int, rank: int) -> int:
    """A peft-saved copy of `layers` decoder layers in one file, as transformers saves up to 50 GB, with
    the config and processor files an export checks; returns its bytes."""
    copy = directory / "huggingface"
    copy.mkdir(parents=True)
    (directory / TRAIN_META).write_text(json.dumps({"r": rank, "lora_alpha": rank // 2, "task_type": "CAUSAL_LM"}))
    (copy / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "dtype": "bfloat16"}))
    (copy / "processor_config.json").write_text(json.dumps({"image_processor": {"patch_size": 14, "merge_size": 2}}))
    weights = {}
    for layer in range(layers):
        for projection, (rows, columns) in PROJECTIONS.items():
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


def report(what: str, seconds: float, peak: float, size: int, layers: int) -> None:
    gigabytes, per_layer = size / 1e9, seconds / layers
    print(f"{what}: {seconds:.1f} s, {seconds / gigabytes:.2f} s per GB read, {per_layer:.2f} s per layer")
    print(f"  the 7B language model's {LAYERS_7B} layers: about {per_layer * LAYERS_7B:.0f} s")
    print(f"  peak memory of the process: {peak / 1e9:.2f} GB ({peak / size:.2f} x the copy)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/checkpoint_weights"))
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    size = write_copy(args.dir, args.layers, args.rank)
    copy, exported = args.dir / "huggingface", args.dir / "exported"
    print(f"{args.layers} layers of Qwen2.5-VL-7B's sizes, rank {args.rank}, float32: {size / 1e9:.2f} GB")
    merge = measured(
        "from mixed_r1_verl.models.lora import merge_saved_adapters", f"assert merge_saved_adapters(Path({str(copy)!r}))"
    )
    report("merged in place (the trainers' save)", *merge, size, args.layers)
    export = measured(
        "from mixed_r1_verl.export import ExportConfig, export",
        f"export(ExportConfig(checkpoint={str(copy)!r}, out_dir={str(exported)!r}))",
    )
    report("exported in bfloat16 (mixed_r1_verl.export)", *export, size, args.layers)
    written = sum(file.stat().st_size for file in exported.glob("*.safetensors"))
    print(f"  {written / 1e9:.2f} GB written")
    shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
