"""Runs the project's training entries on CPU with verl_on_cpu (this directory), for tests:

    python tests/run_on_cpu.py sft recipe=learn trainer.device=cpu engine.strategy=fsdp2 ...
    python tests/run_on_cpu.py grpo recipe=smoke trainer.device=cpu actor_rollout_ref.rollout.name=transformers ...

Each is the real entry (`mixed_r1_verl.sft`, `mixed_r1_verl.main`) but for its check for local CUDA
GPUs; Ray is told of one logical GPU for verl's resource pools.
"""

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
os.environ["VERL_USE_EXTERNAL_MODULES"] = "verl_on_cpu"
sys.path.insert(0, str(TESTS))

import verl_on_cpu  # noqa: E402,F401

from mixed_r1_verl import main as grpo  # noqa: E402
from mixed_r1_verl import sft  # noqa: E402
from mixed_r1_verl.entry import run_recipe_entry  # noqa: E402

if __name__ == "__main__":
    entry, sys.argv[1:] = sys.argv[1], sys.argv[2:]
    if entry == "sft":
        sys.argv[0] = "mixed_r1_verl.sft"
        run_recipe_entry("mixed_r1_verl.sft", sft.sft_recipe_dir(), sft.sft_config_dir(), sft.PRIMARY_CONFIG, sft.train_on_this_node)
    else:
        sys.argv[0] = "mixed_r1_verl.main"
        grpo.exit_unless_local_gpus_suffice = lambda config: None
        grpo.main()
