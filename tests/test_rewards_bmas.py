import re

import numpy as np
import pytest
import torch

from mixed_r1_verl.rewards import bmas_batch, bmas_from_similarity, compute_score, load_embedding_model
from mixed_r1_verl.rewards.embeddings import load_input_embeddings


def dense_bmas(table: torch.Tensor, answer_ids, reference_ids) -> float:
    """The definition, computed the plain way on every token pair."""
    answer = torch.nn.functional.normalize(table[list(answer_ids)].float(), dim=-1)
    reference = torch.nn.functional.normalize(table[list(reference_ids)].float(), dim=-1)
    return bmas_from_similarity(answer @ reference.T)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_embedding_model(str(tiny_model_dir))


def test_reads_the_input_embedding_table_of_the_model(tiny_model_dir, model):
    from transformers import AutoModelForImageTextToText

    reference = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).get_input_embeddings().weight
    assert torch.equal(load_input_embeddings(tiny_model_dir), reference.detach())
    assert model.table.shape[0] >= len(model.tokenizer)


def transformers5_name(name: str) -> str:
    """A Qwen2.5-VL weight's name as transformers 5 names it in the loaded model."""
    if name.startswith("visual."):
        return f"model.{name}"
    return f"model.language_model.{name.removeprefix('model.')}" if name.startswith("model.") else name


@pytest.mark.parametrize(
    "layout", ["transformers 5 names", "vision tower with a word embedding", "transformers 5 vision tower embedding"]
)
def test_the_table_read_is_the_language_models_input_embedding(tiny_model_dir, tmp_path, layout):
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    if layout != "vision tower with a word embedding":
        weights = {transformers5_name(name): tensor for name, tensor in weights.items()}
    if layout != "transformers 5 names":  # a shorter name with an embedding suffix, in the vision tower
        prefix = "model." if layout.startswith("transformers 5") else ""
        weights[f"{prefix}vision_tower.wte.weight"] = torch.ones(8, 8)
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    language_model = AutoModelForImageTextToText.from_pretrained(model_dir)
    assert torch.equal(load_input_embeddings(model_dir), language_model.get_input_embeddings().weight.detach())


def test_a_tokenizer_with_ids_beyond_the_table_is_refused_at_load(tokens_beyond_table_dir):
    from mixed_r1_verl.rewards.embeddings import EmbeddingModelError

    refused = r"tokenizer gives token ids up to 513 but its input-embedding table has 512 rows"
    with pytest.raises(EmbeddingModelError, match=refused):
        load_embedding_model(str(tokens_beyond_table_dir))


def test_a_table_padded_beyond_the_vocabulary_is_indexed_by_token_id(tiny_model_dir, tmp_path, model):
    """Qwen pads its table beyond the tokenizer's vocabulary: the ids still index the same rows."""
    import shutil

    from safetensors.torch import load_file, save_file

    padded = tmp_path / "padded"
    shutil.copytree(tiny_model_dir, padded)
    weights = load_file(str(padded / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = torch.cat([weights[name], torch.randn(64, weights[name].shape[1]).to(weights[name].dtype)])
    save_file(weights, str(padded / "model.safetensors"), metadata={"format": "pt"})
    loaded = load_embedding_model(str(padded))
    assert loaded.table.shape[0] == model.table.shape[0] + 64
    assert torch.equal(loaded.table[: model.table.shape[0]], model.table)
    pair = (model.encode("a red bike"), model.encode("a red bicycle"))
    assert bmas_batch(loaded.table, [pair]) == bmas_batch(model.table, [pair])


def test_tokenises_without_special_tokens(model):
    ids = model.encode("<answer> B </answer>")
    assert ids == model.tokenizer("<answer> B </answer>", add_special_tokens=False)["input_ids"]
    assert model.tokenizer.convert_tokens_to_ids("<|im_start|>") not in ids


def test_identical_text_scores_one(model):
    ids = model.encode("A man is riding a red bicycle on a sunny street.")
    assert bmas_batch(model.table, [(ids, ids)]) == [1.0]


def test_identical_texts_of_every_length_score_exactly_one_so_they_reach_a_threshold_of_one(model):
    """A mean of token shares (1/n each) adds up to 1 only within float32's rounding (0.99999988 for some
    texts): a verbatim answer would then miss correct_threshold=1."""
    words = "a man is riding a red bicycle on a sunny street past two old houses and a small dog".split()
    texts = [" ".join(words[:length]) + "." for length in range(1, len(words) + 1)]
    pairs = [(model.encode(text), model.encode(text)) for text in texts]
    assert bmas_batch(model.table, pairs) == [1.0] * len(texts)
    for text in texts:
        scored = compute_score("caption", f"<think>x</think><answer>{text}</answer>", text, {"task": "open_ended"},
                               embedding_model=model, correct_threshold=1.0)  # fmt: skip
        assert (scored["accuracy"], scored["correct"]) == (1.0, 1.0)


def test_empty_sides_score_zero(model):
    ids = model.encode("a red bicycle")
    assert bmas_batch(model.table, [([], ids), (ids, []), ([], [])]) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("outside", [-1, "rows"])
def test_an_id_outside_the_table_is_refused_not_wrapped(model, outside):
    rows = model.table.shape[0]
    bad = rows if outside == "rows" else outside
    ids = model.encode("a red bicycle")
    with pytest.raises(ValueError, match=rf"token id {bad} is not a row of the BMAS embedding table \({rows} rows\)"):
        bmas_batch(model.table, [(ids, ids), (ids + [bad], ids)], model.norms)
    with pytest.raises(ValueError, match=rf"token id {bad} is not a row"):
        bmas_batch(model.table, [(ids, [bad])], model.norms)
    assert bmas_batch(model.table, [(ids, [0, rows - 1])], model.norms)[0] > 0  # both ends of the table are rows


def test_matches_the_dense_definition_on_real_texts(model):
    texts = [
        ("A man is riding a red bicycle.", "A person rides a bike on the street."),
        ("The chart shows 45% growth.", "Sales grew by forty-five percent."),
        ("yes", "A dog is sitting next to a bird near the park."),
        ("bicycle bicycle bicycle", "a red bicycle"),
    ]
    pairs = [(model.encode(a), model.encode(r)) for a, r in texts]
    table = model.table.float()
    batched = bmas_batch(table, pairs)
    for (answer, reference), value in zip(pairs, batched):
        assert value == pytest.approx(dense_bmas(table, answer, reference), abs=1e-5)


def test_batched_equals_one_by_one_and_order_is_kept(model):
    rng = np.random.default_rng(0)
    vocab = model.table.shape[0]
    pairs = [
        (rng.integers(0, vocab, rng.integers(1, 60)).tolist(), rng.integers(0, vocab, rng.integers(1, 20)).tolist())
        for _ in range(40)
    ]
    together = bmas_batch(model.table, pairs)
    alone = [bmas_batch(model.table, [pair])[0] for pair in pairs]
    assert together == pytest.approx(alone, abs=1e-6)


def test_invariants(model):
    rng = np.random.default_rng(1)
    vocab = model.table.shape[0]
    for _ in range(30):
        answer = rng.integers(0, vocab, rng.integers(1, 40)).tolist()
        reference = rng.integers(0, vocab, rng.integers(1, 40)).tolist()
        (forward,) = bmas_batch(model.table, [(answer, reference)])
        (backward,) = bmas_batch(model.table, [(reference, answer)])
        (shuffled,) = bmas_batch(model.table, [(list(rng.permutation(answer)), reference)])
        assert 0.0 <= forward <= 1.0
        assert forward == pytest.approx(backward, abs=1e-6)  # symmetric by construction
        assert forward == pytest.approx(shuffled, abs=1e-6)  # a bag-of-tokens measure
        (with_reference,) = bmas_batch(model.table, [(answer + reference, reference)])
        assert with_reference >= forward - 1e-6  # adding the reference's tokens cannot lower recall


def test_scale_of_rows_does_not_matter(model):
    ids = [model.encode("a red bicycle"), model.encode("the blue sky")]
    scaled = model.table.float() * torch.linspace(0.5, 3.0, model.table.shape[0])[:, None]
    assert bmas_batch(scaled, [tuple(ids)]) == pytest.approx(bmas_batch(model.table.float(), [tuple(ids)]), abs=1e-5)


def test_small_chunks_give_the_same_scores(model, monkeypatch):
    import mixed_r1_verl.rewards.bmas as bmas

    rng = np.random.default_rng(2)
    vocab = model.table.shape[0]
    pairs = [(rng.integers(0, vocab, 30).tolist(), rng.integers(0, vocab, 10).tolist()) for _ in range(12)]
    expected = bmas_batch(model.table, pairs)
    monkeypatch.setattr(bmas, "_CHUNK_ELEMENTS", 3 * 40 * model.table.shape[1])
    assert bmas_batch(model.table, pairs) == pytest.approx(expected, abs=1e-6)


HUB_PROBE = """
import json, sys
from mixed_r1_verl.rewards.embeddings import load_embedding_model, load_input_embeddings
out = {}
for repo_id in sys.argv[1:3]:
    model = load_embedding_model(repo_id)
    out[repo_id] = [model.table.float().sum().item(), model.encode("a red bicycle")]
try:
    load_input_embeddings(sys.argv[3])
except Exception as error:
    out["missing"] = f"{type(error).__name__}: {error}"
print(json.dumps(out))
"""


def test_hub_ids_are_read_from_the_hf_cache_offline(tmp_path, tiny_model_dir, model):
    import json
    import os
    import subprocess
    import sys

    from hf_cache import write_hf_cache

    write_hf_cache(tmp_path, "acme/tiny-sharded", tiny_model_dir, sharded=True)
    write_hf_cache(tmp_path, "acme/tiny-single", tiny_model_dir, sharded=False)
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    args = ["acme/tiny-sharded", "acme/tiny-single", "acme/not-in-cache"]
    run = subprocess.run([sys.executable, "-c", HUB_PROBE, *args], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])

    expected = [model.table.float().sum().item(), model.encode("a red bicycle")]
    assert out["acme/tiny-sharded"] == [pytest.approx(expected[0]), expected[1]]
    assert out["acme/tiny-single"] == [pytest.approx(expected[0]), expected[1]]
    assert out["missing"].startswith("EmbeddingModelError: ") and "'acme/not-in-cache'" in out["missing"] and "HF_HUB_OFFLINE on" in out["missing"]
    assert str(tmp_path / "hub") in out["missing"]


@pytest.mark.parametrize("layout", [".bin weights", "verl checkpoint", "verl checkpoint's huggingface"])
def test_a_directory_without_safetensors_says_what_it_holds(tiny_model_dir, tmp_path, layout):
    import shutil

    from safetensors.torch import load_file

    from mixed_r1_verl.rewards.embeddings import EmbeddingModelError

    actor = tmp_path / "actor"
    model_dir = actor if layout == "verl checkpoint" else actor / "huggingface"
    shutil.copytree(tiny_model_dir, actor / "huggingface", ignore=shutil.ignore_patterns("*.safetensors"))
    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    if layout == ".bin weights":
        torch.save(weights, model_dir / "pytorch_model.bin")
        expected = r"has PyTorch \.bin weights only: save the model again with save_pretrained"
    else:
        torch.save(weights, actor / "model_world_size_1_rank_0.pt")
        expected = r"verl checkpoint, whose weights are FSDP shards: export it, .*python -m mixed_r1_verl\.export checkpoint="
    refused = rf"no safetensors weights in {re.escape(str(model_dir))} .*{expected}"
    with pytest.raises(EmbeddingModelError, match=refused):
        load_input_embeddings(model_dir)


def test_a_failed_load_is_remembered_not_retried(tmp_path):
    from mixed_r1_verl.rewards.embeddings import EmbeddingModelError

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(EmbeddingModelError, match="no-such-model.*does not exist") as first:
        load_embedding_model(missing)
    (tmp_path / "no-such-model").mkdir()  # appearing later changes nothing: the failure was remembered
    with pytest.raises(EmbeddingModelError) as second:
        load_embedding_model(missing)
    assert second.value is first.value


def test_a_checkpoints_own_tokenizer_code_does_not_run(tiny_model_dir, tmp_path):
    """A checkpoint may ship code for its tokenizer (`auto_map`); BMAS loads transformers' own class."""
    import json
    import shutil

    from mixed_r1_verl.rewards.embeddings import load_tokenizer

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    ran = tmp_path / "shipped_code_ran"
    (model_dir / "shipped_tokenizer.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    settings = json.loads((model_dir / "tokenizer_config.json").read_text())
    settings["auto_map"] = {"AutoTokenizer": ["shipped_tokenizer.Tokenizer", "shipped_tokenizer.Tokenizer"]}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(settings))
    tokenizer = load_tokenizer(model_dir)
    assert tokenizer("a bicycle")["input_ids"] and not ran.exists()


def test_a_model_named_from_the_home_directory_loads_as_its_directory_does(tiny_model_dir, tmp_path, monkeypatch):
    """`~/model` is read as the directory it names, by the table, the tokenizer and the per-process cache."""
    (tmp_path / "model").symlink_to(tiny_model_dir)
    monkeypatch.setenv("HOME", str(tmp_path))
    from_home = load_embedding_model("~/model")
    assert from_home.encode("a red bike") and torch.equal(from_home.table, load_input_embeddings(tiny_model_dir))
    assert load_embedding_model(str(tmp_path / "model")) is from_home
