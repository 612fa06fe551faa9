"""Runs `python -m mixed_r1_verl.sft` on CPU, so verl's own SFT trainer can be tested without a GPU:

    python tests/verl_on_cpu.py recipe=learn trainer.device=cpu engine.strategy=fsdp2 ...

verl 0.9.1 has no CPU platform: it registers one for NVIDIA, Ascend and AMD devices only, forms its
process group as `cpu:gloo,<device>:<backend>` (invalid when the device is the CPU), and registers
its FSDP engine for accelerators. This runner supplies the CPU platform, a gloo process group and
the engine lookup; the trainer, the engine (FSDP2: FSDP1 needs an accelerator), the dataset, the
checkpoints and the entry are the real ones. Only `mixed_r1_verl.sft`'s GPU check is left out.
"""

import os
import sys
import types
from contextlib import contextmanager

os.environ["VERL_PLATFORM"] = "cpu"
os.environ["VERL_ENGINE_DEVICE"], os.environ["VERL_ENGINE_VENDOR"] = "cuda", "nvidia"

import torch  # noqa: E402
import torch.distributed  # noqa: E402
import verl.utils.distributed  # noqa: E402
from verl.plugin.platform.platform_base import PlatformBase  # noqa: E402
from verl.plugin.platform.platform_manager import PlatformRegistry  # noqa: E402

from mixed_r1_verl.entry import run_recipe_entry  # noqa: E402
from mixed_r1_verl.main import config_dir  # noqa: E402
from mixed_r1_verl.sft import PRIMARY_CONFIG, sft_recipe_dir, train_on_this_node  # noqa: E402


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

    def ray_resource_name(self):
        return "CPU"

    def ray_noset_envvars(self):
        return []

    def is_ipc_supported(self):
        return False

    def cudart(self):
        return None


def initialize_gloo_process_group(timeout_second=None):
    torch.distributed.init_process_group(backend="gloo")
    return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


verl.utils.distributed.initialize_global_process_group = initialize_gloo_process_group

if __name__ == "__main__":
    sys.argv[0] = "mixed_r1_verl.sft"
    run_recipe_entry("mixed_r1_verl.sft", sft_recipe_dir(), config_dir(), PRIMARY_CONFIG, train_on_this_node)
