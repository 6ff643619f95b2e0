"""Post-hoc calibration fitted on the validation split: temperature scaling, and the drift baseline.

* ``fit_temperature`` finds the temperature that minimises the NLL of the MC mean (the engine divides logits
  by it; training keeps it only when it lowers validation NLL);
* ``uncertainty_baseline`` records the validation split's mean entropy, mutual information and OOV share, the
  reference the service's drift metrics and alerts compare live traffic with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mcdrop.core.uncertainty import mutual_information, predictive_entropy
from mcdrop.training.metrics import EPS, ArrayLike, as_labels, rounded


def apply_temperature(samples: Tensor, temperature: float) -> Tensor:
    """Re-temper ``(S, B, C)`` probabilities: ``softmax(log p / T)`` equals ``softmax(logits / T)``."""
    if temperature == 1.0:
        return samples
    log_p = samples.double().clamp_min(1e-300).log()
    return torch.softmax(log_p / temperature, dim=-1).to(samples.dtype)


def _mc_nll(log_p: Tensor, labels: Tensor, temperature: float) -> float:
    mean = torch.softmax(log_p / temperature, dim=-1).mean(dim=0)  # (S, B, C) -> (B, C)
    return float(-mean.gather(1, labels[:, None]).clamp_min(EPS).log().mean())


def fit_temperature(
    samples: Tensor, labels: ArrayLike, bounds: tuple[float, float] = (0.2, 5.0)
) -> tuple[float, float, float]:
    """Temperature minimising the NLL of the MC mean; returns (T, NLL at T=1, NLL at T).

    A coarse log-spaced grid then golden-section search on log T: NLL(T) is smooth and unimodal in practice.
    """
    log_p = samples.double().clamp_min(1e-300).log()
    y = as_labels(labels, samples.shape[1])
    grid = torch.linspace(np.log(bounds[0]), np.log(bounds[1]), 25).tolist()
    values = [_mc_nll(log_p, y, float(np.exp(g))) for g in grid]
    best = int(np.argmin(values))
    lo, hi = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _mc_nll(log_p, y, float(np.exp(a))) < _mc_nll(log_p, y, float(np.exp(b))):
            hi = b
        else:
            lo = a
    temperature = float(np.exp((lo + hi) / 2.0))
    return temperature, _mc_nll(log_p, y, 1.0), _mc_nll(log_p, y, temperature)


def uncertainty_baseline(
    validation_samples: Tensor, test_samples: Tensor, validation_oov: Sequence[float] = ()
) -> dict[str, float]:
    """Drift reference: validation mean entropy and MI, the 95th percentile of validation MI as the
    high-uncertainty threshold, the share of test predictions above it, and (given the validation texts'
    out-of-vocabulary shares) the mean OOV share, the input-novelty reference."""
    val_mi = mutual_information(validation_samples).double()
    threshold = float(torch.quantile(val_mi, 0.95))
    baseline = {
        "mean_entropy": rounded(predictive_entropy(validation_samples).double().mean()),
        "mean_mutual_information": rounded(val_mi.mean()),
        "mutual_information_threshold": rounded(threshold),
        "high_mi_share": rounded((mutual_information(test_samples) > threshold).double().mean()),
    }
    if validation_oov:
        baseline["mean_oov_fraction"] = rounded(sum(validation_oov) / len(validation_oov))
    return baseline
