"""The stand-in shift sets built from the validation split: rare vocabulary and typos."""

from __future__ import annotations

import difflib
import random

import torch

from mcdrop.training.data import Dataset
from mcdrop.training.shift_check import misspell, rare_vocabulary, shift_report, standin_sets, with_typos

LABELS = ("negative", "positive")


def test_rare_vocabulary_keeps_the_texts_whose_words_training_barely_saw() -> None:
    train = ["good film", "good film", "good film", "bad film", "bad film", "bad film"]
    data = Dataset(["good film", "zany quirky romp", "bad zany film", "film"], [1, 1, 0, 0], LABELS)
    rare = rare_vocabulary(data, train, share=0.5)
    assert rare.texts == ["zany quirky romp", "bad zany film"] and rare.labels == [1, 0]


def test_typos_are_seeded_keep_labels_and_spare_short_words() -> None:
    data = Dataset(["an utterly wonderful performance", "it is a dull and tedious mess"], [1, 0], LABELS)
    first, second = with_typos(data, rate=1.0, seed=3), with_typos(data, rate=1.0, seed=3)
    assert first == second and first.labels == data.labels
    assert first.texts != data.texts
    for before, after in zip(data.texts, first.texts, strict=True):
        for old, new in zip(before.split(), after.split(), strict=True):
            assert (old == new) == (len(old) < 4)
    assert with_typos(data, rate=0.0).texts == data.texts


def test_misspell_makes_one_small_edit() -> None:
    rng = random.Random(0)
    words = [misspell("wonderful", rng) for _ in range(200)]
    for word in words:
        assert abs(len(word) - len("wonderful")) <= 1
        assert difflib.SequenceMatcher(None, word, "wonderful").ratio() >= 0.8
    assert len(set(words)) > 20  # swaps, deletions, doubled and replaced letters at many positions


def test_shift_report_measures_every_set() -> None:
    data = Dataset(["good", "bad", "good film", "bad film"], [1, 0, 1, 0], LABELS)
    sets = standin_sets(data, ["good", "bad"])
    assert set(sets) == {"validation", "rare_vocabulary", "typos"}

    def perfect(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[0.1, 0.9] if "good" in t else [0.9, 0.1] for t in texts])

    report = shift_report(perfect, {"validation": data})
    assert report["validation"]["n"] == 4 and report["validation"]["accuracy"] == 1.0
