"""Uncertainty maths: hand-computed values and the invariants of the decomposition."""

from __future__ import annotations

import math

import pytest
import torch

from mcdrop.core import uncertainty as u


def test_hand_computed_two_samples() -> None:
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)  # (S=2, B=1, C=2)
    s = u.summarize(probs)
    assert s.mean.tolist() == [[0.5, 0.5]]
    assert s.variance.tolist() == [[0.25, 0.25]]
    assert s.entropy.item() == pytest.approx(math.log(2))
    assert s.expected_entropy.item() == pytest.approx(0.0)
    assert s.mutual_information.item() == pytest.approx(math.log(2))
    assert s.variation_ratio.item() == pytest.approx(0.5)
    assert s.std_error.tolist() == [[pytest.approx(math.sqrt(0.125))] * 2]


def test_invariants_on_random_samples() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(30, 16, 5) * 3, dim=-1)
    s = u.summarize(probs)
    assert torch.allclose(s.mean.sum(-1), torch.ones(16, dtype=torch.float64))
    assert (s.expected_entropy >= 0).all()
    assert (s.expected_entropy <= s.entropy + 1e-12).all()
    assert (s.entropy <= math.log(5) + 1e-12).all()
    assert (s.mutual_information >= 0).all()
    assert (s.mutual_information <= s.entropy + 1e-12).all()
    assert ((s.variation_ratio >= 0) & (s.variation_ratio < 1)).all()
    assert torch.allclose(s.entropy, u.predictive_entropy(probs).double(), atol=1e-6)
    assert torch.allclose(s.mutual_information, u.mutual_information(probs).double(), atol=1e-6)


def test_single_sample_or_identical_samples_give_zero_mi_and_variance() -> None:
    one = torch.softmax(torch.randn(1, 4, 3), -1)
    for probs in (one, one.expand(10, 4, 3)):
        s = u.summarize(probs)
        assert torch.allclose(s.mutual_information, torch.zeros(4, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(s.variance, torch.zeros(4, 3, dtype=torch.float64), atol=1e-12)
        assert torch.equal(s.variation_ratio, torch.zeros(4, dtype=torch.float64))


def test_entropy_treats_zero_probability_as_zero() -> None:
    assert u.entropy(torch.tensor([1.0, 0.0])).item() == 0.0


def test_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected probabilities of shape \(S, B, C\)"):
        u.summarize(torch.ones(2, 3))
