"""The one generation path of evaluation and the data engine: chat rendering, images resized with the
converter's per-image bounds (as the training dataset does), and the sampling settings of each use."""

import json
import shutil
from dataclasses import dataclass

import pytest
import torch
from PIL import Image
from data_helpers import convert_synthetic
from transformers import AutoTokenizer

from mixed_r1_verl.data.model_files import config_dtype
from mixed_r1_verl.data.model_images import model_input_image
from mixed_r1_verl.data.engine import Engine, EngineConfig
from mixed_r1_verl.data.processor import load_image_text_processor
from mixed_r1_verl.data.prompts import chat_template_text
from mixed_r1_verl.eval.generation import (
    ENGINE_SAMPLING,
    EVAL_SAMPLING,
    NEUTRAL_SAMPLING,
    GenerationRequest,
    SamplingSettings,
    TransformersGenerator,
    build_generator,
    cuda_load_dtype,
    eval_request,
    request_seed,
    transformers_placement,
    transformers_truncated,
    vllm_input,
    vllm_temperature_error,
    vllm_truncated,
)
from mixed_r1_verl.eval.records import load_records
from mixed_r1_verl.models.tiny_qwen25vl import MAX_PIXELS, MIN_PIXELS
from mixed_r1_verl.settings import parse_settings

# Bounds unlike the tiny processor's (up to 200,704 pixels): the frame must follow the converter's.
CONVERTER_MAX_PIXELS = 28 * 28 * 64


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    jsonl, image_root = convert_synthetic(
        root / "src", root / "out", rows_per_task=2, seed=11,
        synthetic={"image_size": (700, 500), "val_rows_per_task": 0}, max_pixels=CONVERTER_MAX_PIXELS, val_ratio=0.0,
    )  # fmt: skip
    return root, jsonl, image_root


def test_rendered_chat_has_one_vision_block_per_image_in_place(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    request = GenerationRequest([{"role": "user", "content": "<image>left<image> Compare."}], [])
    text = chat_template_text(tokenizer, request.messages)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert text.index("left") < text.rindex("<|image_pad|>") < text.index("Compare.")
    assert text.endswith("<|im_start|>assistant\n")


def test_eval_hands_both_backends_the_training_frame(converted, tiny_model_dir):
    root, _, _ = converted
    records = load_records([root / "out" / "train.parquet"])
    assert CONVERTER_MAX_PIXELS < MAX_PIXELS and len(records) == 8
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    generator = TransformersGenerator(str(tiny_model_dir), EVAL_SAMPLING, device="cpu")
    for record in records:
        frame = record.extra_info["frame_size"]
        request = eval_request(record)
        (image,) = vllm_input(tokenizer, request, patch_size=14)["multi_modal_data"]["image"]
        assert list(image.size) == frame
        _, grid_h, grid_w = generator.model_inputs([request])["image_grid_thw"][0].tolist()
        assert [grid_w * 14, grid_h * 14] == frame


def engine_on(converted, output_dir, *settings):
    _, jsonl, image_root = converted
    base = [f"input={jsonl}", f"image_root={image_root}", f"output_dir={output_dir}", "progress=false"]
    return Engine(parse_settings(EngineConfig, [*base, *settings]))


def test_engine_hands_the_generator_the_training_frame(converted, tiny_model_dir, tmp_path):
    engine = engine_on(converted, tmp_path, f"max_pixels={CONVERTER_MAX_PIXELS}", "difficulty.enabled=false")
    rows = engine.validate()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for row in rows:
        (image,) = vllm_input(tokenizer, engine.generation_request(row), patch_size=14)["multi_modal_data"]["image"]
        resized = [image.size[0], image.size[1]]
        assert resized == row.extra_info["frame_size"]


def test_engine_converts_for_the_model_it_measures(converted, tiny_model_dir, tmp_path):
    engine = engine_on(converted, tmp_path, f"difficulty.model_path={tiny_model_dir}")
    assert (engine.converter.min_pixels, engine.converter.max_pixels) == (MIN_PIXELS, MAX_PIXELS)
    generator = TransformersGenerator(str(tiny_model_dir), ENGINE_SAMPLING, device="cpu")
    for row in engine.validate():
        _, grid_h, grid_w = generator.model_inputs([engine.generation_request(row)])["image_grid_thw"][0].tolist()
        assert [grid_w * 14, grid_h * 14] == row.extra_info["frame_size"]


def test_requests_the_processor_would_resize_again_are_refused(converted, tiny_model_dir):
    root, _, _ = converted
    record = load_records([root / "out" / "train.parquet"])[0]
    request = eval_request(record)
    too_large = GenerationRequest(
        request.messages, [{**item, "max_pixels": 4 * MAX_PIXELS} for item in request.images], label=record.id
    )
    generator = TransformersGenerator(str(tiny_model_dir), EVAL_SAMPLING, device="cpu")
    with pytest.raises(ValueError, match=rf"generation request {record.id}: .*max_pixels {4 * MAX_PIXELS} is above"):
        generator.generate([too_large])
    inverted = GenerationRequest(
        request.messages, [{**item, "min_pixels": 2 * MAX_PIXELS} for item in request.images], label=record.id
    )
    with pytest.raises(ValueError, match=rf"generation request {record.id}: min_pixels {2 * MAX_PIXELS} is above"):
        generator.generate([inverted])
    # A fixed budget at the processor's max: 320x240 grows to 532x392, its sides rounded up past the budget.
    budget = {"min_pixels": MAX_PIXELS, "max_pixels": MAX_PIXELS}
    rounded_out = GenerationRequest(request.messages, [{"image": Image.new("RGB", (320, 240)), **budget}], label="r")
    with pytest.raises(ValueError, match=r"request r: image 1 of 1: 532x392, 208544 pixels, is outside the \[3136, "):
        generator.generate([rounded_out])


def test_each_use_has_its_sampling_defaults():
    assert (EVAL_SAMPLING.n, EVAL_SAMPLING.temperature, EVAL_SAMPLING.greedy) == (1, 0.0, True)
    assert (ENGINE_SAMPLING.n, ENGINE_SAMPLING.temperature, ENGINE_SAMPLING.greedy) == (8, 1.0, False)
    assert EngineConfig().difficulty.k == ENGINE_SAMPLING.n
    with pytest.raises(ValueError, match="4 responses per prompt need a temperature > 0"):
        SamplingSettings(n=4)


def test_the_vllm_backend_takes_only_the_temperatures_vllm_samples_at(tiny_model_dir):
    assert [vllm_temperature_error(t) for t in (0.0, 0.01, 1.0, 2.0)] == [None] * 4
    for temperature in (0.005, 2.5):
        with pytest.raises(ValueError, match=rf"temperature={temperature}: vLLM samples greedily \(0\) or at 0.01"):
            build_generator("vllm", str(tiny_model_dir), SamplingSettings(temperature=temperature))


def test_each_vllm_request_gets_a_seed_of_its_own_that_a_rerun_repeats(converted):
    root, _, _ = converted
    requests = [eval_request(record) for record in load_records([root / "out" / "train.parquet"])]
    seeds = [request_seed(0, request) for request in requests]
    assert len(set(seeds)) == len(requests), "two requests would share their random draws"
    assert [request_seed(0, request) for request in reversed(requests)] == seeds[::-1]
    assert all(0 <= seed < 2**31 for seed in seeds)
    assert request_seed(1, requests[0]) != seeds[0]
    same_prompt = GenerationRequest(requests[0].messages, requests[0].images, label="another-record")
    assert request_seed(0, same_prompt) != seeds[0]


def test_transformers_backend_samples_n_responses(tiny_model_dir, converted):
    root, _, _ = converted
    record = load_records([root / "out" / "train.parquet"])[0]
    settings = SamplingSettings(n=3, temperature=1.0, max_new_tokens=3)
    (responses,) = TransformersGenerator(str(tiny_model_dir), settings, device="cpu").generate([eval_request(record)])
    assert len(responses) == 3 and all(isinstance(response.text, str) for response in responses)


def test_transformers_backend_batches_give_each_request_its_own_responses(tiny_model_dir, converted):
    root, _, _ = converted
    records = load_records([root / "out" / "train.parquet"])
    text_only = GenerationRequest([{"role": "user", "content": "Name a colour."}], [], label="text")
    # Prompts of different lengths (tasks, options, one without an image) share left-padded batches.
    requests = [eval_request(record) for record in records[::2]] + [text_only]
    assert len({len(request.messages[0]["content"]) for request in requests}) == len(requests)
    greedy = SamplingSettings(max_new_tokens=12)
    alone = [TransformersGenerator(str(tiny_model_dir), greedy, device="cpu").generate([r])[0] for r in requests]
    batched = TransformersGenerator(str(tiny_model_dir), greedy, device="cpu", sequences_per_call=3).generate(requests)
    assert batched == alone and len(set(map(tuple, alone))) > 1

    sampled = SamplingSettings(n=2, temperature=1.0, max_new_tokens=4)
    responses = TransformersGenerator(str(tiny_model_dir), sampled, device="cpu", sequences_per_call=4).generate(requests)
    assert [len(group) for group in responses] == [2] * len(requests)


def test_transformers_backend_batches_draw_apart_and_a_seed_repeats_the_draws(tiny_model_dir, converted):
    root, _, _ = converted
    request = eval_request(load_records([root / "out" / "train.parquet"])[0])

    def one_prompt_per_batch(seed=3):
        sampled = SamplingSettings(temperature=1.0, max_new_tokens=8, seed=seed)
        generator = TransformersGenerator(str(tiny_model_dir), sampled, device="cpu", sequences_per_call=1)
        return [responses[0] for responses in generator.generate([request] * 3)]

    first = one_prompt_per_batch()
    assert len(set(first)) == 3, first  # the same prompt in three batches: three samples, not one thrice
    assert one_prompt_per_batch() == first
    assert one_prompt_per_batch(seed=4) != first  # another seed, other draws


def test_transformers_backend_samples_only_as_the_settings_say(tiny_model_dir, converted, tmp_path):
    root, _, _ = converted
    request = eval_request(load_records([root / "out" / "train.parquet"])[0])
    # A checkpoint whose own generation_config would make every sample the same, as Qwen2.5-VL-*-Instruct's
    # (top_p 0.001, top_k 1) does: the settings' top_p (1.0) must replace it.
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config_path = model_dir / "generation_config.json"
    own = {"top_k": 1, "top_p": 0.001, "repetition_penalty": 50.0}
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **own}))

    sampled = SamplingSettings(n=6, temperature=1.0, max_new_tokens=8)
    (responses,) = TransformersGenerator(str(model_dir), sampled, device="cpu").generate([request])
    assert len(set(responses)) > 1, responses

    greedy = SamplingSettings(max_new_tokens=8)
    (plain,) = TransformersGenerator(str(tiny_model_dir), greedy, device="cpu").generate([request])
    (penalised,) = TransformersGenerator(str(model_dir), greedy, device="cpu").generate([request])
    assert plain == penalised


def test_an_internvl_is_evaluated_on_the_images_it_is_trained_on(tiny_internvl_dir, tmp_path):
    convert_synthetic(tmp_path / "src", tmp_path / "out", rows_per_task=1, seed=3, val_ratio=0.0, model_family="internvl")
    records = load_records([tmp_path / "out" / "train.parquet"])
    generator = TransformersGenerator(str(tiny_internvl_dir), SamplingSettings(max_new_tokens=4), device="cpu")
    processor = load_image_text_processor(tiny_internvl_dir)
    # verl's dataset resizes with the image processor's patch size, 14 where it names none (InternVL's).
    assert not hasattr(processor.image_processor, "patch_size")
    for record in records:
        request = eval_request(record)
        text = chat_template_text(processor.tokenizer, request.messages)
        trained = processor(text=[text], images=[model_input_image(item, 14) for item in request.images], return_tensors="pt")
        evaluated = generator.model_inputs([request])
        assert torch.equal(evaluated["pixel_values"], trained["pixel_values"]), record.id
        assert torch.equal(evaluated["input_ids"], trained["input_ids"]), record.id
    responses = generator.generate([eval_request(record) for record in records])
    assert [len(response) for response in responses] == [1] * len(records) == [1] * 4


def test_a_qwen3vl_is_evaluated_on_the_32_pixel_token_images_it_is_trained_on(tiny_qwen3vl_dir, tmp_path):
    convert_synthetic(
        tmp_path / "src", tmp_path / "out", rows_per_task=1, seed=3, val_ratio=0.0, model_family="qwen3_vl",
        model_path=str(tiny_qwen3vl_dir),
    )  # fmt: skip
    records = load_records([tmp_path / "out" / "train.parquet"])
    generator = TransformersGenerator(str(tiny_qwen3vl_dir), SamplingSettings(max_new_tokens=4), device="cpu")
    processor = load_image_text_processor(tiny_qwen3vl_dir)
    assert generator.patch_size == processor.image_processor.patch_size == 16
    for record in records:
        request = eval_request(record)
        text = chat_template_text(processor.tokenizer, request.messages)
        images = [model_input_image(item, 16) for item in request.images]
        assert all(image.width % 32 == 0 and image.height % 32 == 0 for image in images), record.id
        trained = processor(text=[text], images=images, return_tensors="pt")
        evaluated = generator.model_inputs([request])
        assert torch.equal(evaluated["pixel_values"], trained["pixel_values"]), record.id
        assert torch.equal(evaluated["input_ids"], trained["input_ids"]), record.id
    responses = generator.generate([eval_request(record) for record in records])
    assert [len(response) for response in responses] == [1] * len(records) == [1] * 4


@dataclass
class CompletionOutput:
    """The fields of vLLM's `CompletionOutput` the decision reads (vLLM is not installed here)."""

    text: str
    finish_reason: str | None


def test_a_vllm_response_is_truncated_when_it_stopped_at_max_tokens():
    assert vllm_truncated(CompletionOutput("<think>look</think><answer>C", "length"))
    assert not vllm_truncated(CompletionOutput("<think>look</think><answer>C</answer>", "stop"))
    assert not vllm_truncated(CompletionOutput("", "abort"))


def test_a_transformers_row_is_truncated_when_it_fills_max_new_tokens_without_an_end_token():
    ends = {2, 7}
    assert transformers_truncated([5, 6, 5, 6], ends, max_new_tokens=4)
    assert not transformers_truncated([5, 6, 5, 2], ends, max_new_tokens=4)  # ended on the last step
    assert not transformers_truncated([5, 7, 0, 0], ends, max_new_tokens=4)  # ended early, padded in a batch
    assert not transformers_truncated([5, 7], ends, max_new_tokens=4)  # every row of the batch ended early
    assert transformers_truncated([5, 6, 5, 6], set(), max_new_tokens=4)  # a model without an end token


def greedy_tokens(generator, request, max_new_tokens):
    inputs = generator.model_inputs([request])
    with torch.inference_mode():
        output = generator.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **NEUTRAL_SAMPLING)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def test_transformers_backend_tells_a_response_cut_off_from_one_that_ended(converted, tiny_model_dir, tmp_path):
    root, _, _ = converted
    records = load_records([root / "out" / "train.parquet"])
    greedy = SamplingSettings(max_new_tokens=6)
    generator = TransformersGenerator(str(tiny_model_dir), greedy, device="cpu")
    rows = {record.id: greedy_tokens(generator, eval_request(record), 6) for record in records}
    # One request whose greedy response holds a token another's never does: made the end token, the first
    # ends early (then padded in the batch with a token that ends nothing) and the second runs out.
    ended, cut = next(
        (a, b) for a in records for b in records if any(token not in rows[b.id] for token in rows[a.id][:5])
    )
    end_token = next(token for token in rows[ended.id] if token not in rows[cut.id])
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config_path = model_dir / "generation_config.json"
    config = json.loads(config_path.read_text())
    assert config["pad_token_id"] != end_token
    config_path.write_text(json.dumps({**config, "eos_token_id": [end_token]}))
    requests = [eval_request(ended), eval_request(cut)]

    stopped, ran_out = TransformersGenerator(str(model_dir), greedy, device="cpu").generate(requests)
    assert [response.truncated for response in stopped + ran_out] == [False, True]
    assert [r.truncated for r in generator.generate(requests[::-1])[0]] == [True]  # without that end token

    near_greedy = SamplingSettings(n=2, temperature=1e-4, max_new_tokens=6)
    sampled = TransformersGenerator(str(model_dir), near_greedy, device="cpu").generate(requests[::-1])
    assert [[response.truncated for response in group] for group in sampled] == [[True, True], [False, False]]


def test_on_cuda_the_transformers_backend_loads_a_checkpoint_in_the_dtype_vllm_picks(tiny_model_dir, tmp_path):
    """vLLM's `dtype=auto` loads a config naming float32 (verl's copies name the actor's) in the GPU's half
    dtype, and a half dtype the GPU lacks in the one it has; the transformers backend does the same on CUDA."""

    def config_naming(dtype: str | None, key: str = "dtype") -> str | None:
        model = tmp_path / f"{key}_{dtype}"
        model.mkdir()
        config = json.loads((tiny_model_dir / "config.json").read_text())
        config.pop("dtype", None)
        (model / "config.json").write_text(json.dumps({**config, key: dtype} if dtype else config))
        return config_dtype(model)

    named = [config_naming("float32"), config_naming("bfloat16"), config_naming("float16", key="torch_dtype")]
    assert named == ["float32", "bfloat16", "float16"] and config_naming(None) is None
    assert [cuda_load_dtype(dtype, bfloat16_supported=True) for dtype in [*named, None]] == [
        "bfloat16", "bfloat16", "float16", "bfloat16"
    ]  # fmt: skip
    assert {cuda_load_dtype(dtype, bfloat16_supported=False) for dtype in [*named, None]} == {"float16"}
    assert transformers_placement("cpu", str(tiny_model_dir)) == ("cpu", "float32")
