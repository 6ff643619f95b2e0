"""Metric functions against hand-computed values, temperature fitting and the reliability diagram."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mcdrop.training.calibration import apply_temperature, fit_temperature, uncertainty_baseline
from mcdrop.training.metrics import (
    accuracy,
    auroc,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    negative_log_likelihood,
    ood_auroc,
    oov_fractions,
    reliability_bins,
    selective_prediction,
)
from mcdrop.training.plots import plot_reliability_diagram

# Top-label confidences 0.9, 0.7, 0.6, 0.55 sit in four different 1/15-wide bins.
PROBS = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.45, 0.55]])
LABELS = torch.tensor([0, 1, 1, 1])  # third prediction (class 0) is wrong


def test_accuracy_nll_brier_by_hand() -> None:
    assert accuracy(PROBS, LABELS) == pytest.approx(0.75)
    nll = -(math.log(0.9) + math.log(0.7) + math.log(0.4) + math.log(0.55)) / 4
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(nll)
    brier = (2 * 0.1**2 + 2 * 0.3**2 + 2 * 0.6**2 + 2 * 0.45**2) / 4
    assert brier_score(PROBS, LABELS) == pytest.approx(brier)


def test_nll_is_finite_for_a_zero_probability() -> None:
    assert math.isfinite(negative_log_likelihood([[1.0, 0.0]], [1]))


def test_ece_one_prediction_per_bin() -> None:
    # Each bin holds one prediction: ECE = mean |correct - confidence|.
    expected = (abs(1 - 0.9) + abs(1 - 0.7) + abs(0 - 0.6) + abs(1 - 0.55)) / 4
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(expected)


def test_ece_shared_bin_uses_bin_averages() -> None:
    probs = [[0.9, 0.1], [0.91, 0.09], [0.2, 0.8]]  # 0.9 and 0.91 share bin (13/15, 14/15]
    labels = [0, 1, 1]
    shared = 2 / 3 * abs(0.5 - 0.905)
    alone = 1 / 3 * abs(1.0 - 0.8)
    assert expected_calibration_error(probs, labels) == pytest.approx(shared + alone)
    counts = [b["count"] for b in reliability_bins(probs, labels)]
    assert counts[13] == 2 and counts[11] == 1 and sum(counts) == 3


def test_perfectly_calibrated_and_confident_is_zero() -> None:
    assert expected_calibration_error([[1.0, 0.0], [0.0, 1.0]], [0, 1]) == 0.0


def test_metrics_accept_numpy_and_multiclass() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    metrics = classification_metrics(probs, np.array([0, 2]))
    assert metrics["accuracy"] == 1.0
    assert metrics["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.8)) / 2)
    assert metrics["brier"] == pytest.approx((0.3**2 + 0.2**2 + 0.1**2 + 0.1**2 + 0.1**2 + 0.2**2) / 2)


def test_auroc_by_hand() -> None:
    # Pairs (pos, neg): 0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1 -> 3 of 4.
    assert auroc([0.8, 0.4, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.75)
    assert auroc([3.0, 2.0, 1.0], [True, False, False]) == 1.0
    assert auroc([1.0, 2.0, 3.0], [True, False, False]) == 0.0


def test_auroc_ties_count_half() -> None:
    assert auroc([0.5, 0.5, 0.1], [True, False, False]) == pytest.approx(0.75)
    assert auroc([1.0, 1.0, 1.0, 1.0], [True, False, True, False]) == pytest.approx(0.5)


def test_ood_auroc_and_degenerate_input() -> None:
    assert ood_auroc([0.1, 0.2], [0.3, 0.15]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="at least one positive"):
        auroc([0.1, 0.2], [False, False])


def test_selective_prediction_by_hand() -> None:
    # Ranked by uncertainty: correct, correct, wrong, correct.
    uncertainty = [0.1, 0.2, 0.3, 0.4]
    probs = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]]
    labels = [0, 1, 1, 1]
    result = selective_prediction(probs, labels, uncertainty, coverages=(0.5, 0.75, 1.0))
    assert result["accuracy_at_50"] == 1.0
    assert result["accuracy_at_75"] == pytest.approx(2 / 3)
    assert result["accuracy_at_100"] == pytest.approx(0.75)
    assert result["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 1 / 4) / 4)


def test_fit_temperature_softens_an_overconfident_model() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (400,))
    # Logits point to the right class 70 % of the time but with 95 % confidence.
    right = torch.rand(400) < 0.7
    predicted = torch.where(right, labels, 1 - labels)
    logits = torch.nn.functional.one_hot(predicted, 2).float() * math.log(19.0)
    samples = torch.softmax(logits, dim=-1).expand(5, 400, 2)
    temperature, before, after = fit_temperature(samples, labels)
    assert temperature > 1.5
    assert after < before
    tempered = apply_temperature(samples, temperature).mean(0)
    assert negative_log_likelihood(tempered, labels) == pytest.approx(after, rel=1e-6)


def test_apply_temperature_keeps_the_ranking_and_normalisation() -> None:
    samples = torch.tensor([[[0.7, 0.2, 0.1]]])
    hot = apply_temperature(samples, 2.0)
    assert hot.sum().item() == pytest.approx(1.0)
    assert hot[0, 0].argsort().tolist() == samples[0, 0].argsort().tolist()
    assert hot[0, 0, 0] < 0.7


def test_uncertainty_baseline_threshold_is_the_95th_percentile() -> None:
    # Validation: identical samples (MI 0) for 95 inputs, disagreeing samples for 5.
    agree = torch.tensor([0.8, 0.2]).expand(2, 95, 2)
    disagree = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]).expand(2, 5, 2)
    validation = torch.cat([agree, disagree], dim=1)
    baseline = uncertainty_baseline(validation, validation)
    # torch.quantile interpolates between the 95th (0) and 96th (log 2) of 100 sorted values.
    assert baseline["mutual_information_threshold"] == pytest.approx(0.05 * math.log(2), rel=1e-4)
    assert baseline["high_mi_share"] == pytest.approx(0.05)
    assert baseline["mean_mutual_information"] == pytest.approx(0.05 * math.log(2), rel=1e-4)
    assert "mean_oov_fraction" not in baseline  # only with the validation texts' OOV shares
    assert uncertainty_baseline(validation, validation, [0.0, 0.5, 1.0])["mean_oov_fraction"] == 0.5


def test_oov_fractions() -> None:
    assert oov_fractions([4, 0, 2], [3, 0, 2]).tolist() == [0.25, 1.0, 0.0]


def test_reliability_diagram_writes_a_png(tmp_path: Path) -> None:
    path = plot_reliability_diagram(
        {"MC": PROBS, "det": PROBS**2 / (PROBS**2).sum(1, keepdim=True)}, LABELS, tmp_path / "r.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
