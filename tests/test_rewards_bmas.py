import numpy as np
import pytest
import torch

from mixed_r1_verl.rewards import bmas_batch, bmas_from_similarity, load_embedding_model
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


def test_tokenises_without_special_tokens(model):
    ids = model.encode("<answer> B </answer>")
    assert ids == model.tokenizer("<answer> B </answer>", add_special_tokens=False)["input_ids"]
    assert model.tokenizer.convert_tokens_to_ids("<|im_start|>") not in ids


def test_identical_text_scores_one(model):
    ids = model.encode("A man is riding a red bicycle on a sunny street.")
    assert bmas_batch(model.table, [(ids, ids)]) == [1.0]


def test_empty_sides_score_zero(model):
    ids = model.encode("a red bicycle")
    assert bmas_batch(model.table, [([], ids), (ids, []), ([], [])]) == [0.0, 0.0, 0.0]


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
