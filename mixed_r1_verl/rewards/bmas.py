"""BMAS: Bidirectional Max-Average Similarity between an answer and a reference.

With S[i, j] the cosine similarity between the input embeddings of answer token i and reference
token j: P = mean_i max_j S[i, j], R = mean_j max_i S[i, j], BMAS = (P + R) / 2 clamped to [0, 1].
The paper does not publish its exact formula; this definition (input embeddings of the embedding
model, tokens without special tokens, clamped mean of both directions) is ours.

Two exact shortcuts make it cheap: both means only depend on the distinct token ids (weighted by
their counts), and a token present on both sides has a maximum of exactly 1 (cos <= 1), which also
makes identical texts score exactly 1 whatever the matmul precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Gathered embeddings per chunk stay under this many elements (256 Mi elements = 512 MB in bf16).
_CHUNK_ELEMENTS = 256 * 1024 * 1024


@dataclass(frozen=True)
class _Side:
    ids: np.ndarray  # distinct token ids
    counts: np.ndarray  # how often each id occurs
    shared: np.ndarray  # bool: the id also occurs on the other side


def _sides(answer_ids: Sequence[int], reference_ids: Sequence[int]) -> tuple[_Side, _Side]:
    answer_unique, answer_counts = np.unique(np.asarray(answer_ids, dtype=np.int64), return_counts=True)
    reference_unique, reference_counts = np.unique(np.asarray(reference_ids, dtype=np.int64), return_counts=True)
    return (
        _Side(answer_unique, answer_counts, np.isin(answer_unique, reference_unique)),
        _Side(reference_unique, reference_counts, np.isin(reference_unique, answer_unique)),
    )


def bmas_from_similarity(similarity: torch.Tensor) -> float:
    """BMAS from a full [answer_tokens, reference_tokens] cosine matrix (the definition, unbatched)."""
    if similarity.numel() == 0:
        return 0.0
    precision = similarity.max(dim=1).values.mean()
    recall = similarity.max(dim=0).values.mean()
    return float(((precision + recall) / 2).clamp(0.0, 1.0))


def _check_rows(sides: list[_Side], rows: int) -> None:
    """Every id must be a row of the table: torch would wrap a negative one and fail on the GPU
    (a device-side assert) on one beyond the table."""
    for side in sides:
        if len(side.ids) and (side.ids[0] < 0 or side.ids[-1] >= rows):  # ids are sorted
            bad = side.ids[0] if side.ids[0] < 0 else side.ids[-1]
            raise ValueError(
                f"token id {bad} is not a row of the BMAS embedding table ({rows} rows): the ids must come from "
                "the tokenizer of the model whose table this is"
            )


def _padded(sides: list[_Side], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(side.ids) for side in sides)
    ids = np.zeros((len(sides), length), dtype=np.int64)
    counts = np.zeros((len(sides), length), dtype=np.float32)  # whole numbers: exact in float32 below 2**24
    shared = np.zeros((len(sides), length), dtype=bool)
    valid = np.zeros((len(sides), length), dtype=bool)
    for row, side in enumerate(sides):
        count = len(side.ids)
        ids[row, :count], counts[row, :count], shared[row, :count], valid[row, :count] = (
            side.ids,
            side.counts,
            side.shared,
            True,
        )
    as_tensor = lambda array: torch.from_numpy(array).to(device, non_blocking=True)  # noqa: E731
    return as_tensor(ids), as_tensor(counts), as_tensor(shared), as_tensor(valid)


def row_norms(table: torch.Tensor, rows_per_step: int = 16384) -> torch.Tensor:
    """L2 norm of every row of `table` (float32), computed in slices to bound the memory it takes.
    Compute it once per table and pass it to `bmas_batch`."""
    return torch.cat(
        [table[start : start + rows_per_step].float().norm(dim=-1) for start in range(0, table.shape[0], rows_per_step)]
    ).clamp_min(1e-12)


def _directional_mean(similarity: torch.Tensor, counts, shared, valid, other_valid, dim: int) -> torch.Tensor:
    """The count-weighted mean of each token's best similarity. Weighted by counts and divided by their sum
    last: with every best exactly 1 (identical texts) the sums are equal whole numbers, and the mean is 1
    exactly, where fractions of the token count would add up to 1 only within float32's rounding."""
    masked = similarity.masked_fill(~other_valid, float("-inf"))
    best = masked.max(dim=dim).values.clamp(max=1.0)
    best = torch.where(shared, torch.ones_like(best), best)
    best = torch.where(valid, best, torch.zeros_like(best))
    return (best * counts).sum(dim=-1) / counts.sum(dim=-1)


def _score_chunk(table, norms, answers: list[_Side], references: list[_Side], compute_dtype) -> torch.Tensor:
    device = table.device
    a_ids, a_counts, a_shared, a_valid = _padded(answers, device)
    r_ids, r_counts, r_shared, r_valid = _padded(references, device)
    # Raw dot products scaled by the row norms afterwards: normalising the gathered rows would cost
    # more than the matmul itself.
    dots = torch.bmm(table[a_ids].to(compute_dtype), table[r_ids].to(compute_dtype).transpose(1, 2)).float()
    similarity = dots / (norms[a_ids][:, :, None] * norms[r_ids][:, None, :])
    precision = _directional_mean(similarity, a_counts, a_shared, a_valid, r_valid[:, None, :], dim=2)
    recall = _directional_mean(similarity, r_counts, r_shared, r_valid, a_valid[:, :, None], dim=1)
    return ((precision + recall) / 2).clamp(0.0, 1.0)


def _chunks(ordered: list[int], prepared: dict, dim: int):
    """Consecutive groups whose gathered embeddings stay under the chunk budget."""
    chunk: list[int] = []
    widest_answer = widest_reference = 0
    for index in ordered:
        answer, reference = prepared[index]
        answer_width = max(widest_answer, len(answer.ids))
        reference_width = max(widest_reference, len(reference.ids))
        if chunk and (len(chunk) + 1) * (answer_width + reference_width) * dim > _CHUNK_ELEMENTS:
            yield chunk
            chunk, answer_width, reference_width = [], len(answer.ids), len(reference.ids)
        chunk.append(index)
        widest_answer, widest_reference = answer_width, reference_width
    if chunk:
        yield chunk


def bmas_batch(
    table: torch.Tensor,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    norms: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> list[float]:
    """BMAS of each (answer_ids, reference_ids) pair with the embedding rows of `table` [vocab, dim],
    computed on `table`'s device; `norms` = `row_norms(table)` (computed here if not given). An empty
    answer or reference scores 0. An id outside the table raises ValueError."""
    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if table.dtype == torch.bfloat16 else torch.float32
    scores = [0.0] * len(pairs)
    if not pairs:
        return scores
    if norms is None:
        norms = row_norms(table)
    live = [index for index, (answer, reference) in enumerate(pairs) if len(answer) and len(reference)]
    prepared = {index: _sides(*pairs[index]) for index in live}
    _check_rows([side for sides in prepared.values() for side in sides], table.shape[0])
    # Similar sizes together keep padding small.
    live.sort(key=lambda index: len(prepared[index][0].ids))
    for chunk in _chunks(live, prepared, table.shape[1]):
        values = _score_chunk(
            table, norms, [prepared[i][0] for i in chunk], [prepared[i][1] for i in chunk], compute_dtype
        ).tolist()
        for index, value in zip(chunk, values):
            scores[index] = value
    return scores
