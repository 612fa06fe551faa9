"""The verl adapter: Mixed-Reward as a verl reward manager (`mixed_r1`) and a V1 trainer
(`mixed_r1_sync`) that logs per-task rewards, both registered through the `verl.plugins` entry point."""
