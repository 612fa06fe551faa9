"""A Hugging Face hub cache on disk, laid out as huggingface_hub writes it, for tests that name a model
by hub id while offline."""

import hashlib
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _add_file(repo: Path, snapshot: Path, name: str, source: Path) -> None:
    blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, blob)
    (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))


def _sharded_weights(model_dir: Path, out_dir: Path) -> list[Path]:
    """The model's weights as two shards (vision tower first) and their index, as large checkpoints ship."""
    tensors = load_file(str(model_dir / "model.safetensors"))
    shards = {
        "model-00001-of-00002.safetensors": {k: v for k, v in tensors.items() if k.startswith("visual")},
        "model-00002-of-00002.safetensors": {k: v for k, v in tensors.items() if not k.startswith("visual")},
    }
    weight_map = {}
    for name, part in shards.items():
        save_file(part, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return [out_dir / name for name in (*shards, "model.safetensors.index.json")]


def write_hf_cache(hf_home: Path, repo_id: str, model_dir: Path, sharded: bool) -> None:
    """Puts the model in `model_dir` into the hub cache under `hf_home` as `repo_id`."""
    repo = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    files = [path for path in Path(model_dir).iterdir() if path.is_file()]
    if sharded:
        staging = Path(hf_home) / "staging" / repo.name
        staging.mkdir(parents=True)
        files = [path for path in files if path.name != "model.safetensors"] + _sharded_weights(model_dir, staging)
    for path in files:
        _add_file(repo, snapshot, path.name, path)
