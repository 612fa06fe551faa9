"""Command line of ``python -m mixed_r1_verl.eval``."""

from __future__ import annotations

import argparse
import json
import logging
from importlib.util import find_spec
from pathlib import Path

from .cache import GenerationCache, read_generations
from .generation import SamplingSettings, build_generator, generate_missing
from .records import EvalRecord, load_records
from .report import load_summary, summary_markdown, write_comparison, write_summary
from .scoring import score_records, summarize

logger = logging.getLogger(__name__)

CACHE_FILE = "generations.jsonl"
SCORES_FILE = "scores.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mixed_r1_verl.eval",
        description="Score a model on held-out converted parquet with the Mixed-R1 training rewards.",
    )
    parser.add_argument("--data", nargs="+", help="parquet file(s) in verl's layout")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="HF checkpoint directory to generate with")
    source.add_argument("--generations", help="saved generations: JSONL of {id, response}")
    source.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="two eval output dirs side by side")
    parser.add_argument("--out-dir", help="where generations.jsonl, scores.jsonl and summary.{json,md,csv} go")
    parser.add_argument("--labels", nargs=2, metavar=("A", "B"), help="column labels for --compare")
    parser.add_argument("--limit", type=int, help="evaluate only the first N records")

    generation = parser.add_argument_group("generation (--model)")
    generation.add_argument(
        "--backend", choices=("auto", "vllm", "hf"), default="auto", help="auto: vLLM when installed, else transformers"
    )
    generation.add_argument("--device", default=None, help="hf backend device (default: cuda if available)")
    generation.add_argument("--batch-size", type=int, default=64, help="prompts per generation call / cache append")
    generation.add_argument("--max-new-tokens", type=int, default=1024)
    generation.add_argument("--temperature", type=float, default=0.0)
    generation.add_argument("--top-p", type=float, default=1.0)
    generation.add_argument("--seed", type=int, default=0)
    generation.add_argument("--tensor-parallel-size", type=int, default=1)
    generation.add_argument("--max-images", type=int, default=4, help="vLLM: most images in one prompt")

    reward = parser.add_argument_group("reward (same options as reward.reward_kwargs in training)")
    reward.add_argument("--embedding-model", help="open_ended (BMAS) embedding model dir (default: --model)")
    reward.add_argument("--format-weight", type=float)
    reward.add_argument("--iou-threshold", type=float)
    return parser


def _make_generator(args):
    sampling = SamplingSettings(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    backend = args.backend
    if backend == "auto":
        backend = "vllm" if find_spec("vllm") is not None else "hf"
    if backend == "vllm":
        return build_generator(
            "vllm",
            args.model,
            sampling,
            max_images_per_prompt=args.max_images,
            tensor_parallel_size=args.tensor_parallel_size,
            trust_remote_code=True,
        )
    return build_generator("transformers", args.model, sampling, device=args.device)


def _responses(args, records: list[EvalRecord], out_dir: Path) -> dict[str, str]:
    ids = [record.id for record in records]
    if args.generations:
        responses = read_generations(args.generations)
        missing = [record_id for record_id in ids if record_id not in responses]
        if missing:
            raise SystemExit(
                f"{args.generations}: no response for {len(missing)} of {len(ids)} record(s), e.g. {missing[:5]}"
            )
        return responses
    cache = GenerationCache(out_dir / CACHE_FILE)
    if cache.missing(ids):
        generate_missing(records, _make_generator(args), cache, args.batch_size)
    else:
        logger.info("all %d generations found in %s", len(ids), cache.path)
    return cache.responses


def _reward_kwargs(args, records: list[EvalRecord]) -> dict:
    kwargs = {
        name: value
        for name, value in (
            ("format_weight", args.format_weight),
            ("iou_threshold", args.iou_threshold),
            ("embedding_model", args.embedding_model or args.model),
        )
        if value is not None
    }
    if "embedding_model" not in kwargs and any(record.task == "open_ended" for record in records):
        raise SystemExit("open_ended records need --embedding-model (the BMAS embedding table) when --model is not set")
    return kwargs


def run_eval(args) -> dict:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(args.data, args.limit)
    reward_kwargs = _reward_kwargs(args, records)
    responses = _responses(args, records, out_dir)
    rows = score_records(records, responses, **reward_kwargs)
    with open(out_dir / SCORES_FILE, "w", encoding="utf-8") as sink:
        sink.writelines(json.dumps(row) + "\n" for row in rows)
    summary = summarize(rows)
    summary["run"] = {
        "data": [str(path) for path in args.data],
        "model": args.model,
        "generations": args.generations,
        "reward_kwargs": {name: str(value) for name, value in reward_kwargs.items()},
        "sampling": {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens},
    }
    write_summary(summary, out_dir)
    print(summary_markdown(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        labels = tuple(args.labels or (Path(run).name or str(run) for run in args.compare))
        first, second = (load_summary(run) for run in args.compare)
        print(write_comparison(first, second, labels, Path(args.out_dir) if args.out_dir else None))
        return 0
    if not args.data or not args.out_dir or not (args.model or args.generations):
        parser.error("scoring needs --data, --out-dir and one of --model / --generations (or use --compare A B)")
    run_eval(args)
    return 0
