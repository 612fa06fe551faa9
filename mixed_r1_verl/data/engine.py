"""Data engine: select a training mix from raw records in six stages, each reported per task.

    python -m mixed_r1_verl.data.engine input=raw.jsonl image_root=images/ output_dir=mix/ \\
        difficulty.model_path=<HF dir> difficulty.backend=vllm difficulty.k=8 \\
        'balance.targets={matching: 15000, chart: 10000, grounding: 10000, open_ended: 10000}'

1. validate   the converter's checks (images readable and inside image_root, boxes, placeholders...)
2. dedup      same image bytes, task, options and normalised question; near-duplicate images
              (perceptual hash, dedup.perceptual=true) with the same task, options and question; the
              drop names the row kept and says when their answers differ
3. verify     keep answers the task's reward can check: option letters that exist, yes/no, numbers
              or short answers, boxes inside the image, non-empty references
4. difficulty sample k responses per prompt, score them with Mixed-Reward, keep pass rates inside
              the band (default 0 < p < 1); responses are cached, so a rerun resumes
5. balance    seeded sample down to per-data_source, then per-task target counts
6. report     report.json, rows_per_stage.png, pass_rate_hist.png

`sources=<YAML file>` selects sources of other layouts as one mix, each read with its own input settings
(input, image_root, layout, columns, constants, box_format, box_units, problem_template, answer_index_base).

Writes selected.jsonl (canonical records, ready for `mixed_r1_verl.data.prepare`, which runs on it when
convert=true; selected.parquet, every image's bytes in it, with embed_images=true, sources or where rows
embed their images: it reads without image_root, to mix with other sources), dropped.jsonl (id, stage, reason)
and the report, before any conversion; the last run's outputs are removed first (the response cache
stays). An empty selection is not converted: the run stops with the drops of each stage by reason.
Settings (paths, the difficulty model, backend and sampling, balance targets) are checked before the
first stage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from omegaconf import OmegaConf
from PIL import Image
from tqdm import tqdm

from mixed_r1_verl.data.images import SpilledImages, refuse_a_missing_image_root
from mixed_r1_verl.data.model_files import resolve_model_dir
from mixed_r1_verl.data.prepare import (
    CONVERSION_OUTPUTS,
    REWARD_FIELD_ARROW_TYPES,
    PrepareConfig,
    RowConverter,
    box_in_pixels,
    by_reason_and_by_task,
    check_mapped_columns_found,
    grid_like_boxes_warning,
    named_input,
    prepare,
)
from mixed_r1_verl.data.records import (
    CanonicalRecord,
    EmbeddedImage,
    RecordError,
    exact_number,
    input_files,
    iter_input_rows,
    option_index,
    parse_box,
)
from mixed_r1_verl.data.sampling import ResponseCache, request_key
from mixed_r1_verl.eval.cache import Completion, model_fingerprint
from mixed_r1_verl.eval.generation import (
    BACKENDS,
    ENGINE_SAMPLING,
    GenerationRequest,
    SamplingSettings,
    build_generator,
    output_engine_arguments,
    vllm_kwargs_error,
    vllm_temperature_error,
)
from mixed_r1_verl.rewards import DEFAULT_CORRECT_THRESHOLDS, compute_score, task_names, values_differ
from mixed_r1_verl.rewards.chart import single_number
from mixed_r1_verl.rewards.embeddings import EmbeddingModelError, load_embedding_model
from mixed_r1_verl.rewards.text import normalize_text
from mixed_r1_verl.settings import run_settings_cli

YES_NO = ("yes", "no")
# What a run writes to output_dir besides the response cache; the conversion's folder.
DROPPED_FILE = "dropped.jsonl"
SELECTION_FILES = ("selected.jsonl", "selected.parquet")
SELECTION_BATCH_ROWS = 256
# Where a run keeps the embedded images it reads until it has written its selection.
SPILLED_IMAGES_FILE = ".embedded_images"
RUN_OUTPUTS = (
    *SELECTION_FILES, DROPPED_FILE, "report.json", "rows_per_stage.png", "pass_rate_hist.png", SPILLED_IMAGES_FILE
)  # fmt: skip
CONVERSION_DIR = "parquet"
# The settings a source of `sources` gives for itself; the others are the run's.
SOURCE_SETTINGS = (
    "input", "image_root", "layout", "columns", "constants", "box_format", "box_units", "problem_template",
    "answer_index_base",
)  # fmt: skip
# Records as the converter reads a selection: canonical, the source's mapping, box format, problem template
# and option indices applied. A parquet selection (and a mix of sources) also has its images embedded as shown and
# its grounding boxes in their pixels.
CANONICAL_SETTINGS = dict(
    layout="canonical", columns={}, constants={}, box_format=None, problem_template=None, answer_index_base=None
)
SHOWN_RECORD_SETTINGS = {**CANONICAL_SETTINGS, "box_units": "pixels", "image_root": None}


@dataclass
class DedupConfig:
    perceptual: bool = False
    # Largest Hamming distance between 64-bit difference hashes that still counts as the same image.
    max_hash_distance: int = 4
    # And the largest mean difference of their 32x32 greyscale thumbnails (grey levels, 0-255): re-encoded
    # and resized copies differ by under 3 (a dense text page saved again as a JPEG of quality 50: 2.0; a
    # chart shrunk to a quarter without antialiasing: 2.7); distinct images of one template (bar charts of
    # the same axes, whose hashes are as near) by 6 or more.
    max_thumbnail_difference: float = 4.0


@dataclass
class VerifyConfig:
    # Longest non-numeric answer (in words) the matching/chart rules can still check by exact match.
    max_short_answer_words: int = 3


@dataclass
class DifficultyConfig:
    enabled: bool = True
    backend: str = "transformers"  # vllm (GPU) or transformers (CPU fallback)
    model_path: str | None = None
    k: int = ENGINE_SAMPLING.n
    temperature: float = ENGINE_SAMPLING.temperature
    top_p: float = ENGINE_SAMPLING.top_p
    max_new_tokens: int = ENGINE_SAMPLING.max_new_tokens
    # Prompts per generate call; the cache is written after each, so an interrupted run resumes.
    chunk_size: int = 1024
    # A response counts as correct when its reward accuracy reaches the task's threshold.
    correct_threshold: dict = field(default_factory=lambda: dict(DEFAULT_CORRECT_THRESHOLDS))
    min_pass_rate: float = 0.0
    max_pass_rate: float = 1.0
    inclusive: bool = False  # keep p == min/max as well
    embedding_model: str | None = None  # for open_ended; defaults to model_path
    vllm_kwargs: dict = field(default_factory=dict)


@dataclass
class BalanceConfig:
    targets: dict = field(default_factory=dict)  # task -> rows; tasks absent keep every row
    # data_source -> rows, drawn before the task targets; data_sources absent keep every row.
    source_targets: dict = field(default_factory=dict)
    # The draw's own seed (default: `seed`), so another draw keeps the cached responses, which `seed` keys.
    seed: int | None = None


@dataclass
class EngineConfig(PrepareConfig):
    """The converter's settings (the validation stage runs its checks; convert=true runs it on the
    selection) plus one section per stage."""

    input: Any = None
    # Instead of `input`: sources of other layouts selected as one mix, a mapping (or a YAML file of one) of
    # names to each source's `input` and any of image_root, layout, columns, constants, box_format,
    # box_units, problem_template and answer_index_base, which override the run's.
    sources: Any = None
    dedup: DedupConfig = field(default_factory=DedupConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    convert: bool = False  # also write train/val parquet from the selection (output_dir/parquet)
    # Write the selection as selected.parquet, each image's bytes in it and grounding boxes in its pixels:
    # it reads without image_root or box_units, so selections of sources of other layouts mix in a later run.
    embed_images: bool = False


@dataclass
class EngineRow:
    record: CanonicalRecord
    prompt: list[dict]
    ground_truth: str
    extra_info: dict
    image_digests: tuple[str, ...]
    pass_rate: float | None = None
    correct_rollouts: int | None = None  # of the difficulty stage's k sampled responses


@dataclass(frozen=True)
class SampledRewards:
    """One prompt's k sampled responses as GRPO would see them: their mean reward and accuracy, whether
    the rewards differ at all (a group of equal rewards has zero advantage: no gradient), and how many
    were cut off at max_new_tokens (or are of unknown truncation, cached before it was recorded)."""

    mean_score: float
    mean_accuracy: float
    score_spread: bool
    accuracy_spread: bool
    truncated: int
    truncation_unknown: int

    @classmethod
    def of(cls, results: list[dict], responses: list[Completion]) -> SampledRewards:
        scores = [result["score"] for result in results]
        accuracies = [result["accuracy"] for result in results]
        return cls(
            sum(scores) / len(scores),
            sum(accuracies) / len(accuracies),
            values_differ(scores),
            values_differ(accuracies),
            sum(response.truncated is True for response in responses),
            sum(response.truncated is None for response in responses),
        )


@dataclass
class StageResult:
    name: str
    rows_in: dict
    rows_out: dict
    dropped_by_reason: dict
    dropped_by_task: dict  # task -> reason -> rows: each task's rows in = its rows out + its drops
    details: dict = field(default_factory=dict)


def stage_result(name: str, rows_in: dict, rows_out: dict, drops: Counter, details: dict) -> StageResult:
    """A stage's record from its drops counted by (task, reason)."""
    by_reason, by_task = by_reason_and_by_task(drops)
    return StageResult(name, rows_in, rows_out, dict(by_reason), by_task, details)


def count_by_task(rows: list[EngineRow]) -> dict:
    counts = Counter(row.record.task for row in rows)
    return {task: counts.get(task, 0) for task in task_names()}


def sampling_settings(config: EngineConfig) -> SamplingSettings:
    difficulty = config.difficulty
    try:
        return SamplingSettings(
            n=difficulty.k,
            temperature=difficulty.temperature,
            top_p=difficulty.top_p,
            max_new_tokens=difficulty.max_new_tokens,
            seed=config.seed,
        )
    except ValueError as error:
        named = (
            f"difficulty.k={difficulty.k}, difficulty.temperature={difficulty.temperature}, "
            f"difficulty.top_p={difficulty.top_p}, difficulty.max_new_tokens={difficulty.max_new_tokens}"
        )
        raise ValueError(f"{named}: {error}") from None


def sampled_model(difficulty: DifficultyConfig) -> dict:
    """What the cached responses were sampled from: the model as `model_fingerprint` has it and, with vLLM,
    the engine arguments that change what it generates (`output_engine_arguments`: max_model_len cuts
    responses short). The backend is not part of it: either samples the model."""
    model = model_fingerprint(difficulty.model_path)
    engine_arguments = output_engine_arguments(difficulty.vllm_kwargs) if difficulty.backend == "vllm" else {}
    return {**model, "engine_arguments": engine_arguments} if engine_arguments else model


def named_sources(config: EngineConfig) -> dict[str, dict]:
    """`sources` read and checked: each source's own settings by name; {} for a run on one `input`."""
    if (config.input is None) == (config.sources is None):
        raise ValueError("give input=<file(s)> or sources=<a YAML file or mapping of sources>, one of the two")
    if config.sources is None:
        return {}
    sources = read_sources_file(config.sources) if isinstance(config.sources, str) else config.sources
    if not isinstance(sources, dict) or not sources:
        raise ValueError(f"sources: expected a mapping of source names to their settings, got {sources!r:.80}")
    for name, settings in sources.items():
        if not isinstance(settings, dict) or settings.get("input") is None:
            raise ValueError(f"sources.{name}: expected the source's settings with its input, got {settings!r:.80}")
        unknown = sorted(settings.keys() - set(SOURCE_SETTINGS))
        if unknown:
            raise ValueError(
                f"sources.{name}: {', '.join(unknown)} set for the whole run, not per source; a source sets "
                f"{', '.join(SOURCE_SETTINGS)}"
            )
    return {str(name): settings for name, settings in sources.items()}


def read_sources_file(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"sources={path}: no such file") from None
    except yaml.YAMLError as error:
        raise ValueError(f"sources={path}: not YAML ({error})") from None


def prepare_settings(config: EngineConfig, **overrides) -> PrepareConfig:
    """The converter's settings with `overrides`; its model_path defaults to the difficulty stage's model, so
    rows are resized, counted and sampled in that model's frame."""
    settings = {f.name: getattr(config, f.name) for f in fields(PrepareConfig)}
    if settings["model_path"] is None and config.difficulty.enabled:
        settings["model_path"] = config.difficulty.model_path
    return PrepareConfig(**{**settings, **overrides})


def source_settings(config: EngineConfig) -> dict[str | None, PrepareConfig]:
    """Each source's converter settings by name, the run's with the source's own over them; a run on one
    `input` has one source, None."""
    sources = named_sources(config)
    if not sources:
        return {None: prepare_settings(config)}
    return {name: prepare_settings(config, **settings) for name, settings in sources.items()}


def check_input_paths(config: EngineConfig) -> None:
    replaced = {path.resolve() for path in files_a_run_replaces(Path(config.output_dir))}
    for name, settings in source_settings(config).items():
        prefix = f"sources.{name}." if name is not None else ""
        for file in input_files(settings.input):
            if file.resolve() in replaced:
                raise ValueError(
                    f"{prefix}input={file} is a file this run removes and writes anew in "
                    f"output_dir={config.output_dir}: copy it elsewhere first, or give another output_dir"
                )
        refuse_a_missing_image_root(settings.image_root, setting=f"{prefix}image_root")


def looks_like_local_path(model: str) -> bool:
    """A name that can only be a path: a hub id never starts with these."""
    return model.startswith(("/", "./", "../", "~"))


ROOM_FOR_EVERY_IMAGE = "leave it out: vLLM makes room for the most images a row holds"
VLLM_KWARGS_INSTEAD = {
    "model": "set difficulty.model_path instead",
    "seed": "set seed instead",
    "limit_mm_per_prompt": ROOM_FOR_EVERY_IMAGE,
    "max_images_per_prompt": ROOM_FOR_EVERY_IMAGE,
}


def check_difficulty_settings(config: EngineConfig) -> None:
    """The difficulty stage's settings, its model found (a directory, or a hub id in the cache or fetched)."""
    difficulty = config.difficulty
    if not difficulty.model_path:
        raise ValueError("difficulty.model_path is required when difficulty.enabled=true")
    if difficulty.backend not in BACKENDS:
        raise ValueError(f"difficulty.backend={difficulty.backend}: expected one of {', '.join(BACKENDS)}")
    sampling_settings(config)
    if difficulty.backend == "vllm":
        if error := vllm_temperature_error(difficulty.temperature):
            raise ValueError(f"difficulty.backend=vllm, difficulty.{error}; difficulty.backend=transformers takes it")
        if error := vllm_kwargs_error(difficulty.vllm_kwargs, VLLM_KWARGS_INSTEAD, prefix="difficulty."):
            raise ValueError(error)
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "difficulty.backend=vllm needs vLLM (pip install -e '.[gpu]'); use transformers without it"
            )
    if difficulty.chunk_size < 1:
        raise ValueError(f"difficulty.chunk_size={difficulty.chunk_size}: expected at least 1 prompt per call")
    if not 0 <= difficulty.min_pass_rate <= difficulty.max_pass_rate <= 1:
        raise ValueError(
            f"difficulty.min_pass_rate={difficulty.min_pass_rate}, max_pass_rate={difficulty.max_pass_rate}: "
            "expected 0 <= min_pass_rate <= max_pass_rate <= 1"
        )
    if not any(in_band(correct / difficulty.k, difficulty) for correct in range(difficulty.k + 1)):
        raise ValueError(
            f"difficulty.min_pass_rate={difficulty.min_pass_rate}, max_pass_rate={difficulty.max_pass_rate}, "
            f"inclusive={difficulty.inclusive}: no pass rate that k={difficulty.k} responses give (0, 1/k, ... 1) "
            "lies in the band, so every prompt would be dropped"
        )
    unknown = sorted(set(difficulty.correct_threshold) - set(task_names()))
    if unknown:
        raise ValueError(
            f"difficulty.correct_threshold names unknown tasks {unknown}; tasks: {', '.join(task_names())}"
        )
    for task, threshold in difficulty.correct_threshold.items():
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
            raise ValueError(
                f"difficulty.correct_threshold.{task}={threshold!r}: expected a reward accuracy in (0, 1]"
            )
    try:
        resolve_model_dir(difficulty.model_path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"difficulty.model_path: {error}") from None
    embedding_model = difficulty.embedding_model
    if embedding_model and looks_like_local_path(embedding_model) and not Path(embedding_model).expanduser().is_dir():
        raise FileNotFoundError(f"difficulty.embedding_model={embedding_model}: no such directory")


def in_band(pass_rate: float, difficulty: DifficultyConfig) -> bool:
    """Whether the difficulty stage keeps a prompt of this pass rate."""
    low, high = difficulty.min_pass_rate, difficulty.max_pass_rate
    return low <= pass_rate <= high if difficulty.inclusive else low < pass_rate < high


def check_balance_targets(balance: BalanceConfig) -> None:
    unknown = sorted(set(balance.targets) - set(task_names()))
    if unknown:
        raise ValueError(f"balance.targets names unknown tasks {unknown}; tasks: {', '.join(task_names())}")
    for setting, targets in (("targets", balance.targets), ("source_targets", balance.source_targets)):
        for name, count in targets.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"balance.{setting}.{name}={count!r}: expected a number of rows (0 or more)")


def check_source_targets(source_targets: dict, rows: list[EngineRow]) -> None:
    """balance.source_targets names data_sources of the validated rows: a misspelt one would leave its source
    undrawn. Checked once the input is read, before the later stages."""
    known = {row.record.data_source for row in rows}
    unknown = sorted(set(source_targets) - known)
    if unknown:
        raise ValueError(
            f"balance.source_targets names data_sources no valid row has: {unknown}; "
            f"the rows': {', '.join(sorted(known))}"
        )


def check_settings(config: EngineConfig) -> None:
    """Every setting that can be checked before the stages read the input: a mistake stops the run
    before it reads every image, not after."""
    check_input_paths(config)
    if config.verify.max_short_answer_words < 0:
        raise ValueError(
            f"verify.max_short_answer_words={config.verify.max_short_answer_words}: expected 0 or more "
            "(0 keeps only answers the rules read without words: option letters, yes/no, numbers)"
        )
    if not 0 <= config.dedup.max_hash_distance <= 64:
        raise ValueError(
            f"dedup.max_hash_distance={config.dedup.max_hash_distance}: expected 0 to 64 (bits of the 64-bit hash)"
        )
    if not 0 <= config.dedup.max_thumbnail_difference <= 255:
        raise ValueError(
            f"dedup.max_thumbnail_difference={config.dedup.max_thumbnail_difference}: expected 0 to 255 (grey levels)"
        )
    if config.difficulty.enabled:
        check_difficulty_settings(config)
    check_balance_targets(config.balance)


class Engine:
    def __init__(self, config: EngineConfig):
        check_settings(config)
        self.config = config
        self.sources = {name: RowConverter(settings) for name, settings in source_settings(config).items()}
        if None in self.sources:
            self.converter = self.sources[None]
        else:
            # Each source's rows are read with its converter, then held as shown records, which the mix's
            # converter reads; ids are unique across the mix.
            inputs = [str(file) for source in self.sources.values() for file in source.inputs]
            self.converter = RowConverter(prepare_settings(config, input=inputs, **SHOWN_RECORD_SETTINGS))
            for source in self.sources.values():
                source.row_by_id = self.converter.row_by_id
        self.output_dir = Path(config.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        remove_earlier_outputs(self.output_dir)
        self.spilled_images = SpilledImages(self.output_dir / SPILLED_IMAGES_FILE)
        self.stages: list[StageResult] = []
        self.warnings: list[str] = []
        self.pass_rates: dict[str, list[float]] = defaultdict(list)
        self.sampled_rewards: dict[str, list[SampledRewards]] = defaultdict(list)
        self.dropped = open(self.output_dir / DROPPED_FILE, "w", encoding="utf-8")

    def selection_prepare_config(self, selected_path: Path, output_dir: str) -> PrepareConfig:
        """The converter's settings for the selection: its rows are canonical, their source's column
        mapping, xywh boxes and problem template already applied (applied again, a RefCOCO box would be
        widened twice and its problem wrapped twice). selected.jsonl's boxes keep their units until
        converted; selected.parquet's are in pixels."""
        embedded = selected_path.suffix == ".parquet"
        settings = SHOWN_RECORD_SETTINGS if embedded else CANONICAL_SETTINGS
        return prepare_settings(self.config, input=str(selected_path), output_dir=output_dir, **settings)

    def drop(self, stage: str, record_id, reason: str, detail: str = "", **where) -> None:
        """A line of dropped.jsonl; `where` (input, row and source) places a row that has no id of its own yet."""
        line = {"id": record_id, "stage": stage, "reason": reason, "detail": detail, **where}
        self.dropped.write(json.dumps(line) + "\n")

    def run_stage(self, name: str, rows: list[EngineRow], keep, **details) -> list[EngineRow]:
        """Apply `keep(row) -> None, a reject reason or (reason, detail)` and record the stage."""
        kept, reasons = [], Counter()
        for row in rows:
            verdict = keep(row)
            if verdict is None:
                kept.append(row)
                continue
            reason, detail = (verdict, "") if isinstance(verdict, str) else verdict
            reasons[row.record.task, reason] += 1
            self.drop(name, row.record.id, reason, detail)
        self.stages.append(stage_result(name, count_by_task(rows), count_by_task(kept), reasons, details))
        return kept

    # 1. validate and normalise
    def validate(self) -> list[EngineRow]:
        rows, reasons, rows_in, by_source = [], Counter(), Counter(), {}
        for name, source in self.sources.items():
            rows_before, read, source_reasons, first_drop = len(rows), 0, Counter(), None
            for file, number, raw in tqdm(
                iter_input_rows(source.inputs),
                desc=f"Validating {name}" if name is not None else "Validating",
                disable=not self.config.progress,
            ):
                read += 1
                task = source.source_value(raw, "task")
                task = task if task in task_names() else "other"
                rows_in[task] += 1
                try:
                    rows.append(self.validated_row(name, source, file, number, raw))
                except RecordError as error:
                    source_reasons[error.reason] += 1
                    reasons[task, error.reason] += 1
                    record_id = source.source_id(number, raw)
                    first_drop = first_drop or f"{source.row_place(file, number)} (id {record_id!r}): {error}"
                    where = {"input": str(file), "row": number, **({"source": name} if name is not None else {})}
                    self.drop("validate", record_id, error.reason, error.detail, **where)
            by_source[name] = {"rows_in": read, "rows_out": len(rows) - rows_before}
            place = named_input(source.config)
            check_mapped_columns_found(read, source, f"sources.{name}: {place}" if name is not None else place)
            if warning := grid_like_boxes_warning(source):
                self.warnings.append(f"sources.{name}: {warning}" if name is not None else warning)
                print(f"warning: {self.warnings[-1]}", file=sys.stderr)
            if len(rows) == rows_before:
                raise EmptySourceError(empty_source_message(name, read, source_reasons, first_drop, self.dropped.name))
        rows_in_by_task = {task: rows_in.get(task, 0) for task in (*task_names(), "other")}
        details = {} if None in by_source else {"sources": by_source}
        self.stages.append(stage_result("validate", rows_in_by_task, count_by_task(rows), reasons, details))
        return rows

    def validated_row(self, name: str | None, source: RowConverter, file: Path, number: int, raw) -> EngineRow:
        """A source row through the converter's checks (RecordError where it fails one); a named source's
        record is held as shown, its embedded images on disk."""
        record, converted = source.converted(file, number, raw)
        if name is not None:
            record = shown_record(record, source)
        return EngineRow(
            replace(record, images=tuple(self.spilled_images.keep(image) for image in record.images)),
            converted["prompt"],
            converted["reward_model"]["ground_truth"],
            converted["extra_info"],
            tuple(hashlib.sha256(image["bytes"]).hexdigest() for image in converted["images"]),
        )

    # 2. deduplicate
    def dedup(self, rows: list[EngineRow]) -> list[EngineRow]:
        kept_by_images: dict[tuple, EngineRow] = {}
        perceptual = self.config.dedup.perceptual
        max_distance, max_difference = self.config.dedup.max_hash_distance, self.config.dedup.max_thumbnail_difference
        near_duplicates = NearDuplicateIndex(max_distance, max_difference)

        def keep(row: EngineRow):
            item = dedup_item(row.record)
            kept = kept_by_images.get((row.image_digests, item))
            if kept is not None:
                return "duplicate", duplicate_detail(row, kept, "the same image(s) as")
            if perceptual:
                prints = [image_print(self.converter.store.load(image).data) for image in row.record.images]
                hashes, thumbnails = tuple(hash for hash, _ in prints), tuple(thumbnail for _, thumbnail in prints)
                other = near_duplicates.first_near(item, hashes, thumbnails)
                if other is not None:
                    near = f"image(s) within hash distance {max_distance}, thumbnail difference {max_difference:g} of"
                    return "near_duplicate", duplicate_detail(row, other, near)
                near_duplicates.add(item, hashes, thumbnails, row)
            kept_by_images[(row.image_digests, item)] = row
            return None

        return self.run_stage("dedup", rows, keep, perceptual=perceptual)

    # 3. verifiability
    def verify(self, rows: list[EngineRow]) -> list[EngineRow]:
        max_words = self.config.verify.max_short_answer_words
        return self.run_stage("verify", rows, lambda row: unverifiable_reason(row, max_words))

    # 4. difficulty
    def difficulty(self, rows: list[EngineRow]) -> list[EngineRow]:
        settings_config = self.config.difficulty
        if not settings_config.enabled:
            self.stages.append(
                StageResult("difficulty", count_by_task(rows), count_by_task(rows), {}, {}, {"enabled": False})
            )
            return rows
        embedding_model = settings_config.embedding_model or settings_config.model_path
        if any(row.record.task == "open_ended" for row in rows):
            try:  # before any sampling: a table that cannot load would fail the first open_ended row's reward
                load_embedding_model(embedding_model)
            except EmbeddingModelError as error:
                raise ValueError(f"difficulty.embedding_model={embedding_model}: {error}") from None
        settings = sampling_settings(self.config)
        model = sampled_model(settings_config)
        keys = [self.cache_key(row, settings, model) for row in rows]
        cache = ResponseCache(self.output_dir / "difficulty_cache.jsonl", settings.n)
        pending = [(row, key) for row, key in zip(rows, keys) if key not in cache]
        if len(cache) and len(pending) == len(rows):
            print(
                f"{cache.path}: none of its {len(cache)} cached prompts' responses is for this run (another "
                "model or model files, sampling settings or vLLM arguments, or a cache an earlier version keyed "
                "otherwise): sampling every prompt",
                file=sys.stderr,
            )
        sampling_seconds = 0.0
        if pending:
            max_images = max(len(row.record.images) for row, _ in pending)
            generator = build_generator(
                settings_config.backend,
                settings_config.model_path,
                settings,
                **(
                    {"max_images_per_prompt": max_images, **settings_config.vllm_kwargs}
                    if settings_config.backend == "vllm"
                    else {}
                ),
            )
            chunk = settings_config.chunk_size
            started = time.perf_counter()
            for start in tqdm(range(0, len(pending), chunk), desc="Sampling", disable=not self.config.progress):
                # Images are decoded per chunk, so memory stays bounded by the chunk size.
                batch = pending[start : start + chunk]
                responses = generator.generate([self.generation_request(row) for row, _ in batch])
                cache.add({key: texts for (_, key), texts in zip(batch, responses, strict=True)})
            sampling_seconds = time.perf_counter() - started
        for row, key in zip(rows, keys):
            responses = cache.responses(key)
            results = self.score_samples(row, [response.text for response in responses], embedding_model)
            row.correct_rollouts = int(sum(result["correct"] for result in results))
            row.pass_rate = row.correct_rollouts / len(results)
            self.pass_rates[row.record.task].append(row.pass_rate)
            self.sampled_rewards[row.record.task].append(SampledRewards.of(results, responses))

        low, high = settings_config.min_pass_rate, settings_config.max_pass_rate
        band = f"{low:g} <= p <= {high:g}" if settings_config.inclusive else f"{low:g} < p < {high:g}"

        def keep(row: EngineRow):
            if in_band(row.pass_rate, settings_config):
                return None
            measured = f"{row.correct_rollouts} of {settings.n} rollouts correct (pass rate {row.pass_rate:g})"
            return ("too_easy" if row.pass_rate >= high else "too_hard"), f"{measured}; kept: {band}"

        details = {
            "k": settings.n,
            "backend": settings_config.backend,
            "sampled_prompts": len(pending),
            "cached_prompts": len(rows) - len(pending),
            "sampling_seconds": round(sampling_seconds, 3),
            "prompts_per_second": round(len(pending) / sampling_seconds, 2) if sampling_seconds else None,
        }
        return self.run_stage("difficulty", rows, keep, **details)

    def cache_key(self, row: EngineRow, settings: SamplingSettings, model: dict) -> str:
        """The model as evaluation's cache fingerprints it (`model_fingerprint`): a directory as resolved
        (`model/`, `./model` and its absolute path are one model) with its weight files' sizes and times and
        the sha256 of its config, tokenizer, chat template and LoRA adapter settings; a hub id by its
        snapshot's revision and those files."""
        return request_key(
            row.record.id,
            json.dumps(row.prompt),
            row.image_digests,
            (self.converter.min_pixels, self.converter.max_pixels),
            json.dumps(model, sort_keys=True),
            settings,
        )

    def generation_request(self, row: EngineRow) -> GenerationRequest:
        """The row's chat and its images with the converter's resize bounds, as training sees them."""
        images = [
            {
                "bytes": self.converter.store.load(image).data,
                "min_pixels": self.converter.min_pixels,
                "max_pixels": self.converter.max_pixels,
            }
            for image in row.record.images
        ]
        return GenerationRequest(row.prompt, images, label=row.record.id)

    def score_samples(self, row: EngineRow, responses: list[str], embedding_model: str) -> list[dict]:
        results = []
        for response in responses:
            result = compute_score(
                row.record.data_source,
                response,
                row.ground_truth,
                row.extra_info,
                embedding_model=embedding_model,
                correct_threshold=self.config.difficulty.correct_threshold,
            )
            if result["error"]:
                raise RuntimeError(f"reward failed on row {row.record.id!r}; check its ground truth and extra_info")
            results.append(result)
        return results

    # 5. balance
    def balance(self, rows: list[EngineRow]) -> list[EngineRow]:
        """Each data_source of `source_targets` drawn down to its target, then each task of `targets` from
        the rows left (both checked before the stages). Each draw has a random stream of its own, so one
        task's or source's target changes no other's rows."""
        targets, source_targets = dict(self.config.balance.targets), dict(self.config.balance.source_targets)
        seed = self.config.seed if self.config.balance.seed is None else self.config.balance.seed

        def draw(name: str, indices: list[int], count: int) -> list[int]:
            return random.Random(f"{seed}:{name}").sample(indices, min(count, len(indices)))

        over_source_target: set[int] = set()
        source_shortfall = {}
        for source, target in sorted(source_targets.items()):
            indices = [i for i, row in enumerate(rows) if row.record.data_source == source]
            if target > len(indices):
                source_shortfall[source] = target - len(indices)
            over_source_target.update(set(indices) - set(draw(f"data_source:{source}", indices, target)))
        chosen: set[int] = set()
        shortfall = {}
        for task in task_names():
            indices = [i for i, row in enumerate(rows) if row.record.task == task and i not in over_source_target]
            target = targets.get(task, len(indices))
            if target > len(indices):
                shortfall[task] = target - len(indices)
            chosen.update(draw(f"task:{task}", indices, target))

        def verdict(index: int) -> str | None:
            return None if index in chosen else "over_source_target" if index in over_source_target else "over_target"

        kept = iter(range(len(rows)))
        return self.run_stage(
            "balance",
            rows,
            lambda row: verdict(next(kept)),
            targets=targets,
            shortfall=shortfall,
            source_targets=source_targets,
            source_shortfall=source_shortfall,
            seed=seed,
        )

    def run(self) -> dict:
        try:
            rows = self.validate()
            check_source_targets(self.config.balance.source_targets, rows)
            rows = self.dedup(rows)
            rows = self.verify(rows)
            rows = self.difficulty(rows)
            rows = self.balance(rows)
            selected_path = write_selection(
                [row.record for row in rows], self.converter, self.output_dir, self.config.embed_images
            )
        finally:
            self.dropped.close()
            self.spilled_images.remove()
        report = self.report(rows)
        self.write_report(report)  # before converting, so a failed conversion keeps the report that explains it
        if self.config.convert:
            if not rows:
                raise EmptySelectionError(empty_selection_message(self.stages, self.output_dir))
            conversion_dir = str(self.output_dir / CONVERSION_DIR)
            report["conversion"] = prepare(self.selection_prepare_config(selected_path, conversion_dir))
            self.write_report(report)
        return report

    def write_report(self, report: dict) -> None:
        (self.output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    def report(self, rows: list[EngineRow]) -> dict:
        from mixed_r1_verl.data.engine_plots import plot_pass_rates, plot_rows_per_stage

        histograms = {task: histogram(rates) for task, rates in self.pass_rates.items()}
        plot_rows_per_stage(self.stages, self.output_dir / "rows_per_stage.png")
        plot_pass_rates(histograms, self.config.difficulty.k, self.output_dir / "pass_rate_hist.png")
        return {
            "stages": [asdict(stage) for stage in self.stages],
            "selected": count_by_task(rows),
            "selected_by_data_source": dict(sorted(Counter(row.record.data_source for row in rows).items())),
            "pass_rate_histogram": histograms,
            "sampled_rewards": {task: summarise(samples) for task, samples in self.sampled_rewards.items()},
            "warnings": self.warnings,
            "config": OmegaConf.to_container(OmegaConf.structured(self.config)),
        }


def files_a_run_replaces(output_dir: Path) -> list[Path]:
    """The files of output_dir that a run writes, its conversion's included (not the response cache)."""
    conversion = output_dir / CONVERSION_DIR
    return [output_dir / name for name in RUN_OUTPUTS] + [conversion / name for name in CONVERSION_OUTPUTS]


def remove_earlier_outputs(output_dir: Path) -> None:
    """An earlier run's selection, report and conversion (the response cache stays): a run that is
    interrupted, fails or does not convert leaves none of them beside its own dropped.jsonl. Only the
    files a run writes are removed: anything else under output_dir is the user's."""
    for path in files_a_run_replaces(output_dir):
        path.unlink(missing_ok=True)


class EmptySelectionError(ValueError):
    """No row survived the stages, so there is nothing to convert."""


class EmptySourceError(ValueError):
    """The input, or a source of `sources`, gave no valid row: a wrong column mapping or image_root, say,
    which would otherwise select nothing, or leave the source out of the mix, unsaid."""


def empty_source_message(name: str | None, read: int, reasons: Counter, first_drop: str | None, dropped: str) -> str:
    """Why the input (`name` None) or the source `name` gave no valid row."""
    what = "input" if name is None else f"sources.{name}"
    if read == 0:
        return f"{what}: it holds no rows"
    counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
    return (
        f"{what}: all {read} rows were dropped at validation ({counts}); the first, {first_drop}; each is in "
        f"{dropped}"
    )


def empty_selection_message(stages: list[StageResult], output_dir: Path) -> str:
    """Why nothing was selected: the rows read and the drops of each stage by reason."""
    rows_in = sum(stages[0].rows_in.values())
    drops = "; ".join(
        f"{stage.name} dropped " + ", ".join(f"{count} {reason}" for reason, count in stage.dropped_by_reason.items())
        for stage in stages
        if stage.dropped_by_reason
    )
    return (
        f"no row was selected, so nothing is converted: of {rows_in} rows read, {drops or 'none was dropped'}. "
        f"Each stage's counts are in {output_dir / 'report.json'}, each dropped row's reason in "
        f"{output_dir / 'dropped.jsonl'}"
    )


def normalised_question(problem: str) -> str:
    return normalize_text(problem.replace("<image>", " "))


def dedup_item(record: CanonicalRecord) -> tuple:
    """What makes two rows on the same image(s) the same item: task, normalised question and options."""
    options = tuple(normalize_text(option) for option in record.options) if record.options else None
    return record.task, normalised_question(record.problem), options


def duplicate_detail(row: EngineRow, kept: EngineRow, images_relation: str) -> str:
    """A dropped duplicate's detail: the row kept in its place and, when they differ, both answers
    (conflicting labels of one item)."""
    detail = f"{images_relation} kept row {kept.record.id!r}, with the same task, question and options"
    if normalize_text(row.ground_truth) != normalize_text(kept.ground_truth):
        detail += f"; its answer {row.ground_truth!r} differs from the kept row's {kept.ground_truth!r}"
    return detail


THUMBNAIL_SIZE = 32


def image_print(data: bytes, size: int = 8) -> tuple[int, bytes]:
    """An image's 64-bit difference hash (brightness gradients of a (size+1) x size greyscale thumbnail) and
    its THUMBNAIL_SIZE x THUMBNAIL_SIZE greyscale thumbnail, from one decode."""
    with Image.open(io.BytesIO(data)) as image:
        grey = image.convert("L")
    pixels = np.asarray(grey.resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = 0
    for brighter in (pixels[:, :-1] > pixels[:, 1:]).flat:
        bits = (bits << 1) | int(brighter)
    thumbnail = grey.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BILINEAR).tobytes()
    return bits, thumbnail


def hamming(first: int, second: int) -> int:
    return (first ^ second).bit_count()


def thumbnail_difference(first: bytes, second: bytes) -> float:
    """The mean absolute difference of two greyscale thumbnails, in grey levels."""
    return float(np.abs(np.frombuffer(first, np.uint8).astype(np.int16) - np.frombuffer(second, np.uint8)).mean())


class NearDuplicateIndex:
    """Kept rows by item and image hashes, for the first kept row of an item whose images are each within
    `max_distance` bits of a new row's and within `max_difference` grey levels of its thumbnail, without
    comparing every pair: 64 bits cut into `max_distance + 1` bands, two hashes that close share at least one
    band, so only rows sharing a band of the first image's hash are compared (a caption set asks one question
    of every image)."""

    def __init__(self, max_distance: int, max_difference: float):
        self.max_distance, self.max_difference = max_distance, max_difference
        bands = max_distance + 1
        self.bands = [(64 * band // bands, 64 * (band + 1) // bands) for band in range(bands)]
        if bands > 64:  # 64 bits apart or more: every hash is near every other, one band of no bits holds them all
            self.bands = [(0, 0)]
        self.by_band: dict[tuple, list[tuple[int, tuple[int, ...], tuple[bytes, ...], EngineRow]]] = defaultdict(list)
        self.kept = 0

    def band_keys(self, item: tuple, hashes: tuple[int, ...]) -> list[tuple]:
        if not hashes:
            return [(item, len(hashes))]
        return [
            (item, len(hashes), start, (hashes[0] >> start) & ((1 << (end - start)) - 1)) for start, end in self.bands
        ]

    def first_near(self, item: tuple, hashes: tuple[int, ...], thumbnails: tuple[bytes, ...]) -> EngineRow | None:
        near = [
            (order, row)
            for key in self.band_keys(item, hashes)
            for order, other, other_thumbnails, row in self.by_band.get(key, ())
            if all(hamming(a, b) <= self.max_distance for a, b in zip(hashes, other))
            and all(thumbnail_difference(a, b) <= self.max_difference for a, b in zip(thumbnails, other_thumbnails))
        ]
        return min(near, key=lambda kept: kept[0])[1] if near else None

    def add(self, item: tuple, hashes: tuple[int, ...], thumbnails: tuple[bytes, ...], row: EngineRow) -> None:
        for key in self.band_keys(item, hashes):
            self.by_band[key].append((self.kept, hashes, thumbnails, row))
        self.kept += 1


def unverifiable_reason(row: EngineRow, max_short_answer_words: int) -> tuple[str, str] | None:
    """Why the task's reward could not check this row's answer, with the detail, or None when it can."""
    record = row.record
    answer = record.answer
    words = len(answer.split())
    too_long = f"{words} words, over verify.max_short_answer_words={max_short_answer_words}"
    if record.task == "matching":
        # Letters outside the options were rejected at validation.
        if record.options and option_index(answer) is not None:
            return None
        if normalize_text(answer) in YES_NO or words <= max_short_answer_words:
            return None
        return "matching_answer_too_long", f"not an option letter or yes/no, and {too_long}"
    if record.task == "chart":
        if single_number(answer) is not None or normalize_text(answer) in YES_NO or words <= max_short_answer_words:
            return None
        return "chart_answer_not_short", f"not a single number or yes/no, and {too_long}"
    if record.task == "grounding":
        x1, y1, x2, y2 = parse_box(row.ground_truth)
        width, height = row.extra_info["frame_size"]
        if 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height:
            return None
        return "box_outside_frame", f"box {row.ground_truth} outside the {width}x{height} frame the model sees"
    return None if normalize_text(answer) else ("empty_reference", "the reference answer has no words to compare")


def canonical_dict(record: CanonicalRecord) -> dict:
    """A canonical record as JSON holds it: images by their paths, no options where it has none."""
    row = asdict(record)
    row["images"] = list(record.images)
    if record.options is None:
        row.pop("options")
    else:
        row["options"] = list(record.options)
    return row


def selection_schema(reward_fields: dict[str, type]) -> pa.Schema:
    """The parquet selection's columns: the canonical record's fields, each image a struct {bytes, path} as
    Hugging Face datasets store images, and installed tasks' reward fields typed."""
    columns = [
        ("id", pa.string()), ("task", pa.string()), ("data_source", pa.string()),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("problem", pa.string()), ("answer", pa.string()), ("options", pa.list_(pa.string())),
        ("split", pa.string()), ("rationale", pa.string()),
    ]  # fmt: skip
    if reward_fields:
        kinds = [(name, REWARD_FIELD_ARROW_TYPES[kind]) for name, kind in reward_fields.items()]
        columns.append(("reward_info", pa.struct(kinds)))
    return pa.schema(columns)


def shown_record(record: CanonicalRecord, converter: RowConverter) -> CanonicalRecord:
    """The record with its images embedded as shown (turned upright, 8-bit grey) and a grounding box in
    pixels of that image: it reads without its source's image_root or box_units."""
    images = [converter.store.load(image) for image in record.images]
    answer = record.answer
    if record.task == "grounding":
        box = box_in_pixels(answer, images[0].size, converter.mapping.box_units)
        answer = "[" + ", ".join(exact_number(value) for value in box) + "]"
    return replace(record, images=tuple(EmbeddedImage(image.data, image.path) for image in images), answer=answer)


def embedded_row(record: CanonicalRecord, converter: RowConverter) -> dict:
    """A selected record as selected.parquet holds it (`shown_record`), its images as structs {bytes, path}."""
    shown = shown_record(record, converter)
    return {
        **canonical_dict(shown),
        "images": [{"bytes": image.read(), "path": image.name} for image in shown.images],
        "options": list(record.options) if record.options else None,
    }


def write_selection(records: list[CanonicalRecord], converter: RowConverter, output_dir: Path, embed: bool) -> Path:
    """The selected records as the converter reads them: selected.jsonl, or selected.parquet with every
    image embedded where `embed` asks for it or a record embeds one (JSON holds no bytes), written
    SELECTION_BATCH_ROWS records at a time."""
    if not embed and not any(isinstance(image, EmbeddedImage) for record in records for image in record.images):
        path = output_dir / "selected.jsonl"
        with open(path, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(canonical_dict(record)) + "\n" for record in records)
        return path
    path = output_dir / "selected.parquet"
    schema = selection_schema(converter.reward_fields)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(records), SELECTION_BATCH_ROWS):
            batch = [embedded_row(record, converter) for record in records[start : start + SELECTION_BATCH_ROWS]]
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return path


def histogram(rates: list[float]) -> dict:
    """Counts of each distinct pass rate (k responses give k + 1 possible values)."""
    counts = Counter(round(rate, 6) for rate in rates)
    return {str(rate): counts[rate] for rate in sorted(counts)}


def summarise(samples: list[SampledRewards]) -> dict:
    """Per task: prompts sampled, mean reward and accuracy over all responses, the shares of prompts
    whose k rewards (accuracies) are not all equal, and the responses cut off at max_new_tokens (and
    those cached before truncation was recorded)."""
    count = len(samples)
    return {
        "prompts": count,
        "mean_score": round(sum(s.mean_score for s in samples) / count, 4),
        "mean_accuracy": round(sum(s.mean_accuracy for s in samples) / count, 4),
        "share_with_score_spread": round(sum(s.score_spread for s in samples) / count, 4),
        "share_with_accuracy_spread": round(sum(s.accuracy_spread for s in samples) / count, 4),
        "truncated_responses": sum(s.truncated for s in samples),
        "truncation_unknown": sum(s.truncation_unknown for s in samples),
    }


def print_outcome(config: EngineConfig) -> None:
    """Run the engine and print its report."""
    report = Engine(config).run()
    shown = ("stages", "selected", "selected_by_data_source", "sampled_rewards")
    print(json.dumps({key: report[key] for key in shown}, indent=2))


def main(argv: list[str] | None = None) -> None:
    run_settings_cli(__doc__, EngineConfig, sys.argv[1:] if argv is None else argv, print_outcome)


if __name__ == "__main__":
    main()
