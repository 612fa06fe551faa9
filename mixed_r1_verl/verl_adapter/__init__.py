"""The verl adapter: Mixed-Reward as a verl reward manager (`mixed_r1`), a V1 trainer (`mixed_r1_sync`)
that logs per-task rewards, the rollout's agent loop (`mixed_r1_single_turn`) and InternVL support
(`internvl.py`), all registered through the `verl.plugins` entry point."""
