"""``Prediction``: what the engine answers for one text, before serving rounds it for JSON.

prediction.to_dict()   # the fields as a plain dict, as ``mcdrop predict`` and ``/v1/predict`` show them
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcdrop.core.decisions import Decision


@dataclass(frozen=True)
class Prediction:
    """One text's MC prediction, at the precision the engine computed it (serving rounds it for JSON)."""

    label: str
    probs: dict[str, float]
    variance: dict[str, float]
    entropy: float
    expected_entropy: float
    mutual_information: float
    variation_ratio: float
    std_error: dict[str, float]
    oov_fraction: float
    n_tokens: int
    n_known_tokens: int
    novelty: float | None = None  # with a calibrated novelty model: share of calibration texts less surprising
    prediction_set: list[str] | None = None  # with a calibration: the conformal set at the policy's coverage
    decision: Decision | None = None  # with a calibration and a policy's max_risk

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (``dataclasses.asdict`` without its deep copies, which cost on a hot path)."""
        return {
            "label": self.label,
            "probs": self.probs,
            "variance": self.variance,
            "entropy": self.entropy,
            "expected_entropy": self.expected_entropy,
            "mutual_information": self.mutual_information,
            "variation_ratio": self.variation_ratio,
            "std_error": self.std_error,
            "oov_fraction": self.oov_fraction,
            "n_tokens": self.n_tokens,
            "n_known_tokens": self.n_known_tokens,
            "novelty": self.novelty,
            "prediction_set": self.prediction_set,
            "decision": None if self.decision is None else self.decision.to_dict(),
        }
