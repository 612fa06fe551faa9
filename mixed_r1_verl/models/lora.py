"""LoRA runs: the modules an adapter would cover, and a checkpoint with its adapter merged into its weights.

verl trains LoRA adapters with peft (`actor_rollout_ref.model.lora_rank` > 0) and its vLLM rollout serves
them as adapters on the language model only: vLLM ignores the adapters of a multimodal model's vision
tower and projector, so rollouts would come from another policy than the one trained. `lora=on` keeps
adapters off those parts; `vision_modules_with_adapters` names the ones a configuration would cover.

verl's model merger writes a LoRA checkpoint as the base weights with the adapter beside them
(`lora_adapter/`); loaded as it is, the directory is the base model. `with_lora_merged` gives the
directory to generate with or train from: the adapter merged into the weights, written once to
`lora_merged/`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from mixed_r1_verl.data.model_files import file_stamps

logger = logging.getLogger(__name__)

ADAPTER_DIR = "lora_adapter"
MERGED_DIR = "lora_merged"
# In the merged directory: the files it was merged from (name, size, time), to tell when to merge again.
MERGE_RECORD = "merged_from.json"
# The parts of a multimodal model vLLM serves no LoRA on: Qwen-VL's `visual`, InternVL's `vision_tower`
# and `multi_modal_projector`.
VISION_PARTS = frozenset({"visual", "vision_tower", "multi_modal_projector"})
# peft's prefix of the adapted model's module names, as verl's merger saves them.
PEFT_PREFIX = "base_model.model."


def vision_modules_with_adapters(model_dir: str | os.PathLike, target_modules, exclude_modules) -> list[str]:
    """The modules of the vision tower and projector that peft would give an adapter with these
    `target_modules` and `exclude_modules` (as verl passes them), on the checkpoint's architecture (built
    on the meta device: no weights are read)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))
    adapted = get_peft_model(model, LoraConfig(target_modules=target_modules, exclude_modules=exclude_modules))
    return [
        name.removeprefix(PEFT_PREFIX)
        for name, module in adapted.named_modules()
        if isinstance(module, LoraLayer) and VISION_PARTS & set(name.split("."))
    ]


def merge_adapter(parameters: dict, adapter: dict, scaling: float) -> list[str]:
    """Adds to each weight `<module>.weight` of a model's `parameters` (by the model's module names) its
    adapter in `adapter` (`base_model.model.<module>.lora_A.weight` and `lora_B.weight`), in place:
    W + scaling x B A, in the weight's dtype. Returns the modules that have no weight in `parameters`."""
    import torch

    missing = []
    for prefix in adapter_prefixes(adapter):
        module = prefix.removeprefix(PEFT_PREFIX)
        weight = parameters.get(f"{module}.weight")
        if weight is None:
            missing.append(module)
            continue
        down, up = adapter[f"{prefix}.lora_A.weight"].float(), adapter[f"{prefix}.lora_B.weight"].float()
        with torch.no_grad():
            weight.copy_((weight.float() + scaling * (up @ down)).to(weight.dtype))
    return missing


def adapter_prefixes(adapter: dict) -> list[str]:
    return [name.removesuffix(".lora_A.weight") for name in adapter if name.endswith(".lora_A.weight")]


def lora_scaling(adapter_config: dict) -> float:
    """The factor peft scales an adapter's B A by: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    rank, alpha = adapter_config["r"], adapter_config["lora_alpha"]
    return alpha / rank**0.5 if adapter_config.get("use_rslora") else alpha / rank


def merge_sources(model_dir: Path) -> list[list]:
    """Name, size and time of the files a merge is made from: the weights, the adapter and config.json."""
    files = sorted([*model_dir.glob("*.safetensors"), *(model_dir / ADAPTER_DIR).iterdir(), model_dir / "config.json"])
    return file_stamps(model_dir, files)


def with_lora_merged(model_path: str) -> str:
    """`model_path` itself, or for a directory holding a LoRA adapter (`lora_adapter/`, as verl's model
    merger writes it), the directory of its weights with the adapter merged in, `lora_merged/` inside
    it: written the first time, and again whenever the weights, the adapter or config.json change."""
    model_dir = Path(model_path)
    adapter_dir = model_dir / ADAPTER_DIR
    if not (adapter_dir / "adapter_config.json").is_file():
        return model_path
    merged_dir = model_dir / MERGED_DIR
    sources = merge_sources(model_dir)
    record = merged_dir / MERGE_RECORD
    if record.is_file() and json.loads(record.read_text()) == sources:
        return str(merged_dir)
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    logger.warning(
        "%s holds a LoRA adapter (%s/): using its weights with the adapter merged in, written to %s",
        model_dir, ADAPTER_DIR, merged_dir,
    )  # fmt: skip
    scaling = lora_scaling(json.loads((adapter_dir / "adapter_config.json").read_text()))
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    # Loaded, the weights go by the module names the adapter uses, whatever names the files give them.
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype="auto")
    missing = merge_adapter(dict(model.named_parameters()), adapter, scaling)
    if missing:
        raise ValueError(f"{adapter_dir} adapts {', '.join(missing[:3])}, which {model_dir}'s model does not have")
    built = merged_dir.with_name(f".{MERGED_DIR}.partial")
    shutil.rmtree(built, ignore_errors=True)
    model.save_pretrained(built)
    for path in model_dir.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and not (built / path.name).exists():
            shutil.copy2(path, built / path.name)
    (built / MERGE_RECORD).write_text(json.dumps(sources))
    shutil.rmtree(merged_dir, ignore_errors=True)
    built.rename(merged_dir)
    return str(merged_dir)
