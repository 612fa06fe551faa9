"""The converter's parquet through verl's RLHFDataset machinery with the tiny models' processors."""

import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn, get_dataset_class

from mixed_r1_verl.data.dataset import DatasetRowError, MixedR1Dataset
from mixed_r1_verl.data.prepare import DEFAULT_MAX_PROMPT_LENGTH, NoRowsWrittenError, PrepareConfig, prepare
from mixed_r1_verl.data.processor import load_image_text_processor
from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl

from data_helpers import REPO, convert_synthetic

CUSTOM_CLS = {"path": "pkg://mixed_r1_verl.data.dataset", "name": "MixedR1Dataset"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    model_dir = build_tiny_qwen25vl(root / "model")
    convert_synthetic(
        root / "src", root / "out", rows_per_task=4, seed=7,
        synthetic={"image_size": (560, 410), "val_rows_per_task": 0}, model_path=str(model_dir), val_ratio=0.0,
    )  # fmt: skip
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


def test_rows_converted_for_a_larger_frame_than_the_processor_keeps_are_refused(setup, tmp_path):
    root, _, processor = setup
    # No model_path: the converter's own budget (1,003,520 pixels) is above the tiny processor's 200,704.
    convert_synthetic(tmp_path / "src", tmp_path / "out", rows_per_task=1, seed=3, synthetic={"val_rows_per_task": 0}, val_ratio=0.0)
    first_id = pq.read_table(tmp_path / "out" / "train.parquet").column("extra_info")[0]["id"].as_py()
    with pytest.raises(DatasetRowError, match=rf"row 0 \(id '{first_id}'.*max_pixels 1003520 is above the model processor's 200704"):
        build(root, processor, [str(tmp_path / "out" / "train.parquet")], filter_overlong_prompts=False)


@pytest.mark.parametrize(
    "mm_processor_kwargs, message",
    [
        ({"min_pixels": 3136, "max_pixels": 28 * 28 * 16}, "max_pixels 200704 is above the model processor's 12544"),
        ({"min_pixels": 28 * 28 * 8, "max_pixels": 200704}, "min_pixels 3136 is below the model processor's 6272"),
        ({"size": {"shortest_edge": 3136, "longest_edge": 28 * 28 * 16}}, "max_pixels 200704 is above .* 12544"),
    ],
)
def test_rows_the_processor_would_resize_again_under_data_mm_processor_kwargs_are_refused(
    setup, mm_processor_kwargs, message
):
    root, _, processor = setup
    # verl hands data.mm_processor_kwargs to the processor with each row: its bounds, not the model's, apply.
    train = [str(root / "out" / "train.parquet")]
    with pytest.raises(DatasetRowError, match=rf"row 0 .*resized again.*{message}"):
        build(root, processor, train, filter_overlong_prompts=False, mm_processor_kwargs=mm_processor_kwargs)
    wider = {"min_pixels": 3136, "max_pixels": 1003520}
    assert len(build(root, processor, train, filter_overlong_prompts=False, mm_processor_kwargs=wider)) == 16


def test_a_resize_rounded_out_of_the_processors_bounds_is_refused_at_conversion_and_at_load(setup, tmp_path):
    """A fixed budget (min_pixels = max_pixels): a resize's sides are rounded to the image token, so its area may
    pass the budget, and the processor, if it resizes within the budget too, would resize the image again."""
    root, _, processor = setup
    budget = 28 * 28 * 256
    settings = dict(rows_per_task=1, seed=3, model_path=str(root / "model"), val_ratio=0.0, min_pixels=budget,
                    max_pixels=budget)  # fmt: skip
    # 320x240 grows to 532x392, past the model processor's max_pixels 200704: each row is rejected.
    with pytest.raises(NoRowsWrittenError, match=r"532x392, 208544 pixels, is outside the \[3136, 200704\]"):
        convert_synthetic(tmp_path / "small", tmp_path / "small_out", synthetic={"val_rows_per_task": 0}, **settings)
    # 640x480 shrinks to 504x364, within the processor's bounds; under data.mm_processor_kwargs of the budget,
    # which the processor would resize it again within, its grounding row is refused at load.
    large = {"val_rows_per_task": 0, "image_size": (640, 480)}
    convert_synthetic(tmp_path / "large", tmp_path / "large_out", synthetic=large, **settings)
    train = [str(tmp_path / "large_out" / "train.parquet")]
    assert len(build(root, processor, train, filter_overlong_prompts=False)) == 4
    fixed = {"min_pixels": budget, "max_pixels": budget}
    grid = processor.image_processor(images=[Image.new("RGB", (504, 364))], **fixed)["image_grid_thw"][0]
    assert [int(grid[2]) * 14, int(grid[1]) * 14] != [504, 364]
    with pytest.raises(DatasetRowError, match=r"frame 504x364, 183456 pixels, is outside the \[200704, 200704\]"):
        build(root, processor, train, filter_overlong_prompts=False, mm_processor_kwargs=fixed)


@pytest.mark.parametrize("bound", ["min_pixels", "max_pixels"])
def test_a_lone_pixel_bound_in_data_mm_processor_kwargs_is_refused_as_the_processor_ignores_it(setup, bound):
    root, _, processor = setup
    image = Image.new("RGB", (560, 392))
    lone = {"max_pixels": 28 * 28 * 16} if bound == "max_pixels" else {"min_pixels": 28 * 28 * 1024}
    grids = [processor.image_processor(images=[image], **kwargs)["image_grid_thw"].tolist() for kwargs in ({}, lone)]
    assert grids[0] == grids[1], "the processor ignores one bound alone"
    train = [str(root / "out" / "train.parquet")]
    with pytest.raises(ValueError, match=f"data.mm_processor_kwargs sets {bound} without .*set both"):
        build(root, processor, train, filter_overlong_prompts=False, mm_processor_kwargs=lone)


def test_rows_converted_for_another_model_family_are_refused(setup, tiny_internvl_dir, tmp_path):
    root, _, qwen = setup
    # Qwen2.5-VL rows (pixel boxes) for an InternVL, which answers in 0-1000; then the reverse.
    qwen_rows = str(root / "out" / "train.parquet")
    internvl = load_image_text_processor(tiny_internvl_dir)
    first_id = pq.read_table(qwen_rows).column("extra_info")[0]["id"].as_py()
    with pytest.raises(DatasetRowError, match=rf"row 0 \(id '{first_id}'.*boxes in the abs frame .* internvl models"):
        build(root, internvl, [qwen_rows])

    convert_synthetic(
        tmp_path / "src", tmp_path / "out", rows_per_task=1, seed=3,
        synthetic={"val_rows_per_task": 0}, val_ratio=0.0, model_family="internvl", max_pixels=200704,
    )  # fmt: skip
    internvl_rows = str(tmp_path / "out" / "train.parquet")
    refused = r"boxes in the norm1000 frame .* qwen2_5_vl models .* model_family=qwen2_5_vl"
    with pytest.raises(DatasetRowError, match=refused):
        build(root, qwen, [internvl_rows])
    assert len(build(root, internvl, [internvl_rows])) == 4


def test_grounding_rows_without_a_frame_are_refused_for_models_answering_on_the_grid(setup, tiny_internvl_dir, tmp_path):
    """Such a row's box is scored as it stands: a perfect 0-1000 answer against a pixel box scores low."""
    root, _, qwen = setup
    rows = pq.read_table(root / "out" / "train.parquet").to_pylist()
    for row in rows:
        row["extra_info"]["box_frame"] = row["extra_info"]["frame_size"] = None
    grounding = [i for i, row in enumerate(rows) if row["extra_info"]["task"] == "grounding"]
    rows[grounding[0]]["extra_info"]["task"] = None  # grounding all the same, by its data_source
    rows[grounding[0]]["data_source"] = "refcoco"
    unframed = tmp_path / "unframed.parquet"
    pq.write_table(pa.Table.from_pylist(rows), unframed)
    internvl = load_image_text_processor(tiny_internvl_dir)
    refused = (rf"row {grounding[0]} \(id '{rows[grounding[0]]['extra_info']['id']}'.*a grounding row without "
               r"extra_info.box_frame, .* internvl models answer on the 0-1000 grid: .*model_family=internvl")  # fmt: skip
    with pytest.raises(DatasetRowError, match=refused):
        build(root, internvl, [str(unframed)])
    others = tmp_path / "others.parquet"
    pq.write_table(pa.Table.from_pylist([row for i, row in enumerate(rows) if i not in grounding]), others)
    assert len(build(root, internvl, [str(others)], max_prompt_length=8192)) == len(rows) - len(grounding)
    assert len(build(root, qwen, [str(unframed)])) == len(rows)  # pixels, as a Qwen2.5-VL answers


@pytest.mark.parametrize("image_size", [(560, 410), (150, 600)])
def test_internvl_prompt_counts_equal_its_processors_with_its_tiles(tiny_internvl_dir, tmp_path, image_size):
    convert_synthetic(
        tmp_path / "src", tmp_path / "out", rows_per_task=2, seed=3, synthetic={"val_rows_per_task": 0,
        "image_size": image_size}, val_ratio=0.0, model_family="internvl", model_path=str(tiny_internvl_dir),
    )  # fmt: skip
    processor = load_image_text_processor(tiny_internvl_dir)
    train = tmp_path / "out" / "train.parquet"
    dataset = build(tmp_path, processor, [str(train)])
    rows = pq.read_table(train).to_pylist()
    stored = [row["extra_info"]["prompt_length"] for row in rows]
    assert None not in stored and stored == [dataset.prompt_length(row, i) for i, row in enumerate(rows)]
    row = dataset[0]
    images, _, _ = MixedR1Dataset._process_multi_modal_info(row["raw_prompt"], 14, dataset.config)
    tiles = processor(text=[processor.image_token], images=images, return_tensors="pt")["pixel_values"].shape[0]
    assert tiles > 2, f"{tiles} tiles: the count covers InternVL's tiling"


def test_the_recipe_config_sizes_qwen3vl_images_as_its_processor_and_rollout_do(tiny_qwen3vl_dir, tmp_path):
    """verl's data defaults set image_patch_size 14; Qwen3-VL's patches are 16 pixels, as its rollout
    sizes them. Counted at 14, a kept prompt can exceed the rollout's limit, stopping training."""
    from hydra import compose, initialize_config_dir

    from mixed_r1_verl.main import PRIMARY_CONFIG, config_dir, register_recipes

    convert_synthetic(
        tmp_path / "src", tmp_path / "out", rows_per_task=2, seed=3, synthetic={"val_rows_per_task": 0,
        "image_size": (850, 1100)}, val_ratio=0.0, model_family="qwen3_vl", model_path=str(tiny_qwen3vl_dir),
    )  # fmt: skip
    register_recipes()
    with initialize_config_dir(str(config_dir()), version_base=None):
        config = compose(PRIMARY_CONFIG, overrides=[
            "recipe=smoke_qwen3vl", f"+data.cache_dir={tmp_path / 'cache'}", "data.filter_overlong_prompts_workers=1",
        ])  # fmt: skip
    train = tmp_path / "out" / "train.parquet"
    processor = load_image_text_processor(tiny_qwen3vl_dir)
    dataset = get_dataset_class(config.data)([str(train)], processor.tokenizer, config.data, processor=processor)
    assert dataset.image_patch_size == processor.image_processor.patch_size == 16
    rows = pq.read_table(train).to_pylist()
    assert [row["extra_info"]["prompt_length"] for row in rows] == [
        dataset.prompt_length(row, i) for i, row in enumerate(rows)
    ]


def test_qwen3vl_rows_reach_its_processor_in_32_pixel_tokens_counted_as_converted(setup, tiny_qwen3vl_dir, tmp_path):
    root, _, _ = setup
    processor = load_image_text_processor(tiny_qwen3vl_dir)
    with pytest.raises(DatasetRowError, match=r"boxes in the abs frame .* qwen3_vl models .* model_family=qwen3_vl"):
        build(root, processor, [str(root / "out" / "train.parquet")])

    convert_synthetic(
        tmp_path / "src", tmp_path / "out", rows_per_task=2, seed=3, synthetic={"val_rows_per_task": 0,
        "image_size": (560, 410)}, val_ratio=0.0, model_family="qwen3_vl", model_path=str(tiny_qwen3vl_dir),
    )  # fmt: skip
    train = tmp_path / "out" / "train.parquet"
    dataset = build(tmp_path, processor, [str(train)])
    assert dataset.image_patch_size == 16 and len(dataset) == 8
    rows = pq.read_table(train).to_pylist()
    stored = [row["extra_info"]["prompt_length"] for row in rows]
    assert None not in stored and stored == [dataset.prompt_length(row, i) for i, row in enumerate(rows)]
    for i in range(len(dataset)):
        row = dataset[i]
        images, _, _ = MixedR1Dataset._process_multi_modal_info(row["raw_prompt"], 16, dataset.config)
        width, height = images[0].size
        assert width % 32 == 0 and height % 32 == 0, images[0].size
        text = processor.apply_chat_template(row["raw_prompt"], add_generation_prompt=True, tokenize=False)
        _, grid_h, grid_w = processor(text=[text], images=images, return_tensors="pt")["image_grid_thw"][0].tolist()
        assert [grid_w * 16, grid_h * 16] == [width, height]
        assert row["extra_info"]["frame_size"] == [1000, 1000]


def internvl3_like_model(tiny_internvl_dir, target):
    """The tiny InternVL with InternVL3's tiling: tiles of 448 pixels, up to 12 and a thumbnail, 256 tokens each."""
    model = shutil.copytree(tiny_internvl_dir, target)
    for name, settings in (("preprocessor_config.json", {"size": {"height": 448, "width": 448}, "max_patches": 12}),
                           ("processor_config.json", {"image_seq_length": 256})):  # fmt: skip
        path = model / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
    return model


def test_a_large_chart_fits_internvls_own_default_prompt_budget(tmp_path, tiny_internvl_dir):
    model = internvl3_like_model(tiny_internvl_dir, tmp_path / "model")
    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.effect_noise((1400, 1100), 64).convert("RGB").save(image_root / "chart.png")
    row = {"id": "large", "task": "chart", "data_source": "charts", "images": ["chart.png"], "problem": "Highest?"}
    (tmp_path / "rows.jsonl").write_text(json.dumps({**row, "answer": "12"}) + "\n")
    out = tmp_path / "out"
    summary = prepare(
        PrepareConfig(
            input=str(tmp_path / "rows.jsonl"), image_root=str(image_root), output_dir=str(out),
            model_family="internvl", model_path=str(model), val_ratio=0.0, progress=False,
        )
    )  # fmt: skip
    budget = OmegaConf.load(REPO / "recipes" / "internvl3_8b.yaml").data.max_prompt_length
    assert summary["max_prompt_length"] == DEFAULT_MAX_PROMPT_LENGTH["internvl"] == budget
    assert summary["rows_written"] == 1, "13 tiles of 256 tokens: over the Qwen2-VL family's 2048"
    written = pq.read_table(out / "train.parquet").to_pylist()[0]
    assert 13 * 256 < written["extra_info"]["prompt_length"] <= budget
    dataset = build(tmp_path, load_image_text_processor(model), [str(out / "train.parquet")], max_prompt_length=budget)
    assert dataset.prompt_length(written, 0) == written["extra_info"]["prompt_length"]


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


def test_overlong_rows_are_filtered_and_logged_per_task(setup, caplog):
    root, _, processor = setup
    with caplog.at_level("WARNING", logger="mixed_r1_verl.data.dataset"):
        dataset = build(root, processor, [str(root / "out" / "train.parquet")], max_prompt_length=5)
    assert len(dataset) == 0
    assert "16 of 16 rows exceed max_prompt_length=5" in caplog.text
    assert "per task (dropped/rows): chart 4/4, grounding 4/4, matching 4/4, open_ended 4/4" in caplog.text
    assert dataset.rows_over_prompt_length == {"chart": 4, "grounding": 4, "matching": 4, "open_ended": 4}


def rewrite_parquet(root, name: str, change) -> str:
    table = pq.read_table(root / "out" / "train.parquet")
    rows = table.to_pylist()
    for position, row in enumerate(rows):
        change(position, row)
    path = root / name
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    return str(path)


def test_converter_counts_equal_the_processors_and_the_filter_reads_them(setup):
    root, _, processor = setup
    train = str(root / "out" / "train.parquet")
    dataset = build(root, processor, [train])
    rows = pq.read_table(train).to_pylist()
    stored = [row["extra_info"]["prompt_length"] for row in rows]
    assert stored == [dataset.prompt_length(row, i) for i, row in enumerate(rows)]
    assert all(length > 100 for length in stored)

    # A stored count is trusted: a row claiming an oversized prompt is filtered without being measured.
    def oversize_row_5(position, row):
        if position == 5:
            row["extra_info"]["prompt_length"] = 10**6

    claimed = build(root, processor, [rewrite_parquet(root, "claimed.parquet", oversize_row_5)])
    assert len(claimed) == 15
    assert rows[5]["extra_info"]["id"] not in {claimed[i]["extra_info"]["id"] for i in range(15)}
    assert sum(claimed.rows_over_prompt_length.values()) == 1


def test_rows_without_a_count_or_with_a_stale_one_are_measured(setup, caplog):
    root, _, processor = setup
    extra_info = pq.read_table(root / "out" / "train.parquet").column("extra_info").combine_chunks()
    longest = max(extra_info.field("prompt_length").to_pylist())

    def drop_odd_counts(position, row):
        if position % 2:
            row["extra_info"]["prompt_length"] = None

    def stale_counts(position, row):
        row["extra_info"]["prompt_length"] = 1

    rows = pq.read_table(root / "out" / "train.parquet").to_pylist()
    for row in rows:
        del row["extra_info"]["prompt_length"]
    older_converter = root / "no_field.parquet"
    pq.write_table(pa.Table.from_pylist(rows), older_converter)

    uncounted = rewrite_parquet(root, "uncounted.parquet", drop_odd_counts)
    stale = rewrite_parquet(root, "stale.parquet", stale_counts)
    for path in (uncounted, stale, str(older_converter)):
        dataset = build(root, processor, [path], max_prompt_length=longest - 1)
        assert len(dataset) < 16 and sum(dataset.rows_over_prompt_length.values()) == 16 - len(dataset)
    with caplog.at_level("WARNING", logger="mixed_r1_verl.data.dataset"):
        build(root, processor, [str(root / "stale.parquet")])
    assert "the converter counted 1 prompt tokens, this processor builds" in caplog.text


def test_a_row_that_cannot_be_prepared_is_named(setup):
    root, _, processor = setup
    table = pq.read_table(root / "out" / "train.parquet")
    rows = table.to_pylist()
    rows[3]["images"][0]["bytes"] = b"\x89PNG corrupted"
    rows[3]["extra_info"]["prompt_length"] = None  # measured, as rows without the converter's count are
    broken = root / "broken.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), broken)
    with pytest.raises(DatasetRowError, match=rf"row 3 \(id '{rows[3]['extra_info']['id']}'"):
        build(root, processor, [str(broken)])


def test_a_counted_row_that_cannot_be_prepared_is_named_when_read(setup):
    root, _, processor = setup

    def corrupt_row_3(position, row):
        if position == 3:
            row["images"][0]["bytes"] = b"\x89PNG corrupted"

    dataset = build(root, processor, [rewrite_parquet(root, "corrupt.parquet", corrupt_row_3)])
    row_id = dataset.dataframe[3]["extra_info"]["id"]
    with pytest.raises(DatasetRowError, match=rf"row 3 \(id '{row_id}'.* cannot be prepared: cannot identify image"):
        dataset[3]


def one_image_too_many_placeholders(row):
    row["prompt"][-1]["content"] = "<image>" + row["prompt"][-1]["content"]


def no_images(row):
    row["images"] = []


def no_placeholder(row):
    row["prompt"][-1]["content"] = row["prompt"][-1]["content"].replace("<image>", "")


def a_video_tag(row):
    row["prompt"][-1]["content"] += " Which HTML tag embeds a clip, <video> or <img>?"


def an_audio_tag(row):
    row["prompt"][-1]["content"] = row["prompt"][-1]["content"].replace("<image>", "<image><audio>")


@pytest.mark.parametrize(
    "change,counts",
    [
        (one_image_too_many_placeholders, "2 <image> placeholder(s) for 1 image"),
        (no_images, "1 <image> placeholder(s) for 0 image"),
        (no_placeholder, "0 <image> placeholder(s) for 1 image"),
        (a_video_tag, "1 <video> tag(s) for 0 video(s); verl takes one of the row's videos for each"),
        (an_audio_tag, "1 <audio> tag(s) for 0 audio(s)"),
    ],
)
@pytest.mark.parametrize("filter_overlong_prompts", [True, False])
def test_rows_whose_placeholders_do_not_match_their_images_are_refused_at_load(
    setup, change, counts, filter_overlong_prompts
):
    root, _, processor = setup

    def change_row_6(position, row):
        if position == 6:
            change(row)  # the converter's prompt_length stays: the row is not measured at load

    path = rewrite_parquet(root, f"{change.__name__}.parquet", change_row_6)
    row_id = pq.read_table(path).column("extra_info")[6]["id"].as_py()
    with pytest.raises(DatasetRowError, match=rf"row 6 \(id '{row_id}'.*: its prompt holds {re.escape(counts)}"):
        build(root, processor, [path], filter_overlong_prompts=filter_overlong_prompts)


@pytest.mark.parametrize("ground_truth,reason", [(None, "is None"), ("  ", "is blank ('  ')")])
def test_rows_without_a_ground_truth_are_refused_at_load(setup, ground_truth, reason):
    root, _, processor = setup

    def clear_ground_truth_of_row_5(position, row):
        if position == 5:
            row["reward_model"]["ground_truth"] = ground_truth

    path = rewrite_parquet(root, "no_ground_truth.parquet", clear_ground_truth_of_row_5)
    row_id = pq.read_table(path).column("extra_info")[5]["id"].as_py()
    message = rf"row 5 \(id '{row_id}'.*: its ground truth {re.escape(reason)} \(reward_model.ground_truth\); no reward"
    with pytest.raises(DatasetRowError, match=message):
        build(root, processor, [path], filter_overlong_prompts=False)


@pytest.mark.parametrize(
    "bounds,message",
    [
        ((10**9, None), "min_pixels 1000000000 is above max_pixels 200704"),
        ((None, -5), "max_pixels -5 must be positive"),
    ],
)
def test_images_with_unusable_pixel_bounds_are_refused_at_load(setup, bounds, message):
    root, _, processor = setup

    def set_bounds_of_row_4(position, row):
        if position == 4:
            for name, value in zip(("min_pixels", "max_pixels"), bounds):
                if value is not None:
                    row["images"][0][name] = value

    path = rewrite_parquet(root, "bounds.parquet", set_bounds_of_row_4)
    row_id = pq.read_table(path).column("extra_info")[4]["id"].as_py()
    with pytest.raises(DatasetRowError, match=rf"row 4 \(id '{row_id}'.*pixel bounds are unusable: .*{message}"):
        build(root, processor, [path])


def released_like_model(tiny_model_dir, target):
    """The tiny model with the released Qwen2.5-VL processor bounds (up to 12,845,056 pixels)."""
    model = shutil.copytree(tiny_model_dir, target)
    config_path = model / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config["size"] = {"shortest_edge": 3136, "longest_edge": 12845056}
    config_path.write_text(json.dumps(config))
    return model


def test_a_large_chart_fits_the_default_budgets_and_long_prompts_are_rejected(tmp_path, tiny_model_dir):
    model = released_like_model(tiny_model_dir, tmp_path / "model")
    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.effect_noise((1400, 1100), 64).convert("RGB").save(image_root / "chart.png")  # 1.54 MP
    base = {"task": "chart", "data_source": "charts", "images": ["chart.png"], "answer": "12"}
    rows = [
        {**base, "id": "large", "problem": "What is the highest bar?"},
        {**base, "id": "wordy", "problem": " ".join(f"word{i}" for i in range(800))},
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    summary = prepare(
        PrepareConfig(
            input=str(jsonl), image_root=str(image_root), output_dir=str(out), model_path=str(model),
            val_ratio=0.0, progress=False,
        )
    )
    budget = OmegaConf.load(REPO / "conf" / "mixed_r1.yaml").data.max_prompt_length
    assert summary["max_prompt_length"] == DEFAULT_MAX_PROMPT_LENGTH["qwen2_5_vl"] == budget
    assert summary["rows_written"] == 1 and summary["rejects_by_reason"] == {"prompt_too_long": 1}
    assert summary["rejects_by_task"] == {"chart": {"prompt_too_long": 1}}
    reject = json.loads((out / "rejects.jsonl").read_text())
    assert reject["id"] == "wordy" and f"over max_prompt_length={budget}" in reject["detail"]
    written = pq.read_table(out / "train.parquet").to_pylist()[0]
    assert 1000 < written["extra_info"]["prompt_length"] <= budget

    processor = load_image_text_processor(model)
    dataset = build(tmp_path, processor, [str(out / "train.parquet")], max_prompt_length=budget)
    assert len(dataset) == 1 and dataset.rows_over_prompt_length == {}
    assert dataset.prompt_length(written, 0) == written["extra_info"]["prompt_length"]


def test_a_prompt_a_few_tokens_over_max_prompt_length_is_rejected_and_one_exactly_at_it_is_kept(
    tmp_path, tiny_model_dir
):
    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.new("RGB", (224, 224), "white").save(image_root / "chart.png")
    base = {"task": "chart", "data_source": "charts", "images": ["chart.png"], "answer": "3"}
    rows = [{**base, "id": "at", "problem": "What is the peak?"},
            {**base, "id": "over", "problem": "What is the peak of the blue line?"}]  # fmt: skip
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def convert(name, budget):
        out = tmp_path / name
        config = PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(out),
                               model_path=str(tiny_model_dir), max_prompt_length=budget, val_ratio=0.0, progress=False)
        return prepare(config), out

    _, out = convert("unbounded", 100_000)
    written = [row["extra_info"] for row in pq.read_table(out / "train.parquet").to_pylist()]
    lengths = {info["id"]: info["prompt_length"] for info in written}
    assert 0 < lengths["over"] - lengths["at"] <= 8, lengths

    summary, out = convert("bounded", lengths["at"])
    assert summary["rows_written"] == 1 and summary["rejects_by_reason"] == {"prompt_too_long": 1}
    assert [row["extra_info"]["id"] for row in pq.read_table(out / "train.parquet").to_pylist()] == ["at"]
    assert json.loads((out / "rejects.jsonl").read_text())["id"] == "over"


def test_image_rows_without_a_processor_from_verl_are_refused(setup):
    root, model_dir, processor = setup
    train = root / "out" / "train.parquet"
    first_id = pq.read_table(train).column("extra_info")[0]["id"].as_py()
    config = data_config(root, filter_overlong_prompts=False)
    # verl passes None when AutoProcessor fails (without torchvision, for one).
    with pytest.raises(DatasetRowError, match=rf"row 0 \(id '{first_id}'.* holds images, but verl loaded no processor for {model_dir}"):
        get_dataset_class(config)([str(train)], processor.tokenizer, config, processor=None)


def test_an_installed_tasks_reward_fields_reach_its_accuracy_through_verls_dataset(setup, install_tasks, tmp_path):
    from task_plugins import write_vqa_plugin

    from mixed_r1_verl.data.synthetic import write_synthetic_dataset
    from mixed_r1_verl.rewards import compute_score

    root, model_dir, processor = setup
    install_tasks(write_vqa_plugin(tmp_path / "site"))
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=7, val_rows_per_task=0)
    shapes = json.loads(jsonl.read_text().splitlines()[0])["images"]
    record = {"id": "vqa-0", "task": "vqa", "data_source": "vqa", "images": shapes, "problem": "What is drawn?",
              "answer": "shape", "reward_info": {"answers": ["square", "square", "shape"], "min_matches": 2}}  # fmt: skip
    jsonl.write_text(json.dumps(record) + "\n")
    prepare(PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(tmp_path / "out"),
                          model_path=str(model_dir), val_ratio=0.0, progress=False))  # fmt: skip
    dataset = build(root, processor, [str(tmp_path / "out" / "train.parquet")])
    [extra_info] = collate_fn([dataset[0]])["extra_info"]
    assert extra_info["reward_info"]["min_matches"] == 2
    scored = compute_score("vqa", "<think>A square.</think><answer>square</answer>", "shape", extra_info)
    assert (scored["accuracy"], scored["error"]) == (1.0, 0.0)
