"""Export a training checkpoint as a Hugging Face model directory that transformers, vLLM (`vllm serve`)
and the Hub load as it is: weights under the model's own names with any LoRA adapter merged in, config,
tokenizer, chat template and processor.

    python -m mixed_r1_verl.export checkpoint=checkpoints/mixed_r1/qwen25vl_7b out_dir=hf/qwen25vl_7b

`checkpoint` is a run's checkpoint directory (`trainer.default_local_dir`: its latest checkpoint), one
checkpoint (`global_step_N`, GRPO's or SFT's), a GRPO checkpoint's `actor/`, or its Hugging Face copy
(`huggingface/`). The weights come from the copy where it holds them (saved with `hf_model` in
save_contents), else from the ranks' FSDP shards, one rank's at a time (`models/fsdp_shards.py`), in
bfloat16 (`dtype`) or as the checkpoint holds them (`dtype=saved`); config.json names the dtype written.
`out_dir` is written new, with a model card (README.md) and the run's config where the checkpoint holds it
(`models/model_card.py`). Prints a summary (JSON): where the weights came from, whether adapters were
merged, the files, dtypes and bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mixed_r1_verl.data.model_files import (
    CHECKPOINT_TRACKER,
    COPY_DIR,
    checkpoint_model_type,
    checkpoint_shards,
    has_tokenizer,
    has_weights,
    image_processor_settings,
    not_a_model_reason,
)
from mixed_r1_verl.models.fsdp_shards import write_fsdp_weights
from mixed_r1_verl.models.lora import finish_interrupted_merge, saved_by_peft, write_merged_peft_weights
from mixed_r1_verl.models.model_card import CARD_FILE, STEP_DIR, model_card
from mixed_r1_verl.models.weight_files import FLOAT_DTYPES, is_weight_file, rewrite_weight_files, saved_dtypes
from mixed_r1_verl.run_config import CODE, RUN_CONFIG, read_run_config
from mixed_r1_verl.settings import run_settings_cli


@dataclass
class ExportConfig:
    checkpoint: str = "???"
    # Written new: refused where it exists with anything in it.
    out_dir: str = "???"
    # The floating-point weights' dtype: bfloat16 (Qwen2.5-VL's, Qwen3-VL's and InternVL3's as released and
    # served), float16 or float32, or `saved`, as the checkpoint holds them (the actor's float32). verl's
    # copy names the actor's float32 in its config; the export's config names the dtype written.
    dtype: str = "bfloat16"


EXPORT_DTYPES = ("bfloat16", "float16", "float32", "saved")


def saved_float_dtypes(model_dir: Path) -> list[str]:
    """torch's names of the floating-point dtypes a model directory's weights are saved in."""
    codes = set(saved_dtypes(model_dir))
    return [name for name, code in FLOAT_DTYPES.items() if code in codes]


def name_dtype_in_config(model_dir: Path) -> None:
    """Makes a model directory's config.json (and the configs of its parts) name the dtype its floating-point
    weights are saved in, the dtype transformers and vLLM load it in by default; left as it is for weights
    saved in several."""
    written = saved_float_dtypes(model_dir)
    if len(written) != 1:
        return
    [dtype] = written

    def named(config: dict) -> dict:
        return {
            key: dtype if key in ("dtype", "torch_dtype") else named(value) if isinstance(value, dict) else value
            for key, value in config.items()
        }

    config_file = model_dir / "config.json"
    config_file.write_text(json.dumps(named({"dtype": dtype, **json.loads(config_file.read_text())}), indent=2))


def checkpoint_dirs(path: Path) -> tuple[Path, Path]:
    """The directory of the FSDP shards and the Hugging Face copy of the checkpoint that `path` names."""
    tracker = path / CHECKPOINT_TRACKER
    if tracker.is_file():
        step = tracker.read_text().strip()
        path = path / f"global_step_{step}"
        if not path.is_dir():
            raise FileNotFoundError(f"{tracker} names step {step}, and {path} is missing")
    if path.name == COPY_DIR:
        return path.parent, path
    shards = checkpoint_shards(path)
    if not (shards / COPY_DIR).is_dir():
        raise FileNotFoundError(
            f"{path} is no verl checkpoint: expected a run's checkpoint directory ({CHECKPOINT_TRACKER}), "
            f"global_step_N, its actor/, or its {COPY_DIR}/"
        )
    return shards, shards / COPY_DIR


def write_model_weights(shards: Path, copy: Path, target: Path, dtype: str | None) -> tuple[str, bool]:
    """The checkpoint's weights under the model's own names, adapters merged in, cast to `dtype` (torch's
    name) where given, written to `target`: from the copy where it holds them, else from the FSDP shards.
    Returns where they came from and whether adapters were merged."""
    finish_interrupted_merge(copy)
    if has_weights(copy):
        if saved_by_peft(copy):
            write_merged_peft_weights(copy, target, dtype)
            return f"{COPY_DIR}/", True
        rewrite_weight_files(copy, target, lambda name: name, dtype=dtype)
        return f"{COPY_DIR}/", False
    return "FSDP shards", write_fsdp_weights(shards, target, copy, dtype) > 0


def write_model_card(model_dir: Path, name: str, shards: Path, lora_merged: bool) -> None:
    """README.md, and the run's config and code versions where the checkpoint holds them
    (`models/model_card.py`)."""
    method, step_dir = ("GRPO", shards.parent) if shards.name == "actor" else ("SFT", shards)
    run = read_run_config(step_dir)
    for record in (RUN_CONFIG, CODE):
        if (step_dir / record).is_file():
            shutil.copy2(step_dir / record, model_dir / record)
    step = STEP_DIR.fullmatch(step_dir.name)
    written = ", ".join(saved_float_dtypes(model_dir))
    card = model_card(name, method, int(step.group(1)) if step else None, run, lora_merged, written)
    (model_dir / CARD_FILE).write_text(card)


def check_processor(model_dir: Path, copy: Path) -> None:
    """Refuses a model directory without image processor settings or a tokenizer, naming the files to copy
    into the checkpoint's copy, where they came from."""
    missing = [
        what for what, found in (("image processor settings", image_processor_settings(model_dir)),
                                 ("tokenizer", has_tokenizer(model_dir))) if not found
    ]  # fmt: skip
    if missing:
        raise ValueError(
            f"{copy} holds no {' and no '.join(missing)}: copy the processor and tokenizer files "
            "(preprocessor_config.json or processor_config.json, tokenizer.json, tokenizer_config.json) of the "
            "model the run started from into it"
        )


def export(config: ExportConfig) -> dict:
    started = time.perf_counter()
    if config.dtype not in EXPORT_DTYPES:
        raise ValueError(
            f"dtype must be bfloat16, float16, float32 or saved (as the checkpoint holds them), got {config.dtype!r}"
        )
    # Absolute, links kept: the card reads the step from the path as given (`.` or `actor` inside
    # global_step_N, or a link named global_step_N to the checkpoint's storage).
    shards, copy = checkpoint_dirs(Path(os.path.abspath(config.checkpoint)))
    # Resolved: `out_dir=.` gets a name to build beside, and a link's target is where the export goes.
    out = Path(config.out_dir).resolve()
    if out.is_file() or out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: export writes a new directory")
    built = out.with_name(f".{out.name}.partial")
    shutil.rmtree(built, ignore_errors=True)
    built.parent.mkdir(parents=True, exist_ok=True)
    dtype = None if config.dtype == "saved" else config.dtype
    try:
        weights_from, lora_merged = write_model_weights(shards, copy, built, dtype)
        # verl's copy holds the config, tokenizer, chat template and processor even where it holds no weights.
        for path in copy.iterdir():
            if path.is_file() and not is_weight_file(path) and not (built / path.name).exists():
                shutil.copy2(path, built / path.name)
        name_dtype_in_config(built)
        write_model_card(built, out.name, shards, lora_merged)
        check_processor(built, copy)
        reason = not_a_model_reason(built)
        if reason:
            raise ValueError(f"the export of {shards} is no model: {reason}")
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    if out.is_dir():
        out.rmdir()
    built.rename(out)
    files = sorted(path.name for path in out.iterdir())
    return {
        "checkpoint": str(shards),
        "weights_from": weights_from,
        "lora_merged": lora_merged,
        "model_type": checkpoint_model_type(out),
        "out_dir": str(out),
        "files": files,
        "dtypes": saved_dtypes(out),
        "weight_bytes": sum(path.stat().st_size for path in out.iterdir() if is_weight_file(path)),
        "seconds": round(time.perf_counter() - started, 1),
    }


def print_export(config: ExportConfig) -> None:
    print(json.dumps(export(config), indent=2))


def main(argv: list[str] | None = None) -> None:
    run_settings_cli(__doc__, ExportConfig, sys.argv[1:] if argv is None else argv, print_export)


if __name__ == "__main__":
    main()
