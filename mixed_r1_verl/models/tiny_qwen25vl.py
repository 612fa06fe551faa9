"""A tiny Qwen2.5-VL built offline: random weights, a BPE tokenizer trained on the spot, the real
Qwen2.5-VL processor and a chat template that renders the same prompt layout as the released models.

It stands in for a real checkpoint wherever a model is needed without network access: tests, the
data engine's CPU path, the `smoke` recipe (size `test`) and the `learn` recipe (size `learn`).
Attention heads are 32 wide or more in text and vision, which vLLM's attention backends accept.

    python -m mixed_r1_verl.models.tiny_qwen25vl OUTPUT_DIR [--size learn] [--set hidden_size=512 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 256

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def chatml_template(image: str, video: str, default_system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """A chat template in the ChatML layout of Qwen2.5-VL, Qwen3-VL and InternVL3, rendering each image
    and video content item as `image` and `video`; a chat without a system turn gets `default_system`
    (Qwen2.5-VL), or none (None: Qwen3-VL, and InternVL3 as transformers converts it)."""
    default_system_turn = (
        ""
        if default_system is None
        else (
            "{% if loop.first and message['role'] != 'system' %}"
            f"<|im_start|>system\n{default_system}<|im_end|>\n"
            "{% endif %}"
        )
    )
    return (
        "{% for message in messages %}"
        f"{default_system_turn}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for content in message['content'] %}"
        f"{{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}}{image}"
        f"{{% elif content['type'] == 'video' or 'video' in content %}}{video}"
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


CHAT_TEMPLATE = chatml_template(
    "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
)

# Enough text for the trained BPE to learn the tags and words the rewards and prompts use.
_CORPUS = [
    "<think> Let me look at the image carefully and reason step by step. </think>",
    "<answer> B </answer> <answer> yes </answer> <answer> no </answer> <answer> 42.5 </answer>",
    "<answer> [12, 34, 256, 300] </answer> The answer is (C). The chart shows 1,234 units, 45%.",
    "Question: Is there a cat in the picture? Options: A. cat B. dog C. bird D. fish",
    "Describe the scene. A man is riding a red bicycle on a sunny street next to a park.",
    "Locate the object and output its bounding box as [x1, y1, x2, y2] in pixels.",
    "What is the value of the largest bar? Answer with a single number.",
    "You are a helpful assistant. system user assistant \\boxed{7}",
    "I see a red circle, an orange square, a yellow triangle, a green, blue or purple shape at the top left, "
    "top centre, top right, middle left, centre, middle right, bottom left, bottom centre or bottom right.",
    "The bars read A 12, B 57, C 33. The tallest is B. Bar C is 33. Nothing is blue. The one is there, option D.",
    string.ascii_letters + string.digits + string.punctuation,
]


@dataclass(frozen=True)
class TinySize:
    """Architecture of a tiny Qwen2.5-VL. Head width is hidden size / heads in text and vision."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_depth: int = 2
    vision_num_heads: int = 1
    vocab_size: int = 512

    def check(self) -> None:
        text_head, vision_head = self.hidden_size / self.num_attention_heads, self.vision_hidden_size / self.vision_num_heads
        # M-RoPE splits half the text head width into (temporal, height, width) sections in the ratio 2:3:3.
        if text_head != int(text_head) or text_head % 16:
            raise ValueError(f"text head width hidden_size/num_attention_heads = {text_head} must be a multiple of 16")
        if vision_head != int(vision_head) or vision_head % 2:
            raise ValueError(f"vision head width vision_hidden_size/vision_num_heads = {vision_head} must be an even integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @property
    def mrope_section(self) -> list[int]:
        unit = self.hidden_size // self.num_attention_heads // 16
        return [2 * unit, 3 * unit, 3 * unit]

    @property
    def full_attention_blocks(self) -> list[int]:
        """Every fourth vision block attends globally, the last one always (the others use windows)."""
        return sorted({i for i in range(3, self.vision_depth, 4)} | {self.vision_depth - 1})


# vLLM's KV pool for the `test` size (`kv_cache_memory_bytes`): its cache takes 256 bytes a token, so
# 1 GiB holds 4M tokens, over 100 smoke steps. A pool sized by gpu_memory_utilization alone is tens of
# millions of 16-token blocks on a large GPU, and vLLM builds one Python object per block: about a
# second per million at every engine start, and a pass over all of them at every prefix-cache reset.
TEST_SIZE_VLLM_KV_CACHE_BYTES = 1 << 30
# With the KV pool given in bytes, vLLM's gpu_memory_utilization only sets how much of the GPU must be free
# when an engine starts (vLLM's default asks for 0.92): a tenth lets an engine of the `test` size start
# beside other runs on the same GPU.
TEST_SIZE_VLLM_GPU_MEMORY_UTILIZATION = 0.1


def kv_cache_bytes_per_token(model_dir: str | os.PathLike) -> int:
    """Bytes of bf16 keys and values a token takes in every text layer of a checkpoint, from its config."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    text = config.get("text_config") or config.get("llm_config") or config
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return 2 * 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim


SIZES = {
    # Tests: builds in about a second on a CPU.
    "test": TinySize(),
    # The learning proof: 27M parameters, enough to learn the synthetic tasks in minutes on one GPU.
    "learn": TinySize(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        vision_hidden_size=256,
        vision_intermediate_size=1024,
        vision_depth=6,
        vision_num_heads=4,
        vocab_size=1024,
    ),
}


def resolve_size(size: TinySize | str, **overrides) -> TinySize:
    """A preset name or a TinySize, with field overrides applied and checked."""
    if isinstance(size, str) and size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {sorted(SIZES)}")
    base = SIZES[size] if isinstance(size, str) else size
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TinySize)}
    if unknown:
        raise ValueError(f"unknown size fields {sorted(unknown)}; known: {[f.name for f in dataclasses.fields(TinySize)]}")
    resolved = dataclasses.replace(base, **overrides)
    resolved.check()
    return resolved


def size_from_settings(size: str, settings: list[str]) -> TinySize:
    """A preset by name with `FIELD=INT` overrides (`hidden_size=768`), checked."""
    overrides = {}
    for item in settings:
        name, _, value = item.partition("=")
        if not value.isdigit():
            raise ValueError(f"{item}: expected FIELD=INT")
        overrides[name] = int(value)
    return resolve_size(size, **overrides)


def train_tokenizer(
    vocab_size: int, special_tokens: list[str] = SPECIAL_TOKENS, chat_template: str = CHAT_TEMPLATE, **settings
):
    """A byte-level BPE tokenizer of about `vocab_size` tokens, trained on the spot, with Qwen's special
    tokens (`special_tokens` after the first are additional special tokens); `settings` go to the
    transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special_tokens[1:],
        model_max_length=32768,
        chat_template=chat_template,
        **settings,
    )


def write_tokenizer(output_dir: Path, vocab_size: int, special_tokens: list[str] = SPECIAL_TOKENS,
                    chat_template: str = CHAT_TEMPLATE, **named_tokens: str):
    """Train and save a tokenizer (`train_tokenizer`) saved as Qwen2Tokenizer, as Qwen's and InternVL3's
    are, with `named_tokens` as attributes (`tokenizer.<name>`); returns it and the special tokens' ids."""
    from transformers import Qwen2TokenizerFast

    train_tokenizer(vocab_size, special_tokens, chat_template).save_pretrained(output_dir)
    tokenizer = Qwen2TokenizerFast.from_pretrained(output_dir, **named_tokens)
    tokenizer.save_pretrained(output_dir)  # records Qwen2Tokenizer as the tokenizer class
    return tokenizer, {token: tokenizer.convert_tokens_to_ids(token) for token in special_tokens}


def qwen2_text_config(size: TinySize, vocab_size: int, special_id: dict[str, int]) -> dict:
    """The Qwen2 language model's settings of a tiny model."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=special_id["<|endoftext|>"],
        eos_token_id=special_id["<|im_end|>"],
        pad_token_id=special_id["<|endoftext|>"],
    )


def qwen_vision_config(size: TinySize, patch_size: int) -> dict:
    """The Qwen-VL vision encoder's settings of a tiny model: square patches, 2x2 of them merged into one
    token of the language model's width, 2 frames a patch in time."""
    return dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden_size,
        intermediate_size=size.vision_intermediate_size,
        num_heads=size.vision_num_heads,
        out_hidden_size=size.hidden_size,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )


def qwen_vision_token_ids(special_id: dict[str, int]) -> dict[str, int]:
    """The ids of the image, video and vision-bracket tokens, as a Qwen-VL config names them."""
    return dict(
        image_token_id=special_id["<|image_pad|>"],
        video_token_id=special_id["<|video_pad|>"],
        vision_start_token_id=special_id["<|vision_start|>"],
        vision_end_token_id=special_id["<|vision_end|>"],
    )


def save_random_model(model_class, config, output_dir: Path, special_id: dict[str, int], seed: int) -> None:
    """A model of `model_class` with random weights (seeded) in bfloat16, ending its answers at
    `<|im_end|>` or `<|endoftext|>`, saved to `output_dir`."""
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    model = model_class(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=special_id["<|endoftext|>"],
        eos_token_id=[special_id["<|im_end|>"], special_id["<|endoftext|>"]],
        pad_token_id=special_id["<|endoftext|>"],
    )
    model.save_pretrained(output_dir)


def write_processor_files(output_dir: Path, image_processor, video_settings: dict, processor_settings: dict,
                          chat_template: str) -> None:
    """The processor, file by file: a processor with a video part cannot be instantiated without
    torchvision, yet AutoProcessor must load it wherever torchvision exists."""
    image_processor.save_pretrained(output_dir)
    (output_dir / "video_preprocessor_config.json").write_text(json.dumps(video_settings, indent=2))
    (output_dir / "processor_config.json").write_text(json.dumps(processor_settings))
    (output_dir / "chat_template.jinja").write_text(chat_template)


def move_built_files(built: Path, output_dir: Path) -> None:
    """Moves the files of a finished build from `built` into `output_dir`, config.json last: it marks a
    built model (the learning proof and the smoke recipe build one where it is missing), so a build
    interrupted before that is built again."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").unlink(missing_ok=True)
    for path in sorted(built.iterdir(), key=lambda path: path.name == "config.json"):
        path.replace(output_dir / path.name)
    built.rmdir()


def build_tiny_qwen25vl(output_dir: str | os.PathLike, *, seed: int = 0, size: TinySize | str = "test") -> Path:
    """Write a loadable tiny Qwen2.5-VL (config, safetensors weights, tokenizer, processor) of the
    given size (a `SIZES` name or a `TinySize`) to `output_dir` and return its path. Deterministic
    for a given seed and size. The files are written beside it (`.<name>.partial`, what an interrupted
    build left is removed) and moved in once all are written, config.json last."""
    size = resolve_size(size)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    output_dir = Path(output_dir)
    built = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(built, ignore_errors=True)
    built.mkdir(parents=True)
    tokenizer, special_id = write_tokenizer(built, size.vocab_size)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            qwen2_text_config(size, len(tokenizer), special_id),
            rope_scaling={"type": "mrope", "mrope_section": size.mrope_section},
        ),
        vision_config=dict(
            qwen_vision_config(size, patch_size=14),
            window_size=56,
            fullatt_block_indexes=size.full_attention_blocks,
        ),
        **qwen_vision_token_ids(special_id),
        tie_word_embeddings=False,
    )
    save_random_model(Qwen2_5_VLForConditionalGeneration, config, built, special_id, seed)
    video_settings = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    write_processor_files(
        built, Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS), video_settings,
        {"processor_class": "Qwen2_5_VLProcessor"}, CHAT_TEMPLATE,
    )  # fmt: skip
    move_built_files(built, output_dir)
    return output_dir


def seeded_build_main(build, description: str) -> None:
    """The command line of a tiny model without size settings: OUTPUT_DIR [--seed N]."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.output_dir, seed=args.seed))


def describe_model(model_dir: str | os.PathLike) -> str:
    """A Qwen2.5-VL checkpoint's size in one line: parameters (from its weight files) and architecture."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    parameters = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as weights:
            parameters += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return (
        f"{parameters / 1e6:.1f}M parameters (text: {text['num_hidden_layers']} layers, hidden {text['hidden_size']}, "
        f"{text['num_attention_heads']} heads; vision: {vision['depth']} blocks, hidden {vision['hidden_size']}, "
        f"{vision['num_heads']} heads; vocabulary {text['vocab_size']:,})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="test", help="architecture preset")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=INT", help=f"override preset fields: {SIZES['test']}"
    )
    args = parser.parse_args()
    try:
        size = size_from_settings(args.size, args.set)
    except ValueError as error:
        parser.error(f"--set: {error}")
    print(build_tiny_qwen25vl(args.output_dir, seed=args.seed, size=size))


if __name__ == "__main__":
    main()
