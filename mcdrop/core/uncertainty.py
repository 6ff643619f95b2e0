"""Uncertainty from Monte Carlo samples: pure functions on a ``(S, B, C)`` tensor of class probabilities.

``S`` samples, ``B`` inputs, ``C`` classes; natural logarithms. The decomposition follows Depeweg et al. (2018)
and BALD (Houlsby et al., 2011): predictive entropy = expected entropy (aleatoric) + mutual information
(epistemic). Mutual information measures disagreement among the sampled networks, not missing evidence:
pair it with the encoder's out-of-vocabulary share to detect unfamiliar inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

_TINY = np.finfo(np.float64).tiny
Array = np.ndarray[Any, np.dtype[np.float64]]


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


@dataclass(frozen=True)
class ArraySummary:
    """:class:`Summary` as float64 numpy arrays: what the engine reads (one ``tolist`` per statistic)."""

    mean: Array  # (B, C)
    variance: Array  # (B, C)
    entropy: Array  # (B,)
    expected_entropy: Array  # (B,)
    mutual_information: Array  # (B,)
    variation_ratio: Array  # (B,)
    std_error: Array  # (B, C)


def summarize(probs: Tensor) -> Summary:
    """All statistics of ``(S, B, C)`` probabilities, computed in float64 for stable small differences."""
    stats = summary_arrays(probs)
    return Summary(**{name: torch.from_numpy(value) for name, value in vars(stats).items()})


def summary_arrays(probs: Tensor, counts: Sequence[int] | None = None) -> ArraySummary:
    """:func:`summarize` in numpy on the CPU: for the engine's batches (a few thousand numbers) each torch call
    costs several times more in dispatch than in maths, and these calls were a third of a one-text prediction.

    With ``counts``, input i's statistics are those of its first ``counts[i]`` samples (its later rows are
    ignored, whatever they hold): one pass for inputs that stopped sampling at different points.
    """
    _check(probs)
    p = probs.detach().cpu().numpy().astype(np.float64)
    n_samples, n_inputs, n_classes = p.shape
    add = np.add.reduce
    n: Any = n_samples
    kept = None
    if counts is not None:
        n = np.asarray(counts, dtype=np.float64)  # (B,)
        kept = np.arange(n_samples)[:, None] < n[None, :]  # (S, B)
        p = np.where(kept[..., None], p, 0.0)
    mean = add(p, axis=0) / n[..., None] if kept is not None else add(p, axis=0) / n
    centred = p - mean if kept is None else np.where(kept[..., None], p - mean, 0.0)
    var = add(centred * centred, axis=0) / (n[..., None] if kept is not None else n)
    total = -add(mean * np.log(np.maximum(mean, _TINY)), axis=-1)  # 0 log 0 = 0: 0 times log(tiny)
    aleatoric = -add(p * np.log(np.maximum(p, _TINY)), axis=(0, 2)) / n
    # sampled-label counts (B, C): one bincount over (input, label) cells, of the kept samples only
    cells = (p.argmax(axis=-1) + np.arange(0, n_inputs * n_classes, n_classes)).ravel()
    weights = None if kept is None else kept.ravel().astype(np.float64)
    votes = np.bincount(cells, weights, minlength=n_inputs * n_classes).reshape(n_inputs, n_classes)
    return ArraySummary(
        mean=mean,
        variance=var,
        entropy=total,
        expected_entropy=aleatoric,
        mutual_information=np.maximum(total - aleatoric, 0.0),
        variation_ratio=1.0 - votes.max(axis=-1) / n,
        std_error=np.sqrt(var / (n[..., None] if kept is not None else n)),
    )
