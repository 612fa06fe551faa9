"""Sampling k responses per prompt from a base model, with a resumable on-disk cache.

Two backends: vLLM offline (the production path on GPUs: every pending prompt in one batched
call) and transformers `generate` (CPU fallback, Qwen2.5-VL family).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class SamplingSettings:
    k: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0


@dataclass(frozen=True)
class PromptRequest:
    key: str  # identifies prompt, images, model and sampling settings in the cache
    messages: list[dict]  # chat with image content items, as the model's chat template expects
    images: list[Image.Image]  # already resized to the frame the model sees


class Sampler(Protocol):
    def sample(self, requests: list[PromptRequest]) -> dict[str, list[str]]:
        """k responses per request, by request key."""


def request_key(record_id: str, prompt_text: str, image_digests: tuple[str, ...], model: str, settings) -> str:
    payload = json.dumps([record_id, prompt_text, image_digests, model, settings.__dict__], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """Append-only JSONL of {key, responses}; a rerun reads it back and samples only what is missing."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, list[str]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as lines:
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by an interrupted run; it is sampled again
                    self.entries[entry["key"]] = entry["responses"]

    def add(self, responses_by_key: dict[str, list[str]]) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            for key, responses in responses_by_key.items():
                out.write(json.dumps({"key": key, "responses": responses}) + "\n")
        self.entries.update(responses_by_key)


class TransformersSampler:
    """CPU fallback for the Qwen2.5-VL family: one `generate` call per prompt, k sequences each."""

    def __init__(self, model_path: str, settings: SamplingSettings):
        import torch
        from transformers import AutoModelForImageTextToText

        from mixed_r1_verl.data.processor import load_image_text_processor

        self.torch = torch
        self.settings = settings
        self.processor = load_image_text_processor(model_path)
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()

    def sample(self, requests: list[PromptRequest]) -> dict[str, list[str]]:
        responses = {}
        self.torch.manual_seed(self.settings.seed)
        for request in requests:
            text = self.processor.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
            inputs = self.processor(text=[text], images=request.images or None, return_tensors="pt")
            with self.torch.no_grad():
                output = self.model.generate(
                    **inputs,
                    do_sample=True,
                    temperature=self.settings.temperature,
                    top_p=self.settings.top_p,
                    max_new_tokens=self.settings.max_new_tokens,
                    num_return_sequences=self.settings.k,
                )
            prompt_length = inputs["input_ids"].shape[1]
            responses[request.key] = self.processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        return responses


class VllmSampler:
    """vLLM offline: all pending prompts in one `generate` call with n=k samples each."""

    def __init__(self, model_path: str, settings: SamplingSettings, max_images_per_prompt: int = 1, **engine_kwargs):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as error:
            raise ImportError(
                "difficulty.backend=vllm needs vLLM (pip install 'mixed_r1_verl[gpu]'); "
                "use difficulty.backend=transformers on machines without it"
            ) from error
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.llm = LLM(
            model=model_path, limit_mm_per_prompt={"image": max_images_per_prompt}, seed=settings.seed, **engine_kwargs
        )
        self.params = SamplingParams(
            n=settings.k,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_new_tokens,
            seed=settings.seed,
        )

    def sample(self, requests: list[PromptRequest]) -> dict[str, list[str]]:
        inputs = [
            {
                "prompt": self.tokenizer.apply_chat_template(
                    request.messages, add_generation_prompt=True, tokenize=False
                ),
                "multi_modal_data": {"image": request.images},
            }
            for request in requests
        ]
        outputs = self.llm.generate(inputs, self.params)
        return {request.key: [c.text for c in output.outputs] for request, output in zip(requests, outputs)}


def build_sampler(backend: str, model_path: str, settings: SamplingSettings, **options) -> Sampler:
    if backend == "vllm":
        return VllmSampler(model_path, settings, **options)
    if backend == "transformers":
        return TransformersSampler(model_path, settings)
    raise ValueError(f"unknown sampling backend {backend!r}; use vllm or transformers")
