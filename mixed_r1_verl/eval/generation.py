"""Response generation for evaluation and the data engine: one image-and-text path, two backends.

Every prompt is a verl-layout chat (`<image>` placeholders in the text) plus image items carrying the
converter's per-image `min_pixels`/`max_pixels`. Images are resized exactly as the training dataset
resizes them (`mixed_r1_verl.data.model_images`), so a model is evaluated and sampled in the frame its
grounding answers are scored in; a request whose bounds the model's image processor would resize out
of that frame is an error. The chat is rendered by the model's chat template and
the processor (transformers) or vLLM expands the image pads.

Backends: vLLM offline (GPU; every prompt of a call in one batch) and transformers `generate`
(anywhere; Qwen2.5-VL, Qwen3-VL and InternVL). Sampling settings are one type with per-use defaults:
`EVAL_SAMPLING` (greedy, one response) and `ENGINE_SAMPLING` (8 responses at temperature 1). Each response
says whether it was cut off at `max_new_tokens` (`Completion.truncated`), so a response that ran out of
tokens is told from a wrong one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from mixed_r1_verl.data.frames import area_outside_reason, pixel_bounds_error, resized_again_reason, stated_bounds
from mixed_r1_verl.data.model_files import (
    config_dtype,
    processor_pixel_bounds,
    required_image_processor_settings,
    resolve_model_dir,
    vision_geometry,
)
from mixed_r1_verl.data.model_images import model_input_image
from mixed_r1_verl.data.processor import load_image_text_processor
from mixed_r1_verl.data.prompts import chat_template_text
from mixed_r1_verl.models.lora import with_lora_merged

from .cache import Completion, GenerationCache
from .records import EvalRecord

BACKENDS = ("vllm", "transformers")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1  # responses per prompt
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"sampling n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"sampling temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling top_p must lie in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"{self.n} responses per prompt need a temperature > 0 (greedy gives one answer)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


EVAL_SAMPLING = SamplingSettings()
ENGINE_SAMPLING = SamplingSettings(n=8, temperature=1.0, max_new_tokens=512)


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict]  # verl-layout chat: `<image>` placeholders in the text
    images: list[dict]  # image items: `bytes` or `image` (PIL image or path), with min/max pixels
    label: str = ""  # what errors name: the record id
    source: str = ""  # the file the record comes from, which errors name too where known


class Generator(Protocol):
    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """`settings.n` responses per request, in request order."""


NO_PROCESSOR_BOUNDS = (None, None)


def model_images(
    request: GenerationRequest, patch_size: int, processor_bounds: tuple = NO_PROCESSOR_BOUNDS
) -> list[Image.Image]:
    """The request's images resized to the frame the model sees, as in training; `processor_bounds`
    are the model image processor's (min_pixels, max_pixels), which must not resize them again."""
    for item in request.images:
        bounds = (item.get("min_pixels"), item.get("max_pixels"))
        reason = pixel_bounds_error(*stated_bounds(*bounds)) or resized_again_reason(bounds, processor_bounds)
        if reason:
            raise ValueError(f"{request_name(request)}: {reason}")
    images = []
    for number, item in enumerate(request.images, start=1):
        try:
            image = model_input_image(item, patch_size)
        except OSError as error:  # bytes that are no image, a truncated file, a path gone since
            reason = "not an image PIL can decode" if isinstance(error, UnidentifiedImageError) else str(error)
            raise ValueError(f"{request_name(request)}: image {number} of {len(request.images)}: {reason}") from None
        resized_again = area_outside_reason(*image.size, processor_bounds)
        if resized_again:
            raise ValueError(f"{request_name(request)}: image {number} of {len(request.images)}: {resized_again}")
        images.append(image)
    return images


def request_name(request: GenerationRequest) -> str:
    """How errors name a request: by its label, after the file its record comes from where known."""
    named = f"generation request {request.label or '(unnamed)'}"
    return f"{request.source}: {named}" if request.source else named


# vLLM (0.24) refuses a temperature above 2 and samples at 0.01 with any positive one below it.
VLLM_TEMPERATURES = (0.01, 2.0)


def vllm_temperature_error(temperature: float) -> str | None:
    """Why vLLM would not sample at `temperature` (0 is greedy); None when it would."""
    low, high = VLLM_TEMPERATURES
    if temperature == 0 or low <= temperature <= high:
        return None
    return (
        f"temperature={temperature}: vLLM samples greedily (0) or at {low} to {high} only (it refuses a higher "
        f"temperature and samples a lower one at {low})"
    )


# Engine arguments `VllmGenerator` takes from the command's own settings, never from `vllm_kwargs`.
VLLM_ARGUMENTS_FROM_SETTINGS = ("model", "seed", "limit_mm_per_prompt", "max_images_per_prompt")


def vllm_kwargs_error(vllm_kwargs: Mapping, instead: Mapping[str, str], prefix: str = "") -> str | None:
    """Why `vllm_kwargs` cannot be passed on: it holds an argument the command sets from its own settings
    (`instead` says, per argument, what to set); None when it can."""
    for name in VLLM_ARGUMENTS_FROM_SETTINGS:
        if name in vllm_kwargs:
            return f"{prefix}vllm_kwargs.{name}: the command sets it for vLLM; {instead[name]}"
    return None


# vLLM engine arguments of memory, batching and placement: a cached response holds whatever they are. The
# others (max_model_len, quantization, kv_cache_dtype, dtype, ...) change what is generated.
VLLM_PLACEMENT_ARGUMENTS = frozenset(
    "gpu_memory_utilization kv_cache_memory_bytes swap_space cpu_offload_gb max_num_seqs max_num_batched_tokens "
    "enable_chunked_prefill enable_prefix_caching block_size tensor_parallel_size pipeline_parallel_size "
    "data_parallel_size distributed_executor_backend enforce_eager compilation_config disable_custom_all_reduce "
    "disable_log_stats max_seq_len_to_capture".split()
)


def output_engine_arguments(vllm_kwargs: Mapping) -> dict:
    """The vLLM engine arguments a cached response was generated under that change what is generated
    (all but `VLLM_PLACEMENT_ARGUMENTS`), by name."""
    return {name: vllm_kwargs[name] for name in sorted(vllm_kwargs) if name not in VLLM_PLACEMENT_ARGUMENTS}


def vllm_input(
    tokenizer, request: GenerationRequest, patch_size: int, processor_bounds: tuple = NO_PROCESSOR_BOUNDS
) -> dict:
    """One vLLM prompt: the chat text and the resized images (vLLM expands the image pads)."""
    prompt = {"prompt": chat_template_text(tokenizer, request.messages)}
    if request.images:
        prompt["multi_modal_data"] = {"image": model_images(request, patch_size, processor_bounds)}
    return prompt


def vllm_truncated(completion) -> bool:
    """Whether a vLLM `CompletionOutput` stopped at `max_tokens` rather than at an end token."""
    return completion.finish_reason == "length"


class VllmGenerator:
    """vLLM offline (``pip install -e '.[gpu]'``): all requests of a call in one `generate`."""

    def __init__(self, model_path: str, settings: SamplingSettings, max_images_per_prompt: int = 1, **engine_kwargs):
        if error := vllm_temperature_error(settings.temperature):
            raise ValueError(error)
        try:
            from vllm import LLM, SamplingParams
        except ImportError as error:
            raise ImportError(
                "the vllm backend needs vLLM (pip install -e '.[gpu]'); use the transformers backend without it"
            ) from error
        model_dir = resolve_model_dir(model_path)
        self.patch_size, _ = vision_geometry(model_dir)
        self.processor_bounds = processor_pixel_bounds(required_image_processor_settings(model_dir))
        # No video ever: vLLM would otherwise reserve memory for videos when it profiles.
        limits = {"image": max_images_per_prompt, "video": 0}
        self.llm = LLM(model=model_path, limit_mm_per_prompt=limits, seed=settings.seed, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.settings = settings
        self.sampling_params = SamplingParams

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        inputs = [vllm_input(self.tokenizer, request, self.patch_size, self.processor_bounds) for request in requests]
        settings = self.settings
        params = [
            self.sampling_params(
                n=settings.n,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                seed=request_seed(settings.seed, request),
            )
            for request in requests
        ]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [[Completion(c.text, vllm_truncated(c)) for c in output.outputs] for output in outputs]


# transformers fills every sampling field left unset from the checkpoint's generation_config (the
# Qwen2.5-VL Instruct models ship top_k=1 and repetition_penalty=1.05, so k samples would be one);
# these are set so that both backends sample only as SamplingSettings say, as vLLM does.
NEUTRAL_SAMPLING = {"top_k": 0, "repetition_penalty": 1.0}


def transformers_truncated(new_tokens: Sequence[int], end_tokens: Collection[int], max_new_tokens: int) -> bool:
    """Whether one row of transformers `generate` output (the tokens after the prompt) ran to
    `max_new_tokens` without an end token. In a batch a row that ended early is padded after its end
    token up to the longest row, so it holds an end token whatever its width."""
    return len(new_tokens) >= max_new_tokens and not any(token in end_tokens for token in new_tokens)


def end_token_ids(generation_config) -> set[int]:
    """The tokens that end a sequence in `generate` (`eos_token_id`: one id, a list, or none)."""
    ids = generation_config.eos_token_id
    return set() if ids is None else {ids} if isinstance(ids, int) else set(ids)


def cuda_load_dtype(named: str | None, bfloat16_supported: bool) -> str:
    """The dtype the transformers backend loads a checkpoint in on CUDA, the one vLLM's `dtype=auto` picks: the
    dtype its config names, with float32 (named by verl's copies, for the actor's float32) or none going to the
    GPU's half dtype, bfloat16 where it has it (compute capability 8.0 and up), else float16."""
    half = "bfloat16" if bfloat16_supported else "float16"
    if named in (None, "float32") or (named == "bfloat16" and not bfloat16_supported):
        return half
    return named


def transformers_placement(device: str | None, model_path: str) -> tuple[str, str]:
    """The device the transformers backend generates on (the one given, else CUDA when there is one,
    else the CPU) and the dtype it loads the model in there: `cuda_load_dtype` on CUDA, float32 on the CPU."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if error := device_error(device):
        raise ValueError(error)
    if not device.startswith("cuda"):
        return device, "float32"
    named = config_dtype(resolve_model_dir(model_path))
    return device, cuda_load_dtype(named, torch.cuda.is_bf16_supported(including_emulation=False))


def device_error(device: str) -> str | None:
    """Why transformers cannot generate on `device`: a name torch does not know, or a CUDA GPU that is not
    there; None when it can."""
    import torch

    try:
        named = torch.device(device)
    except RuntimeError:
        return f"device={device}: not a device torch knows (cpu, cuda or cuda:N, say)"
    visible = torch.cuda.device_count()
    if named.type == "cuda" and (named.index or 0) >= visible:
        return f"device={device}: no such CUDA GPU here ({visible} visible)"
    return None


class TransformersGenerator:
    """`generate` for Qwen2.5-VL, Qwen3-VL and InternVL checkpoints through the image-and-text processor
    (no torchvision needed): requests in left-padded batches of at most `sequences_per_call` sequences
    (prompts × n)."""

    def __init__(
        self, model_path: str, settings: SamplingSettings, device: str | None = None, sequences_per_call: int = 64
    ):
        import torch
        from transformers import AutoModelForImageTextToText

        self.torch = torch
        self.settings = settings
        self.prompts_per_call = max(1, sequences_per_call // settings.n)
        self.device, dtype = transformers_placement(device, model_path)
        model_dir = resolve_model_dir(model_path)
        required_image_processor_settings(model_dir)
        self.processor = load_image_text_processor(model_path)
        # Left padding puts every prompt's last token at the same position, where generation starts.
        self.processor.tokenizer.padding_side = "left"
        self.patch_size, _ = vision_geometry(model_dir)
        self.processor_bounds = processor_pixel_bounds(self.processor.image_processor.to_dict())
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        # Seeded once: each batch draws on from where the last stopped, so no two batches sample alike.
        torch.manual_seed(settings.seed)

    def model_inputs(self, requests: Sequence[GenerationRequest]):
        images = [image for request in requests for image in model_images(request, self.patch_size, self.processor_bounds)]
        texts = [chat_template_text(self.processor.tokenizer, request.messages) for request in requests]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        return inputs.to(self.device)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        responses = []
        for start in range(0, len(requests), self.prompts_per_call):
            responses += self._generate_batch(requests[start : start + self.prompts_per_call])
        return responses

    def _generate_batch(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        inputs = self.model_inputs(requests)
        settings = self.settings
        sampling = {} if settings.greedy else {"temperature": settings.temperature, "top_p": settings.top_p}
        sampling.update(NEUTRAL_SAMPLING)
        with self.torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=settings.max_new_tokens,
                do_sample=not settings.greedy,
                num_return_sequences=settings.n,
                **sampling,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        ends = end_token_ids(self.model.generation_config)
        completions = [
            Completion(text, transformers_truncated(row.tolist(), ends, settings.max_new_tokens))
            for text, row in zip(texts, new_tokens, strict=True)
        ]
        return [completions[index : index + settings.n] for index in range(0, len(completions), settings.n)]


def build_generator(backend: str, model_path: str, settings: SamplingSettings, **options) -> Generator:
    """`vllm` (options: max_images_per_prompt and vLLM engine arguments) or `transformers` (options: device,
    sequences_per_call). A model directory holding a LoRA adapter generates with the adapter merged in."""
    model_path = with_lora_merged(model_path)
    if backend == "vllm":
        return VllmGenerator(model_path, settings, **options)
    if backend == "transformers":
        return TransformersGenerator(model_path, settings, **options)
    raise ValueError(f"unknown generation backend {backend!r}; use one of {', '.join(BACKENDS)}")


def eval_request(record: EvalRecord) -> GenerationRequest:
    return GenerationRequest(record.prompt, record.image_items(), label=record.id, source=record.source)


def request_digest(request: GenerationRequest) -> str:
    """What a response answers, for the generation cache: the chat and each image's content and resize
    bounds (sha256)."""
    images = [[_image_digest(item), item.get("min_pixels"), item.get("max_pixels")] for item in request.images]
    return hashlib.sha256(json.dumps([request.messages, images], sort_keys=True, default=str).encode()).hexdigest()


def request_seed(seed: int, request: GenerationRequest) -> int:
    """A request's own sampling seed, from `seed`, its label and what it asks: vLLM seeds each request's
    random draws by its seed, so one seed for every request would give all prompts the same draws; this
    way a request gets the same draws in whatever batch it comes (its logits can still differ slightly
    with the batch: vLLM's kernels are not batch-invariant by default), and a rerun repeats them."""
    digest = hashlib.sha256(json.dumps([seed, request.label, request_digest(request)]).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: any seed type vLLM passes it on to takes it


def _image_digest(item: dict) -> str:
    image = item["bytes"] if item.get("bytes") is not None else item["image"]
    if isinstance(image, Image.Image):
        data = image.tobytes()
    elif isinstance(image, (bytes, bytearray)):
        data = image
    else:
        data = Path(image).read_bytes()
    return hashlib.sha256(data).hexdigest()


def generate_missing(
    records: Sequence[EvalRecord], make_generator: Callable[[], Generator], cache: GenerationCache, batch_size: int
) -> int:
    """Generate the records the cache has no response to (for the same prompt and images), appending each
    finished batch; the generator is made only when one is needed. Returns how many were generated."""
    digests = {record.id: request_digest(eval_request(record)) for record in records}
    missing = set(cache.missing(digests))
    todo = [record for record in records if record.id in missing]
    asked_otherwise = sum(record.id in cache.requests for record in todo)
    logger.info(
        "%s: %d of %d generations reused; generating %d (%d of them for a prompt or image changed since)",
        cache.path, len(records) - len(todo), len(records), len(todo), asked_otherwise,
    )  # fmt: skip
    if not todo:
        return 0
    generator = make_generator()
    with tqdm(total=len(records), initial=len(records) - len(todo), desc="generate", unit="prompt") as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            responses = generator.generate([eval_request(record) for record in batch])
            cache.add({record.id: response[0] for record, response in zip(batch, responses, strict=True)}, digests)
            progress.update(len(batch))
    return len(todo)
