"""Evaluation metrics: pure functions of class probabilities, labels and uncertainty scores.

Each takes a ``(B, C)`` tensor (or array) of class probabilities and ``(B,)`` integer labels and returns plain
floats, so training, ``mcdrop eval`` and tests share them. Conventions:

* NLL: mean of ``-log p_y`` (natural log; probabilities clamped at 1e-12).
* Brier: mean over inputs of ``Σ_c (p_c - 1[c = y])²`` (the multi-class form; 0 is perfect, 2 the worst).
* ECE: top-label expected calibration error with 15 equal-width confidence bins ``(k/15, (k+1)/15]``
  (Guo et al., 2017): ``Σ_bins (n_bin / n) |accuracy_bin - mean confidence_bin|``.
* AUROC: probability that a random positive scores higher than a random negative, ties counting one half
  (Mann-Whitney U from average ranks).
* Selective prediction: inputs ranked by an uncertainty score (least uncertain first); accuracy on the most
  confident 50/80/90 % and the area under the risk-coverage curve (AURC, lower is better).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy.typing as npt
import torch
from torch import Tensor

from mcdrop.core.uncertainty import mutual_information, predictive_entropy

ArrayLike: TypeAlias = Tensor | npt.NDArray[Any] | Sequence[float] | Sequence[int]

N_BINS = 15
COVERAGES = (0.5, 0.8, 0.9)
EPS = 1e-12


def as_probs(probs: ArrayLike) -> Tensor:
    tensor = torch.as_tensor(probs, dtype=torch.float64)
    if tensor.dim() != 2:
        raise ValueError(f"expected probabilities of shape (B, C), got {tuple(tensor.shape)}")
    return tensor


def as_labels(labels: ArrayLike, n: int) -> Tensor:
    tensor = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if tensor.numel() != n:
        raise ValueError(f"{tensor.numel()} labels for {n} predictions")
    return tensor


def as_scores(scores: ArrayLike) -> Tensor:
    return torch.as_tensor(scores, dtype=torch.float64).reshape(-1)


# ------------------------------------------------------------------------------------------------- core metrics


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Share of inputs whose most probable class is the label."""
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0])
    return float((p.argmax(dim=1) == y).double().mean())


def negative_log_likelihood(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean ``-log p_y`` over inputs."""
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0])
    return float(-p.gather(1, y[:, None]).clamp_min(EPS).log().mean())


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean over inputs of the squared distance between ``p`` and the one-hot label."""
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0])
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def reliability_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Per confidence bin: lower/upper edge, count, mean confidence and accuracy (0 for empty bins)."""
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0])
    confidence, predicted = p.max(dim=1)
    correct = (predicted == y).double()
    # Bin k holds confidences in (k/n, (k+1)/n]; confidence 0 cannot be a top label but goes to bin 0.
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    bins = []
    for k in range(n_bins):
        members = index == k
        count = int(members.sum())
        bins.append(
            {
                "lower": k / n_bins,
                "upper": (k + 1) / n_bins,
                "count": float(count),
                "confidence": float(confidence[members].mean()) if count else 0.0,
                "accuracy": float(correct[members].mean()) if count else 0.0,
            }
        )
    return bins


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = N_BINS) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins."""
    bins = reliability_bins(probs, labels, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins))


def classification_metrics(probs: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Accuracy, NLL, Brier score and ECE in one dictionary."""
    return {
        "accuracy": accuracy(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
        "ece": expected_calibration_error(probs, labels),
    }


def auroc(scores: ArrayLike, is_positive: ArrayLike) -> float:
    """Area under the ROC curve for ``scores`` separating positives (True) from negatives; ties count 1/2."""
    s = as_scores(scores)
    pos = torch.as_tensor(is_positive, dtype=torch.bool).reshape(-1)
    if pos.numel() != s.numel():
        raise ValueError(f"{pos.numel()} flags for {s.numel()} scores")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    ranks = _average_ranks(s)
    u_statistic = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u_statistic / (n_pos * n_neg))


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks with tied values sharing their average rank."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    # Start of each run of equal values, and the run each position belongs to.
    new_run = torch.ones_like(sorted_values, dtype=torch.bool)
    new_run[1:] = sorted_values[1:] != sorted_values[:-1]
    run_id = torch.cumsum(new_run.long(), dim=0) - 1
    positions = torch.arange(1, values.numel() + 1, dtype=torch.float64)
    run_sum = torch.zeros(int(run_id[-1]) + 1, dtype=torch.float64).index_add_(0, run_id, positions)
    run_len = torch.zeros_like(run_sum).index_add_(0, run_id, torch.ones_like(positions))
    ranks = torch.empty_like(positions)
    ranks[order] = (run_sum / run_len)[run_id]
    return ranks


def ood_auroc(in_domain_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """AUROC of a score (higher = more unusual) for telling out-of-distribution inputs from in-domain ones."""
    a, b = as_scores(in_domain_scores), as_scores(ood_scores)
    flags = torch.cat([torch.zeros(a.numel(), dtype=torch.bool), torch.ones(b.numel(), dtype=torch.bool)])
    return auroc(torch.cat([a, b]), flags)


def selective_prediction(
    probs: ArrayLike, labels: ArrayLike, uncertainty: ArrayLike, coverages: Sequence[float] = COVERAGES
) -> dict[str, float]:
    """Accuracy when only the ``coverage`` least uncertain inputs are answered, and the AURC."""
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0])
    u = as_scores(uncertainty)
    if u.numel() != p.shape[0]:
        raise ValueError(f"{u.numel()} uncertainty scores for {p.shape[0]} predictions")
    correct = (p.argmax(dim=1) == y).double()[torch.argsort(u, stable=True)]
    n = correct.numel()
    answered = torch.arange(1, n + 1, dtype=torch.float64)
    risk = torch.cumsum(1.0 - correct, dim=0) / answered  # risk after answering the k most confident
    result = {}
    for coverage in coverages:
        k = max(1, round(coverage * n))
        result[f"accuracy_at_{round(coverage * 100)}"] = float(correct[:k].mean())
    result["aurc"] = float(risk.mean())
    return result


def mc_uncertainties(samples: Tensor) -> dict[str, Tensor]:
    """Predictive entropy and mutual information of ``(S, B, C)`` samples, each ``(B,)``."""
    return {"entropy": predictive_entropy(samples), "mutual_information": mutual_information(samples)}


def oov_fractions(n_tokens: Sequence[int], n_known: Sequence[int]) -> Tensor:
    """Share of unknown tokens per text (1.0 for a text with no tokens)."""
    total = torch.as_tensor(n_tokens, dtype=torch.float64)
    known = torch.as_tensor(n_known, dtype=torch.float64)
    return torch.where(total > 0, 1.0 - known / total.clamp_min(1.0), torch.ones_like(total))


def rounded(value: float | Tensor, digits: int = 6) -> float:
    return round(float(value), digits)
