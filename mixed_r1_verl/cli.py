"""`mixed-r1`: the one command of this package; each subcommand runs one entry with verl's `key=value`
settings and lists them with --help. `python -m <module>` runs the same entries.
"""

from __future__ import annotations

import importlib
import sys

from mixed_r1_verl.settings import EXIT_USAGE

# subcommand -> (module whose main() runs it, what it does)
SUBCOMMANDS = {
    "train": ("mixed_r1_verl.main", "GRPO training with Mixed-Reward on verl (recipe=<name> [key=value ...])"),
    "sft": ("mixed_r1_verl.sft", "supervised fine-tuning before GRPO"),
    "prepare": ("mixed_r1_verl.data.prepare", "convert raw records into training parquet"),
    "engine": ("mixed_r1_verl.data.engine", "select a training mix: validate, dedup, verify, difficulty, balance"),
    "eval": ("mixed_r1_verl.eval.cli", "score a model on held-out parquet with the training rewards"),
    "export": ("mixed_r1_verl.export", "a training checkpoint as a Hugging Face model directory, LoRA merged in"),
    "learn": ("mixed_r1_verl.learn", "the learning proof: base eval, SFT, eval, GRPO, eval on one GPU"),
    "tasks": ("mixed_r1_verl.rewards.tasks", "list the tasks: the four built-in and those installed packages add"),
}


def usage() -> str:
    lines = [f"  {name:<8} {about}" for name, (_, about) in SUBCOMMANDS.items()]
    return (
        "usage: mixed-r1 <subcommand> [key=value ...] [--help]\n\nsubcommands:\n"
        + "\n".join(lines)
        + "\n\n`mixed-r1 <subcommand> --help` lists its settings and their defaults.\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_USAGE
    name, settings = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"mixed-r1: unknown subcommand {name!r}\n\n{usage()}", end="", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(SUBCOMMANDS[name][0])
    # Every entry reads its settings from sys.argv, as under `python -m`.
    sys.argv = [f"mixed-r1 {name}", *settings]
    result = module.main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
