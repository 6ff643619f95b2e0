"""A stand-in for distribution shift that training can see: validation texts made less like the training corpus.

Users send text from their own domain, which no split of one corpus contains. Two shifts built from the validation
split (never the test split) stand in for it, so changes can be chosen for how they hold up off the home turf
without looking at any data from another domain:

* ``rare_vocabulary``: the third of the validation texts whose words are rarest in the training split (the share of
  tokens seen fewer than ``RARE_COUNT`` times): what a model meets when another domain's words dominate;
* ``typos``: every validation text with a share of its words misspelt (a swap, a deletion, a doubled or a
  substituted letter, seeded): the surface noise of user-written reviews, which also turns known words into unseen
  ones.

Both keep the labels, so accuracy, NLL and ECE are measured there as on the split itself.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from mcdrop.core.text import tokenize
from mcdrop.training.data import Dataset
from mcdrop.training.metrics import classification_metrics, rounded

RARE_COUNT = 3
RARE_SHARE = 1 / 3
TYPO_RATE = 0.2
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def rare_vocabulary(dataset: Dataset, train_texts: Sequence[str], share: float = RARE_SHARE) -> Dataset:
    """The ``share`` of ``dataset`` with the most tokens seen fewer than ``RARE_COUNT`` times in ``train_texts``."""
    counts = Counter(t for text in train_texts for t in tokenize(text))

    def rarity(i: int) -> float:
        tokens = tokenize(dataset.texts[i])
        return sum(counts[t] < RARE_COUNT for t in tokens) / len(tokens) if tokens else 0.0

    order = sorted(range(len(dataset)), key=lambda i: (-rarity(i), i))
    return dataset.subset(sorted(order[: max(1, round(share * len(dataset)))]))


def misspell(word: str, rng: random.Random) -> str:
    """``word`` with one edit: adjacent letters swapped, one deleted, doubled or replaced."""
    i = rng.randrange(len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[: i + 1] + word[i] + word[i + 1 :]
    return word[:i] + rng.choice(_LETTERS) + word[i + 1 :]


def with_typos(dataset: Dataset, rate: float = TYPO_RATE, seed: int = 0) -> Dataset:
    """``dataset`` with each alphabetic word of 4+ letters misspelt with probability ``rate`` (seeded)."""
    rng = random.Random(seed)
    texts = [
        " ".join(misspell(w, rng) if len(w) >= 4 and w.isalpha() and rng.random() < rate else w for w in text.split())
        for text in dataset.texts
    ]
    return Dataset(texts, list(dataset.labels), dataset.label_names)


def standin_sets(validation: Dataset, train_texts: Sequence[str], seed: int = 0) -> dict[str, Dataset]:
    """The validation split and its two shifted versions, by name."""
    return {
        "validation": validation,
        "rare_vocabulary": rare_vocabulary(validation, train_texts),
        "typos": with_typos(validation, seed=seed),
    }


def shift_report(predict: Callable[[list[str]], Tensor], sets: dict[str, Dataset]) -> dict[str, Any]:
    """Accuracy, NLL, Brier and ECE of ``predict`` (texts → probabilities ``(B, C)``) on every set."""
    report: dict[str, Any] = {}
    for name, dataset in sets.items():
        metrics = classification_metrics(predict(list(dataset.texts)), dataset.labels)
        report[name] = {"n": len(dataset)} | {k: rounded(v, 4) for k, v in metrics.items()}
    return report
