"""``mcdrop compare``: paired per-text NLL differences of two checkpoints, and the bootstrap interval's coverage."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from mcdrop.cli import main
from mcdrop.training.compare import paired_difference

WORDS = {"negative": ["awful", "dull", "boring", "mess"], "positive": ["great", "superb", "fun", "moving"]}
FILLER = ["the", "film", "was", "a", "plot", "and", "acting", "story"]


def _reviews(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = list(WORDS)[i % 2]
            words = rng.sample(FILLER, 4) + rng.sample(WORDS[label], 1)
            rng.shuffle(words)
            writer.writerow([" ".join(words), label])
    return path


def _train(data: Path, out: Path, name: str, *flags: str) -> Path:
    common = ["--log-level", "WARNING", "train", "--data", str(data), "--out", str(out), "--name", name]
    assert main([*common, "--architecture", "mlp", "--embed-dim", "8", "--hidden-dims", "8", *flags]) == 0
    return out / name


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    data = _reviews(root / "reviews.csv", 400, seed=0)
    weak = _train(data, root / "models", "weak", "--epochs", "1", "--lr", "0.001")
    strong = _train(data, root / "models", "strong", "--epochs", "12", "--lr", "0.02")
    return data, weak, strong


def _rows(capsys: pytest.CaptureFixture[str]) -> list[dict[str, float | str | int]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_checkpoint_against_itself_differs_by_nothing(
    checkpoints: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, weak, _ = checkpoints
    assert main(["compare", str(weak), str(weak), "--resamples", "200"]) == 0
    rows = _rows(capsys)
    assert [r["set"] for r in rows] == ["validation", "rare_vocabulary", "typos"]  # the test split only if asked
    for row in rows:
        assert row["nll_difference_mean"] == row["nll_difference_low"] == row["nll_difference_high"] == 0.0
        assert row["accuracy_before"] == row["accuracy_after"]


def test_a_better_checkpoint_shows_a_negative_difference_on_every_set(
    checkpoints: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, weak, strong = checkpoints
    assert main(["compare", str(weak), str(strong), "--test", "--resamples", "500"]) == 0
    rows = _rows(capsys)
    assert [r["set"] for r in rows] == ["validation", "rare_vocabulary", "typos", "test"]
    for row in rows:
        low, mean, high = (float(row[f"nll_difference_{k}"]) for k in ("low", "mean", "high"))
        assert low <= mean <= high < 0  # one epoch at a tiny learning rate barely leaves chance
        assert mean == pytest.approx(float(row["nll_after"]) - float(row["nll_before"]), abs=2e-4)
    assert main(["compare", str(weak), str(strong), "--data", str(data), "--resamples", "200"]) == 0
    (whole,) = _rows(capsys)
    assert whole["set"] == "data" and whole["texts"] == 400


def test_bad_requests_are_one_line_errors(
    checkpoints: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, weak, strong = checkpoints
    assert main(["compare", str(weak), str(strong), "--resamples", "10"]) == 2
    assert "--resamples must be at least 100 (got 10)" in capsys.readouterr().err
    other = _train(_reviews(tmp_path / "other.csv", 80, seed=1), tmp_path / "models", "other", "--epochs", "1")
    assert main(["compare", str(weak), str(other)]) == 2
    assert "were not trained on the same split" in capsys.readouterr().err
    assert main(["compare", str(weak), str(other), "--data", str(data), "--resamples", "100"]) == 0  # a file: fine


def test_the_bootstrap_interval_covers_the_true_mean_difference_about_95_percent_of_the_time() -> None:
    """Simulation: paired differences of skewed, NLL-like values with a known mean shift."""
    rng = np.random.default_rng(0)
    trials, n, shift = 300, 200, 0.02
    covered = 0
    for trial in range(trials):
        before = rng.exponential(0.45, n)
        after = before + shift + rng.normal(0, 0.1, n)
        interval = paired_difference(before, after, resamples=400, seed=trial)
        covered += interval["low"] <= shift <= interval["high"]
    assert 0.91 <= covered / trials <= 0.99  # 95 % nominal (0.93 measured); one binomial SE at 300 trials is 0.013
    constant = paired_difference(np.zeros(50), np.full(50, 0.3), resamples=100, seed=0)
    assert constant["mean"] == pytest.approx(0.3) and constant["low"] == pytest.approx(0.3)
