"""The run config the trainers save beside each checkpoint, and the model card an export writes from it. The
trainers' saves and the exports of their checkpoints are checked beside those runs (tests/test_train_on_cpu.py,
tests/test_sft.py)."""

import pytest
from omegaconf import OmegaConf
from test_sft import compose_sft
from test_train_config import compose_recipe

from data_helpers import card_parts
from mixed_r1_verl.models.model_card import base_hub_id, model_card
from mixed_r1_verl.run_config import read_run_config, write_run_config


@pytest.mark.parametrize("method", ["GRPO", "SFT"])
def test_a_card_names_the_base_model_on_the_hub_and_the_runs_settings_from_its_saved_config(method, tmp_path):
    if method == "GRPO":
        config = compose_recipe("qwen25vl_7b", "lora=on")
        model, lr = config.actor_rollout_ref.model, config.actor_rollout_ref.actor.optim.lr
    else:
        config = compose_sft("lora=on", recipe="qwen25vl_7b")
        model, lr = config.model, config.optim.lr
    write_run_config(config, tmp_path, {})
    run = read_run_config(tmp_path)
    assert run == OmegaConf.to_container(config, resolve=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "mixed_r1_code.json", "mixed_r1_run.yaml", "mixed_r1_train_files.json"
    ]

    metadata, first, rows = card_parts(model_card("qwen-mixed", method, 40, run, lora_merged=False, dtype="bfloat16"))
    assert metadata == {
        "base_model": model.path, "library_name": "transformers", "pipeline_tag": "image-text-to-text",
        "tags": ["mixed-r1", method.lower(), "verl"],
    }  # fmt: skip
    assert first.startswith(f"Step 40 of a{'n' if method == 'SFT' else ''} {method} run")
    assert rows["base model"] == f"[{model.path}](https://huggingface.co/{model.path})" and "started from" not in rows
    assert rows["training data"] == f"`{config.data.train_files}`"
    assert rows["learning rate"] == str(lr) and rows["weights"] == "bfloat16"
    # The adapters an export writes are merged, whether the export or the trainer merged them.
    assert rows["LoRA"] == f"rank {model.lora_rank}, alpha {model.lora_alpha}, merged into the weights"
    if method == "GRPO":
        rollout, actor = config.actor_rollout_ref.rollout, config.actor_rollout_ref.actor
        assert rows["prompts per step × responses per prompt"] == f"{config.data.train_batch_size} × {rollout.n}"
        assert rows["KL loss coefficient"] == str(actor.kl_loss_coef) and rows["reward manager"] == "mixed_r1"
    else:
        assert rows["sequences per step"] == str(config.data.train_batch_size)


@pytest.mark.parametrize("method", ["GRPO", "SFT"])
def test_a_card_gives_the_planned_steps_or_else_the_epochs(method):
    config = compose_recipe("learn") if method == "GRPO" else compose_sft(recipe="learn")
    run = OmegaConf.to_container(config, resolve=True)
    steps, epochs = run["trainer"]["total_training_steps"], run["trainer"]["total_epochs"]
    assert steps is not None and epochs is not None  # the steps end the run; the epochs only bound it
    _, _, rows = card_parts(model_card("m", method, steps, run, lora_merged=False, dtype="bfloat16"))
    assert rows["planned steps"] == str(steps) and "epochs" not in rows
    run["trainer"]["total_training_steps"] = None
    _, _, rows = card_parts(model_card("m", method, steps, run, lora_merged=False, dtype="bfloat16"))
    assert rows["epochs"] == str(epochs) and "planned steps" not in rows


def test_the_base_model_is_followed_to_its_hub_id_through_cache_snapshots_and_the_runs_before(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "qwen").mkdir(parents=True)
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-3B-Instruct" / "snapshots" / "0a1b2c"
    assert base_hub_id("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert base_hub_id(str(snapshot)) == "Qwen/Qwen2.5-VL-3B-Instruct"  # an offline run trains from the snapshot
    for unknown in (str(tmp_path / "models" / "qwen"), "../models/qwen", None):
        assert base_hub_id(unknown) is None, unknown
    # The entries save local paths absolute: a relative `org/name` is a hub id, even where the export runs
    # beside a directory of that name (`hf download --local-dir` makes one).
    assert base_hub_id("models/qwen") == "models/qwen"

    # SFT from the snapshot, GRPO from the SFT checkpoint's copy, an export of it, GRPO from the export.
    sft_copy = tmp_path / "sft" / "global_step_4" / "huggingface"
    grpo_copy = tmp_path / "grpo" / "global_step_9" / "actor" / "huggingface"
    exported = tmp_path / "hf" / "grpo"
    for directory, run in (
        (sft_copy.parent, {"model": {"path": str(snapshot)}}),
        (grpo_copy.parent.parent, {"actor_rollout_ref": {"model": {"path": str(sft_copy)}}}),
        (exported, {"actor_rollout_ref": {"model": {"path": str(grpo_copy)}}}),
    ):
        directory.mkdir(parents=True, exist_ok=True)
        write_run_config(OmegaConf.create(run), directory, {})
    grpo_copy.mkdir(parents=True)
    sft_copy.mkdir()
    run = {"actor_rollout_ref": {"model": {"path": str(exported)}}}
    metadata, _, rows = card_parts(model_card("grpo2", "GRPO", 2, run, lora_merged=False, dtype="bfloat16"))
    assert metadata["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and rows["started from"] == f"`{exported}`"
    assert rows["base model"] == "[Qwen/Qwen2.5-VL-3B-Instruct](https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct)"

    # A local model of no known origin is named where the run started, and not as the Hub's base model.
    run = {"actor_rollout_ref": {"model": {"path": str(tmp_path / "models" / "qwen")}}}
    metadata, _, rows = card_parts(model_card("grpo", "GRPO", 2, run, lora_merged=False, dtype="float32"))
    assert "base_model" not in metadata and "base model" not in rows
    assert rows["started from"] == f"`{tmp_path / 'models' / 'qwen'}`"


def test_a_checkout_that_is_not_pip_installed_still_writes_its_card(monkeypatch):
    """On a GPU node the project may run from a checkout on the path, without the package's metadata."""
    from importlib.metadata import PackageNotFoundError

    from mixed_r1_verl import run_config
    from mixed_r1_verl.eval import provenance

    def no_metadata(name):
        raise PackageNotFoundError(name)

    run = {"actor_rollout_ref": {"model": {"path": "Qwen/Qwen2.5-VL-3B-Instruct"}}}
    installed = model_card("grpo", "GRPO", 2, run, lora_merged=False, dtype="bfloat16")
    assert f"exported by mixed_r1_verl {provenance.package_version()}." in installed
    monkeypatch.setattr(run_config, "version", no_metadata)
    assert provenance.code_identity()["version"] is None
    card = model_card("grpo", "GRPO", 2, run, lora_merged=False, dtype="bfloat16")
    assert "exported by mixed_r1_verl (a checkout not pip-installed)." in card
