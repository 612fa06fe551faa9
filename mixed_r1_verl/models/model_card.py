"""The model card (README.md) `mixed-r1 export` writes: the Hub's metadata (base model, library, pipeline,
tags) and what the model was trained from and how, read from the run config the project's trainers save
beside each checkpoint (`mixed_r1_verl/run_config.py`); a checkpoint saved without one (verl's own
trainers) gets a card of what its layout tells.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from mixed_r1_verl.data.model_files import is_hub_id
from mixed_r1_verl.data.records import lookup
from mixed_r1_verl.eval.provenance import package_named, package_version
from mixed_r1_verl.run_config import RUN_CONFIG, read_run_config

CARD_FILE = "README.md"
STEP_DIR = re.compile(r"global_step_(\d+)")
# Where a GRPO and an SFT run's config names the model it trains.
MODEL_KEY = {"GRPO": "actor_rollout_ref.model", "SFT": "model"}
# A snapshot in the Hugging Face cache, which offline runs train from: models--<org>--<name>/snapshots/<revision>.
CACHE_SNAPSHOT = re.compile(r"models--([^/]+)/snapshots/[^/]+")
# The runs a chain of checkpoints (SFT, then GRPO from its copy, ...) is followed back through.
MOST_RUNS = 8


def run_method(run: dict) -> str:
    return "GRPO" if "actor_rollout_ref" in run else "SFT"


def saved_run_of(model_dir: Path) -> dict | None:
    """The config of the run that wrote a model directory: an export holds it; a checkpoint's Hugging Face
    copy (SFT's `global_step_N/huggingface`, GRPO's `global_step_N/actor/huggingface`) has it in `global_step_N`."""
    directories = [model_dir]
    if model_dir.name == "huggingface":
        directories.append(model_dir.parent.parent if model_dir.parent.name == "actor" else model_dir.parent)
    for directory in directories:
        if (run := read_run_config(directory)) is not None:
            return run
    return None


def base_hub_id(model_path: str | None) -> str | None:
    """The Hub repository a run's model comes from, for the Hub's `base_model`: the id given; a Hugging Face
    cache snapshot's (offline runs train from the snapshot); for a model that a run of the project trained
    (an SFT checkpoint GRPO starts from, say), the one that run started from. None for a local model of no
    known origin."""
    for _ in range(MOST_RUNS):
        if not model_path:
            return None
        if snapshot := CACHE_SNAPSHOT.search(model_path):
            return snapshot.group(1).replace("--", "/")
        # The entries save a local model's path absolute: a relative one is a hub id, wherever this runs
        # (a directory of that name here says nothing of the run).
        if not os.path.isabs(model_path):
            return model_path if is_hub_id(model_path) else None
        run = saved_run_of(Path(os.path.realpath(model_path)))
        if run is None:
            return None
        model_path = lookup(run, f"{MODEL_KEY[run_method(run)]}.path")
    return None


def files_named(value) -> str | None:
    """A data setting (one path or a list) as a cell."""
    if value is None:
        return None
    return ", ".join(f"`{path}`" for path in ([value] if isinstance(value, str) else value))


def trained_rows(run: dict, method: str) -> list[tuple[str, object]]:
    """What a GRPO or SFT run was trained from and with, as (label, value) rows; rows its config lacks are left out."""
    model_path = lookup(run, f"{MODEL_KEY[method]}.path")
    planned_steps = lookup(run, "trainer.total_training_steps")
    rows = [
        ("started from", f"`{model_path}`" if model_path else None),
        ("training data", files_named(lookup(run, "data.train_files"))),
        ("planned steps", planned_steps),
        # With a step count set, total_epochs only bounds the run: the epochs trained follow from the steps.
        ("epochs", lookup(run, "trainer.total_epochs") if planned_steps is None else None),
    ]
    if method == "GRPO":
        prompts, responses = lookup(run, "data.train_batch_size"), lookup(run, "actor_rollout_ref.rollout.n")
        batch = f"{prompts} × {responses}" if prompts and responses else None
        kl_coef = lookup(run, "actor_rollout_ref.actor.kl_loss_coef")
        rows += [
            ("reward manager", lookup(run, "reward.reward_manager.name")),
            ("prompts per step × responses per prompt", batch),
            ("learning rate", lookup(run, "actor_rollout_ref.actor.optim.lr")),
            ("KL loss coefficient", kl_coef if lookup(run, "actor_rollout_ref.actor.use_kl_loss") else None),
            ("rollout temperature", lookup(run, "actor_rollout_ref.rollout.temperature")),
            ("max response tokens", lookup(run, "data.max_response_length")),
        ]
    else:
        rows += [
            ("sequences per step", lookup(run, "data.train_batch_size")),
            ("learning rate", lookup(run, "optim.lr")),
            ("max sequence tokens", lookup(run, "data.max_length")),
        ]
    return [(label, value) for label, value in rows if value is not None]


def model_card(name: str, method: str, step: int | None, run: dict | None, lora_merged: bool, dtype: str) -> str:
    """README.md of an exported model: Hub metadata, then how it was trained and how to load it. `lora_merged`:
    the export merged adapters into the weights (a run's own copy already holds them merged)."""
    run = run or {}
    base = base_hub_id(lookup(run, f"{MODEL_KEY[method]}.path"))
    metadata = {
        **({"base_model": base} if base else {}),
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["mixed-r1", method.lower(), "verl"],
    }
    rows = [("base model", f"[{base}](https://huggingface.co/{base})")] if base else []
    rows += [row for row in trained_rows(run, method) if row != ("started from", f"`{base}`")]
    lora_rank = lookup(run, f"{MODEL_KEY[method]}.lora_rank")
    if lora_rank or lora_merged:
        trained = [f"rank {lora_rank}, alpha {lookup(run, f'{MODEL_KEY[method]}.lora_alpha')}"] if lora_rank else []
        rows.append(("LoRA", ", ".join([*trained, "merged into the weights"])))
    rows.append(("weights", dtype))
    table = "\n".join(["| | |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)])
    config_note = (
        f"The run's whole config, resolved, is in `{RUN_CONFIG}`."
        if run
        else "The checkpoint holds no config of its run (the project's trainers save one): only its layout is known."
    )
    run_kind = "a GRPO run (Mixed-R1, arXiv 2505.24164)" if method == "GRPO" else "an SFT run (Mixed-R1's cold start)"
    checkpoint = f"Step {step} of {run_kind}" if step is not None else f"A checkpoint of {run_kind}"
    return (
        f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n"
        f"# {name}\n\n"
        f"{checkpoint}, exported by {package_named(package_version())}.\n\n{table}\n\n{config_note}\n\n"
        "## Use\n\n"
        f"From this directory, `{name}`, or from its Hub repository, by the repository's id:\n\n"
        "```python\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f'model = AutoModelForImageTextToText.from_pretrained("{name}", dtype="auto")\n'
        f'processor = AutoProcessor.from_pretrained("{name}")\n'
        "```\n\n"
        f"or serve it with vLLM: `vllm serve {name}`.\n"
    )
