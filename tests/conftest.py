import pytest

from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL written once per test session."""
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny_qwen25vl"))
