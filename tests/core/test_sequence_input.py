"""Sequence batches with subwords: words padded by row, each step's subwords as one bag."""

from __future__ import annotations

import random

import torch

from mcdrop.core.sequence_input import padded, with_pieces


def _bags(batch_pieces: torch.Tensor, offsets: torch.Tensor, shape: torch.Size) -> list[list[list[int]]]:
    ends = torch.cat([offsets[1:], torch.tensor([batch_pieces.numel()])])
    bags = [batch_pieces[a:b].tolist() for a, b in zip(offsets.tolist(), ends.tolist(), strict=True)]
    return [bags[r * shape[1] : (r + 1) * shape[1]] for r in range(shape[0])]


def test_rows_regroup_into_words_and_their_pieces() -> None:
    n_words = 10
    ids = [[2, 11, 12, 3, 4, 13], [], [5], [14, 6, 15]]  # the last row's leading subword belongs to no word
    batch = with_pieces(ids, n_words)
    assert batch.ids.tolist() == [[2, 3, 4], [0, 0, 0], [5, 0, 0], [6, 0, 0]]
    assert batch.lengths is not None and batch.lengths.tolist() == [3, 1, 1, 1]
    assert batch.pieces is not None and batch.piece_offsets is not None
    assert _bags(batch.pieces, batch.piece_offsets, batch.ids.shape) == [
        [[11, 12], [], [13]],
        [[], [], []],
        [[], [], []],
        [[15], [], []],
    ]
    assert with_pieces([], n_words).ids.shape == (0, 1)
    none = with_pieces([[12, 13]], n_words)  # subwords and no word: one empty step
    assert none.ids.tolist() == [[0]] and none.pieces is not None and none.pieces.numel() == 0


def test_it_agrees_with_a_plain_loop_on_random_rows() -> None:
    rng = random.Random(0)
    n_words = 50
    ids = [[rng.randrange(2, 200) for _ in range(rng.randrange(0, 40))] for _ in range(30)]
    batch = with_pieces(ids, n_words)
    words = [[i for i in row if i < n_words] for row in ids]
    assert torch.equal(batch.ids, padded(words).ids)
    assert batch.pieces is not None and batch.piece_offsets is not None
    bags = _bags(batch.pieces, batch.piece_offsets, batch.ids.shape)
    for row, row_bags in zip(ids, bags, strict=True):
        expected: list[list[int]] = []
        for i in row:
            if i < n_words:
                expected.append([])
            elif expected:
                expected[-1].append(i)
        assert row_bags[: len(expected)] == expected and not any(row_bags[len(expected) :])


def test_padded_rows_keep_their_ids_and_length_at_least_one() -> None:
    batch = padded([[3, 4, 5], [], [6]])
    assert batch.ids.tolist() == [[3, 4, 5], [0, 0, 0], [6, 0, 0]]
    assert batch.lengths is not None and batch.lengths.tolist() == [3, 1, 1]
    assert padded([]).ids.shape == (0, 1)
    big = [[7] * 300, [8] * 2]
    assert padded(big).ids.sum().item() == 7 * 300 + 8 * 2 and padded(big).ids.shape == (2, 300)
