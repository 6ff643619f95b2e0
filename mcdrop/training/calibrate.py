"""Building a checkpoint's calibration: the score, the threshold grid, and the calibration split's evidence.

The split of roles keeps the guarantee honest:

* the **validation** split (already used for early stopping and temperature) chooses the uncertainty score, the
  one whose ranking gives the smallest area under the risk-coverage curve, and fixes the grid of candidate
  thresholds (that score's validation quantiles at 5 %, 6 %, ..., 100 % coverage);
* the **calibration** split, used for nothing else, supplies per-text scores, errors, LAC nonconformity and novelty
  scores; thresholds for any ``max_risk`` are derived from them at load time.

Both run through the engine exactly as serving does (same temperature, default ``n_samples``, one seed), so the
scores are the ones requests will be compared with.

    calibration = build_calibration(engine, splits.validation, splits.calibration, n_samples=50, seed=0)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from mcdrop.core.decisions import DEFAULT_DELTA, DEFAULT_MAX_NOVELTY, SCORES, Calibration, score_values
from mcdrop.core.engine import MCEngine, Prediction
from mcdrop.core.novelty import NgramLanguageModel
from mcdrop.core.risk import quantile_grid
from mcdrop.core.text import TextEncoder
from mcdrop.training.data import Dataset
from mcdrop.training.metrics import rounded, selective_prediction

logger = logging.getLogger(__name__)


def fit_novelty_model(texts: Sequence[str], encoder: TextEncoder) -> NgramLanguageModel:
    """A word bigram model of the training texts, tokenized as the encoder does."""
    return NgramLanguageModel.fit([encoder.tokens(t) for t in texts])


def _means(predictions: Sequence[Prediction], labels: Sequence[str]) -> np.ndarray[Any, Any]:
    return np.array([[p.probs[label] for label in labels] for p in predictions], dtype=np.float64)  # (B, C)


def prediction_scores(name: str, predictions: Sequence[Prediction], labels: Sequence[str]) -> list[float]:
    """The named uncertainty score of each prediction, computed as serving computes it."""
    entropy = [p.entropy for p in predictions]
    mi = [p.mutual_information for p in predictions]
    return score_values(name, _means(predictions, labels), entropy, mi)


def choose_score(predictions: Sequence[Prediction], dataset: Dataset) -> tuple[str, dict[str, float]]:
    """The score with the smallest validation AURC (ties: the first in ``SCORES``), and every score's AURC."""
    labels = list(dataset.label_names)
    mean = _means(predictions, labels)
    aurc = {
        name: rounded(selective_prediction(mean, dataset.labels, prediction_scores(name, predictions, labels))["aurc"])
        for name in SCORES
    }
    best = min(SCORES, key=lambda name: aurc[name])
    logger.info("uncertainty score for decisions: %s (validation AURC %s)", best, aurc)
    return best, aurc


def calibration_evidence(
    engine: MCEngine, dataset: Dataset, score: str, n_samples: int, seed: int
) -> tuple[list[float], list[bool], list[float], list[float] | None]:
    """Per text of ``dataset``: the score, whether the prediction is wrong, ``1 - p̄_y``, and the novelty score."""
    labels = list(engine.labels)
    predictions = engine.predict(dataset.texts, n_samples=n_samples, seed=seed)
    scores = prediction_scores(score, predictions, labels)
    errors = [p.label != labels[y] for p, y in zip(predictions, dataset.labels, strict=True)]
    nonconformity = [1.0 - p.probs[labels[y]] for p, y in zip(predictions, dataset.labels, strict=True)]
    novelty = None
    if engine.novelty_model is not None:
        tokens = [engine.encoder.tokens(t) for t in dataset.texts]
        novelty = [float(v) for v in engine.novelty_model.mean_nll_many(tokens)]
    return scores, errors, nonconformity, novelty


def build_calibration(
    engine: MCEngine,
    validation: Dataset,
    calibration: Dataset,
    n_samples: int,
    seed: int,
    delta: float = DEFAULT_DELTA,
    source: str = "calibration split",
) -> Calibration:
    """Choose the score and grid on ``validation``, then calibrate on ``calibration`` (see the module docstring)."""
    validation_predictions = engine.predict(validation.texts, n_samples=n_samples, seed=seed)
    score, aurc = choose_score(validation_predictions, validation)
    grid = quantile_grid(prediction_scores(score, validation_predictions, list(engine.labels))).tolist()
    return calibrate_with(
        engine, calibration, score, grid, n_samples, seed, delta, DEFAULT_MAX_NOVELTY,
        {"source": source, "score_selection": {"criterion": "validation AURC", "aurc": aurc}},
    )  # fmt: skip


def calibrate_with(
    engine: MCEngine,
    dataset: Dataset,
    score: str,
    grid: Sequence[float] | None,
    n_samples: int,
    seed: int,
    delta: float,
    max_novelty: float,
    info: dict[str, Any],
) -> Calibration:
    """A calibration on ``dataset`` with the score and grid already fixed."""
    scores, errors, nonconformity, novelty = calibration_evidence(engine, dataset, score, n_samples, seed)
    info = {**info, "n_samples": n_samples, "seed": seed, "temperature": engine.temperature}
    result = Calibration(score, scores, errors, nonconformity, grid, novelty, delta, max_novelty, info)
    found = result.threshold(0.1)
    logger.info(
        "calibration on %d texts (%s): at max_risk 0.1 threshold %s, calibration coverage %.3f",
        len(dataset),
        score,
        found.threshold,
        found.coverage,
    )
    return result
