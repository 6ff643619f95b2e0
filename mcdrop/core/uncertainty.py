"""Uncertainty from Monte Carlo samples: pure functions on a ``(S, B, C)`` tensor of class probabilities.

``S`` samples, ``B`` inputs, ``C`` classes; natural logarithms. The decomposition follows Depeweg et al. (2018)
and BALD (Houlsby et al., 2011): predictive entropy = expected entropy (aleatoric) + mutual information
(epistemic). Mutual information measures disagreement among the sampled networks, not missing evidence:
pair it with the encoder's out-of-vocabulary share to detect unfamiliar inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _check(probs: Tensor) -> None:
    if probs.dim() != 3:
        raise ValueError(f"expected probabilities of shape (S, B, C), got {tuple(probs.shape)}")


def entropy(probs: Tensor) -> Tensor:
    """Entropy over the last axis: ``-Σ_c p_c log p_c`` with ``0 log 0 = 0``."""
    out: Tensor = -torch.special.xlogy(probs, probs).sum(dim=-1)
    return out


def mean_probs(probs: Tensor) -> Tensor:
    """p̄ = (1/S) Σ_s p_s: ``(S, B, C) -> (B, C)``."""
    _check(probs)
    return probs.mean(dim=0)


def variance(probs: Tensor) -> Tensor:
    """Per-class population variance over samples: ``(S, B, C) -> (B, C)``."""
    _check(probs)
    return probs.var(dim=0, unbiased=False)


def predictive_entropy(probs: Tensor) -> Tensor:
    """Total uncertainty H[p̄]: ``(S, B, C) -> (B,)``."""
    return entropy(mean_probs(probs))


def expected_entropy(probs: Tensor) -> Tensor:
    """Aleatoric part E_s H[p_s]: ``(S, B, C) -> (B,)``."""
    _check(probs)
    return entropy(probs).mean(dim=0)


def mutual_information(probs: Tensor) -> Tensor:
    """Epistemic part (BALD) H[p̄] - E_s H[p_s], clamped at 0 against rounding: ``(S, B, C) -> (B,)``."""
    return (predictive_entropy(probs) - expected_entropy(probs)).clamp_min(0.0)


def variation_ratio(probs: Tensor) -> Tensor:
    """1 - (count of the modal sampled label)/S: ``(S, B, C) -> (B,)``."""
    _check(probs)
    n_samples, _, n_classes = probs.shape
    votes = torch.nn.functional.one_hot(probs.argmax(dim=-1), n_classes).sum(dim=0)  # (B, C)
    return 1.0 - votes.max(dim=-1).values.to(probs.dtype) / n_samples


def standard_error(probs: Tensor) -> Tensor:
    """Monte Carlo standard error of p̄, √(var/S): ``(S, B, C) -> (B, C)``."""
    return (variance(probs) / probs.shape[0]).sqrt()


@dataclass(frozen=True)
class Summary:
    """Every per-input uncertainty statistic of one batch (tensors indexed by input)."""

    mean: Tensor  # (B, C)
    variance: Tensor  # (B, C)
    entropy: Tensor  # (B,)
    expected_entropy: Tensor  # (B,)
    mutual_information: Tensor  # (B,)
    variation_ratio: Tensor  # (B,)
    std_error: Tensor  # (B, C)


def summarize(probs: Tensor) -> Summary:
    """All statistics of ``(S, B, C)`` probabilities, computed in float64 for stable small differences."""
    _check(probs)
    p = probs.to(torch.float64)
    mean = p.mean(dim=0)
    var = p.var(dim=0, unbiased=False)
    total = entropy(mean)
    aleatoric = entropy(p).mean(dim=0)
    return Summary(
        mean=mean,
        variance=var,
        entropy=total,
        expected_entropy=aleatoric,
        mutual_information=(total - aleatoric).clamp_min(0.0),
        variation_ratio=variation_ratio(p),
        std_error=(var / p.shape[0]).sqrt(),
    )
