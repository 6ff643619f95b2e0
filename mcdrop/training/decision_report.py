"""How a calibrated checkpoint's decisions hold up on held-out data: risk, coverage, conformal sets, novelty.

For a labelled evaluation set (the test split, read once for the final figures):

* **selective prediction** at ``max_risk`` α ∈ {0.02, 0.05, 0.1, 0.2}: the realized error rate among accepted
  predictions beside α (with one binomial standard error, since the guarantee holds with probability 1 − δ, not
  always) and the share accepted;
* **conformal sets** at 80/90/95 % target coverage: the empirical coverage, the mean set size, the empty share;
* **novelty** AUROC of in-domain texts against plot summaries, other languages and word salad
  and shuffled texts (:mod:`mcdrop.training.shifted`), and the share of each above the model's novelty limit;
* the **risk-coverage curve** of the chosen score with the operating points, for the plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcdrop.core.decisions import Calibration, DecisionPolicy
from mcdrop.core.engine import MCEngine, Prediction
from mcdrop.core.novelty import NgramLanguageModel
from mcdrop.training.calibrate import prediction_scores
from mcdrop.training.data import Dataset
from mcdrop.training.metrics import ood_auroc, rounded
from mcdrop.training.shifted import language_shifted, shuffled_text, word_salad

RISK_LEVELS = (0.02, 0.05, 0.1, 0.2)
CONFORMAL_LEVELS = (0.8, 0.9, 0.95)
N_SHIFTED = 500


@dataclass
class RiskCurve:
    """Risk among the ``k`` most certain predictions against coverage ``k / n``, and the calibrated points."""

    coverage: list[float]
    risk: list[float]
    points: list[tuple[float, float, float]] = field(default_factory=list)  # (α, coverage, realized risk)


def _selective(
    calibration: Calibration, scores: list[float], novelty: list[float | None], wrong: list[bool]
) -> dict[str, Any]:
    out = {}
    n = len(scores)
    for alpha in RISK_LEVELS:
        policy = DecisionPolicy(max_risk=alpha)
        decisions = [calibration.decide(s, v, policy) for s, v in zip(scores, novelty, strict=True)]
        accepted = [w for d, w in zip(decisions, wrong, strict=True) if d.action == "accept"]
        risk = sum(accepted) / len(accepted) if accepted else None
        se = math.sqrt(alpha * (1 - alpha) / len(accepted)) if accepted else None
        found = calibration.threshold(alpha)
        out[f"{alpha:g}"] = {
            "threshold": found.threshold,
            "calibration_coverage": rounded(found.coverage, 4),
            "coverage": rounded(len(accepted) / n, 4),
            "risk": None if risk is None else rounded(risk, 4),
            "binomial_se": None if se is None else rounded(se, 4),
            "n_accepted": len(accepted),
            "abstained_novel": sum(d.reason == "novel" for d in decisions),
            "risk_within_alpha_plus_se": risk is None or se is None or risk <= alpha + se,
        }
    return out


def _conformal(calibration: Calibration, mean: np.ndarray[Any, Any], labels: Sequence[int]) -> dict[str, Any]:
    out = {}
    for coverage in CONFORMAL_LEVELS:
        sets = [calibration.prediction_set(row.tolist(), coverage) for row in mean]
        out[f"{coverage:g}"] = {
            "coverage": rounded(float(np.mean([y in s for s, y in zip(sets, labels, strict=True)])), 4),
            "mean_set_size": rounded(float(np.mean([len(s) for s in sets])), 4),
            "empty_share": rounded(float(np.mean([not s for s in sets])), 4),
        }
    return out


def _novelty(
    calibration: Calibration,
    model: NgramLanguageModel,
    engine: MCEngine,
    texts: Sequence[str],
    ood: Sequence[str],
    seed: int,
) -> dict[str, Any]:
    reference = calibration.novelty
    assert reference is not None

    def novelty_of(batch: Sequence[str]) -> np.ndarray[Any, Any]:
        return reference.novelty_many(model.mean_nll_many([engine.encoder.tokens(t) for t in batch]))

    inside = novelty_of(texts)
    sets = {
        "plot_summaries": list(ood),
        "other_languages": language_shifted(N_SHIFTED, seed),
        "word_salad": word_salad(texts, N_SHIFTED, seed),
        "shuffled_text": shuffled_text(texts, N_SHIFTED, seed),
    }
    out: dict[str, Any] = {"in_domain_above_limit": rounded(float(np.mean(inside > calibration.max_novelty)), 4)}
    for name, batch in sets.items():
        if not batch:
            continue
        outside = novelty_of(batch)
        out[name] = {
            "n": len(batch),
            "auroc": rounded(ood_auroc(inside, outside), 4),
            "above_limit": rounded(float(np.mean(outside > calibration.max_novelty)), 4),
        }
    return out


def risk_curve(scores: Sequence[float], wrong: Sequence[bool]) -> RiskCurve:
    order = np.argsort(np.asarray(scores), kind="stable")
    errors = np.asarray(wrong, dtype=np.float64)[order]
    k = np.arange(1, len(order) + 1)
    return RiskCurve((k / len(order)).tolist(), (np.cumsum(errors) / k).tolist())


def decision_report(
    engine: MCEngine, dataset: Dataset, ood_texts: Sequence[str], n_samples: int, seed: int
) -> tuple[dict[str, Any], RiskCurve] | None:
    """The figures in the module docstring, or ``None`` for an engine without calibration."""
    calibration = engine.calibration
    if calibration is None:
        return None
    labels = list(engine.labels)
    predictions: list[Prediction] = engine.predict(dataset.texts, n_samples=n_samples, seed=seed)
    mean = np.array([[p.probs[label] for label in labels] for p in predictions], dtype=np.float64)  # (B, C)
    scores = prediction_scores(calibration.score, predictions, labels)
    wrong = [p.label != labels[y] for p, y in zip(predictions, dataset.labels, strict=True)]
    novelty = [p.novelty for p in predictions]
    report: dict[str, Any] = {
        "score": calibration.score,
        "delta": calibration.delta,
        "n_calibration": calibration.n_calibration,
        "selective": _selective(calibration, scores, novelty, wrong),
        "conformal": _conformal(calibration, mean, dataset.labels),
    }
    if calibration.novelty is not None and engine.novelty_model is not None:
        report["novelty"] = _novelty(calibration, engine.novelty_model, engine, dataset.texts, ood_texts, seed)
    curve = risk_curve(scores, wrong)
    for alpha, row in report["selective"].items():
        if row["risk"] is not None:
            curve.points.append((float(alpha), row["coverage"], row["risk"]))
    return report, curve
