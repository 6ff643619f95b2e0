"""The evaluation report of a checkpoint: deterministic and MC metrics, selective prediction, OOD AUROCs.

``evaluate_engine(engine, dataset, ood_texts, n_samples, seed)`` runs the engine over a labelled data set (and,
when given, an out-of-distribution set) and returns the probabilities with the JSON report that training stores
as ``eval_report.json`` and ``mcdrop eval`` prints.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from mcdrop.core.engine import MCEngine
from mcdrop.core.uncertainty import mutual_information, predictive_entropy
from mcdrop.training.data import Dataset
from mcdrop.training.decision_report import RiskCurve, decision_report
from mcdrop.training.metrics import (
    classification_metrics,
    mc_uncertainties,
    ood_auroc,
    oov_fractions,
    rounded,
    selective_prediction,
)


@dataclass
class EvalResult:
    """Probabilities on the evaluation set and the JSON report built from them."""

    deterministic: Tensor  # (B, C)
    samples: Tensor  # (S, B, C)
    report: dict[str, Any]
    risk_curve: RiskCurve | None = None  # for a calibrated engine

    def summary(self) -> dict[str, Any]:
        """Headline figures (stored in the checkpoint's ``metrics``)."""
        return dict(self.report["summary"])


def _rounded(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: rounded(v, 4) for k, v in metrics.items()}


def _timed_predictions(
    engine: MCEngine, texts: Sequence[str], n_samples: int, seed: int
) -> tuple[Tensor, Tensor, dict[str, float]]:
    start = time.perf_counter()
    deterministic = engine.predict_deterministic(texts)
    middle = time.perf_counter()
    samples = engine.predict_samples(texts, n_samples, seed)
    end = time.perf_counter()
    return deterministic, samples, {"deterministic": rounded(middle - start, 3), "mc": rounded(end - middle, 3)}


def _ood_report(
    engine: MCEngine, in_samples: Tensor, in_oov: Tensor, ood_texts: Sequence[str], n_samples: int, seed: int
) -> dict[str, Any]:
    ood_samples = engine.predict_samples(ood_texts, n_samples, seed)
    encoded = engine.encoder.encode(ood_texts)
    ood_oov = oov_fractions(encoded.n_tokens, encoded.n_known_tokens)
    signals = {
        "entropy": (predictive_entropy(in_samples), predictive_entropy(ood_samples)),
        "mutual_information": (mutual_information(in_samples), mutual_information(ood_samples)),
        "oov_fraction": (in_oov, ood_oov),
    }
    return {
        "n_ood": len(ood_texts),
        "auroc": {name: rounded(ood_auroc(a, b), 4) for name, (a, b) in signals.items()},
        "mean_in_domain": {name: rounded(a.double().mean()) for name, (a, _) in signals.items()},
        "mean_ood": {name: rounded(b.double().mean()) for name, (_, b) in signals.items()},
    }


def evaluate_engine(
    engine: MCEngine, dataset: Dataset, ood_texts: Sequence[str], n_samples: int, seed: int
) -> EvalResult:
    """Deterministic and MC metrics on ``dataset``, selective prediction, and OOD AUROCs when ``ood_texts``."""
    if list(dataset.label_names) != list(engine.labels):
        raise ValueError(f"data labels {list(dataset.label_names)} differ from model labels {engine.labels}")
    deterministic, samples, seconds = _timed_predictions(engine, dataset.texts, n_samples, seed)
    mean = samples.mean(dim=0)
    uncertainty = mc_uncertainties(samples)
    encoded = engine.encoder.encode(dataset.texts)
    oov = oov_fractions(encoded.n_tokens, encoded.n_known_tokens)
    report: dict[str, Any] = {
        "n_examples": len(dataset),
        "n_samples": n_samples,
        "seed": seed,
        "temperature": engine.temperature,
        "deterministic": _rounded(classification_metrics(deterministic, dataset.labels)),
        "mc": _rounded(classification_metrics(mean, dataset.labels)),
        "selective_prediction": {
            name: _rounded(selective_prediction(mean, dataset.labels, score)) for name, score in uncertainty.items()
        },
        "mean_uncertainty": {name: rounded(score.double().mean()) for name, score in uncertainty.items()}
        | {"oov_fraction": rounded(oov.mean())},
        "seconds": seconds,
    }
    if ood_texts:
        report["ood"] = _ood_report(engine, samples, oov, ood_texts, n_samples, seed)
    decided = decision_report(engine, dataset, ood_texts, n_samples, seed)
    if decided is not None:
        report["decisions"] = decided[0]
    report["summary"] = {
        "n_samples": n_samples,
        "deterministic": report["deterministic"],
        "mc": report["mc"],
        **({"ood_auroc": report["ood"]["auroc"]} if ood_texts else {}),
        **({"decisions": _decision_summary(decided[0])} if decided is not None else {}),
    }
    return EvalResult(deterministic, samples, report, None if decided is None else decided[1])


def _decision_summary(decisions: dict[str, Any]) -> dict[str, Any]:
    """Realized risk and coverage at each max_risk, conformal coverage at 0.9, novelty AUROCs."""
    return {
        "selective": {a: {"risk": r["risk"], "coverage": r["coverage"]} for a, r in decisions["selective"].items()},
        "conformal_0.9": decisions["conformal"]["0.9"],
        "novelty_auroc": {k: v["auroc"] for k, v in decisions.get("novelty", {}).items() if isinstance(v, dict)},
    }
