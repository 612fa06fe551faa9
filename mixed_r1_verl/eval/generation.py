"""Response generation: vLLM on GPU, transformers ``generate`` (Qwen2-VL family) anywhere else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from .cache import GenerationCache
from .prompts import expand_image_pads, render_prompt
from .records import EvalRecord


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


class VLLMGenerator:
    """Batched generation with vLLM (``pip install -e '.[gpu]'``)."""

    def __init__(self, model_path: str, sampling: SamplingSettings, tensor_parallel_size: int = 1, max_images: int = 4):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as error:
            raise RuntimeError("the vllm backend needs vLLM: pip install -e '.[gpu]' (or use --backend hf)") from error
        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            limit_mm_per_prompt={"image": max_images},
            seed=sampling.seed,
            trust_remote_code=True,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.params = SamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )

    def generate(self, records: Sequence[EvalRecord]) -> list[str]:
        requests = []
        for record in records:
            request = {"prompt": render_prompt(self.tokenizer, record)}
            if record.image_blobs:
                request["multi_modal_data"] = {"image": record.images()}
            requests.append(request)
        outputs = self.llm.generate(requests, self.params, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]


class TransformersGenerator:
    """One-record-at-a-time ``generate`` for Qwen2-VL / Qwen2.5-VL checkpoints.

    Uses the tokenizer and the PIL image processor directly (no AutoProcessor, which needs torchvision).
    """

    def __init__(self, model_path: str, sampling: SamplingSettings, device: str = "cpu"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.torch = torch
        self.sampling = sampling
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_path)
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype="auto").to(device).eval()

    def generate(self, records: Sequence[EvalRecord]) -> list[str]:
        return [self._generate_one(record) for record in records]

    def _generate_one(self, record: EvalRecord) -> str:
        text = render_prompt(self.tokenizer, record)
        vision = {}
        if record.image_blobs:
            vision = dict(self.image_processor(images=record.images(), return_tensors="pt"))
            text = expand_image_pads(text, vision["image_grid_thw"], self.image_processor.merge_size)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        inputs = {name: value.to(self.device) for name, value in {**inputs, **vision}.items()}
        sample = self.sampling.temperature > 0
        self.torch.manual_seed(self.sampling.seed)
        with self.torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.sampling.max_new_tokens,
                do_sample=sample,
                **({"temperature": self.sampling.temperature, "top_p": self.sampling.top_p} if sample else {}),
            )
        prompt_length = inputs["input_ids"].shape[1]
        return self.tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)


def generate_missing(records: Sequence[EvalRecord], generator, cache: GenerationCache, batch_size: int) -> int:
    """Generate the records the cache lacks, appending each finished batch; returns how many were generated."""
    missing = set(cache.missing([record.id for record in records]))
    todo = [record for record in records if record.id in missing]
    with tqdm(total=len(records), initial=len(records) - len(todo), desc="generate", unit="prompt") as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            responses = generator.generate(batch)
            cache.add({record.id: response for record, response in zip(batch, responses, strict=True)})
            progress.update(len(batch))
    return len(todo)
