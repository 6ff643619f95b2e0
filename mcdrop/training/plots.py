"""Plots of evaluation results (matplotlib, imported only when a plot is drawn).

``plot_reliability_diagram`` draws accuracy against confidence per bin for each named set of probabilities;
``plot_risk_coverage`` the error rate among the most certain predictions against their share, with each
``max_risk`` level and the operating point its calibrated threshold reached.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mcdrop.training.decision_report import RiskCurve
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


def plot_risk_coverage(curve: RiskCurve, path: str | Path, title: str = "") -> Path:
    """Risk among accepted predictions against coverage, with an α line and the realized point per ``max_risk``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.5))
    axis.plot(curve.coverage, curve.risk, color="black", linewidth=1.2, label="risk among the most certain")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (alpha, coverage, risk), color in zip(curve.points, colors, strict=False):
        axis.axhline(alpha, color=color, linestyle="--", linewidth=0.8)
        axis.plot([coverage], [risk], marker="o", color=color, label=f"max_risk {alpha:g}: coverage {coverage:.2f}")
    axis.set_xlabel("coverage (share of predictions accepted)")
    axis.set_ylabel("error rate among accepted")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, max([0.3, *curve.risk[-1:]]) * 1.05)
    axis.set_title(title or "Risk-coverage")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
