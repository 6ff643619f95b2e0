"""Tests for risk.py: exact binomial tails, the Learn-then-Test guarantee (by simulation) and conformal sets."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from mcdrop.core.risk import (
    ConformalCalibrator,
    RiskController,
    binomial_cdf,
    conformal_quantile,
    lac_nonconformity,
    prediction_set,
    quantile_grid,
    risk_controlling_threshold,
)


def brute_binomial_cdf(k: int, n: int, p: float) -> float:
    return math.fsum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(min(k, n) + 1)) if k >= 0 else 0.0


def reference_threshold(scores: list[float], errors: list[bool], alpha: float, delta: float) -> float | None:
    """Plain-Python Learn-then-Test over the 5%, 6%, ..., 100% quantile grid, for comparison."""
    ordered, n = sorted(scores), len(scores)
    grid = sorted({ordered[max(1, math.ceil(j / 100 * n - 1e-9)) - 1] for j in range(5, 101)})
    chosen = None
    for lam in grid:
        accepted = [e for s, e in zip(scores, errors, strict=True) if s <= lam]
        if binomial_cdf(sum(accepted), len(accepted), alpha) > delta:
            break
        chosen = lam
    return chosen


def synthetic(rng: np.random.Generator, n: int, slope: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """score ~ U(0, 1), P(error | score) = slope * score, so the true risk of {score <= λ} is slope * λ / 2."""
    scores = rng.uniform(size=n)
    return scores, rng.uniform(size=n) < slope * scores


# --- binomial_cdf ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.001, 0.05, 0.3, 0.5, 0.77, 0.999])
def test_binomial_cdf_matches_brute_force(p: float) -> None:
    for n in range(0, 45):
        for k in range(-2, n + 3):
            expected = brute_binomial_cdf(k, n, p)
            assert binomial_cdf(k, n, p) == pytest.approx(expected, rel=1e-10, abs=1e-300)


def test_binomial_cdf_large_n_tiny_tail_is_exact() -> None:
    n, k = 20_000, 150  # mean 200: the lower tail is about 2e-4
    exact = Fraction(sum(math.comb(n, i) * 99 ** (n - i) for i in range(k + 1)), 100**n)
    assert binomial_cdf(k, n, 0.01) == pytest.approx(float(exact), rel=1e-9)
    # A single term far out: P(X = 0) = 0.99**50000 ~ 5e-219, far below what 1 - upper tail could resolve.
    assert binomial_cdf(0, 50_000, 0.01) == pytest.approx(math.exp(50_000 * math.log1p(-0.01)), rel=1e-9)
    # lgamma(100001) ~ 1e6 carries ~1e-10 absolute error, which bounds the relative accuracy at this n.
    middle = float(Fraction(math.comb(100_000, 50_000), 2**100_000))
    assert binomial_cdf(50_000, 100_000, 0.5) == pytest.approx(0.5 + 0.5 * middle, rel=1e-9)


def test_binomial_cdf_edges_and_symmetry() -> None:
    assert binomial_cdf(-1, 10, 0.3) == 0.0
    assert binomial_cdf(10, 10, 0.3) == 1.0
    assert binomial_cdf(12, 10, 0.3) == 1.0
    assert binomial_cdf(0, 10, 0.0) == 1.0
    assert binomial_cdf(9, 10, 1.0) == 0.0
    assert binomial_cdf(10, 10, 1.0) == 1.0
    assert binomial_cdf(0, 0, 0.4) == 1.0
    for n, k, p in [(30, 7, 0.2), (500, 260, 0.5), (1000, 31, 0.05)]:
        assert binomial_cdf(k, n, p) == pytest.approx(1.0 - binomial_cdf(n - k - 1, n, 1.0 - p), rel=1e-9)
    with pytest.raises(ValueError, match="p must be in"):
        binomial_cdf(1, 10, 1.5)
    with pytest.raises(ValueError, match="n must be"):
        binomial_cdf(1, -1, 0.5)


def test_vectorised_p_values_match_scalar() -> None:
    rng = np.random.default_rng(1)
    scores, errors = synthetic(rng, 3000)
    controller = RiskController(scores, errors)
    for alpha in (0.02, 0.1, 0.35):
        accepted = [int(np.sum(scores <= lam)) for lam in controller.grid]
        wrong = [int(np.sum(errors[scores <= lam])) for lam in controller.grid]
        expected = [binomial_cdf(k, n, alpha) for k, n in zip(wrong, accepted, strict=True)]
        np.testing.assert_allclose(controller.p_values(alpha), expected, rtol=1e-9, atol=1e-300)


# --- Learn-then-Test thresholds --------------------------------------------------------------------------


def test_matches_plain_reference_including_ties() -> None:
    rng = np.random.default_rng(2)
    for trial in range(40):
        n = int(rng.integers(1, 400))
        scores, errors = synthetic(rng, n, slope=float(rng.uniform(0.1, 1.0)))
        if trial % 2:
            scores = np.round(scores, 1)  # heavy ties
        delta = 0.6 if trial % 5 == 4 else 0.1  # delta >= 1/2 takes the path without the median shortcut
        controller = RiskController(scores, errors, delta=delta)
        for alpha in (0.03, 0.1, 0.2, 0.4):
            got = controller.threshold(alpha)
            assert got.threshold == reference_threshold(scores.tolist(), errors.tolist(), alpha, delta)
            assert got == risk_controlling_threshold(scores, errors, alpha, delta=delta)
            if got.threshold is not None:
                accepted = scores <= got.threshold
                assert got.coverage == accepted.mean()
                assert got.calibration_risk == errors[accepted].mean()
                assert got.p_value is not None and got.p_value <= delta


@pytest.mark.parametrize(("alpha", "delta", "power"), [(0.1, 0.1, 0.6), (0.05, 0.2, 0.3)])
def test_guarantee_holds_by_simulation(alpha: float, delta: float, power: float) -> None:
    draws, n, slope = 1500, 1000, 0.4
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=(draws, n))
    errors = rng.uniform(size=(draws, n)) < slope * scores
    true_risks, coverages = [], []
    for s, e in zip(scores, errors, strict=True):
        result = RiskController(s, e, delta=delta).threshold(alpha)
        # True risk of {score <= λ} for score ~ U(0, 1): mean of slope * s over [0, λ] = slope * λ / 2.
        true_risks.append(0.0 if result.threshold is None else slope * min(result.threshold, 1.0) / 2)
        coverages.append(result.coverage)
    violation_rate = float(np.mean(np.array(true_risks) > alpha))
    assert violation_rate <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    # Not vacuous: the oracle accepts 2·alpha/slope of the texts. Fixed-sequence testing is conservative,
    # more so for small alpha, where one early error at the 5% grid point can end the sequence.
    assert np.mean(coverages) > power * (2 * alpha / slope)


def test_guarantee_holds_with_a_grid_fixed_in_advance() -> None:
    """How mcdrop calibrates: the grid comes from a reference (validation) sample, the test from the calibration."""
    draws, n, slope, alpha, delta = 1000, 1000, 0.4, 0.1, 0.1
    rng = np.random.default_rng(5)
    grid = quantile_grid(rng.uniform(size=1000))
    assert grid.size > 90 and np.all(np.diff(grid) > 0)
    violations = 0
    for _ in range(draws):
        scores = rng.uniform(size=n)
        errors = rng.uniform(size=n) < slope * scores
        result = RiskController(scores, errors, delta=delta, grid=grid).threshold(alpha)
        assert result.threshold is None or result.threshold in grid
        violations += result.threshold is not None and slope * min(result.threshold, 1.0) / 2 > alpha
    assert violations / draws <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)


def test_higher_risk_never_lowers_threshold_or_coverage() -> None:
    rng = np.random.default_rng(4)
    # Real-looking: skewed uncertainty scores (many confident texts), errors rising steeply with score.
    scores = rng.beta(0.7, 3.0, size=2000)
    errors = rng.uniform(size=2000) < np.clip(0.02 + 1.5 * scores, 0, 1)
    controller = RiskController(scores, errors)
    results = [controller.threshold(a) for a in np.linspace(0.01, 0.6, 60)]
    thresholds = [-math.inf if r.threshold is None else r.threshold for r in results]
    assert thresholds == sorted(thresholds)
    assert [r.coverage for r in results] == sorted(r.coverage for r in results)
    assert results[0].threshold is None and results[-1].coverage == 1.0


def test_unachievable_risk_gives_no_threshold() -> None:
    scores = np.linspace(0, 1, 500)
    result = risk_controlling_threshold(scores, np.ones(500, dtype=bool), max_risk=0.2)
    assert result.threshold is None and result.coverage == 0.0 and result.calibration_risk is None
    assert not result.accepts(0.0)
    # 25 flawless texts at the first grid point are not enough evidence for 5% risk: 0.95**25 > 0.1.
    assert risk_controlling_threshold(scores, np.zeros(500, dtype=bool), max_risk=0.05).threshold is None
    perfect = risk_controlling_threshold(scores, np.zeros(500, dtype=bool), max_risk=0.2)
    assert perfect.coverage == 1.0 and perfect.threshold == 1.0 and perfect.accepts(1.0)


def test_grid_start_avoids_the_every_score_pitfall() -> None:
    rng = np.random.default_rng(5)
    scores, errors = synthetic(rng, 2000)
    # Walking every distinct score starts with one accepted text: P(0 errors) = 1 - alpha > delta, stop.
    order = np.argsort(scores)
    first_p = binomial_cdf(int(errors[order[0]]), 1, 0.1)
    assert first_p > 0.1
    result = risk_controlling_threshold(scores, errors, max_risk=0.1)
    assert result.threshold is not None and result.coverage > 0.3


def test_all_tied_scores() -> None:
    result = risk_controlling_threshold(np.full(300, 0.5), np.arange(300) % 20 == 0, max_risk=0.1)
    assert result.threshold == 0.5 and result.coverage == 1.0


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="same length"):
        risk_controlling_threshold([0.1, 0.2], [True], 0.1)
    with pytest.raises(ValueError, match="at least one"):
        risk_controlling_threshold([], [], 0.1)
    with pytest.raises(ValueError, match=r"max_risk must be in \(0, 1\)"):
        risk_controlling_threshold([0.1], [True], 1.0)
    with pytest.raises(ValueError, match=r"max_risk must be in \(0, 1\)"):
        RiskController([0.1], [True]).threshold(0.0)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        risk_controlling_threshold([0.1], [True], 0.1, delta=1.5)
    with pytest.raises(ValueError, match="finite"):
        risk_controlling_threshold([0.1, math.nan], [True, False], 0.1)
    with pytest.raises(ValueError, match="booleans"):
        risk_controlling_threshold([0.1, 0.2], [2, 0], 0.1)
    with pytest.raises(ValueError, match="min_coverage"):
        RiskController([0.1], [True], min_coverage=0.0)


# --- conformal sets --------------------------------------------------------------------------------------


def test_conformal_quantile_rank() -> None:
    values = np.arange(1, 10) / 10  # 0.1 ... 0.9, n = 9
    assert conformal_quantile(values, 0.9) == 0.9  # ceil(10 * 0.9) = 9th smallest
    assert conformal_quantile(values, 0.5) == 0.5  # ceil(5) = 5th
    assert conformal_quantile(values[:8], 0.9) == math.inf  # rank 9 > n = 8: every label
    assert prediction_set([0.01, 0.99], math.inf) == [0, 1]
    calibrator = ConformalCalibrator(values[::-1])
    assert [calibrator.quantile(c) for c in (0.5, 0.9)] == [0.5, 0.9]


def test_conformal_coverage_by_simulation() -> None:
    draws, n_cal, n_test, labels, target = 300, 500, 1000, 3, 0.9
    rng = np.random.default_rng(6)
    logits = rng.normal(scale=2.0, size=(draws, n_cal + n_test, labels))
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    # True labels drawn from a flattened version of the model's beliefs: the model is overconfident.
    truth_p = 0.6 * probs + 0.4 / labels
    cumulative = truth_p.cumsum(axis=2)
    truth = (rng.uniform(size=(draws, n_cal + n_test, 1)) > cumulative).sum(axis=2)
    coverages = []
    for d in range(draws):
        calibrator = ConformalCalibrator.from_probabilities(probs[d, :n_cal], truth[d, :n_cal])
        qhat = calibrator.quantile(target)
        coverages.append(np.mean(lac_nonconformity(probs[d, n_cal:], truth[d, n_cal:]) <= qhat))
    mean = float(np.mean(coverages))
    assert abs(mean - target) <= 0.01
    assert mean >= target - 0.003


def test_prediction_sets_contain_argmax_and_may_be_empty() -> None:
    rng = np.random.default_rng(7)
    for row in rng.dirichlet(np.ones(4), size=500):
        for qhat in (0.2, 0.5, 0.8):
            chosen = prediction_set(row.tolist(), qhat)
            assert chosen == sorted(chosen)
            if chosen:
                assert int(np.argmax(row)) in chosen
    assert prediction_set([0.5, 0.5], 0.4) == []
    assert prediction_set([0.7, 0.3], 0.31) == [0]
    assert prediction_set(np.array([0.7, 0.3]), 0.75) == [0, 1]


def test_conformal_validation() -> None:
    with pytest.raises(ValueError, match="coverage"):
        conformal_quantile([0.1, 0.2], 1.0)
    with pytest.raises(ValueError, match="at least one"):
        ConformalCalibrator([])
    with pytest.raises(ValueError, match="labels must be in"):
        lac_nonconformity([[0.4, 0.6]], [2])
    with pytest.raises(ValueError, match="2-D"):
        lac_nonconformity([0.4, 0.6], [1])
    with pytest.raises(ValueError, match="integers"):
        lac_nonconformity([[0.4, 0.6]], [0.5])
