"""What to do with a prediction: accept or abstain with a stated guarantee, a conformal set, and novelty.

A checkpoint's ``calibration.json`` holds what a held-out calibration split (used for nothing else) said about
the model: each calibration text's uncertainty score and whether the prediction was wrong, the LAC nonconformity
``1 - p̄_y`` of its true label, and its novelty score (mean negative log-likelihood per token under the
checkpoint's word bigram model, ``novelty.json``). From these, :class:`Calibration` derives at load time, for any
level a request asks for:

* **a risk-controlling threshold** (:mod:`mcdrop.core.risk`, Learn-then-Test): with ``max_risk`` α the prediction
  is accepted when its score is at most λ(α), chosen so that with probability ≥ 1 − δ over the calibration draw the
  error rate among accepted predictions is ≤ α, *for inputs exchangeable with the calibration split*;
* **a conformal prediction set** at ``coverage`` 1 − α_c (LAC): the labels whose ``1 - p̄`` is within the
  calibrated quantile; it holds the true label with probability ≥ 1 − α_c, under the same assumption;
* **novelty** ∈ [0, 1]: the share of calibration texts that are less surprising than this one.

Neither guarantee says anything about inputs unlike the calibration data: a text from another language or domain
is exactly where the uncertainty scores can be confidently wrong. So the decision checks novelty first: above
``max_novelty`` (default 0.99) the prediction abstains as ``novel`` whatever its score.

    calibration = Calibration.from_json(json.loads(Path("models/rt-mlp/calibration.json").read_text()))
    decision = calibration.decide(score=0.21, novelty=0.4, policy=DecisionPolicy(max_risk=0.1))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mcdrop.core.errors import CheckpointError
from mcdrop.core.novelty import NoveltyCalibration
from mcdrop.core.risk import ConformalCalibrator, RiskController, RiskThreshold

FORMAT = "mcdrop-calibration/1"
DEFAULT_DELTA = 0.1
DEFAULT_COVERAGE = 0.9
DEFAULT_MAX_NOVELTY = 0.99
MAX_RISK_RANGE = (0.01, 0.5)
COVERAGE_RANGE = (0.5, 0.99)
SUMMARY_RISKS = (0.05, 0.1, 0.2)
CONFORMAL_METHOD = "LAC"

Action = Literal["accept", "abstain"]
Reason = Literal["uncertain", "novel"]

# Uncertainty scores a calibration may rank by: (mean probabilities (C,), entropy, mutual information) -> score.
SCORES: dict[str, Callable[[Sequence[float], float, float], float]] = {
    "entropy": lambda mean, entropy, mi: entropy,
    "one_minus_max_prob": lambda mean, entropy, mi: 1.0 - max(mean),
    "mutual_information": lambda mean, entropy, mi: mi,
}


@dataclass(frozen=True)
class DecisionPolicy:
    """What one request asks for: a decision at ``max_risk`` (none when ``None``), sets at ``coverage``."""

    max_risk: float | None = None
    coverage: float = DEFAULT_COVERAGE
    max_novelty: float = DEFAULT_MAX_NOVELTY


@dataclass(slots=True)
class Decision:
    """Accept or abstain, why, and the numbers it rests on (``threshold`` is None when no threshold meets
    ``max_risk``: then every prediction abstains and ``detail`` says so). Not frozen: one is made per served
    text, and a frozen dataclass costs several times more to build."""

    action: Action
    reason: Reason | None
    max_risk: float
    score: float
    threshold: float | None
    novelty: float | None
    max_novelty: float
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "max_risk": self.max_risk,
            "score": self.score,
            "threshold": self.threshold,
            "novelty": self.novelty,
            "max_novelty": self.max_novelty,
            "detail": self.detail,
        }


def _floats(data: Mapping[str, Any], key: str, source: str) -> list[float]:
    values = data.get(key)
    if not isinstance(values, list) or not values or not all(isinstance(v, int | float) for v in values):
        raise CheckpointError(f"{source}: {key!r} must be a non-empty list of numbers")
    if not all(math.isfinite(v) for v in values):
        raise CheckpointError(f"{source}: {key!r} holds a value that is not finite")
    return [float(v) for v in values]


def _probability(data: Mapping[str, Any], key: str, source: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise CheckpointError(f"{source}: {key!r} must be a number in (0, 1) (got {value!r})")
    return float(value)


class Calibration:
    """Thresholds, conformal quantiles and novelty from one calibration split; see the module docstring."""

    def __init__(
        self,
        score: str,
        scores: Sequence[float],
        errors: Sequence[bool],
        nonconformity: Sequence[float],
        grid: Sequence[float] | None = None,
        novelty_scores: Sequence[float] | None = None,
        delta: float = DEFAULT_DELTA,
        max_novelty: float = DEFAULT_MAX_NOVELTY,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if score not in SCORES:
            raise ValueError(f"unknown uncertainty score {score!r}: choose one of {', '.join(SCORES)}")
        self.score = score
        self.score_of = SCORES[score]
        self.delta = delta
        self.max_novelty = max_novelty
        self.grid = None if grid is None else list(grid)
        self.scores, self.errors, self.nonconformity = list(scores), [bool(e) for e in errors], list(nonconformity)
        self.risk = RiskController(self.scores, self.errors, delta=delta, grid=self.grid)
        self.conformal = ConformalCalibrator(self.nonconformity)
        self.novelty = None if novelty_scores is None else NoveltyCalibration(novelty_scores)
        self.info = dict(info or {})
        self._thresholds: dict[float, RiskThreshold] = {}
        self._quantiles: dict[float, float] = {}

    @property
    def n_calibration(self) -> int:
        return len(self.scores)

    def threshold(self, max_risk: float) -> RiskThreshold:
        """λ(α), computed once per level and kept (a server sees few distinct levels)."""
        found = self._thresholds.get(max_risk)
        if found is None:
            found = self._thresholds[max_risk] = self.risk.threshold(max_risk)
        return found

    def quantile(self, coverage: float) -> float:
        found = self._quantiles.get(coverage)
        if found is None:
            found = self._quantiles[coverage] = self.conformal.quantile(coverage)
        return found

    def prediction_set(self, mean: Sequence[float], coverage: float) -> list[int]:
        """Label indices of the LAC set (possibly empty: no label is plausible enough at this coverage)."""
        qhat = self.quantile(coverage)
        return [c for c, p in enumerate(mean) if 1.0 - p <= qhat]

    def decide(self, score: float, novelty: float | None, policy: DecisionPolicy) -> Decision:
        """The decision for one prediction; ``policy.max_risk`` must be set."""
        if policy.max_risk is None:
            raise ValueError("a decision needs max_risk")
        return self._decision(score, novelty, policy, self.threshold(policy.max_risk))

    def _decision(self, score: float, novelty: float | None, policy: DecisionPolicy, found: RiskThreshold) -> Decision:
        alpha = found.max_risk
        threshold = found.threshold
        if novelty is not None and novelty > policy.max_novelty:
            return Decision("abstain", "novel", alpha, score, threshold, novelty, policy.max_novelty)
        if threshold is None:
            detail = (
                f"no threshold keeps the risk at or below {alpha:g} with confidence {1 - self.delta:g} on "
                f"{self.n_calibration} calibration texts: every prediction abstains; raise max_risk"
            )
            return Decision("abstain", "uncertain", alpha, score, None, novelty, policy.max_novelty, detail)
        if score <= threshold:
            return Decision("accept", None, alpha, score, threshold, novelty, policy.max_novelty)
        return Decision("abstain", "uncertain", alpha, score, threshold, novelty, policy.max_novelty)

    def summary(self) -> dict[str, Any]:
        """For ``/v1/models``: δ, the score, thresholds and calibration coverage at α = 0.05/0.1/0.2, and more."""
        levels = {}
        for alpha in SUMMARY_RISKS:
            found = self.threshold(alpha)
            levels[f"{alpha:g}"] = {"threshold": found.threshold, "coverage": round(found.coverage, 4)}
        return {
            "delta": self.delta,
            "score": self.score,
            "n_calibration": self.n_calibration,
            "max_risk": levels,
            "conformal_method": CONFORMAL_METHOD,
            "novelty": self.novelty is not None,
            "max_novelty": self.max_novelty,
            **{k: v for k, v in self.info.items() if k in ("source", "n_samples", "seed", "temperature")},
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "delta": self.delta,
            "score": self.score,
            "max_novelty": self.max_novelty,
            "grid": self.grid,
            "scores": [float(f"{v:.7g}") for v in self.scores],
            "errors": [int(e) for e in self.errors],
            "nonconformity": [float(f"{v:.7g}") for v in self.nonconformity],
            "novelty_scores": None if self.novelty is None else [float(f"{v:.7g}") for v in self.novelty.scores],
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "calibration.json") -> Calibration:
        """Rebuild from :meth:`to_json`'s output; anything malformed is a :class:`CheckpointError` naming the key."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f'{source}: not an mcdrop calibration (expected "format": {FORMAT!r})')
        score = data.get("score")
        if score not in SCORES:
            raise CheckpointError(f"{source}: 'score' must be one of {', '.join(SCORES)} (got {score!r})")
        scores = _floats(data, "scores", source)
        errors = data.get("errors")
        if not isinstance(errors, list) or len(errors) != len(scores) or any(e not in (0, 1) for e in errors):
            raise CheckpointError(f"{source}: 'errors' must be {len(scores)} values of 0 or 1, one per score")
        nonconformity = _floats(data, "nonconformity", source)
        grid = None if data.get("grid") is None else _floats(data, "grid", source)
        novelty = None if data.get("novelty_scores") is None else _floats(data, "novelty_scores", source)
        info = data.get("info", {})
        if not isinstance(info, dict):
            raise CheckpointError(f"{source}: 'info' must be an object")
        return cls(
            str(score),
            scores,
            [bool(e) for e in errors],
            nonconformity,
            grid,
            novelty,
            delta=_probability(data, "delta", source, DEFAULT_DELTA),
            max_novelty=_probability(data, "max_novelty", source, DEFAULT_MAX_NOVELTY),
            info=info,
        )


def score_values(name: str, mean: np.ndarray[Any, Any], entropy: Sequence[float], mi: Sequence[float]) -> list[float]:
    """The named uncertainty score for each row of ``mean`` (B, C) with its entropy and mutual information."""
    score_of = SCORES[name]
    return [score_of(row, h, m) for row, h, m in zip(mean.tolist(), entropy, mi, strict=True)]
