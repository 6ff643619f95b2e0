"""The shipped models' recipe: the TF-IDF + logistic-regression reference and the comparison table."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mcdrop.training.data import Dataset, DataSplits
from mcdrop.training.recipe import MAX_MC_ECE, beats_baseline, format_shift_table, format_table, tfidf_baseline

LABELS = ("negative", "positive")
GOOD = ["wonderful", "moving", "brilliant", "great", "touching"]
BAD = ["boring", "dull", "awful", "tedious", "clumsy"]
FILLER = ["film", "plot", "story", "cast", "the", "a", "really", "and"]


def _dataset(n: int, rng: random.Random, noise: float = 0.1) -> Dataset:
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(2)
        words = GOOD if label == 1 else BAD
        if rng.random() < noise:  # a mislabelled text keeps the problem from being separable
            words = BAD if label == 1 else GOOD
        texts.append(" ".join(rng.sample(words, 2) + rng.sample(FILLER, 3)))
        labels.append(label)
    return Dataset(texts, labels, LABELS)


@pytest.fixture(scope="module")
def splits() -> DataSplits:
    rng = random.Random(0)
    return DataSplits(_dataset(300, rng), _dataset(100, rng), _dataset(200, rng))


def test_tfidf_baseline_learns_the_words_and_picks_c_on_validation(splits: DataSplits) -> None:
    result = tfidf_baseline(splits, c_values=(0.5, 4.0))
    assert result["c"] in (0.5, 4.0)
    assert result["features"] > len(GOOD + BAD + FILLER)  # bigrams seen at least twice join the unigrams
    test = result["test"]
    assert 0.8 <= test["accuracy"] <= 1.0  # about 10% of the texts carry the other label's words
    assert 0.0 < test["nll"] < 0.6
    other_c = tfidf_baseline(splits, c_values=(0.5,) if result["c"] == 4.0 else (4.0,))
    assert result["validation"]["nll"] <= other_c["validation"]["nll"]


def _row(name: str, accuracy: float, nll: float, ece: float) -> dict[str, Any]:
    mc = {"accuracy": accuracy, "nll": nll, "brier": 0.3, "ece": ece}
    return {
        "model": name,
        "placement": "after_embedding",
        "det": mc,
        "mc": mc,
        "ood": {"entropy": 0.7, "mutual_information": 0.6, "oov_fraction": 0.75},
        "train_seconds": 12.0,
        "mc_seconds": 0.5,
        "n_samples": 50,
        "size_mb": 7.9,
    }


def test_format_table_and_the_verdict() -> None:
    baseline = {"c": 4.0, "test": {"accuracy": 0.78, "nll": 0.46, "brier": 0.3, "ece": 0.02}}
    better, worse, miscalibrated = _row("a", 0.80, 0.45, 0.015), _row("b", 0.77, 0.47, 0.02), _row("c", 0.8, 0.4, 0.05)
    less_calibrated = _row("d", 0.80, 0.45, 0.025)  # within 0.03, but above the reference's ECE
    table = format_table(baseline, [better, worse]).splitlines()
    assert table[0].startswith("| model | placement | acc det/MC | NLL det/MC |")
    assert table[1] == "|" + "---|" * 10
    assert table[2].startswith("| tfidf+logreg (C=4.0) | - | 0.7800 | 0.4600 |")
    assert table[3].startswith("| a | after_embedding | 0.8000 / 0.8000 | 0.4500 / 0.4500 |")
    assert "| 0.700 / 0.600 / 0.750 | 12 | 0.50 (50) | 7.9 |" in table[3]
    assert len(table) == 4 + 1
    assert beats_baseline(better, baseline)
    assert not beats_baseline(worse, baseline)
    assert miscalibrated["mc"]["ece"] > MAX_MC_ECE and not beats_baseline(miscalibrated, baseline)
    assert not beats_baseline(less_calibrated, baseline)


def test_the_stand_in_shift_table_lists_every_set_for_every_model() -> None:
    figures = {"accuracy": 0.8, "nll": 0.45, "ece": 0.02}
    shift = {"validation": figures, "rare_vocabulary": figures, "typos": figures}
    table = format_shift_table({"standin_shift": shift}, {"rt-mlp": shift}).splitlines()
    assert table[0] == (
        "| model | validation acc / NLL / ECE | rare_vocabulary acc / NLL / ECE | typos acc / NLL / ECE |"
    )
    assert table[2].startswith("| tfidf+logreg | 0.8000 / 0.4500 / 0.0200 |")
    assert table[3].startswith("| rt-mlp | ") and len(table) == 4
