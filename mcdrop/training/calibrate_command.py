"""``mcdrop calibrate``: recalibrate a checkpoint on a labelled sample of your own traffic, without retraining.

    mcdrop calibrate models/rt-mlp --data my_traffic.csv --text-column review --label-column sentiment \\
        --out models/rt-mlp-mine

The guarantees of a decision hold for inputs like the calibration data. When your inputs differ from the data a
model was trained on, calibrate it on a labelled sample of them (at least 200 texts; a few thousand give tighter
thresholds). By default the rows are shuffled (``--seed``) and split: a quarter refits the temperature, chooses the
uncertainty score and fixes the threshold grid (the role the validation split plays in training); the rest is the
calibration set (thresholds, conformal scores, novelty quantiles). ``--keep-temperature`` keeps the checkpoint's
temperature, score and grid and calibrates on every row; on the checkpoint's own calibration split it reproduces
the shipped thresholds. The weights, the vocabulary and the novelty model are copied unchanged; the new
checkpoint's version says it was recalibrated and on what.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
from pathlib import Path

from mcdrop.core.checkpoint import save_checkpoint
from mcdrop.core.decisions import DEFAULT_DELTA, DEFAULT_MAX_NOVELTY, SCORES
from mcdrop.core.engine import MCEngine, load_engine
from mcdrop.core.errors import ConfigError, DatasetError
from mcdrop.core.risk import quantile_grid
from mcdrop.training.calibrate import calibrate_with, choose_score, prediction_scores
from mcdrop.training.calibration import fit_temperature
from mcdrop.training.data import Dataset, read_labelled_file

logger = logging.getLogger(__name__)

MIN_ROWS = 200
TUNING_SHARE = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mcdrop calibrate``."""
    parser.add_argument("checkpoint", help="checkpoint directory to recalibrate (e.g. models/rt-mlp)")
    parser.add_argument("--data", required=True, help="labelled CSV, TSV or JSONL file of your own traffic")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label", help="labels must be the model's (see /v1/models)")
    parser.add_argument("--out", required=True, help="directory of the recalibrated checkpoint (a new one)")
    parser.add_argument("--keep-temperature", action="store_true", help="keep temperature, score and grid")
    parser.add_argument("--delta", type=float, default=None, help="1 - confidence of the guarantee (default 0.1)")
    parser.add_argument("--n-samples", type=int, default=None, help="MC samples (default: as the calibration was)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the masks and the shuffle (default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def _settings(args: argparse.Namespace, engine: MCEngine) -> tuple[int, int, float]:
    info = engine.calibration.info if engine.calibration is not None else {}
    n_samples = args.n_samples or int(info.get("n_samples", engine.default_n_samples))
    seed = int(info.get("seed", 0)) if args.seed is None else args.seed
    default_delta = engine.calibration.delta if engine.calibration is not None else DEFAULT_DELTA
    delta = default_delta if args.delta is None else args.delta
    if n_samples < 1:
        raise ConfigError(f"--n-samples must be at least 1 (got {n_samples})")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"--delta must be in (0, 1) (got {delta})")
    return n_samples, seed, delta


def _read(args: argparse.Namespace, labels: list[str]) -> Dataset:
    dataset = read_labelled_file(args.data, args.text_column, args.label_column, labels)
    if len(dataset) < MIN_ROWS:
        raise DatasetError(
            f"{args.data}: {len(dataset)} labelled rows; calibration needs at least {MIN_ROWS} (more give tighter "
            "thresholds)"
        )
    return dataset


def _tune(engine: MCEngine, tuning: Dataset, n_samples: int, seed: int) -> tuple[str, list[float], float]:
    """Temperature, score and grid from the tuning part (as training does on its validation split)."""
    samples = engine.predict_samples(tuning.texts, n_samples, seed)
    temperature, before, after = fit_temperature(samples, tuning.labels)
    engine.temperature = round(temperature, 4) if after < before - 1e-4 else engine.temperature
    predictions = engine.predict(tuning.texts, n_samples=n_samples, seed=seed)
    score, _ = choose_score(predictions, tuning)
    grid = quantile_grid(prediction_scores(score, predictions, list(engine.labels))).tolist()
    return score, grid, engine.temperature


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mcdrop calibrate``: writes the checkpoint and prints its calibration summary."""
    source, out = Path(args.checkpoint), Path(args.out)
    if out.resolve() == source.resolve():
        raise ConfigError("--out must be a new directory: the checkpoint being recalibrated stays as it is")
    engine = load_engine(str(source), device=args.device, max_batch_rows=8192)
    dataset = _read(args, list(engine.labels))
    n_samples, seed, delta = _settings(args, engine)
    old = engine.calibration
    if args.keep_temperature:
        score = old.score if old is not None else "entropy"
        grid, calibration_part, how = (old.grid if old is not None else None), dataset, "kept"
    else:
        order = list(range(len(dataset)))
        random.Random(seed).shuffle(order)
        n_tuning = round(TUNING_SHARE * len(order))
        score, grid, _ = _tune(engine, dataset.subset(order[:n_tuning]), n_samples, seed)
        calibration_part, how = dataset.subset(order[n_tuning:]), "refit"
    assert score in SCORES
    digest = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()[:12]
    calibration = calibrate_with(
        engine, calibration_part, score, grid, n_samples, seed, delta,
        old.max_novelty if old is not None else DEFAULT_MAX_NOVELTY,
        {"source": f"{args.data} ({len(calibration_part)} of {len(dataset)} rows; sha256 {digest})",
         "temperature_fit": how},
    )  # fmt: skip
    checkpoint = engine.checkpoint
    config = {**checkpoint.config, "temperature": engine.temperature, "version": f"{engine.version}+cal.{digest}"}
    config["recalibrated"] = {"from": str(source), "data": str(args.data), "rows": len(dataset), "temperature": how}
    checkpoint.model.to("cpu")
    save_checkpoint(out, checkpoint.model, checkpoint.encoder, config, calibration, engine.novelty_model)
    print(json.dumps({"checkpoint": str(out), "version": config["version"], **calibration.summary()}, indent=2))
    return 0
