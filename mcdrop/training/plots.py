"""Plots of evaluation results (matplotlib, imported only when a plot is drawn).

``plot_reliability_diagram`` draws accuracy against confidence per bin for each named set of probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mcdrop.training.metrics import N_BINS, ArrayLike, expected_calibration_error, reliability_bins


def plot_reliability_diagram(
    curves: Mapping[str, ArrayLike], labels: ArrayLike, path: str | Path, n_bins: int = N_BINS, title: str = ""
) -> Path:
    """Write a reliability diagram (accuracy vs confidence per bin) for each named set of probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for name, probs in curves.items():
        bins = [b for b in reliability_bins(probs, labels, n_bins) if b["count"] > 0]
        ece = expected_calibration_error(probs, labels, n_bins)
        axis.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            label=f"{name} (ECE {ece:.3f})",
        )
    axis.set_xlabel("confidence (top-label probability)")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(title or f"Reliability diagram ({n_bins} bins)")
    axis.legend(loc="upper left")
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
