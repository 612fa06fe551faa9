import pytest
from interrupts import pytest_runtest_makereport  # noqa: F401  (a hook for every test)

from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl
from mixed_r1_verl.rewards.tasks import plugin_tasks


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL written once per test session."""
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny_qwen25vl"))


@pytest.fixture
def install_tasks(monkeypatch):
    """Puts a directory of installed distributions (tests/task_plugins.py) on this process's path, as pip
    would, for one test: the tasks they add are read again."""

    def put_on_path(root):
        monkeypatch.syspath_prepend(str(root))
        plugin_tasks.cache_clear()

    yield put_on_path
    plugin_tasks.cache_clear()


@pytest.fixture(scope="session")
def resaved_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its processor as transformers 5 saves one (verl's checkpoints and its model
    merger do so): processor_config.json holding the image processor, no preprocessor_config.json."""
    import shutil

    from mixed_r1_verl.data.processor import load_image_text_processor

    target = tmp_path_factory.mktemp("resaved_qwen25vl")
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, target / name)
    load_image_text_processor(tiny_model_dir).save_pretrained(target)
    assert not (target / "preprocessor_config.json").exists()
    return target


@pytest.fixture(scope="session")
def tokens_beyond_table_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with two tokens added to its tokenizer and its embedding table left as it was."""
    import shutil

    from transformers import AutoTokenizer

    target = tmp_path_factory.mktemp("tokens_beyond_table") / "model"
    shutil.copytree(tiny_model_dir, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.add_tokens(["zebraword", "<|extra_0|>"])
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_internvl_dir(tmp_path_factory):
    """A tiny InternVL (Hugging Face format) written once per test session."""
    from mixed_r1_verl.models.tiny_internvl import build_tiny_internvl

    return build_tiny_internvl(tmp_path_factory.mktemp("tiny_internvl"))


@pytest.fixture(scope="session")
def tiny_qwen3vl_dir(tmp_path_factory):
    """A tiny Qwen3-VL written once per test session."""
    from mixed_r1_verl.models.tiny_qwen3vl import build_tiny_qwen3vl

    return build_tiny_qwen3vl(tmp_path_factory.mktemp("tiny_qwen3vl"))
