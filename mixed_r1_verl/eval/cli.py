"""Score a model on held-out converted parquet with the Mixed-R1 training rewards.

    python -m mixed_r1_verl.eval data=val.parquet model=CKPT_DIR out_dir=eval/ckpt
    python -m mixed_r1_verl.eval data=val.parquet generations=responses.jsonl out_dir=eval/saved \\
        embedding_model=Qwen/Qwen2.5-VL-7B-Instruct
    python -m mixed_r1_verl.eval compare=[eval/base,eval/ckpt] labels=[base,grpo] out_dir=eval/cmp

Exactly one of `model` (generate, then score), `generations` (score saved JSONL lines {"id", "response"},
optionally "truncated") or `compare` (two or more evaluation output directories side by side, with each
later one's deltas from the first). `data` is a parquet file, a glob pattern, a Hub dataset's files
(hf://datasets/<org>/<name>/<pattern>) or a list of them.
Generation (model=): `backend` auto (vLLM when installed, else transformers) | vllm | hf; `device` for hf;
`batch_size` prompts per generation call and cache append; `max_images` per vLLM prompt (default: the
most a record holds); `vllm_kwargs`
any other vLLM engine argument (`vllm_kwargs.gpu_memory_utilization=0.5`, `vllm_kwargs.enforce_eager=true`).
Rewards take the training options (reward.reward_kwargs): `embedding_model` for open_ended (BMAS;
default: model), `format_weight`, `iou_threshold`, `correct_threshold` (the accuracy at which a response
counts as `correct`: a float, or task -> float; grounding IoU 0.5, open_ended 0.5, matching and chart 1 by
default). The tables give each task's mean reward `accuracy` (mean IoU for grounding, mean BMAS for
open_ended) and `correct`, the share of correct responses (RefCOCO's Acc@0.5 for grounding).
`limit` evaluates the first N records only (N >= 1).
`card=true` (with model= a local model directory, an export say) writes the results into its model card,
README.md: the Hub's model-index per data_source and an Evaluation section per data (eval/card.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from mixed_r1_verl.data.images import SpilledImages
from mixed_r1_verl.data.model_files import checkpoint_model_type, not_a_model_reason, resolve_model_dir
from mixed_r1_verl.data.records import input_files
from mixed_r1_verl.process_watch import is_running
from mixed_r1_verl.rewards.embeddings import EmbeddingModelError, load_embedding_model
from mixed_r1_verl.rewards.scoring import reward_option_errors
from mixed_r1_verl.run_logs import Interrupted, Terminated, sigterm_raises
from mixed_r1_verl.settings import (
    asks_for_help,
    input_errors_end_the_command,
    parse_settings,
    settings_help,
    usage_error,
)

from . import BACKENDS
from .cache import (
    CACHE_FILE,
    Completion,
    GenerationCache,
    discard_generations_made_otherwise,
    model_fingerprint,
    read_generations,
)
from .card import card_refusal, record_in_card
from .generation import (
    SamplingSettings,
    build_generator,
    generate_missing,
    output_engine_arguments,
    transformers_placement,
    vllm_kwargs_error,
    vllm_temperature_error,
)
from .provenance import code_identity, file_identity, setting_text
from .records import EvalRecord, data_ids, load_records, refuse_records_of_another_frame
from .report import (
    SCORES_FILE, SUMMARY_FILE, evaluated_ids, load_summary, remove_earlier_results, summary_markdown,
    write_comparison, write_summary,
)  # fmt: skip
from .scoring import correct_thresholds, score_records, summarize


# The training reward's options that the settings take (reward.reward_kwargs).
REWARD_SETTINGS = ("format_weight", "iou_threshold", "correct_threshold")
SHOWN_IDS = 5  # ids named in a notice, the first in file order


@dataclass
class EvalSettings:
    data: Any = None
    model: Optional[str] = None
    generations: Optional[str] = None
    compare: Optional[Any] = None
    labels: Optional[Any] = None
    out_dir: Optional[str] = None
    limit: Optional[int] = None
    backend: str = "auto"
    device: Optional[str] = None
    batch_size: int = 64
    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    tensor_parallel_size: int = 1
    max_images: Optional[int] = None
    vllm_kwargs: dict = field(default_factory=dict)
    embedding_model: Optional[str] = None
    format_weight: Optional[Any] = None
    iou_threshold: Optional[float] = None
    correct_threshold: Optional[Any] = None
    card: bool = False


def as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def compare_labels(runs: list, labels) -> tuple[str, ...]:
    """The labels given, else each run directory's name (the directory of a summary.json given)."""
    return tuple(str(label) for label in as_list(labels)) or tuple(run_name(run) for run in runs)


def run_name(run) -> str:
    path = Path(run)
    if path.name == SUMMARY_FILE:
        path = path.resolve().parent
    return path.name or str(run)


VLLM_KWARGS_INSTEAD = {
    "model": "set model= instead",
    "seed": "set seed= instead",
    "limit_mm_per_prompt": "set max_images= instead (videos are never given)",
    "max_images_per_prompt": "set max_images= instead",
}


def checked_settings(argv: list[str]) -> EvalSettings:
    settings = parse_settings(EvalSettings, argv)
    settings.data = [str(path) for path in as_list(settings.data)]
    sources = [name for name in ("model", "generations", "compare") if getattr(settings, name) is not None]
    if len(sources) != 1:
        usage_error(f"give exactly one of model=, generations= or compare=; got {sources or 'none'}")
    if settings.limit is not None and settings.limit < 1:
        usage_error(f"limit={settings.limit}: expected a positive number of records (leave it out for all)")
    if settings.max_images is not None and settings.max_images < 1:
        usage_error(f"max_images={settings.max_images}: expected at least 1 (leave it out for the most a record holds)")
    if settings.batch_size < 1:
        usage_error(f"batch_size={settings.batch_size}: expected at least 1 prompt per generation call")
    if settings.backend not in BACKENDS:
        usage_error(f"backend={settings.backend}: expected one of {', '.join(BACKENDS)}")
    if settings.model is not None and chosen_backend(settings) == "vllm":
        if error := vllm_temperature_error(settings.temperature):
            usage_error(f"backend=vllm, {error}; backend=hf takes it")
        if error := vllm_kwargs_error(settings.vllm_kwargs, VLLM_KWARGS_INSTEAD):
            usage_error(error)
    if settings.compare is not None:
        runs = as_list(settings.compare)
        if len(runs) < 2:
            usage_error("compare= takes two or more run directories, [RUN_A,RUN_B,...]")
        labels = compare_labels(runs, settings.labels)
        if len(labels) != len(runs):
            usage_error(f"labels= gives {len(labels)} labels for {len(runs)} runs: give one per run")
        if len(set(labels)) != len(labels):
            usage_error(f"the runs' labels {list(labels)} repeat, and the table's columns would too: give labels=")
    elif not settings.data or not settings.out_dir:
        usage_error("scoring needs data= and out_dir=")
    if errors := reward_option_errors({name: getattr(settings, name) for name in REWARD_SETTINGS}):
        usage_error("; ".join(errors))
    if settings.card and settings.model is None:
        usage_error("card=true records a model's results in its card (README.md): it needs model=")
    if settings.card and settings.limit is not None:
        usage_error(
            "card=true records results on whole data files, and limit= scores a part: "
            "write the records to publish as a parquet of their own"
        )
    return settings


def sampling_settings(args) -> SamplingSettings:
    return SamplingSettings(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed
    )


def sampling_record(args) -> dict:
    return dataclasses.asdict(sampling_settings(args))


def chosen_backend(args) -> str:
    """`vllm` or `hf`: `backend=auto` is vLLM when installed."""
    if args.backend == "auto":
        return "vllm" if find_spec("vllm") is not None else "hf"
    return args.backend


def generator_record(args) -> dict:
    """The backend and the device type and dtype it generates with, and vLLM's engine arguments that change
    what it generates, for the generation cache."""
    if chosen_backend(args) == "vllm":
        engine_arguments = output_engine_arguments({k: v for k, v in args.vllm_kwargs.items() if k != "dtype"})
        engine = {"engine_arguments": engine_arguments} if engine_arguments else {}
        return {"backend": "vllm", "dtype": str(args.vllm_kwargs.get("dtype", "auto")), **engine}
    device, dtype = transformers_placement(args.device, args.model)
    return {"backend": "hf", "device": device.split(":")[0], "dtype": dtype}


def images_per_prompt(args, records: list[EvalRecord]) -> int:
    """The images vLLM makes room for in one prompt: `max_images`, else the most a record holds (at
    least 1); a record holding more than `max_images` is refused before the engine starts."""
    most = max(records, key=lambda record: len(record.image_blobs), default=None)
    held = len(most.image_blobs) if most else 0
    if args.max_images is None:
        return max(held, 1)
    if held > args.max_images:
        usage_error(f"max_images={args.max_images}: record {most.id!r} holds {held} images; raise it or leave it out")
    return args.max_images


def _make_generator(args, records: list[EvalRecord]):
    sampling = sampling_settings(args)
    if chosen_backend(args) == "vllm":
        return build_generator(
            "vllm",
            args.model,
            sampling,
            max_images_per_prompt=images_per_prompt(args, records),
            **{"tensor_parallel_size": args.tensor_parallel_size, **args.vllm_kwargs},
        )
    return build_generator("transformers", args.model, sampling, device=args.device, sequences_per_call=args.batch_size)


def ids_not_in_data(responses: dict[str, Completion], data: list[str]) -> dict:
    """The generations' ids that no row of the data has (rows past `limit` count as data): their count
    and the first few, in file order."""
    known = data_ids(data)
    unknown = [record_id for record_id in responses if record_id not in known]
    return {"count": len(unknown), "first_ids": unknown[:SHOWN_IDS]}


def _responses(args, records: list[EvalRecord], out_dir: Path) -> dict[str, Completion]:
    ids = [record.id for record in records]
    if args.generations:
        responses = read_generations(args.generations)
        missing = [record_id for record_id in ids if record_id not in responses]
        if missing:
            raise SystemExit(
                f"{args.generations}: no response for {len(missing)} of {len(ids)} record(s), e.g. {missing[:5]}"
            )
        return responses
    discard_generations_made_otherwise(out_dir, args.model, sampling_record(args), generator_record(args))
    cache = GenerationCache(out_dir / CACHE_FILE)
    generate_missing(records, lambda: _make_generator(args, records), cache, args.batch_size)
    return cache.responses


def _reward_kwargs(args, records: list[EvalRecord]) -> dict:
    kwargs = {
        name: value
        for name, value in (
            ("format_weight", args.format_weight),
            ("iou_threshold", args.iou_threshold),
            ("correct_threshold", args.correct_threshold),
            ("embedding_model", args.embedding_model or args.model),
        )
        if value is not None
    }
    if any(record.task == "open_ended" for record in records):
        if "embedding_model" not in kwargs:
            raise SystemExit(
                "open_ended records need embedding_model= (the BMAS embedding table) when model= is not set"
            )
        try:  # before any generation: a table that cannot load would score every open_ended answer 0
            load_embedding_model(str(kwargs["embedding_model"]))
        except EmbeddingModelError as error:
            raise ValueError(f"embedding_model={kwargs['embedding_model']}: {error}") from None
    return kwargs


def refuse_what_is_no_model(model: str) -> None:
    """A local `model=` directory that transformers or vLLM cannot load (a verl checkpoint, say) ends the
    run before anything is written, naming what to pass instead."""
    reason = Path(model).is_dir() and not_a_model_reason(model)
    if reason:
        raise FileNotFoundError(reason)


def refuse_a_generator_that_cannot_start(args) -> None:
    """backend=vllm without vLLM installed, or a `device` transformers cannot generate on, ends the run
    before anything in out_dir is written or discarded (the generation cache of an earlier run included)."""
    if chosen_backend(args) == "hf":
        transformers_placement(args.device, args.model)
    elif find_spec("vllm") is None:
        raise ValueError("backend=vllm: vLLM is not installed (pip install -e '.[gpu]'); backend=hf runs without it")


def run_record(args, reward_kwargs: dict) -> dict:
    """What produced the run: data files (path, size, sha256), `limit`, the model (as given and as
    `model.json` fingerprints it) or the generations file, the reward options, the sampling and generator
    settings and batch size that made the responses (None for saved generations) and the code."""
    generated = args.model is not None
    return {
        "data": [str(path) for path in args.data],
        "data_files": [file_identity(path) for path in args.data],
        "limit": args.limit,
        "model": args.model,
        "model_files": model_fingerprint(args.model) if generated else None,
        "generations": args.generations,
        "generations_file": None if generated else file_identity(args.generations),
        "reward_kwargs": {name: setting_text(value) for name, value in reward_kwargs.items()},
        "sampling": sampling_record(args) if generated else None,
        "generator": generator_record(args) if generated else None,
        "batch_size": args.batch_size if generated else None,
        "code": code_identity(),
    }


def converted_data_hint(example: str | Path) -> str:
    return f"eval reads the parquet files python -m mixed_r1_verl.data.prepare writes, e.g. data={example}"


def eval_data_files(given) -> list[Path]:
    """The files `data` names (`input_files`); a directory (the converter's output_dir, say) or a file that is
    not parquet (a source JSONL before conversion) is refused, naming the converter's parquet instead."""
    for pattern in as_list(given):
        if Path(str(pattern)).is_dir():
            example = Path(str(pattern)) / "val.parquet"
            raise IsADirectoryError(f"data={pattern}: a directory; {converted_data_hint(example)}")
    files = input_files(given, setting="data")
    for file in files:
        try:
            pq.read_schema(file)
        except pa.ArrowInvalid:
            hint = converted_data_hint("<output_dir>/val.parquet")
            raise ValueError(f"data={file}: not a parquet file; {hint}") from None
    return files


def run_eval(args) -> dict:
    args.data = [str(path) for path in eval_data_files(args.data)]
    if args.model:
        refuse_what_is_no_model(args.model)
        refuse_a_generator_that_cannot_start(args)
    if args.card and (refusal := card_refusal(args.model)):
        raise ValueError(refusal)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_spills(out_dir)
    if args.generations:
        return _evaluate(args, out_dir, load_records(args.data, args.limit, without_image_bytes=True))
    try:
        with sigterm_raises(), tempfile.TemporaryDirectory(prefix=spill_prefix(os.getpid()), dir=out_dir) as spill:
            spilled = SpilledImages(Path(spill) / "images")
            try:
                return _evaluate(args, out_dir, load_records(args.data, args.limit, spilled))
            finally:
                spilled.remove()
    except Terminated:
        raise Interrupted(signal.SIGTERM) from None


def host_spill_prefix() -> str:
    return f".images-{socket.gethostname()}-"


def spill_prefix(pid: int) -> str:
    """The start of the name of the directory in out_dir that evaluation process `pid` of this host keeps
    its records' images in while it generates."""
    return f"{host_spill_prefix()}{pid}-"


def remove_abandoned_spills(out_dir: Path) -> None:
    """The image directories that evaluations on this host ended before they could remove them (SIGKILL)
    left in out_dir: those whose process is gone."""
    host_prefix = host_spill_prefix()
    for spill in out_dir.glob(f"{host_prefix}*"):
        pid = spill.name[len(host_prefix) :].split("-", 1)[0]
        if pid.isdigit() and not is_running(int(pid)):
            shutil.rmtree(spill, ignore_errors=True)


def _evaluate(args, out_dir: Path, records: list[EvalRecord]) -> dict:
    if not records:
        raise ValueError(f"data={','.join(args.data)}: no rows to evaluate")
    if args.model:
        refuse_records_of_another_frame(records, checkpoint_model_type(resolve_model_dir(args.model)))
    reward_kwargs = _reward_kwargs(args, records)
    remove_earlier_results(out_dir)
    responses = _responses(args, records, out_dir)
    unknown_ids = ids_not_in_data(responses, args.data) if args.generations else {"count": 0}
    rows = score_records(records, responses, **reward_kwargs)
    with open(out_dir / SCORES_FILE, "w", encoding="utf-8") as sink:
        sink.writelines(json.dumps(row) + "\n" for row in rows)
    summary = summarize(rows)
    summary["run"] = run_record(args, reward_kwargs)
    summary["run"]["correct_thresholds"] = correct_thresholds(rows, reward_kwargs.get("correct_threshold"))
    if unknown_ids["count"]:
        summary["run"]["generations_not_in_data"] = unknown_ids
    write_summary(summary, out_dir)
    print(summary_markdown(summary))
    if args.card:
        print(f"Results recorded in {record_in_card(args.model, summary)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if asks_for_help(argv):
        print(settings_help(__doc__, EvalSettings))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = checked_settings(argv)
    with input_errors_end_the_command():
        if args.compare is not None:
            runs = as_list(args.compare)
            labels = compare_labels(runs, args.labels)
            summaries = [load_summary(run) for run in runs]
            ids = tuple(evaluated_ids(run) for run in runs)
            print(write_comparison(summaries, labels, Path(args.out_dir) if args.out_dir else None, ids))
            return 0
        run_eval(args)
    return 0
