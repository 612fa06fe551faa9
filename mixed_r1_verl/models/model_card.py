"""The run a checkpoint came from, and the model card an export writes from it.

The project's trainers save the run's resolved config beside each checkpoint (`RUN_CONFIG`, in
`global_step_N/`) before verl records it as the latest. `mixed-r1 export` copies it into the model
directory and writes README.md: the Hub's metadata (base model, library, pipeline, tags) and what the
model was trained from and how, read from that config; a checkpoint saved without one (verl's own
trainers) gets a card of what its layout tells.
"""

from __future__ import annotations

import os
import re
from importlib.metadata import version
from pathlib import Path

import yaml

RUN_CONFIG = "mixed_r1_run.yaml"
CARD_FILE = "README.md"
STEP_DIR = re.compile(r"global_step_(\d+)")
# A Hub repository id: owner/name, each of letters, digits, '-', '_' and '.'.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Where a GRPO and an SFT run's config names the model it trains.
MODEL_KEY = {"GRPO": "actor_rollout_ref.model", "SFT": "model"}


def write_run_config(config, checkpoint: Path) -> None:
    """Saves the run's config (an OmegaConf config), resolved, in the checkpoint directory."""
    from omegaconf import OmegaConf

    written = checkpoint / f".{RUN_CONFIG}.partial"
    written.write_text(OmegaConf.to_yaml(config, resolve=True))
    written.replace(checkpoint / RUN_CONFIG)


def read_run_config(checkpoint: Path) -> dict | None:
    """The run config saved in a checkpoint directory; None where it has none."""
    saved = checkpoint / RUN_CONFIG
    return yaml.safe_load(saved.read_text()) if saved.is_file() else None


def setting(run: dict, dotted: str):
    """The value at a dotted key of a run config; None where any part is missing."""
    value = run
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def hub_id(model_path: str | None) -> str | None:
    """The base model as the Hub's `base_model` metadata names it: a repository id, not a local directory."""
    if not model_path or not HUB_ID.fullmatch(model_path) or ".." in model_path or os.path.exists(model_path):
        return None
    return model_path


def files_named(value) -> str | None:
    """A data setting (one path or a list) as a cell."""
    if value is None:
        return None
    return ", ".join(f"`{path}`" for path in ([value] if isinstance(value, str) else value))


def trained_rows(run: dict, method: str) -> list[tuple[str, object]]:
    """What a GRPO or SFT run was trained from and with, as (label, value) rows; rows its config lacks are left out."""
    model_path = setting(run, f"{MODEL_KEY[method]}.path")
    rows = [
        ("base model", f"`{model_path}`" if model_path else None),
        ("training data", files_named(setting(run, "data.train_files"))),
        ("planned steps", setting(run, "trainer.total_training_steps")),
        ("epochs", setting(run, "trainer.total_epochs")),
    ]
    if method == "GRPO":
        prompts, responses = setting(run, "data.train_batch_size"), setting(run, "actor_rollout_ref.rollout.n")
        batch = f"{prompts} × {responses}" if prompts and responses else None
        kl_coef = setting(run, "actor_rollout_ref.actor.kl_loss_coef")
        rows += [
            ("reward manager", setting(run, "reward.reward_manager.name")),
            ("prompts per step × responses per prompt", batch),
            ("learning rate", setting(run, "actor_rollout_ref.actor.optim.lr")),
            ("KL loss coefficient", kl_coef if setting(run, "actor_rollout_ref.actor.use_kl_loss") else None),
            ("rollout temperature", setting(run, "actor_rollout_ref.rollout.temperature")),
            ("max response tokens", setting(run, "data.max_response_length")),
        ]
    else:
        rows += [
            ("sequences per step", setting(run, "data.train_batch_size")),
            ("learning rate", setting(run, "optim.lr")),
            ("max sequence tokens", setting(run, "data.max_length")),
        ]
    return [(label, value) for label, value in rows if value is not None]


def model_card(name: str, method: str, step: int | None, run: dict | None, lora_merged: bool, dtype: str) -> str:
    """README.md of an exported model: Hub metadata, then how it was trained and how to load it. `lora_merged`:
    the export merged adapters into the weights (a run's own copy already holds them merged)."""
    run = run or {}
    base = hub_id(setting(run, f"{MODEL_KEY[method]}.path"))
    metadata = {
        **({"base_model": base} if base else {}),
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["mixed-r1", method.lower(), "verl"],
    }
    rows = trained_rows(run, method)
    lora_rank = setting(run, f"{MODEL_KEY[method]}.lora_rank")
    if lora_rank or lora_merged:
        trained = [f"rank {lora_rank}, alpha {setting(run, f'{MODEL_KEY[method]}.lora_alpha')}"] if lora_rank else []
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
        f"{checkpoint}, exported by mixed_r1_verl {version('mixed_r1_verl')}.\n\n{table}\n\n{config_note}\n\n"
        "## Use\n\n"
        f"From this directory, `{name}`, or from its Hub repository, by the repository's id:\n\n"
        "```python\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f'model = AutoModelForImageTextToText.from_pretrained("{name}", dtype="auto")\n'
        f'processor = AutoProcessor.from_pretrained("{name}")\n'
        "```\n\n"
        f"or serve it with vLLM: `vllm serve {name}`.\n"
    )
