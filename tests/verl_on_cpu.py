"""verl 0.9.1 on CPU, for tests: the platform, fixes and rollout it needs there, imported into every
process verl starts (`VERL_USE_EXTERNAL_MODULES=verl_on_cpu`, this directory on PYTHONPATH). The runner
is tests/run_on_cpu.py.

verl registers platforms for NVIDIA, Ascend and AMD devices only, forms its process group as
`cpu:gloo,<device>:<backend>` (invalid when the device is the CPU), registers its FSDP engine for
accelerators, pins the reference model's offloaded memory (which needs an accelerator), and rolls out
with vLLM, SGLang or TensorRT-LLM, none of which runs on a CPU. This module supplies a CPU platform,
a gloo process group, the engine lookup, unpinned offloading and a rollout server that generates with
transformers (`actor_rollout_ref.rollout.name=transformers`). verl's trainers, workers, FSDP2 engine
(FSDP1 needs an accelerator), agent loop, reward loop and checkpoints are the real ones.

Without torchvision, transformers' AutoProcessor cannot build the Qwen-VL processors (their video parts
need it); here it falls back to the project's image-and-text processors, under the class names verl
recognises.
"""

import os
import types
from contextlib import contextmanager

os.environ["VERL_PLATFORM"] = "cpu"
os.environ["VERL_ENGINE_DEVICE"], os.environ["VERL_ENGINE_VENDOR"] = "cuda", "nvidia"

import torch  # noqa: E402
import torch.distributed  # noqa: E402
from verl.plugin.platform.platform_base import PlatformBase  # noqa: E402
from verl.plugin.platform.platform_manager import PlatformRegistry  # noqa: E402


def no_device_memory(*args, **kwargs) -> int:
    return 0


# What verl asks of `torch.<device>` beyond `torch.cpu`: memory figures, seeds and the device's name.
cpu_device = types.ModuleType("cpu_device")
cpu_device.__dict__.update({name: getattr(torch.cpu, name) for name in dir(torch.cpu) if not name.startswith("__")})
cpu_device.__dict__.update(
    memory_allocated=no_device_memory,
    memory_reserved=no_device_memory,
    max_memory_allocated=no_device_memory,
    max_memory_reserved=no_device_memory,
    reset_peak_memory_stats=lambda *args: None,
    mem_get_info=lambda *args: (0, 0),
    empty_cache=lambda: None,
    get_device_name=lambda *args: "CPU",
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
    get_rng_state=lambda *args: torch.get_rng_state(),
    set_rng_state=lambda state, *args: torch.set_rng_state(state),
)


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    device_name = "cpu"
    vendor_name = "cpu"
    device_module = cpu_device

    def is_available(self):
        return True

    def current_device(self):
        return torch.device("cpu")

    def device_count(self):
        return 1

    def set_device(self, device_index):
        pass

    def synchronize(self, device_index=None):
        pass

    def manual_seed(self, seed):
        torch.manual_seed(seed)

    def manual_seed_all(self, seed):
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings):
        pass

    def empty_cache(self):
        pass

    def get_device_capability(self, device_index=0):
        return None, None

    def communication_backend_name(self):
        return "gloo"

    def visible_devices_envvar(self):
        return "CPU_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg):
        yield

    def profiler_start(self):
        pass

    def profiler_stop(self):
        pass

    # Ray is told of one logical GPU, which verl's resource pools ask for.
    def ray_resource_name(self):
        return "GPU"

    def ray_resource_options(self, num_gpus):
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self):
        return []

    def is_ipc_supported(self):
        return False

    def cudart(self):
        return None


_init_process_group = torch.distributed.init_process_group


def init_process_group(*args, backend=None, **kwargs):
    # verl asks for "cpu:gloo,<device>:<backend>", which names the CPU twice when it is the device.
    if backend == "cpu:gloo,cpu:gloo":
        backend = "gloo"
    return _init_process_group(*args, backend=backend, **kwargs)


torch.distributed.init_process_group = init_process_group


# Imported once the CPU platform is registered: these modules ask for the platform when imported.
import ray  # noqa: E402
import verl.workers.engine.fsdp.transformer_impl as fsdp_engine  # noqa: E402
import verl.workers.rollout.base as rollout_base  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402
from verl.workers.rollout.base import BaseRollout  # noqa: E402
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput  # noqa: E402

from cpu_rollout_inputs import rollout_model_inputs  # noqa: E402
from mixed_r1_verl.data.processor import (  # noqa: E402
    Qwen3VLImageTextProcessor,
    Qwen25VLImageTextProcessor,
    load_image_text_processor,
)
from mixed_r1_verl.models.lora import lora_scaling, merge_adapter  # noqa: E402


def pinned_offload_unavailable(pin_memory=True):
    return _cpu_offload_policy(pin_memory=False)


_cpu_offload_policy = fsdp_engine.CPUOffloadPolicy
fsdp_engine.CPUOffloadPolicy = pinned_offload_unavailable


# verl binds M-RoPE to processors it recognises by class name.
VERL_NAMED_PROCESSORS = {
    Qwen25VLImageTextProcessor: type("Qwen2_5_VLProcessor", (Qwen25VLImageTextProcessor,), {}),
    Qwen3VLImageTextProcessor: type("Qwen3VLProcessor", (Qwen3VLImageTextProcessor,), {}),
}
_auto_processor = AutoProcessor.from_pretrained


def processor_without_torchvision(path, *args, **kwargs):
    try:
        return _auto_processor(path, *args, **kwargs)
    except ImportError:
        processor = load_image_text_processor(path)
        processor.__class__ = VERL_NAMED_PROCESSORS.get(type(processor), type(processor))
        return processor


AutoProcessor.from_pretrained = processor_without_torchvision

ROLLOUT_NAME = "transformers"


def rollout_server_name(replica_rank: int) -> str:
    return f"transformers_rollout_{replica_rank}"


@ray.remote(num_cpus=0)
class TransformersRolloutServer:
    """One replica's model, generating token ids from token ids as verl's vLLM server does."""

    def __init__(self, model_path: str, response_length: int):
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
        self.processor = load_image_text_processor(model_path)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.response_length = response_length
        self.global_steps = None

    async def generate(self, request_id, prompt_ids, sampling_params, image_data=None, video_data=None, **kwargs):
        inputs = rollout_model_inputs(self.processor, prompt_ids, image_data)
        temperature = sampling_params.get("temperature", 1.0)
        sampling = {"do_sample": False}
        if temperature > 0:
            top_k = sampling_params.get("top_k", -1)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": sampling_params.get("top_p", 1.0),
                        "top_k": top_k if top_k > 0 else 0}  # fmt: skip
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, **sampling, max_new_tokens=min(sampling_params.get("max_tokens", self.response_length), self.response_length),
                output_scores=True, return_dict_in_generate=True,
            )  # fmt: skip
        token_ids = []
        for token in out.sequences[0, len(prompt_ids) :].tolist():
            token_ids.append(token)
            if token in self.eos_ids:
                break
        log_probs = None
        if sampling_params.get("logprobs"):
            log_probs = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, token_ids)]
        return TokenOutput(
            token_ids=token_ids, log_probs=log_probs, stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )  # fmt: skip

    async def load_weights(self, weights: dict, global_steps: int | None) -> list[str]:
        """The actor's weights after `global_steps`; returns the model's parameters they left out."""
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if unexpected:
            raise KeyError(f"weights the rollout model does not have: {unexpected[:5]}")
        if global_steps is not None:
            self.global_steps = global_steps
        return missing

    async def wake_up(self):
        pass

    async def sleep(self):
        pass

    async def clear_kv_cache(self):
        pass

    async def release_kv_cache(self):
        pass

    async def resume_kv_cache(self):
        pass

    async def abort_all_requests(self, reject_request=False):
        pass

    async def resume_generation(self):
        pass


class TransformersReplica(RolloutReplica):
    async def launch_servers(self):
        name = rollout_server_name(self.replica_rank)
        server = TransformersRolloutServer.options(name=name, max_concurrency=64).remote(
            self.model_config.path, self.config.response_length
        )
        self.servers, self._server_handle, self._server_address = [server], server, name


class TransformersServerAdapter(BaseRollout):
    """The actor worker's side: hands the trained weights to the replica's server."""

    async def resume(self, tags):
        pass

    async def release(self):
        pass

    async def update_weights(
        self, weights, wire_format="named_tensors", global_steps=None, peft_config=None, base_sync_done=False, **kwargs
    ):
        state = {}
        for name, tensor in weights:
            tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            state[name] = tensor.detach().to("cpu", torch.float32).clone()
        # With LoRA verl sends the base weights once, then only the adapters, which vLLM serves as an
        # adapter over them; here they are merged into the base weights.
        if peft_config and not base_sync_done:
            state = self.lora_base_weights = {name.replace(".base_layer.", "."): t for name, t in state.items()}
        elif peft_config:
            adapters, state = state, {name: tensor.clone() for name, tensor in self.lora_base_weights.items()}
            unmerged = merge_adapter(state, adapters, lora_scaling(peft_config))
            if unmerged:
                raise KeyError(f"adapters of modules the base weights lack: {unmerged[:5]}")
        if int(os.environ.get("RANK", 0)) == 0:
            missing = await ray.get_actor(rollout_server_name(0)).load_weights.remote(state, global_steps)
            if missing:
                raise KeyError(f"the actor sent no weights for {missing[:5]}")


RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: TransformersReplica)
rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.TransformersServerAdapter"
