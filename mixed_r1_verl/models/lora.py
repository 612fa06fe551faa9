"""LoRA runs: the modules an adapter would cover, and a checkpoint with its adapter merged into its weights.

verl trains LoRA adapters with peft (`actor_rollout_ref.model.lora_rank` > 0) and its vLLM rollout serves
them as adapters on the language model only: vLLM ignores the adapters of a multimodal model's vision
tower and projector, so rollouts would come from another policy than the one trained. `lora=on` keeps
adapters off those parts; `vision_modules_with_adapters` names the ones a configuration would cover.

verl's model merger writes a LoRA checkpoint as the base weights with the adapter beside them
(`lora_adapter/`); loaded as it is, the directory is the base model. verl's Hugging Face copy of a LoRA
run's checkpoint (`huggingface/`, saved with `hf_model` in save_contents) holds the weights under peft's
names (`base_model.model.<module>.base_layer.weight`, with `lora_A` / `lora_B` beside them), which no
loader maps to the model: transformers starts from random weights, only reporting them missing. The
project's trainers rewrite that copy with the adapters merged in (`merge_saved_adapters`);
`with_lora_merged` gives the directory to generate with or train from for either layout: the adapter
merged into the weights, written once to `lora_merged/`, beside copies of the directory's other files
(tokenizer, chat template, processor and generation configs) that each call brings up to date.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
from pathlib import Path

from mixed_r1_verl.data.model_files import WEIGHT_FILES, file_stamps
from mixed_r1_verl.models.weight_files import (
    is_weight_file,
    meta_model,
    read_tensor,
    rewrite_weight_files,
    saved_header,
    saved_names,
)

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
# verl's record of a LoRA run's rank and alpha, beside its checkpoint's shards (the parent of huggingface/).
TRAIN_META = "lora_train_meta.json"
# peft's names of the one adapter verl trains, in a saved state dict.
PEFT_ADAPTER_SUFFIXES = (".lora_A.default.weight", ".lora_B.default.weight")
# Beside a merge written in whole: the files it swaps in.
MERGE_COMMIT = "written.json"


def vision_modules_with_adapters(model_dir: str | os.PathLike, target_modules, exclude_modules) -> list[str]:
    """The modules of the vision tower and projector that peft would give an adapter with these
    `target_modules` and `exclude_modules` (as verl passes them), on the checkpoint's architecture (built
    on the meta device: no weights are read)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    adapted = get_peft_model(
        meta_model(model_dir), LoraConfig(target_modules=target_modules, exclude_modules=exclude_modules)
    )
    return [
        name.removeprefix(PEFT_PREFIX)
        for name, module in adapted.named_modules()
        if isinstance(module, LoraLayer) and VISION_PARTS & set(name.split("."))
    ]


def merge_adapter(parameters: dict, adapter: dict, scaling: float) -> list[str]:
    """Adds to each weight `<module>.weight` of a model's `parameters` (by the model's module names) its
    adapter in `adapter` (`base_model.model.<module>.lora_A.weight` and `lora_B.weight`), in place.
    Returns the modules that have no weight in `parameters`."""
    import torch

    missing = []
    for prefix in adapter_prefixes(adapter):
        module = prefix.removeprefix(PEFT_PREFIX)
        weight = parameters.get(f"{module}.weight")
        if weight is None:
            missing.append(module)
            continue
        down, up = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
        with torch.no_grad():
            weight.copy_(with_adapter(weight, down, up, scaling))
    return missing


def with_adapter(weight, down, up, scaling: float):
    """W + scaling x B A, computed in float32, in the weight's dtype."""
    return (weight.float() + scaling * (up.float() @ down.float())).to(weight.dtype)


def adapter_prefixes(adapter: dict) -> list[str]:
    return [name.removesuffix(".lora_A.weight") for name in adapter if name.endswith(".lora_A.weight")]


def lora_scaling(adapter_config: dict) -> float:
    """The factor peft scales an adapter's B A by: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    rank, alpha = adapter_config["r"], adapter_config["lora_alpha"]
    return alpha / rank**0.5 if adapter_config.get("use_rslora") else alpha / rank


def saved_by_peft(model_dir: Path) -> bool:
    """Whether a model directory's weights go by peft's names (read from the files' headers only)."""
    for file in model_dir.glob("*.safetensors"):
        return any(name.startswith(PEFT_PREFIX) for name in saved_header(file)[0])
    return False


def adapter_settings_files(model_dir: Path) -> list[Path]:
    """The files that set how `with_lora_merged` merges a model directory's LoRA adapter (its rank and
    alpha): lora_adapter/'s JSON files, or verl's record beside a copy saved under peft's names; none for a
    directory without an adapter."""
    if (model_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        return sorted((model_dir / ADAPTER_DIR).glob("*.json"))
    meta = model_dir.parent / TRAIN_META
    return [meta] if meta.is_file() and saved_by_peft(model_dir) else []


def train_meta(shards_dir: Path, what: Path) -> Path:
    """verl's record of a LoRA run's rank and alpha beside the checkpoint's shards, for the adapters that
    `what` holds under peft's names."""
    meta = shards_dir / TRAIN_META
    if not meta.is_file():
        raise FileNotFoundError(
            f"{what} holds LoRA adapters under peft's names, and {meta}, verl's record of their rank and alpha, "
            'is missing: write it with the run\'s settings, {"r": <lora_rank>, "lora_alpha": <lora_alpha>}'
        )
    return meta


def trained_lora_scaling(shards_dir: Path, what: Path) -> float:
    """The scaling of a LoRA run's adapters, held by `what`, from verl's record of the run's rank and alpha."""
    return lora_scaling(json.loads(train_meta(shards_dir, what).read_text()))


def write_merged_peft_weights(source_dir: Path, target_dir: Path, dtype: str | None = None) -> list[str]:
    """Writes the weights of `source_dir`, saved under peft's names, to `target_dir` under the model's own
    names with each adapter merged into its weight (cast to `dtype`, torch's name, where given), in the same
    files (and index), holding only the weight being merged in memory. Returns the files written."""
    scaling = trained_lora_scaling(source_dir.parent, source_dir)
    # Each weight by the model's name, and each adapter matrix by peft's name for it: (file, name saved).
    saved_as, adapter = {}, {}
    for file, names in saved_names(source_dir).items():
        for name in names:
            if ".lora_" not in name:
                saved_as[model_name(name)] = (file, name)
            elif name.endswith(PEFT_ADAPTER_SUFFIXES):
                adapter[name.replace(".default.weight", ".weight")] = (file, name)
            else:
                raise ValueError(
                    f"{file}: {name} is not a LoRA A or B matrix of peft's default adapter; only plain LoRA merges"
                )
    adapted = {f"{prefix.removeprefix(PEFT_PREFIX)}.weight": prefix for prefix in adapter_prefixes(adapter)}
    missing = [name for name in adapted if name not in saved_as]
    if missing:
        raise ValueError(f"{source_dir} has adapters on {', '.join(missing[:3])} without those weights")

    def merged(name):
        prefix = adapted.get(name)
        if prefix is None:
            return None
        down, up = read_tensor(*adapter[f"{prefix}.lora_A.weight"]), read_tensor(*adapter[f"{prefix}.lora_B.weight"])
        return with_adapter(read_tensor(*saved_as[name]), down, up, scaling)

    return rewrite_weight_files(
        source_dir, target_dir, lambda saved: None if ".lora_" in saved else model_name(saved), merged, dtype
    )


def model_name(saved: str) -> str:
    """A weight's name in the model, from peft's name for it."""
    return saved.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def merge_saved_adapters(model_dir: Path) -> bool:
    """Rewrites verl's Hugging Face copy of a LoRA run's checkpoint (`huggingface/`) in place with the
    adapters merged into the weights, under the model's own names, so that transformers and vLLM load the
    trained model. False, untouched, for a copy without peft's names.

    The merged weights are written beside the copy first, then swapped in; a swap cut short (the run killed
    in it) is finished by the next call, or by `with_lora_merged`."""
    finish_interrupted_merge(model_dir)
    if not saved_by_peft(model_dir):
        return False
    built = merging_dir(model_dir)
    shutil.rmtree(built, ignore_errors=True)
    saved = [name for names in saved_names(model_dir).values() for name in names]
    written = write_merged_peft_weights(model_dir, built)
    (built / f"{MERGE_COMMIT}.partial").write_text(json.dumps(written))
    os.replace(built / f"{MERGE_COMMIT}.partial", built / MERGE_COMMIT)
    finish_interrupted_merge(model_dir)
    adapters = sum(name.endswith(PEFT_ADAPTER_SUFFIXES[0]) for name in saved)
    logger.warning(
        "%s: %d LoRA adapters merged into the weights, saved under the model's own names", model_dir, adapters
    )
    return True


def merging_dir(model_dir: Path) -> Path:
    return model_dir.with_name(f".{model_dir.name}.merging")


def finish_interrupted_merge(model_dir: Path) -> None:
    """Swaps a merge of `model_dir` that was written in whole (its list of files saved) for its weights:
    the weight files it does not write again go, then each of its files replaces its namesake. Doing
    this again after an interruption finishes it."""
    built = merging_dir(model_dir)
    commit = built / MERGE_COMMIT
    if not commit.is_file():
        return
    written = json.loads(commit.read_text())
    for path in model_dir.iterdir():
        if is_weight_file(path) and path.name not in written:
            path.unlink()
    for name in written:
        if (built / name).exists():
            os.replace(built / name, model_dir / name)
    shutil.rmtree(built)


def write_adapter_merged(model_dir: Path, target_dir: Path) -> None:
    """Saves `model_dir`'s model with the adapter beside it (`lora_adapter/`) merged in, to `target_dir`."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    adapter_dir = model_dir / ADAPTER_DIR
    scaling = lora_scaling(json.loads((adapter_dir / "adapter_config.json").read_text()))
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    # Loaded, the weights go by the module names the adapter uses, whatever names the files give them.
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype="auto")
    missing = merge_adapter(dict(model.named_parameters()), adapter, scaling)
    if missing:
        raise ValueError(f"{adapter_dir} adapts {', '.join(missing[:3])}, which {model_dir}'s model does not have")
    model.save_pretrained(target_dir)


def with_lora_merged(model_path: str) -> str:
    """`model_path` itself, or for a directory holding a LoRA adapter (`lora_adapter/`, as verl's model
    merger writes it, or verl's Hugging Face copy under peft's names), the directory of its weights with
    the adapter merged in, `lora_merged/` inside it: written the first time, and again whenever the
    weights, the adapter (or verl's record of its scaling) or config.json change. Its other files are
    copies of the directory's, brought up to date at every call (`copy_other_files`): an edited chat
    template or tokenizer is used without merging again."""
    model_dir = Path(model_path)
    finish_interrupted_merge(model_dir)
    if (model_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        where, adapter_files = f"{ADAPTER_DIR}/", sorted((model_dir / ADAPTER_DIR).iterdir())
        write_merged = write_adapter_merged
    elif saved_by_peft(model_dir):
        where, adapter_files = "weights under peft's names", [train_meta(model_dir.parent, model_dir)]
        write_merged = write_merged_peft_weights
    else:
        return model_path
    merged_dir = model_dir / MERGED_DIR
    sources = file_stamps(
        model_dir.parent, sorted([*model_dir.glob("*.safetensors"), *adapter_files, model_dir / "config.json"])
    )
    record = merged_dir / MERGE_RECORD
    if record.is_file() and json.loads(record.read_text()) == sources:
        copy_other_files(model_dir, merged_dir)
        return str(merged_dir)
    logger.warning(
        "%s holds a LoRA adapter (%s): using its weights with the adapter merged in, written to %s",
        model_dir, where, merged_dir,
    )  # fmt: skip
    built = merged_dir.with_name(f".{MERGED_DIR}.partial")
    shutil.rmtree(built, ignore_errors=True)
    write_merged(model_dir, built)
    copy_other_files(model_dir, built)
    (built / MERGE_RECORD).write_text(json.dumps(sources))
    shutil.rmtree(merged_dir, ignore_errors=True)
    built.rename(merged_dir)
    return str(merged_dir)


def copy_other_files(model_dir: Path, merged_dir: Path) -> None:
    """Makes the files of a merged directory other than the merge's own (its weights and their index, its
    config.json and its record) the same as `model_dir`'s: tokenizer, chat template, processor and generation
    configs, and whatever else lies beside the weights. A copy that differs from its original is replaced, in
    whole, one whose original is gone is removed; config.json is copied only where the merge wrote none (a
    change to it merges again)."""

    def others(directory: Path) -> dict[str, Path]:
        return {
            path.name: path
            for path in directory.iterdir()
            if path.is_file()
            and path.name != MERGE_RECORD
            and not any(path.match(pattern) for pattern in WEIGHT_FILES)
            and not is_weight_file(path)
        }

    originals = others(model_dir)
    for name, copy in others(merged_dir).items():
        if name not in originals and name != "config.json":
            copy.unlink()
    for name, original in originals.items():
        copy = merged_dir / name
        if copy.is_file() and (name == "config.json" or filecmp.cmp(original, copy, shallow=False)):
            continue
        partial = merged_dir / f".{name}.partial"
        shutil.copy2(original, partial)
        os.replace(partial, copy)
