"""Cold-start SFT: the converter's SFT parquet, verl's SFT config and dataset with the tiny Qwen2.5-VL."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModelForImageTextToText, Qwen2_5_VLForConditionalGeneration
from verl.trainer.sft_trainer import create_sft_dataset
from verl.utils.config import omega_conf_to_dataclass

from data_helpers import CPU_SFT_SETTINGS, REPO, card_parts, run_module, run_on_cpu
from test_train_config import compose_recipe
from mixed_r1_verl.data.prepare import SFT_SCHEMA, PrepareConfig, prepare, sft_target
from mixed_r1_verl.data.processor import load_image_text_processor
from mixed_r1_verl.data.sft_dataset import MixedR1SFTDataset
from mixed_r1_verl.entry import register_recipe_files
from mixed_r1_verl.data.synthetic import TASKS, write_synthetic_dataset
from mixed_r1_verl.models.tiny_internvl import IMAGE_SEQ_LENGTH
from mixed_r1_verl.main import choose_attention, exit_if_resuming_across_lora, recipe_rate_under_lora
from mixed_r1_verl.run_logs import read_metrics_log
from mixed_r1_verl.sft import (
    exit_unless_rows_fill_the_run, micro_batch_mismatch, parquet_set_rows, pin_sample_seed, planned_sft_steps,
    sft_config_dir, sft_recipe_dir, token_budget_mismatch, train_rows_within_max_length,
)  # fmt: skip
from mixed_r1_verl.verl_adapter.sft_trainer import MixedR1SFTTrainer


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("sft")
    jsonl, image_root = write_synthetic_dataset(root / "src", rows_per_task=4, seed=3, val_rows_per_task=1)
    # One row without a rationale: GRPO data only.
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows[0].pop("rationale")
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    prepare(
        PrepareConfig(
            input=str(jsonl),
            image_root=str(image_root),
            output_dir=str(root / "data"),
            model_path=str(tiny_model_dir),
            progress=False,
        )
    )
    return root / "data", {row["id"]: row for row in rows}


MISSING_SFT_DATA = "\n(the SFT parquet is written by mixed_r1_verl.data.prepare for rows with a `rationale`)\n"


def compose_sft(*overrides, recipe="learn"):
    register_recipe_files(sft_recipe_dir())
    with initialize_config_dir(str(sft_config_dir()), version_base=None):
        return compose("sft", overrides=[f"recipe={recipe}", *overrides])


def test_sft_parquet_holds_the_prompt_and_the_target_of_every_row_with_a_rationale(converted):
    data_dir, source = converted
    for split in ("train", "val"):
        grpo = {row["extra_info"]["id"]: row for row in pq.read_table(data_dir / f"{split}.parquet").to_pylist()}
        sft = pq.read_table(data_dir / f"sft_{split}.parquet").to_pylist()
        assert {row["extra_info"]["id"] for row in sft} == {i for i in grpo if "rationale" in source[i]}
        for row in sft:
            record_id = row["extra_info"]["id"]
            user, assistant = row["messages"]
            assert user == grpo[record_id]["prompt"][0] and row["images"] == grpo[record_id]["images"]
            truth = grpo[record_id]["reward_model"]["ground_truth"]
            assert assistant == {"role": "assistant", "content": sft_target(source[record_id]["rationale"], truth)}
            assert row["extra_info"]["split"] == split
    val_tasks = {row["extra_info"]["task"] for row in pq.read_table(data_dir / "sft_val.parquet").to_pylist()}
    assert val_tasks == set(TASKS)


def test_grounding_targets_are_in_the_models_frame(converted):
    data_dir, source = converted
    grpo = {row["extra_info"]["id"]: row for row in pq.read_table(data_dir / "train.parquet").to_pylist()}
    rows = pq.read_table(data_dir / "sft_train.parquet").to_pylist()
    row = next(r for r in rows if r["extra_info"]["task"] == "grounding")
    info = grpo[row["extra_info"]["id"]]["extra_info"]
    (fw, fh), (w, h) = info["frame_size"], info["image_size"]
    assert (fw, fh) != (w, h)
    x1, y1, x2, y2 = json.loads(source[row["extra_info"]["id"]]["answer"])
    answer = row["messages"][-1]["content"].split("<answer>")[1].removesuffix("</answer>")
    expected = [x1 * fw / w, y1 * fh / h, x2 * fw / w, y2 * fh / h]
    assert json.loads(answer) == pytest.approx(expected, abs=0.51)


def test_config_composes_on_verls_sft_config_and_builds_its_dataclasses(converted, tiny_model_dir):
    data_dir, _ = converted
    config = compose_sft(f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}")
    assert config.data.train_files == f"{data_dir}/sft_train.parquet"
    assert config.data.pad_mode == "no_padding" and config.trainer.total_training_steps == 500
    model = omega_conf_to_dataclass(config.model)
    assert model.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.hf_config.image_token_id
    for key in ("engine", "optim", "checkpoint", "profiler"):
        omega_conf_to_dataclass(config[key])
    assert "hf_model" in config.checkpoint.save_contents


@pytest.mark.parametrize("recipe", ["qwen25vl_3b", "qwen25vl_7b", "qwen3vl_8b", "internvl3_8b"])
def test_each_models_sft_recipe_fits_its_grpo_recipes_budget_and_trains_without_flash_attn(recipe, caplog):
    config = compose_sft(recipe=recipe)
    grpo = compose_recipe(recipe)
    assert config.model.path == grpo.actor_rollout_ref.model.path
    assert config.data.max_length == grpo.data.max_prompt_length + grpo.data.max_response_length
    assert config.data.train_files == f"{grpo.mixed_r1.data_dir}/sft_train.parquet", "the data GRPO trains on"
    assert config.optim.lr == 1e-5 and config.trainer.n_gpus_per_node == grpo.trainer.n_gpus_per_node
    assert micro_batch_mismatch(config) is None
    for key in ("engine", "optim", "checkpoint", "profiler"):
        omega_conf_to_dataclass(config[key])
    with caplog.at_level("WARNING", logger="mixed_r1_verl.main"):
        choose_attention(config, flash_attn_available=False, model_key="model")
    assert config.model.override_config.attn_implementation == "sdpa" and config.model.use_remove_padding is False
    assert "model.override_config.attn_implementation=sdpa" in caplog.text


def test_lora_on_fine_tunes_grpos_lora_adapters_at_ten_times_the_full_learning_rate(tiny_model_dir):
    config = compose_sft("lora=on", f"model.path={tiny_model_dir}", recipe="qwen25vl_7b")
    grpo = compose_recipe("qwen25vl_7b", "lora=on")
    for key in ("lora_rank", "lora_alpha", "target_modules", "exclude_modules"):
        assert config.model[key] == grpo.actor_rollout_ref.model[key], key
    assert config.optim.lr == 10 * compose_sft(recipe="qwen25vl_7b").optim.lr
    assert omega_conf_to_dataclass(config.model).lora_rank == 64 > 0 == compose_sft(recipe="qwen25vl_7b").model.lora_rank


@pytest.mark.parametrize("recipe", ["internvl3_8b", "learn", "qwen25vl_3b", "qwen25vl_7b", "qwen3vl_8b"])
def test_lora_on_fine_tunes_at_its_rate_or_at_the_recipes_own_named_in_one_line(recipe):
    """lora=on comes before the recipe in the defaults: a recipe's own rate wins over lora=on's."""
    register_recipe_files(sft_recipe_dir())
    with initialize_config_dir(str(sft_config_dir()), version_base=None):
        config = compose("sft", overrides=[f"recipe={recipe}", "lora=on"], return_hydra_config=True)
    note = recipe_rate_under_lora(config, config.hydra, sft_config_dir() / "lora" / "on.yaml", "optim.lr")
    if recipe != "learn":
        assert note is None and config.optim.lr == 1e-4, "the README's rate of lora=on"
        return
    # The learning proof's model is trained from random weights, at a rate for all of them.
    assert config.optim.lr == 5e-4 and note == (
        "lora=on with recipe=learn: the adapters train at the recipe's own optim.lr=0.0005, not at lora=on's 0.0001; "
        "set optim.lr=<rate> for another"
    )


@pytest.fixture(scope="module")
def sft_train_rows(converted, tiny_model_dir):
    """The SFT config's training dataset as verl's SFT trainer builds it, its processor and the model."""
    data_dir, _ = converted
    config = compose_sft(f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}")
    processor = load_image_text_processor(tiny_model_dir)
    dataset = create_sft_dataset(config.data.train_files, config.data, processor.tokenizer, processor)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    return dataset, processor, model


def test_sft_rows_render_through_the_processor_with_the_loss_on_the_target_only(converted, sft_train_rows):
    data_dir, _ = converted
    dataset, processor, model = sft_train_rows
    assert type(dataset) is MixedR1SFTDataset
    rows = pq.read_table(data_dir / "sft_train.parquet").to_pylist()
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for index in range(len(dataset)):
        item = dataset[index]
        ids, mask = item["input_ids"], item["loss_mask"].bool()
        target = rows[index]["messages"][-1]["content"]
        assert processor.tokenizer.decode(ids[mask]) == target + "<|im_end|>\n"
        grid = item["multi_modal_inputs"]["image_grid_thw"]
        assert int((ids == image_pad).sum()) == int(grid.prod()) // 4
        assert not mask[ids == image_pad].any()
    with torch.no_grad():
        item = dataset[0]
        labels = torch.where(item["loss_mask"].bool(), item["input_ids"], -100)
        output = model(
            input_ids=item["input_ids"][None],
            position_ids=item["position_ids"][:, None],
            labels=labels[None],
            **item["multi_modal_inputs"],
        )
    assert torch.isfinite(output.loss)


def test_sft_positions_are_the_models_own_m_rope_positions(sft_train_rows):
    """Text attends to the image through these positions: wrong ones train a model that reads text
    well and images badly, with nothing failing."""
    dataset, _, model = sft_train_rows
    for index in range(len(dataset)):
        item = dataset[index]
        ids, positions = item["input_ids"][None], item["position_ids"]
        image_tokens = (ids == model.config.image_token_id).int()
        expected, _ = model.model.get_rope_index(
            ids, mm_token_type_ids=image_tokens, image_grid_thw=item["multi_modal_inputs"]["image_grid_thw"]
        )
        assert torch.equal(positions[0], torch.arange(ids.shape[1]))
        assert torch.equal(positions[1:], expected[:, 0]), f"SFT row {index}"
        assert positions[1:].amax() < ids.shape[1] - 1, "M-RoPE positions of an image row are not 1-D counts"


def test_internvl_sft_rows_hold_their_image_tiles_with_the_loss_on_the_target_only(tiny_internvl_dir, tmp_path):
    """verl's SFT dataset reads its default patch size from the image processor, which InternVL's lacks."""
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=1, seed=3, val_rows_per_task=0)
    prepare(PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(tmp_path / "data"),
                          model_family="internvl", model_path=str(tiny_internvl_dir), val_ratio=0.0,
                          progress=False))  # fmt: skip
    config = compose_sft(f"model.path={tiny_internvl_dir}", f"mixed_r1.data_dir={tmp_path / 'data'}")
    processor = load_image_text_processor(tiny_internvl_dir)
    dataset = create_sft_dataset(config.data.train_files, config.data, processor.tokenizer, processor)
    model = AutoModelForImageTextToText.from_pretrained(tiny_internvl_dir, dtype=torch.float32)
    rows = pq.read_table(tmp_path / "data" / "sft_train.parquet").to_pylist()
    assert len(dataset) == len(rows) == len(TASKS)
    for index in range(len(dataset)):
        item = dataset[index]
        ids, mask = item["input_ids"], item["loss_mask"].bool()
        assert processor.tokenizer.decode(ids[mask]) == rows[index]["messages"][-1]["content"] + "<|im_end|>\n"
        tiles = item["multi_modal_inputs"]["pixel_values"].shape[0]
        assert int((ids == processor.image_token_id).sum()) == tiles * IMAGE_SEQ_LENGTH > 0
        assert len(ids) == rows[index]["extra_info"]["sequence_length"], "the converter counts InternVL rows too"
        labels = torch.where(mask, ids, -100)
        with torch.no_grad():
            output = model(input_ids=ids[None], labels=labels[None], **item["multi_modal_inputs"])
        assert torch.isfinite(output.loss)


def sft_dataset_of(rows, path, model_dir):
    """The SFT dataset, as the SFT config builds it, of `rows` written to the parquet `path`."""
    pq.write_table(pa.Table.from_pylist(rows, schema=SFT_SCHEMA), path)
    processor = load_image_text_processor(model_dir)
    return create_sft_dataset(str(path), compose_sft(f"model.path={model_dir}").data, processor.tokenizer, processor)


def test_a_row_whose_placeholders_do_not_match_its_images_is_named(converted, tiny_model_dir, tmp_path):
    data_dir, _ = converted
    table = pq.read_table(data_dir / "sft_train.parquet").to_pylist()
    table[0]["messages"][0]["content"] = table[0]["messages"][0]["content"].replace("<image>", "")
    with pytest.raises(ValueError, match=rf"SFT row 0 \(id '{table[0]['extra_info']['id']}'\).*0 <image> placeholder"):
        sft_dataset_of(table, tmp_path / "bad.parquet", tiny_model_dir)[0]


def test_rows_longer_than_max_length_are_left_out_at_load_and_counted(converted, tiny_model_dir, tmp_path, caplog):
    data_dir, _ = converted
    table = pq.read_table(data_dir / "sft_train.parquet").to_pylist()
    counts = [row["extra_info"]["sequence_length"] for row in table]
    # The converter counts each row's tokens as verl's SFT dataset builds them, images expanded.
    dataset = sft_dataset_of(table, tmp_path / "all.parquet", tiny_model_dir)
    assert [len(dataset[index]["input_ids"]) for index in range(len(dataset))] == counts
    # A row without a count is measured; the longest row exceeds a max_length just below it.
    longest = counts.index(max(counts))
    table[longest]["extra_info"]["sequence_length"] = None
    pq.write_table(pa.Table.from_pylist(table, schema=SFT_SCHEMA), tmp_path / "long.parquet")
    processor = load_image_text_processor(tiny_model_dir)
    config = compose_sft(f"model.path={tiny_model_dir}", f"data.max_length={max(counts) - 1}").data
    with caplog.at_level("WARNING", logger="mixed_r1_verl.data.sft_dataset"):
        dataset = create_sft_dataset(str(tmp_path / "long.parquet"), config, processor.tokenizer, processor)
    assert len(dataset) == len(table) - 1
    kept = counts[:longest] + counts[longest + 1 :]
    assert [len(dataset[index]["input_ids"]) for index in range(len(dataset))] == kept
    task, row_id = table[longest]["extra_info"]["task"], table[longest]["extra_info"]["id"]
    assert f"1 of {len(table)} SFT rows" in caplog.text and f"exceed data.max_length={max(counts) - 1}" in caplog.text
    assert f"{task} 1/" in caplog.text and f"first ids: ['{row_id}']" in caplog.text
    assert dataset.rows_over_max_length == {task: 1}
    # Cut instead (verl cuts the end in no_padding mode whatever `truncation` says), it would lose its answer.
    for truncation in ("left", "right"):
        config = compose_sft(f"model.path={tiny_model_dir}", f"data.max_length={max(counts) - 1}",
                             f"data.truncation={truncation}").data  # fmt: skip
        dataset = create_sft_dataset(str(tmp_path / "long.parquet"), config, processor.tokenizer, processor)
        assert len(dataset) == len(table) - 1 and dataset.rows_over_max_length == {task: 1}, truncation
    # A row of exactly data.max_length tokens fits, as verl's SFT trainer takes it, beside one left out.
    exactly = max(kept)
    config = compose_sft(f"model.path={tiny_model_dir}", f"data.max_length={exactly}").data
    dataset = create_sft_dataset(str(tmp_path / "long.parquet"), config, processor.tokenizer, processor)
    assert exactly < max(counts) and dataset.rows_over_max_length == {task: 1}
    assert [len(dataset[index]["input_ids"]) for index in range(len(dataset))] == kept


def test_trainer_seed_orders_the_sft_batches(converted, tiny_model_dir):
    """verl 0.9.1 leaves its SFT sampler at seed 0: the learning proof's `trainer.seed` would change nothing."""
    data_dir, _ = converted
    orders = {}
    for seed in (0, 1, 0):
        trainer = MixedR1SFTTrainer.__new__(MixedR1SFTTrainer)
        trainer.config = compose_sft(f"model.path={tiny_model_dir}", f"trainer.seed={seed}", "data.num_workers=0")
        trainer.engine = SimpleNamespace(get_data_parallel_rank=lambda: 0, get_data_parallel_size=lambda: 1)
        trainer.train_dataset, trainer.val_dataset = list(range(256)), None
        trainer._build_dataloader()
        trainer.train_sampler.set_epoch(0)
        order = list(trainer.train_sampler)
        assert orders.setdefault(seed, order) == order, "one seed, one order"
    assert orders[0] != orders[1]


def test_rows_converted_for_a_larger_frame_than_the_processor_keeps_are_refused(converted, tiny_model_dir, tmp_path):
    data_dir, _ = converted
    table = pq.read_table(data_dir / "sft_train.parquet").to_pylist()
    for row in table[1:]:
        row["images"] = [{**image, "max_pixels": 4 * image["max_pixels"]} for image in row["images"]]
    with pytest.raises(ValueError, match=rf"SFT row 1 \(id '{table[1]['extra_info']['id']}'\).*max_pixels 802816 is above"):
        sft_dataset_of(table, tmp_path / "wide.parquet", tiny_model_dir)


def test_rows_converted_for_another_model_familys_box_frame_are_refused(converted, tiny_internvl_dir, tmp_path):
    """Pixel boxes (Qwen2.5-VL) would teach an InternVL, which answers on a 0-1000 grid, the wrong boxes."""
    data_dir, _ = converted
    table = pq.read_table(data_dir / "sft_train.parquet").to_pylist()
    assert {row["extra_info"]["box_frame"] for row in table} == {"abs"}
    first = rf"SFT row 0 \(id '{table[0]['extra_info']['id']}'\)"
    with pytest.raises(ValueError, match=rf"{first}.* abs frame .*model_family=internvl"):
        sft_dataset_of(table, tmp_path / "qwen_rows.parquet", tiny_internvl_dir)


def test_images_with_unusable_pixel_bounds_are_refused(converted, tiny_model_dir, tmp_path):
    data_dir, _ = converted
    table = pq.read_table(data_dir / "sft_train.parquet").to_pylist()
    table[2]["images"][0]["min_pixels"] = 10**9
    row_id = table[2]["extra_info"]["id"]
    with pytest.raises(ValueError, match=rf"SFT row 2 \(id '{row_id}'\).*min_pixels 1000000000 is above"):
        sft_dataset_of(table, tmp_path / "bounds.parquet", tiny_model_dir)


def run_sft(cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", "mixed_r1_verl.sft", *args], env=env, capture_output=True, text=True, cwd=cwd
    )


def test_cli_usage_config_and_no_gpu_exit(converted, tiny_model_dir, tmp_path):
    data_dir, _ = converted
    usage = run_sft(tmp_path)
    assert usage.returncode == 2 and "recipe=<name>" in usage.stderr and "learn" in usage.stderr
    help_text = run_sft(tmp_path, "--help")
    assert help_text.returncode == 0 and "learn" in help_text.stdout
    for setting in ("data_dir:", "stop_by: null", "stop_save_estimate_s: 60"):
        assert setting in help_text.stdout, f"the SFT settings and their defaults are listed: {setting}"
    job = run_sft(tmp_path, "recipe=learn", "optim.lr=3e-4", "--cfg", "job")
    assert job.returncode == 0 and "lr: 0.0003" in job.stdout and "sft_train.parquet" in job.stdout
    train = run_sft(tmp_path, "recipe=learn", f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}")
    assert train.returncode == 2 and "needs at least one CUDA GPU" in train.stderr


def test_input_paths_are_pinned_and_missing_ones_named(tmp_path, monkeypatch, tiny_model_dir):
    from mixed_r1_verl.main import make_paths_absolute
    from mixed_r1_verl.sft import PATH_KEYS, missing_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.parquet").write_bytes(b"")
    config = compose_sft(
        f"model.path={tiny_model_dir}", "data.train_files=[a.parquet,b.parquet]", "data.val_files=null",
        "trainer.default_local_dir=ckpt",
    )  # fmt: skip
    make_paths_absolute(config, PATH_KEYS)
    assert list(config.data.train_files) == [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    assert config.trainer.default_local_dir == str(tmp_path / "ckpt") and config.data.val_files is None
    assert missing_inputs(config) == [f"data.train_files={tmp_path / 'b.parquet'}"]


def test_a_hub_id_as_model_path_is_passed_on_and_a_missing_directory_is_named_as_the_model(
    tmp_path, monkeypatch, tiny_model_dir, capsys
):
    """As the GRPO entry does, a hub id goes to verl as given; offline, as its snapshot in the cache.
    Each run stops at the data, which is missing, unless the model was refused first."""
    from huggingface_hub import constants

    from hf_cache import REVISION, write_hf_cache
    from mixed_r1_verl.sft import train_on_this_node

    monkeypatch.chdir(tmp_path)
    processor_only = tmp_path / "processor_only"
    processor_only.mkdir()
    for path in tiny_model_dir.glob("*.json"):
        (processor_only / path.name).write_bytes(path.read_bytes())
    write_hf_cache(tmp_path / "hf", "acme/tiny", tiny_model_dir, sharded=False)
    write_hf_cache(tmp_path / "hf", "acme/processor-only", processor_only, sharded=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))

    def refused(model_path: str, offline: bool) -> tuple[str, str]:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        config = compose_sft(f"model.path={model_path}", "data.train_files=missing.parquet", "data.val_files=null")
        with pytest.raises(SystemExit) as exit_status:
            train_on_this_node(config)
        assert exit_status.value.code == 2
        return config.model.path, capsys.readouterr().err

    data_missing = f"not found: data.train_files={tmp_path / 'missing.parquet'}"
    assert refused("acme/tiny", offline=False) == ("acme/tiny", data_missing + MISSING_SFT_DATA)
    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny" / "snapshots" / REVISION
    assert refused("acme/tiny", offline=True) == (str(snapshot), data_missing + MISSING_SFT_DATA)
    _, not_cached = refused("acme/not-cached", offline=True)
    assert not_cached.startswith("model.path=acme/not-cached: model 'acme/not-cached' is not a directory")
    assert "HF_HUB_OFFLINE" in not_cached
    _, no_weights = refused("acme/processor-only", offline=True)
    assert no_weights.startswith("model.path=acme/processor-only: the Hugging Face cache holds no weights")
    _, missing_dir = refused("checkpoints/sft/missing", offline=False)
    assert missing_dir == (
        f"model.path=checkpoints/sft/missing: {tmp_path}/checkpoints/sft/missing does not exist (nor is "
        "'checkpoints/sft/missing' a hub id). Give a local checkpoint directory or a Hugging Face hub id.\n"
    )
    assert refused(str(tiny_model_dir), offline=True) == (str(tiny_model_dir), data_missing + MISSING_SFT_DATA)


def refused_before_start_up(capsys, *overrides) -> tuple[int, str]:
    """The SFT entry's exit code and message for a config it refuses before verl starts."""
    from mixed_r1_verl.sft import train_on_this_node

    with pytest.raises(SystemExit) as exit_status:
        train_on_this_node(compose_sft(*overrides))
    return exit_status.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "setting",
    ["data.train_batch_size=0", "data.train_batch_size=-8", "data.micro_batch_size_per_gpu=0", "trainer.n_gpus_per_node=0"],
)
def test_sizes_below_1_are_refused_naming_them_before_the_checks_divide_by_them(capsys, setting):
    code, message = refused_before_start_up(capsys, setting)
    assert code == 2 and message == f"{setting}: it must be a whole number of at least 1.\n"


@pytest.mark.parametrize(
    "settings, error",
    [
        (
            ("trainer.n_gpus_per_node=4", "engine.ulysses_sequence_parallel_size=3"),
            "engine.ulysses_sequence_parallel_size=3 does not divide the 4 GPU(s), which sequence parallelism groups 3 "
            "at a time.\n",
        ),
        (
            ("trainer.n_gpus_per_node=8", "data.train_batch_size=4"),
            "data.train_batch_size=4 is fewer rows than the 8 data-parallel groups a batch is split over: each takes "
            "data.train_batch_size / groups rows a step.\n",
        ),
    ],
)
def test_a_batch_the_data_parallel_groups_cannot_share_is_refused_before_start_up(
    converted, tiny_model_dir, capsys, settings, error
):
    data_dir, _ = converted
    code, message = refused_before_start_up(capsys, f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}", *settings)
    assert code == 2 and message == error


def test_a_validation_split_without_sft_rows_is_named_with_the_way_to_train_without_one(
    converted, tiny_model_dir, tmp_path, capsys
):
    data_dir, _ = converted
    missing = tmp_path / "sft_val.parquet"
    code, message = refused_before_start_up(
        capsys, f"model.path={tiny_model_dir}", f"data.train_files={data_dir / 'sft_train.parquet'}",
        f"data.val_files={missing}",
    )  # fmt: skip
    assert code == 2 and message.startswith(f"not found: data.val_files={missing}\n")
    assert "a split without such rows has no SFT parquet: data.val_files=null trains without validation" in message


def test_micro_batches_that_do_not_divide_a_batch_are_refused_before_start_up(
    converted, tiny_model_dir, capsys
):
    """verl's FSDP engine asserts it only at the first step, after the model has loaded."""
    data_dir, _ = converted
    settings = (
        f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}", "data.train_batch_size=4",
        "trainer.total_training_steps=2",
    )  # fmt: skip
    code, message = refused_before_start_up(capsys, *settings, "data.micro_batch_size_per_gpu=16")
    assert code == 2 and message == (
        "data.micro_batch_size_per_gpu=16 does not divide the 4 rows of a batch each data-parallel rank holds "
        "(data.train_batch_size=4 / 1): use a divisor, or data.use_dynamic_bsz=true. verl's FSDP engine would "
        "stop on it at the first step.\n"
    )
    assert micro_batch_mismatch(compose_sft(*settings, "data.micro_batch_size_per_gpu=2")) is None
    dynamic = compose_sft(*settings, "data.micro_batch_size_per_gpu=16", "data.use_dynamic_bsz=true")
    assert micro_batch_mismatch(dynamic) is None


def test_a_micro_batch_token_budget_below_max_length_is_refused_before_start_up(converted, tiny_model_dir, capsys):
    """With dynamic batch sizes verl's FSDP engine asserts that a row fits its token budget only at the first
    batch holding one longer, hours into a run."""
    data_dir, _ = converted
    settings = (f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}", "data.train_batch_size=4",
                "trainer.total_training_steps=2", "data.use_dynamic_bsz=true", "data.max_token_len_per_gpu=1024")  # fmt: skip
    code, message = refused_before_start_up(capsys, *settings, "data.max_length=2048")
    assert code == 2 and message.startswith(
        "data.max_length=2048 is more than the 1024 tokens a micro-batch holds (data.max_token_len_per_gpu=1024 x "
        "engine.ulysses_sequence_parallel_size=1)"
    )
    assert token_budget_mismatch(compose_sft(*settings, "data.max_length=1024")) is None
    parallel = compose_sft(*settings, "data.max_length=2048", "engine.ulysses_sequence_parallel_size=2")
    assert token_budget_mismatch(parallel) is None
    static = compose_sft(*settings, "data.max_length=2048", "data.use_dynamic_bsz=false", "data.max_token_len_per_gpu=null")
    assert token_budget_mismatch(static) is None  # verl reads no token budget without dynamic batch sizes


def test_the_processes_that_would_train_must_match_the_planned_gpus():
    from mixed_r1_verl.sft import process_count_error

    def error(visible, env, **trainer):
        return process_count_error(OmegaConf.create({"n_gpus_per_node": 8, "nnodes": 1, **trainer}), visible, env)

    assert error(8, {}) is None and error(8, {"WORLD_SIZE": "8"}) is None
    assert error(1, {}) == "trainer.n_gpus_per_node=8, and torch sees 1 CUDA GPU(s) here: set that many or fewer"
    assert error(8, {"WORLD_SIZE": "16"}) == (
        "torchrun started 16 processes, and trainer.n_gpus_per_node=8 x trainer.nnodes=1 is 8: set them to the "
        "processes per node and the nodes"
    )
    assert error(8, {"WORLD_SIZE": "16"}, nnodes=2) is None  # torchrun on each of 2 nodes
    assert error(8, {}, nnodes=2).startswith("trainer.nnodes=2: mixed_r1_verl.sft starts the processes of one node")


def test_micro_batches_divide_the_share_of_each_sequence_parallel_group_not_of_each_gpu(tiny_model_dir):
    """With Ulysses sequence parallelism verl's FSDP engine splits each batch over GPUs / sequence-parallel
    size data-parallel ranks: 8 GPUs in groups of 2 hold 32 / 4 = 8 rows each."""
    settings = (
        f"model.path={tiny_model_dir}", "trainer.n_gpus_per_node=8", "engine.ulysses_sequence_parallel_size=2",
        "data.train_batch_size=32",
    )  # fmt: skip
    assert micro_batch_mismatch(compose_sft(*settings, "data.micro_batch_size_per_gpu=8")) is None
    assert micro_batch_mismatch(compose_sft(*settings, "data.micro_batch_size_per_gpu=16")) == (
        "data.micro_batch_size_per_gpu=16 does not divide the 8 rows of a batch each data-parallel rank holds "
        "(data.train_batch_size=32 / 4): use a divisor, or data.use_dynamic_bsz=true. verl's FSDP engine would "
        "stop on it at the first step.\n"
    )


def test_rows_are_counted_within_data_max_samples_as_verls_sft_dataset_reads_them(
    converted, tiny_model_dir, capsys
):
    """A set cut by data.train_max_samples or data.val_max_samples below one batch would train nothing or
    log val/loss as NaN, however many rows its parquet holds."""
    data_dir, _ = converted
    train_rows, val_rows = (pq.read_metadata(data_dir / f"sft_{split}.parquet").num_rows for split in ("train", "val"))
    assert train_rows > 4 and val_rows >= 1
    settings = (f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}", "data.train_batch_size=4")
    config = compose_sft(*settings, "data.train_max_samples=3", f"data.val_max_samples={val_rows + 10}")
    assert parquet_set_rows(config) == {"train_files": 3, "val_files": val_rows}
    processor = load_image_text_processor(tiny_model_dir)
    dataset = create_sft_dataset(config.data.train_files, config.data, processor.tokenizer, processor, max_samples=3)
    assert len(dataset) == 3
    with pytest.raises(SystemExit) as exit_status:
        exit_unless_rows_fill_the_run(config, parquet_set_rows(config))
    assert exit_status.value.code == 2
    assert "data.train_files (3 rows): fewer rows than one batch of data.train_batch_size=4" in capsys.readouterr().err

    within = compose_sft(*settings, "data.train_max_samples=4", "data.val_files=null", "trainer.total_epochs=1",
                         "trainer.total_training_steps=1")  # fmt: skip
    assert parquet_set_rows(within) == {"train_files": 4}
    exit_unless_rows_fill_the_run(within, parquet_set_rows(within))


@pytest.mark.parametrize("layout", ["built", "saved by transformers"])
def test_without_a_processor_from_verl_the_image_and_text_processor_prepares_the_images(
    converted, tiny_model_dir, resaved_model_dir, layout
):
    data_dir, _ = converted
    model_dir = tiny_model_dir if layout == "built" else resaved_model_dir
    config = compose_sft(f"model.path={model_dir}", f"mixed_r1.data_dir={data_dir}")
    processor = load_image_text_processor(model_dir)
    # verl passes None when AutoProcessor fails (without torchvision, for one).
    dataset = create_sft_dataset(config.data.train_files, config.data, processor.tokenizer, None)
    item = dataset[0]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    grid = item["multi_modal_inputs"]["image_grid_thw"]
    assert int((item["input_ids"] == image_pad).sum()) == int(grid.prod()) // 4 > 0


CPU_SFT_STEPS = 6


def sft_on_cpu(cwd, model_dir, data_dir, steps, *settings, recipe="learn"):
    """`mixed_r1_verl.sft recipe=learn` (or `recipe`) on CPU (tests/run_on_cpu.py), 4 rows a step."""
    settings = [
        f"recipe={recipe}", f"model.path={model_dir}", f"mixed_r1.data_dir={data_dir}", *CPU_SFT_SETTINGS,
        "data.train_batch_size=4", "data.micro_batch_size_per_gpu=2", f"trainer.total_training_steps={steps}",
        "trainer.default_local_dir=checkpoints", *settings,
    ]  # fmt: skip
    return run_on_cpu("sft", cwd, settings, 900, VERL_FILE_LOGGER_PATH=str(cwd / "logs" / "sft.jsonl"))


def succeeded(run):
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


@pytest.fixture(scope="module")
def trained_on_cpu(converted, tiny_model_dir, tmp_path_factory):
    data_dir, _ = converted
    cwd = tmp_path_factory.mktemp("sft_run")
    succeeded(sft_on_cpu(cwd, tiny_model_dir, data_dir, CPU_SFT_STEPS))
    return cwd


def test_verls_sft_trainer_fits_the_rationales_and_saves_the_model_grpo_starts_from(trained_on_cpu, tiny_model_dir):
    from mixed_r1_verl.learn import publish_checkpoint

    steps = read_metrics_log(trained_on_cpu / "logs" / "sft.jsonl")
    assert sorted(steps) == list(range(1, CPU_SFT_STEPS + 1))
    losses = [steps[step]["train/loss"] for step in sorted(steps)]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert math.isfinite(steps[CPU_SFT_STEPS]["val/loss"])

    published = publish_checkpoint(
        trained_on_cpu / "checkpoints", "huggingface", trained_on_cpu / "sft_model", tiny_model_dir
    )
    assert published == trained_on_cpu / "checkpoints" / f"global_step_{CPU_SFT_STEPS}" / "huggingface"
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tuned = Qwen2_5_VLForConditionalGeneration.from_pretrained(trained_on_cpu / "sft_model", dtype=torch.float32)
    base_weights, tuned_weights = base.state_dict(), tuned.state_dict()
    assert base_weights.keys() == tuned_weights.keys()
    changed = [name for name in base_weights if not torch.equal(base_weights[name], tuned_weights[name])]
    assert any(".visual." in name for name in changed) and any("language_model" in name for name in changed)
    processor = load_image_text_processor(trained_on_cpu / "sft_model")
    assert processor.image_processor.to_dict() == load_image_text_processor(tiny_model_dir).image_processor.to_dict()


def test_export_writes_an_sft_checkpoint_from_its_copy_or_its_shards_as_a_model_directory(trained_on_cpu, tmp_path):
    step = trained_on_cpu / "checkpoints" / f"global_step_{CPU_SFT_STEPS}"
    from_copy = json.loads(run_module("mixed_r1_verl.export", f"checkpoint={step}", f"out_dir={tmp_path / 'copy'}"))
    assert (from_copy["checkpoint"], from_copy["weights_from"], from_copy["lora_merged"]) == (str(step), "huggingface/", False)
    assert from_copy["dtypes"] == ["BF16"] and {"mixed_r1_run.yaml", "mixed_r1_code.json"} <= set(from_copy["files"])
    _, first, rows = card_parts((tmp_path / "copy" / "README.md").read_text())
    run = yaml.safe_load((step / "mixed_r1_run.yaml").read_text())
    assert first.startswith(f"Step {CPU_SFT_STEPS} of an SFT run") and run["trainer"]["total_training_steps"] == CPU_SFT_STEPS
    assert rows["sequences per step"] == str(run["data"]["train_batch_size"]) and rows["weights"] == "bfloat16"
    shards_only = tmp_path / step.name
    shutil.copytree(step, shards_only, ignore=shutil.ignore_patterns("*.safetensors"))
    from_shards = json.loads(run_module("mixed_r1_verl.export", f"checkpoint={shards_only}", f"out_dir={tmp_path / 'shards'}"))
    assert from_shards["weights_from"] == "FSDP shards"
    assert (from_shards["files"], from_shards["dtypes"]) == (from_copy["files"], ["BF16"])

    saved = Qwen2_5_VLForConditionalGeneration.from_pretrained(step / "huggingface", dtype="auto").state_dict()
    for exported in ("copy", "shards"):
        weights = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / exported, dtype="auto").state_dict()
        assert weights.keys() == saved.keys(), exported
        # The copy holds the actor's float32 weights, both exports the config's bfloat16.
        assert all(weights[name].equal(saved[name].to(weights[name].dtype)) for name in saved), exported
        assert load_image_text_processor(tmp_path / exported).image_processor.to_dict() == (
            load_image_text_processor(step / "huggingface").image_processor.to_dict()
        )  # fmt: skip


def test_a_lora_fine_tuning_saves_the_model_with_its_adapters_merged_in_for_grpo_to_start_from(
    converted, tiny_model_dir, tmp_path, capsys
):
    data_dir, _ = converted
    run = succeeded(sft_on_cpu(tmp_path, tiny_model_dir, data_dir, 2, "lora=on"))
    copy = tmp_path / "checkpoints" / "global_step_2" / "huggingface"
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    tuned = Qwen2_5_VLForConditionalGeneration.from_pretrained(copy, dtype=torch.float32).state_dict()
    assert tuned.keys() == base.keys()
    changed = [name for name in base if not torch.equal(base[name], tuned[name])]
    # The language model's linear layers, each with its adapter; the vision tower, embeddings and norms are frozen.
    assert changed and all(".language_model.layers." in name and name.endswith("proj.weight") for name in changed), changed
    assert f"{copy}: {len(changed)} LoRA adapters merged into the weights" in run.stdout + run.stderr
    rate_note = "lora=on with recipe=learn: the adapters train at the recipe's own optim.lr=0.0005"
    assert rate_note in run.stdout + run.stderr, "named in one line"

    # A full fine-tuning into the same directory would resume the adapters' checkpoint, which verl loads strictly.
    settings = (
        f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}", "data.train_batch_size=4",
        "data.micro_batch_size_per_gpu=2", "trainer.total_training_steps=3",
        f"trainer.default_local_dir={tmp_path / 'checkpoints'}",
    )  # fmt: skip
    code, message = refused_before_start_up(capsys, *settings)
    assert code == 2 and (
        f"{copy.parent}, the latest checkpoint in trainer.default_local_dir, which this run resumes "
        "(trainer.resume_mode=auto), was trained with LoRA adapters (rank 64), and this run trains the full weights "
        "(model.lora_rank=0)"
    ) in message, message
    exit_if_resuming_across_lora(compose_sft("lora=on", *settings), "model", sft=True)


@pytest.mark.parametrize(("model_family", "recipe"), [("internvl", "internvl3_8b"), ("qwen3_vl", "qwen3vl_8b")])
def test_each_familys_sft_recipe_trains_its_tiny_model_without_flash_attn(
    model_family, recipe, tiny_internvl_dir, tiny_qwen3vl_dir, tmp_path
):
    model_dir = {"internvl": tiny_internvl_dir, "qwen3_vl": tiny_qwen3vl_dir}[model_family]
    jsonl, image_root = write_synthetic_dataset(tmp_path / "src", rows_per_task=2, seed=4, val_rows_per_task=1)
    prepare(PrepareConfig(input=str(jsonl), image_root=str(image_root), output_dir=str(tmp_path / "data"),
                          model_family=model_family, model_path=str(model_dir), progress=False))  # fmt: skip
    settings = ("trainer.n_gpus_per_node=1", "trainer.total_epochs=2")
    run = succeeded(sft_on_cpu(tmp_path, model_dir, tmp_path / "data", 2, *settings, recipe=recipe))
    assert "flash_attn is not importable: training with model.override_config.attn_implementation=sdpa" in run.stdout + run.stderr, run.stdout[-3000:]
    steps = read_metrics_log(tmp_path / "logs" / "sft.jsonl")
    assert sorted(steps) == [1, 2] and all(math.isfinite(steps[step]["train/loss"]) for step in steps)
    assert (tmp_path / "checkpoints" / "global_step_2" / "huggingface" / "config.json").is_file()


def test_a_second_run_resumes_after_the_last_checkpoint_and_keeps_the_first_runs_metrics(
    trained_on_cpu, converted, tiny_model_dir
):
    """The second run also asks for a loader process where the first read in the trainer's own."""
    data_dir, _ = converted
    first_run = read_metrics_log(trained_on_cpu / "logs" / "sft.jsonl")
    # Weights an earlier run left in a step's Hugging Face copy: verl saves into the folder without emptying it.
    stale = trained_on_cpu / "checkpoints" / f"global_step_{CPU_SFT_STEPS + 2}" / "huggingface"
    stale.mkdir(parents=True)
    (stale / "model-00002-of-00002.safetensors").write_bytes(b"an earlier run's weights")
    run = succeeded(sft_on_cpu(trained_on_cpu, tiny_model_dir, data_dir, CPU_SFT_STEPS + 2, "data.num_workers=1"))
    assert sorted(path.name for path in stale.glob("*.safetensors")) == ["model.safetensors"]
    # The checkpoint ends an epoch (batches of 4): the next one starts afresh, with no saved position to read.
    assert CPU_SFT_STEPS % (pq.read_metadata(data_dir / "sft_train.parquet").num_rows // 4) == 0
    assert "its data loader position was saved by" not in run.stdout, run.stdout[-3000:]
    # The settings changed since the checkpoint, against the config it saved, and nothing else.
    checkpoint = trained_on_cpu / "checkpoints" / f"global_step_{CPU_SFT_STEPS}"
    saved = yaml.safe_load((checkpoint / "mixed_r1_run.yaml").read_text())
    assert (
        f"global_step_{CPU_SFT_STEPS}: resumed with 2 setting(s) changed since it was saved ({checkpoint / 'mixed_r1_run.yaml'} "
        f"holds the saved ones):\n  data.num_workers: {saved['data']['num_workers']!r} -> 1\n"
        f"  trainer.total_training_steps: {CPU_SFT_STEPS} -> {CPU_SFT_STEPS + 2}\n"
    ) in run.stdout, run.stdout[-3000:]
    assert sorted(read_metrics_log(trained_on_cpu / "logs" / "sft.jsonl")) == [CPU_SFT_STEPS + 1, CPU_SFT_STEPS + 2]
    assert read_metrics_log(trained_on_cpu / "logs" / "sft.1.jsonl") == first_run
    assert (trained_on_cpu / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == str(CPU_SFT_STEPS + 2)


def test_a_run_resumed_at_an_epochs_end_trains_the_next_epoch_as_a_run_that_did_not_stop(
    converted, tiny_model_dir, tmp_path
):
    """A checkpoint at an epoch's last step holds the loader's position at that epoch's end: restored, verl's
    next epoch yielded no batch, so the run trained a later epoch's batches in its place, or none and ended
    without its last checkpoint."""
    data_dir, _ = converted
    per_epoch = pq.read_metadata(data_dir / "sft_train.parquet").num_rows // 4  # batches of 4 (sft_on_cpu)
    settings = ("trainer.total_epochs=3", "trainer.save_freq=after_each_epoch")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    whole.mkdir()
    succeeded(sft_on_cpu(whole, tiny_model_dir, data_dir, 2 * per_epoch, *settings))
    # The first epoch's checkpoint, as a run that stopped there leaves it.
    first_epoch = f"checkpoints/global_step_{per_epoch}"
    shutil.copytree(whole / first_epoch, resumed / first_epoch)
    (resumed / "checkpoints" / "latest_checkpointed_iteration.txt").write_text(str(per_epoch))
    succeeded(sft_on_cpu(resumed, tiny_model_dir, data_dir, 2 * per_epoch, *settings))
    expected, trained = (read_metrics_log(run / "logs" / "sft.jsonl") for run in (whole, resumed))
    assert sorted(trained) == list(range(per_epoch + 1, 2 * per_epoch + 1))
    for step in trained:
        for key in ("train/global_tokens", "train/loss"):
            assert trained[step][key] == expected[step][key], (step, key)
    assert (resumed / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == str(2 * per_epoch)
    assert (resumed / "checkpoints" / f"global_step_{2 * per_epoch}" / "huggingface" / "config.json").is_file()


def test_a_rerun_of_a_finished_run_is_refused_instead_of_training_a_step_more(
    trained_on_cpu, converted, tiny_model_dir, capsys
):
    """verl's SFT trainer resumed at its last step would train and save the step after it."""
    data_dir, _ = converted
    checkpoints = trained_on_cpu / "checkpoints"
    last = int((checkpoints / "latest_checkpointed_iteration.txt").read_text())
    code, message = refused_before_start_up(
        capsys, f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}", "data.train_batch_size=4",
        "data.micro_batch_size_per_gpu=2", f"trainer.total_training_steps={last}",
        f"trainer.default_local_dir={checkpoints}",
    )  # fmt: skip
    assert code == 3
    assert message.startswith(
        f"nothing to train: {checkpoints} holds a checkpoint of step {last} and this run ends at step {last} "
        "(trainer.total_training_steps). To train more, raise trainer.total_training_steps; to start again, use a "
        "new trainer.default_local_dir or trainer.resume_mode=disable."
    )
    assert sorted(path.name for path in checkpoints.glob("global_step_*"))[-1] == f"global_step_{last}"


def test_a_finished_run_is_told_by_the_steps_of_the_rows_that_fit_max_length(converted, tiny_model_dir, tmp_path):
    """Steps planned from the training rows within data.max_length, as the dataset keeps them: planned from
    every row, a rerun after the last step would pass the check and train nothing."""
    data_dir, _ = converted
    lengths = [info["sequence_length"] for info in pq.read_table(data_dir / "sft_train.parquet").column("extra_info")
               .to_pylist()]  # fmt: skip
    limit = sorted(lengths)[len(lengths) // 2]
    fitting = sum(length <= limit for length in lengths)
    config = compose_sft(
        f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}", f"data.max_length={limit}",
        "data.train_batch_size=2", "trainer.total_training_steps=null", "trainer.total_epochs=1",
    )  # fmt: skip
    assert 0 < fitting < len(lengths) and train_rows_within_max_length(config) == fitting
    assert planned_sft_steps(config, train_rows_within_max_length(config))[0] == fitting // 2


def test_rows_drawn_with_shuffle_and_max_samples_are_counted_as_the_dataset_draws_them(converted, tiny_model_dir):
    """With data.shuffle, verl's dataset draws data.train_max_samples rows with data.seed, which the entry pins
    to trainer.seed; the steps are planned from the drawn rows that fit data.max_length."""
    data_dir, _ = converted
    lengths = [info["sequence_length"] for info in pq.read_table(data_dir / "sft_train.parquet").column("extra_info")
               .to_pylist()]  # fmt: skip
    limit, drawn = sorted(lengths)[len(lengths) // 2], len(lengths) // 2
    processor = load_image_text_processor(tiny_model_dir)
    counted = set()
    for seed in range(6):
        config = compose_sft(
            f"model.path={tiny_model_dir}", f"mixed_r1.data_dir={data_dir}", f"data.max_length={limit}",
            "+data.shuffle=true", f"data.train_max_samples={drawn}", f"trainer.seed={seed}",
        )  # fmt: skip
        pin_sample_seed(config)
        assert config.data.seed == seed
        dataset = create_sft_dataset(
            config.data.train_files, config.data, processor.tokenizer, processor, max_samples=drawn
        )
        counted.add(train_rows_within_max_length(config))
        assert train_rows_within_max_length(config) == len(dataset)
    assert len(counted) > 1, "every draw kept as many rows: the test cannot tell draws apart"


def test_a_run_ends_with_its_checkpoint_after_the_last_step_that_fits_before_stop_by(
    converted, tiny_model_dir, tmp_path
):
    """The time reserved for the last checkpoint and validation is all the time there was: the run must
    end after step 1 of 8, validated and saved."""
    data_dir, _ = converted
    stop_by = int(time.time()) + 3600
    run = succeeded(
        sft_on_cpu(tmp_path, tiny_model_dir, data_dir, 8, f"mixed_r1.stop_by={stop_by}",
                   "mixed_r1.stop_save_estimate_s=3600")
    )  # fmt: skip
    assert "mixed_r1.stop_by: ending after step 1 of 8, saved" in run.stdout, run.stdout[-4000:]
    steps = read_metrics_log(tmp_path / "logs" / "sft.jsonl")
    assert sorted(steps) == [1] and math.isfinite(steps[1]["val/loss"])
    assert (tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "1"
    assert (tmp_path / "checkpoints" / "global_step_1" / "huggingface" / "config.json").exists()


def test_sets_smaller_than_one_batch_and_steps_beyond_the_epochs_are_refused_before_training(converted, tiny_model_dir, tmp_path):
    data_dir, _ = converted
    train_rows, val_rows = (pq.read_metadata(data_dir / f"sft_{split}.parquet").num_rows for split in ("train", "val"))
    run = sft_on_cpu(tmp_path, tiny_model_dir, data_dir, 2, f"data.train_batch_size={train_rows + 1}")
    assert run.returncode == 2
    assert f"data.train_files ({train_rows} rows) and data.val_files ({val_rows} rows): fewer rows than one batch" in run.stderr
    run = sft_on_cpu(tmp_path, tiny_model_dir, data_dir, 2, f"data.train_batch_size={val_rows + 1}")
    assert run.returncode == 2 and f"data.val_files ({val_rows} rows): fewer" in run.stderr
    # verl's loop would end after the last epoch, short of the planned last step that saves.
    in_epochs = train_rows // 4 * 5  # batches of 4 (sft_on_cpu), the recipe's 5 epochs
    run = sft_on_cpu(tmp_path, tiny_model_dir, data_dir, in_epochs + 1, "trainer.total_epochs=5")
    assert run.returncode == 2
    assert f"trainer.total_training_steps={in_epochs + 1} is more than the {in_epochs} steps of trainer.total_epochs=5" in run.stderr
    assert "verl's SFT trainer would end after the last epoch without saving a checkpoint" in run.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_a_setting_that_cannot_be_resolved_stops_the_run_before_training_not_at_its_first_save(
    converted, tiny_model_dir, tmp_path, monkeypatch
):
    """Each checkpoint saves the run's config resolved (the model card's source). verl's SFT trainer resolves
    it for its logger before the first step, so a setting that cannot be resolved never reaches a save."""
    data_dir, _ = converted
    monkeypatch.delenv("MIXED_R1_UNSET_FOR_TEST", raising=False)
    run = sft_on_cpu(tmp_path, tiny_model_dir, data_dir, 2, "+mixed_r1.note=${oc.env:MIXED_R1_UNSET_FOR_TEST}")
    assert run.returncode != 0 and "MIXED_R1_UNSET_FOR_TEST" in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / "logs" / "sft.jsonl").exists() or not read_metrics_log(tmp_path / "logs" / "sft.jsonl")
    assert not (tmp_path / "checkpoints").exists()


def test_sets_that_rows_over_max_length_leave_short_of_a_batch_or_of_the_steps_are_refused_before_training(
    converted, tiny_model_dir, tmp_path
):
    """The parquet's rows pass the entry's checks; the rows within data.max_length, counted once the
    datasets are built, would train nothing (verl divides by zero steps a epoch) or end after the last
    epoch without saving a checkpoint."""
    data_dir, _ = converted
    extra_info = pq.read_table(data_dir / "sft_train.parquet")["extra_info"].to_pylist()
    lengths = sorted(info["sequence_length"] for info in extra_info)
    max_length = lengths[len(lengths) // 2]
    kept = sum(length <= max_length for length in lengths)
    assert 1 < kept < len(lengths)
    within = f"data.max_length={max_length}"
    run = sft_on_cpu(tmp_path, tiny_model_dir, data_dir, 2, within, "data.val_files=null",
                     f"data.train_batch_size={kept + 1}", "data.micro_batch_size_per_gpu=1")  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    assert f"data.train_files ({kept} rows within {within}): fewer rows than one batch" in run.stderr
    run = sft_on_cpu(tmp_path, tiny_model_dir, data_dir, kept + 1, within, "data.val_files=null", "trainer.total_epochs=1",
                     "data.train_batch_size=1", "data.micro_batch_size_per_gpu=1")  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    assert (
        f"trainer.total_training_steps={kept + 1} is more than the {kept} steps of trainer.total_epochs=1 ({kept} a "
        f"epoch): verl's SFT trainer (on the {kept} training rows within {within}) would end after the last epoch"
    ) in run.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_the_published_sft_model_goes_through_the_learning_proofs_evaluation(trained_on_cpu, converted, tiny_model_dir):
    from mixed_r1_verl.learn import LearnConfig, Layout, eval_step, execute, publish_checkpoint

    data_dir, _ = converted
    layout = Layout(trained_on_cpu / "proof")
    layout.root.mkdir()
    layout.data.symlink_to(data_dir)
    layout.base_model.symlink_to(tiny_model_dir)
    publish_checkpoint(trained_on_cpu / "checkpoints", "huggingface", layout.sft_model, layout.base_model)
    step = eval_step(LearnConfig(eval_max_new_tokens=4), layout, "sft", layout.sft_model)
    execute([step], env={**os.environ, "PYTHONPATH": str(REPO)})
    summary = json.loads((layout.eval_dir("sft") / "summary.json").read_text())
    val_rows = pq.read_metadata(data_dir / "val.parquet").num_rows
    assert summary["tasks"]["all"]["n"] == val_rows and summary["tasks"]["all"]["errors"] == 0
    assert set(summary["tasks"]) == set(TASKS) | {"all"}
