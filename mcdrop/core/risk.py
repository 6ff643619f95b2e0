"""Selective prediction with a risk guarantee, and split-conformal prediction sets.

Both tools are fitted once on held-out calibration texts and then applied per request.

Selective prediction. For each calibration text we know an uncertainty ``score`` (higher means less
certain, e.g. a Monte Carlo dropout disagreement measure) and whether the prediction was wrong. A threshold
``λ`` answers texts with ``score <= λ`` and abstains on the rest. ``risk_controlling_threshold`` (or, to
serve many risk levels from one calibration set, ``RiskController``) picks the most lenient ``λ`` such that,
with probability at least ``1 - delta`` over the draw of the calibration set, the error rate among answered
new texts (exchangeable with the calibration texts) is at most ``max_risk``. The method is Learn-then-Test
(Angelopoulos et al., 2021): every candidate threshold is a hypothesis test of ``H0: risk(λ) > max_risk``
with the exact binomial tail p-value, and candidates are tested in a fixed order, strict to lenient, until
the first failure to reject, which controls the family-wise error without a multiplicity correction.

Candidates form a grid fixed in advance: the score's quantiles at coverages 5%, 6%, ..., 100% of a reference
set (``quantile_grid``). mcdrop takes them from the validation split, so the sequence of hypotheses is fixed
before the calibration data is seen, as Learn-then-Test requires; without a reference the calibration scores'
own quantiles are used (given the scores the error indicators are still independent, and the simulation in the
tests confirms the guarantee holds there too). Walking every distinct score instead would start where only a
handful of texts are accepted; no test can reject there, so the walk would stop at once with no threshold.

    controller = RiskController(scores, errors, delta=0.1, grid=quantile_grid(validation_scores))
    decision = controller.threshold(0.05)
    answer = decision.threshold is not None and score <= decision.threshold

Conformal sets. LAC (Sadinle et al., 2019) uses the nonconformity ``1 - p_y`` (mean Monte Carlo probability
of the true label) and returns every label whose ``1 - p`` is within the calibrated quantile; for
exchangeable data the set contains the true label with probability at least the requested coverage. LAC
gives the smallest sets on average; APS (Romano et al., 2020) adapts set size to difficulty but its sets are
larger, and with two labels its randomisation buys little. A LAC set can be empty (no label is plausible
enough); callers should treat that as "abstain".

    calibrator = ConformalCalibrator.from_probabilities(cal_probs, cal_labels)
    labels = prediction_set(probs_row, calibrator.quantile(0.9))
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def binomial_cdf(k: int, n: int, p: float) -> float:
    """Return P(X <= k) for X ~ Binomial(n, p), exactly, even for large n and tiny tails."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if k < 0:
        return 0.0
    if k >= n or p == 0.0:
        return 1.0
    if p == 1.0:
        return 0.0
    log_p, log_q, log_n_fact = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    # Below the mean, sum the lower tail directly (it may be astronomically small, so no 1 - x there);
    # at or above it the CDF is at least 1/2, so 1 - (upper tail) loses nothing and needs fewer terms.
    lower = k < n * p
    indices = range(k, -1, -1) if lower else range(k + 1, n + 1)
    logs: list[float] = []
    for i in indices:
        term = log_n_fact - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        # Terms shrink monotonically away from the mode (log-concave pmf); once 60 nats below the first,
        # the rest cannot change the sum in double precision.
        if logs and term < logs[0] - 60.0:
            break
        logs.append(term)
    top = logs[0]
    log_mass = top + math.log(math.fsum(math.exp(x - top) for x in logs))
    return min(1.0, math.exp(log_mass)) if lower else max(0.0, -math.expm1(log_mass))


@lru_cache(maxsize=8)
def _log_factorials(n: int) -> FloatArray:
    # lgamma per entry rather than a cumulative sum of logs: the sum drifts by ~1e-7 at n = 100,000.
    table = np.array([math.lgamma(i + 1) for i in range(n + 1)], dtype=np.float64)
    table.setflags(write=False)
    return table


def _binomial_cdf_many(k: IntArray, n: IntArray, p: float, log_fact: FloatArray) -> FloatArray:
    """Vectorised ``binomial_cdf`` for 0 <= k, n and 0 < p < 1, summing each tail in full."""
    out = np.ones(k.shape, dtype=np.float64)
    lower = k < n * p
    start = np.where(lower, 0, k + 1)
    length = np.where(lower, k + 1, n - k).clip(min=0)
    live = np.flatnonzero(length > 0)
    if live.size == 0:
        return out
    length_live = length[live]
    # Ragged layout: every live tail's terms lie back to back, and reduceat sums each segment.
    offsets = np.cumsum(length_live) - length_live
    segment = np.repeat(np.arange(live.size), length_live)
    i = np.arange(int(length_live.sum())) - offsets[segment] + start[live][segment]
    nn = n[live][segment]
    logs = log_fact[nn] - log_fact[i] - log_fact[nn - i] + i * math.log(p) + (nn - i) * math.log1p(-p)
    top = np.maximum.reduceat(logs, offsets)
    log_mass = top + np.log(np.add.reduceat(np.exp(logs - top[segment]), offsets))
    out[live] = np.where(lower[live], np.minimum(1.0, np.exp(log_mass)), np.maximum(0.0, -np.expm1(log_mass)))
    return out


def _chernoff_log_bound(k: IntArray, n: IntArray, p: float) -> FloatArray:
    """log exp(-n·KL(k/n || p)): an upper bound on log P(X <= k) where k < n·p, and 0 elsewhere."""
    rate = k / np.maximum(n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        head = np.where(k > 0, k * np.log(rate / p), 0.0)
        tail = np.where(n > k, (n - k) * np.log((1.0 - rate) / (1.0 - p)), 0.0)
    return np.where(k < n * p, -(head + tail), 0.0)


def _last_rejected(k: IntArray, n: IntArray, alpha: float, delta: float, log_fact: FloatArray) -> int:
    """Index of the last grid point rejected by fixed-sequence testing (-1 when the first one fails)."""
    stop = k.size
    if delta < 0.5:
        # Where k >= n·alpha, k is at least the binomial median, so the p-value is >= 1/2 > delta: the
        # sequence certainly stops there and the later p-values need not be computed.
        at_or_above = np.flatnonzero(k >= n * alpha)
        stop = int(at_or_above[0]) if at_or_above.size else stop
    k, n = k[:stop], n[:stop]
    # The Chernoff bound already rejects most points far from the boundary; exact tails (the costly part)
    # are summed only where it cannot decide. The margin guards the k = 0 case, where bound and exact agree.
    unsure = np.flatnonzero(_chernoff_log_bound(k, n, alpha) > math.log(delta) - 1e-9)
    if unsure.size:
        exact = _binomial_cdf_many(k[unsure], n[unsure], alpha, log_fact)
        failed = unsure[exact > delta]
        if failed.size:
            return int(failed[0]) - 1
    return stop - 1


def _check_open_unit(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def _finite_vector(name: str, values: ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must contain at least one item")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return array


def _error_vector(errors: ArrayLike, n: int) -> IntArray:
    array = np.asarray(errors)
    if array.ndim != 1 or array.size != n:
        raise ValueError(f"scores and errors must have the same length, got {n} and {array.size}")
    if array.dtype != np.bool_ and not np.all((array == 0) | (array == 1)):
        raise ValueError("errors must be booleans (or 0/1)")
    return array.astype(np.int64)


def quantile_grid(scores: ArrayLike, min_coverage: float = 0.05, step: float = 0.01) -> FloatArray:
    """Candidate thresholds: the quantiles of ``scores`` at coverages ``min_coverage``, +``step``, ..., 1."""
    values = np.sort(_finite_vector("scores", scores))
    min_coverage = _check_fraction("min_coverage", min_coverage)
    step = _check_fraction("step", step)
    n = values.size
    # The epsilon keeps float noise in 0.05 + k * 0.01 (e.g. 0.07 * 100 = 7.000000000000001) from pushing a
    # quantile up by one rank.
    count = math.floor((1.0 - min_coverage) / step + 1e-9) + 1
    coverages = np.append(min_coverage + step * np.arange(count), 1.0)
    ranks = np.clip(np.ceil(coverages * n - 1e-9).astype(np.int64), 1, n)
    grid: FloatArray = np.unique(values[ranks - 1])
    return grid


@dataclass(frozen=True)
class RiskThreshold:
    """Outcome of risk calibration; ``threshold`` is None when no grid point passed the test."""

    max_risk: float
    delta: float
    threshold: float | None
    coverage: float  # share of calibration texts with score <= threshold (0 when threshold is None)
    calibration_risk: float | None  # error rate among those texts
    p_value: float | None  # binomial tail p-value of the chosen threshold
    n_calibration: int

    def accepts(self, score: float) -> bool:
        """Whether a prediction with this uncertainty score should be answered rather than abstained on."""
        return self.threshold is not None and score <= self.threshold


class RiskController:
    """Learn-then-Test thresholds for any ``max_risk`` from one calibration set.

    Sorting, the candidate grid and the accepted/error counts at every grid point do not depend on the risk
    level, so they are computed once here; ``threshold`` then only evaluates p-values, summing exact tails
    only where a Chernoff bound cannot already decide.
    """

    def __init__(
        self,
        scores: ArrayLike,
        errors: ArrayLike,
        delta: float = 0.1,
        min_coverage: float = 0.05,
        step: float = 0.01,
        grid: ArrayLike | None = None,
    ) -> None:
        values = _finite_vector("scores", scores)
        wrong = _error_vector(errors, values.size)
        self.delta = _check_open_unit("delta", delta)
        order = np.argsort(values, kind="stable")
        self._sorted = values[order]
        cum_errors = np.concatenate(([0], np.cumsum(wrong[order])))
        n = values.size
        # np.unique also sorts: thresholds strict -> lenient, as the fixed sequence needs
        self.grid: FloatArray = (
            quantile_grid(self._sorted, min_coverage, step) if grid is None else np.unique(_finite_vector("grid", grid))
        )
        # Ties: everything with score <= λ is accepted, so count with side="right".
        self._accepted: IntArray = np.searchsorted(self._sorted, self.grid, side="right").astype(np.int64)
        self._wrong: IntArray = cum_errors[self._accepted].astype(np.int64)
        self._log_fact = _log_factorials(n)
        self.n_calibration = n

    def p_values(self, max_risk: float) -> FloatArray:
        """Binomial p-values of ``H0: risk(λ) > max_risk`` at every grid point, strict to lenient."""
        alpha = _check_open_unit("max_risk", max_risk)
        return _binomial_cdf_many(self._wrong, self._accepted, alpha, self._log_fact)

    def threshold(self, max_risk: float) -> RiskThreshold:
        """The most lenient grid threshold reached by fixed-sequence testing at level ``delta``."""
        alpha = _check_open_unit("max_risk", max_risk)
        last = _last_rejected(self._wrong, self._accepted, alpha, self.delta, self._log_fact)
        if last < 0:
            return RiskThreshold(float(max_risk), self.delta, None, 0.0, None, None, self.n_calibration)
        accepted, wrong = int(self._accepted[last]), int(self._wrong[last])
        return RiskThreshold(
            max_risk=float(max_risk),
            delta=self.delta,
            threshold=float(self.grid[last]),
            coverage=accepted / self.n_calibration,
            calibration_risk=wrong / accepted,
            p_value=binomial_cdf(wrong, accepted, alpha),
            n_calibration=self.n_calibration,
        )


def risk_controlling_threshold(
    scores: ArrayLike,
    errors: ArrayLike,
    max_risk: float,
    delta: float = 0.1,
    min_coverage: float = 0.05,
    step: float = 0.01,
) -> RiskThreshold:
    """One-shot form of ``RiskController(scores, errors, delta, min_coverage, step).threshold(max_risk)``
    (the calibration scores' own quantiles as the grid)."""
    _check_open_unit("max_risk", max_risk)
    return RiskController(scores, errors, delta, min_coverage, step).threshold(max_risk)


def lac_nonconformity(probs: ArrayLike, labels: ArrayLike) -> FloatArray:
    """``1 - probs[i, labels[i]]`` for a (texts x labels) probability matrix and integer true labels."""
    matrix = np.asarray(probs, dtype=np.float64)
    truth = np.asarray(labels)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty 2-D array (texts x labels), got shape {matrix.shape}")
    if truth.shape != (matrix.shape[0],) or not np.issubdtype(truth.dtype, np.integer):
        raise ValueError(f"labels must be {matrix.shape[0]} integers, got shape {truth.shape} ({truth.dtype})")
    if truth.min() < 0 or truth.max() >= matrix.shape[1]:
        raise ValueError(f"labels must be in [0, {matrix.shape[1] - 1}]")
    return np.asarray(1.0 - matrix[np.arange(matrix.shape[0]), truth], dtype=np.float64)


def _rank_quantile(sorted_scores: FloatArray, coverage: float) -> float:
    n = sorted_scores.size
    # The ceil((n+1)c)-th smallest score; the tiny epsilon keeps float noise in (n+1)*c from adding a rank.
    rank = math.ceil((n + 1) * coverage - 1e-9)
    return math.inf if rank > n else float(sorted_scores[max(rank, 1) - 1])


def conformal_quantile(nonconformity: ArrayLike, coverage: float) -> float:
    """Split-conformal quantile: the ceil((n+1)·coverage)-th smallest score, or +inf (every label) past n."""
    scores = _finite_vector("nonconformity", nonconformity)
    return _rank_quantile(np.sort(scores), _check_open_unit("coverage", coverage))


def prediction_set(probs_row: Iterable[float], qhat: float) -> list[int]:
    """Label indices with ``1 - p <= qhat``; may be empty. Contains the arg-max label whenever non-empty."""
    return [index for index, p in enumerate(probs_row) if 1.0 - float(p) <= qhat]


class ConformalCalibrator:
    """Sorted LAC nonconformity scores of calibration texts; the quantile for any coverage is one index."""

    def __init__(self, nonconformity: ArrayLike) -> None:
        self._sorted = np.sort(_finite_vector("nonconformity", nonconformity))
        self.n_calibration = int(self._sorted.size)

    @classmethod
    def from_probabilities(cls, probs: ArrayLike, labels: ArrayLike) -> ConformalCalibrator:
        """Calibrate from mean Monte Carlo probabilities (texts x labels) and the true label indices."""
        return cls(lac_nonconformity(probs, labels))

    def quantile(self, coverage: float) -> float:
        """``qhat`` for a target marginal coverage in (0, 1); +inf when the calibration set is too small."""
        return _rank_quantile(self._sorted, _check_open_unit("coverage", coverage))

    def prediction_set(self, probs_row: Iterable[float], coverage: float) -> list[int]:
        """The LAC set for one text at the requested coverage."""
        return prediction_set(probs_row, self.quantile(coverage))
