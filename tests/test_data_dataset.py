"""The converter's parquet through verl's RLHFDataset machinery with the tiny Qwen2.5-VL processor."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn, get_dataset_class

from mixed_r1_verl.data.dataset import DatasetRowError, MixedR1Dataset
from mixed_r1_verl.data.prepare import PrepareConfig, prepare
from mixed_r1_verl.data.processor import load_image_text_processor
from mixed_r1_verl.data.synthetic import write_synthetic_dataset
from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl

CUSTOM_CLS = {"path": "pkg://mixed_r1_verl.data.dataset", "name": "MixedR1Dataset"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    model_dir = build_tiny_qwen25vl(root / "model")
    jsonl, image_root = write_synthetic_dataset(
        root / "src", rows_per_task=4, seed=7, image_size=(560, 410), val_rows_per_task=0
    )
    config = PrepareConfig(
        input=str(jsonl),
        image_root=str(image_root),
        output_dir=str(root / "out"),
        model_path=str(model_dir),
        val_ratio=0.0,
        progress=False,
    )
    prepare(config)
    return root, model_dir, load_image_text_processor(model_dir)


def data_config(root, **overrides):
    return OmegaConf.create(
        {
            "max_prompt_length": 1024,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(root / "cache"),
            "custom_cls": CUSTOM_CLS,
            **overrides,
        }
    )


def build(root, processor, files, **overrides):
    config = data_config(root, **overrides)
    dataset_cls = get_dataset_class(config)
    return dataset_cls(files, processor.tokenizer, config, processor=processor)


def test_verl_selects_the_class_and_no_row_vanishes(setup):
    root, _, processor = setup
    train = str(root / "out" / "train.parquet")
    dataset = build(root, processor, [train])
    assert type(dataset) is MixedR1Dataset and issubclass(MixedR1Dataset, RLHFDataset)
    assert len(dataset) == pq.read_metadata(train).num_rows == 16
    batch = collate_fn([dataset[i] for i in range(len(dataset))])
    assert sorted(batch["extra_info"][i]["id"] for i in range(16)) == sorted(
        pq.read_table(train, columns=["extra_info"]).column("extra_info").combine_chunks().field("id").to_pylist()
    )


def test_model_sees_the_frame_the_ground_truth_uses(setup):
    root, _, processor = setup
    dataset = build(root, processor, [str(root / "out" / "train.parquet")])
    for i in range(len(dataset)):
        row = dataset[i]
        images, videos, _ = MixedR1Dataset._process_multi_modal_info(row["raw_prompt"], 14, dataset.config)
        assert videos is None and len(images) == 1
        text = processor.apply_chat_template(row["raw_prompt"], add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=images, return_tensors="pt")
        _, grid_h, grid_w = inputs["image_grid_thw"][0].tolist()
        assert [grid_w * 14, grid_h * 14] == row["extra_info"]["frame_size"]
        assert list(images[0].size) == row["extra_info"]["frame_size"]


def test_overlong_rows_are_filtered_and_logged(setup, caplog):
    root, _, processor = setup
    with caplog.at_level("WARNING", logger="mixed_r1_verl.data.dataset"):
        dataset = build(root, processor, [str(root / "out" / "train.parquet")], max_prompt_length=5)
    assert len(dataset) == 0
    assert "16 of 16 rows exceed max_prompt_length=5" in caplog.text


def test_a_row_that_cannot_be_prepared_is_named(setup):
    root, _, processor = setup
    table = pq.read_table(root / "out" / "train.parquet")
    rows = table.to_pylist()
    rows[3]["images"][0]["bytes"] = b"\x89PNG corrupted"
    broken = root / "broken.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), broken)
    with pytest.raises(DatasetRowError, match=rf"row 3 \(id '{rows[3]['extra_info']['id']}'"):
        build(root, processor, [str(broken)])
