"""Saves a model as verl's FSDP checkpoint from every rank of a CPU process group, as verl's trainers save
the actor: the model sharded with verl's FSDP2 wrapping, written by verl's checkpoint manager (one shard
file per rank, the config, tokenizer and processor in huggingface/). Run under torchrun (gloo):

    torchrun --nproc_per_node 3 tests/fsdp_checkpoint.py MODEL_DIR OUT_DIR [--lora-rank 8] [--tied] [--replicas 2]
    torchrun --nproc_per_node 4 tests/fsdp_checkpoint.py CONFIG_DIR OUT_DIR --random-init

Rank 0 also writes reference.safetensors beside the checkpoint: every weight of the model as it would be
saved unsharded, a LoRA model's with peft merging its adapters. `--random-init` builds the model of
CONFIG_DIR's config with each rank initialising its own shard only (memory: the shard), without reference.
`--replicas N` shards the model over the ranks of each of N replicas, as verl does with actor.fsdp_config.fsdp_size
below the number of GPUs (hybrid sharding).
"""

import argparse
import copy
import os
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch.distributed.device_mesh import init_device_mesh
from transformers import AutoConfig, AutoModelForImageTextToText
from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager
from verl.utils.fsdp_utils import apply_fsdp2

from mixed_r1_verl.data.processor import load_image_text_processor

# The language model's projections a LoRA run adapts here, as `lora=on` keeps adapters off the vision tower.
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def pretrained_model(model_dir: str, lora_rank: int, lora_alpha: int, tied: bool):
    config = AutoConfig.from_pretrained(model_dir)
    if tied:
        config.tie_word_embeddings = True
        config.get_text_config().tie_word_embeddings = True
    model = AutoModelForImageTextToText.from_pretrained(model_dir, config=config, dtype=torch.float32)
    # As verl's actor, which trains in float32, its config keeps naming the dtype the model was saved in.
    saved_dtype = AutoConfig.from_pretrained(model_dir).dtype
    for part in (model.config, *(getattr(model.config, key) for key in model.config.sub_configs)):
        part.dtype = saved_dtype
    if tied:
        # The saved model has an output layer of its own, which transformers keeps over the tie.
        model.lm_head.weight = model.get_input_embeddings().weight
    if not lora_rank:
        return model
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=LORA_TARGETS))
    # peft starts B at zero, which would merge to the base weights: every rank draws the same adapters.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def reference_weights(model, lora: bool) -> dict:
    if lora:
        model = copy.deepcopy(model).merge_and_unload()
    return {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--tied", action="store_true", help="tie the output layer to the input embeddings")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if args.replicas > 1:
        mesh = init_device_mesh("cpu", (args.replicas, world_size // args.replicas), mesh_dim_names=("ddp", "fsdp"))
    else:
        mesh = init_device_mesh("cpu", (world_size,), mesh_dim_names=("fsdp",))
    if args.random_init:
        config = AutoConfig.from_pretrained(args.model_dir)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        apply_fsdp2(model, {"mesh": mesh}, {})
        model.to_empty(device="cpu")
        generator = torch.Generator().manual_seed(rank)
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.to_local().copy_(torch.randn(tensor.to_local().shape, generator=generator) * 0.02)
        processor = None
    else:
        model = pretrained_model(args.model_dir, args.lora_rank, args.lora_alpha, args.tied)
        if rank == 0:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
            reference = reference_weights(model, bool(args.lora_rank))
            save_file(reference, Path(args.out_dir) / "reference.safetensors", metadata={"format": "pt"})
        apply_fsdp2(model, {"mesh": mesh}, {})
        processor = load_image_text_processor(args.model_dir)
    manager = FSDPCheckpointManager(
        model, None, processing_class=processor, checkpoint_config=OmegaConf.create({"save_contents": ["model"]})
    )
    manager.save_checkpoint(os.path.join(args.out_dir, "actor"), global_step=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
