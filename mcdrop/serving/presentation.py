"""What the service says about predictions and models: the JSON shapes of ``/v1`` and ``mcdrop predict``.

The engine returns data at the precision it computed (:class:`~mcdrop.core.engine.Prediction`); this module
presents it. Floats are rounded to 7 significant digits: the model computes in float32, so digits past that are
rounding noise, and rounding also hides most of the last-digit differences another batch shape can cause in BLAS
(not all: a value next to a rounding boundary may still differ in its last digit).
"""

from __future__ import annotations

from typing import Any

from mcdrop.core.decisions import Decision
from mcdrop.core.engine import MCEngine, Prediction

PredictionDict = dict[str, Any]


def _round(value: float) -> float:
    return float(f"{value:.7g}")


def _round_all(values: dict[str, float]) -> dict[str, float]:
    return {label: float(f"{v:.7g}") for label, v in values.items()}


def _maybe_round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.7g}")


def decision_dict(decision: Decision) -> dict[str, Any]:
    """The ``decision`` object of a prediction (``DecisionOut`` in the OpenAPI schema)."""
    return {
        "action": decision.action,
        "reason": decision.reason,
        "max_risk": decision.max_risk,
        "score": _round(decision.score),
        "threshold": _maybe_round(decision.threshold),
        "max_novelty": decision.max_novelty,
        "detail": decision.detail,
    }


def prediction_dict(prediction: Prediction) -> PredictionDict:
    """The JSON fields of one prediction (``PredictionOut`` in the OpenAPI schema)."""
    return {
        "label": prediction.label,
        "probs": _round_all(prediction.probs),
        "variance": _round_all(prediction.variance),
        "entropy": _round(prediction.entropy),
        "expected_entropy": _round(prediction.expected_entropy),
        "mutual_information": _round(prediction.mutual_information),
        "variation_ratio": _round(prediction.variation_ratio),
        "std_error": _round_all(prediction.std_error),
        "oov_fraction": prediction.oov_fraction,
        "n_tokens": prediction.n_tokens,
        "n_known_tokens": prediction.n_known_tokens,
        "n_samples_used": prediction.n_samples_used,
        "novelty": _maybe_round(prediction.novelty),
        "prediction_set": prediction.prediction_set,
        "decision": None if prediction.decision is None else decision_dict(prediction.decision),
    }


def model_description(engine: MCEngine) -> dict[str, Any]:
    """Public description of a loaded model for ``/v1/models`` (``ModelSummary`` without the serving fields)."""
    config = engine.config
    return {
        "name": engine.name,
        "version": engine.version,
        "architecture": config["architecture"],
        "dropout_placement": config.get("dropout_placement"),
        "ensemble_size": int(config.get("ensemble_size", 1)),
        "labels": engine.labels,
        "default_n_samples": engine.default_n_samples,
        "device": str(engine.device),
        "vocabulary_size": len(engine.encoder.vocab),
        "metrics": config.get("metrics", {}),
        "uncertainty_baseline": config.get("uncertainty_baseline", {}),
        "calibration": None if engine.calibration is None else engine.calibration.summary(),
    }
