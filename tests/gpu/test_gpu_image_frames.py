"""verl's own image path (RLHFDataset -> qwen_vl_utils with torchvision) and MixedR1Dataset hand the
model the same resized frame for the same row, the frame the converter put the grounding boxes in
(issue check 6). Runs where verl's processor and qwen_vl_utils work, i.e. the GPU environment."""

import asyncio

import numpy as np
import pytest
from omegaconf import OmegaConf
from verl.utils import hf_processor
from verl.utils.dataset.rl_dataset import RLHFDataset, get_dataset_class

from mixed_r1_verl.data.dataset import MixedR1Dataset
from mixed_r1_verl.data.prepare import PrepareConfig, prepare
from mixed_r1_verl.data.synthetic import write_synthetic_dataset
from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl

# Per-image bounds different from the processor's defaults, shrinking and enlarging the originals.
CASES = {
    "downscale": {"image_size": (1000, 700), "bounds": {"max_pixels": 200704}},
    "upscale": {"image_size": (120, 90), "bounds": {"min_pixels": 100352}},
}
MEAN_PIXEL_TOLERANCE = 1.0


@pytest.fixture(scope="module")
def model_dir(gpu_out):
    path = gpu_out / "frames" / "tiny_qwen25vl"
    if not (path / "config.json").is_file():
        build_tiny_qwen25vl(path)
    return path


def converted(root, model_dir, case):
    jsonl, image_root = write_synthetic_dataset(root / "raw", rows_per_task=2, seed=11, image_size=case["image_size"])
    prepare(
        PrepareConfig(
            input=str(jsonl), image_root=str(image_root), output_dir=str(root / "out"), model_path=str(model_dir),
            val_ratio=0.0, progress=False, **case["bounds"],
        )
    )  # fmt: skip
    return str(root / "out" / "train.parquet")


def dataset(files, processor, root, custom_cls):
    config = OmegaConf.create(
        {"max_prompt_length": 4096, "filter_overlong_prompts": False, "cache_dir": str(root / "cache"),
         "custom_cls": custom_cls},
    )  # fmt: skip
    return get_dataset_class(config)(files, processor.tokenizer, config, processor=processor), config


def model_images(dataset_cls, row, patch_size, config):
    images, _, _ = asyncio.run(dataset_cls.process_multi_modal_info(row["raw_prompt"], patch_size, config))
    return images


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_verl_and_project_datasets_give_the_same_frame(gpu_out, model_dir, case_name):
    root = gpu_out / "frames" / case_name
    files = converted(root, model_dir, CASES[case_name])
    processor = hf_processor(str(model_dir))
    assert processor is not None, "verl could not build the processor (torchvision missing?)"
    patch_size = processor.image_processor.patch_size
    verl_rows, verl_config = dataset(files, processor, root, {"path": None, "name": None})
    ours, our_config = dataset(files, processor, root, {"path": "pkg://mixed_r1_verl.data.dataset", "name": "MixedR1Dataset"})
    assert type(verl_rows) is RLHFDataset and type(ours) is MixedR1Dataset and len(verl_rows) == len(ours) > 0
    for index in range(len(ours)):
        verl_row, our_row = verl_rows[index], ours[index]
        verl_images = model_images(RLHFDataset, verl_row, patch_size, verl_config)
        our_images = model_images(MixedR1Dataset, our_row, patch_size, our_config)
        frame = tuple(our_row["extra_info"]["frame_size"])
        assert [image.size for image in verl_images] == [image.size for image in our_images] == [frame], index
        for verl_image, our_image in zip(verl_images, our_images):
            difference = np.abs(np.asarray(verl_image, float) - np.asarray(our_image.convert("RGB"), float)).mean()
            assert difference <= MEAN_PIXEL_TOLERANCE, f"row {index}: mean pixel difference {difference:.2f}"
        grids = [processor.image_processor(images=images)["image_grid_thw"].tolist() for images in (verl_images, our_images)]
        assert grids[0] == grids[1], index
