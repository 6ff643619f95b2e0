"""One text's Monte Carlo prediction (:class:`Prediction`), and how a chunk's statistics become predictions.

The engine (:mod:`mcdrop.core.engine`) samples; this module turns the statistics of each input's samples
(:class:`~mcdrop.core.uncertainty.ArraySummary`) into what a caller reads: the label, the uncertainty fields,
and with a calibration the novelty, the conformal set and the accept/abstain decision. ``verdicts`` is what
adaptive sampling (:mod:`mcdrop.core.adaptive`) compares between rounds when a decision is asked for.

prediction.to_dict()   # the fields as a plain dict, as ``mcdrop predict`` and ``/v1/predict`` show them
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from mcdrop.core.batch_decisions import actions, decide_many
from mcdrop.core.decisions import Calibration, Decision, DecisionPolicy
from mcdrop.core.text import EncodedTexts
from mcdrop.core.uncertainty import ArraySummary

# novelty, conformal set and decision of each prediction of a chunk
Decided = tuple[Sequence[float | None], Sequence[list[str] | None], Sequence[Decision | None]]


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
    n_samples_used: int  # at most n_samples: fewer when adaptive sampling (mc_tolerance > 0) stopped it early
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
            "n_samples_used": self.n_samples_used,
            "novelty": self.novelty,
            "prediction_set": self.prediction_set,
            "decision": None if self.decision is None else self.decision.to_dict(),
        }


def decide(
    calibration: Calibration | None,
    labels: Sequence[str],
    stats: ArraySummary,
    inputs: Sequence[int],
    policies: Sequence[DecisionPolicy],
    novelty: Sequence[float | None],
) -> Decided:
    """Novelty, conformal set and decision of each of ``inputs`` (rows of ``stats``; all ``None`` without a
    calibration); ``policies`` and ``novelty`` are indexed by input."""
    if calibration is None:
        nothing = [None] * len(inputs)
        return nothing, nothing, nothing
    chunk_novelty = [novelty[i] for i in inputs]
    sets, decisions = decide_many(
        calibration,
        stats.mean,
        stats.entropy,
        stats.mutual_information,
        chunk_novelty,
        [policies[i] for i in inputs],
        labels,
    )
    return chunk_novelty, sets, decisions


def verdicts(
    calibration: Calibration,
    stats: ArraySummary,
    inputs: Sequence[int],
    policies: Sequence[DecisionPolicy],
    novelty: Sequence[float | None],
) -> list[Hashable]:
    """What must not change over a round for an input to stop sampling when some input asks for a decision: its
    label and its accept/abstain action (``None`` for an input that asks for none)."""
    top = stats.mean.argmax(axis=-1).tolist()
    found = actions(
        calibration,
        stats.mean,
        stats.entropy,
        stats.mutual_information,
        [novelty[i] for i in inputs],
        [policies[i] for i in inputs],
    )
    return list(zip(top, found, strict=True))


def build_predictions(
    stats: ArraySummary,
    labels: Sequence[str],
    encoded: EncodedTexts,
    inputs: Sequence[int],
    n_used: Sequence[int],
    decided: Decided,
) -> list[Prediction]:
    """One :class:`Prediction` per row of ``stats``; ``inputs`` are their indices in ``encoded``, ``n_used`` the
    samples each used, ``decided`` what :func:`decide` found for them."""
    # One bulk conversion to Python floats: per-element array access costs more than the maths.
    mean, var, err = (a.tolist() for a in (stats.mean, stats.variance, stats.std_error))
    top = stats.mean.argmax(axis=-1).tolist()
    ent, exp_ent, mi, vr = (
        a.tolist() for a in (stats.entropy, stats.expected_entropy, stats.mutual_information, stats.variation_ratio)
    )
    novelty, sets, decisions = decided
    return [
        Prediction(
            label=labels[top[j]],
            probs=dict(zip(labels, mean[j], strict=True)),
            variance=dict(zip(labels, var[j], strict=True)),
            entropy=ent[j],
            expected_entropy=exp_ent[j],
            mutual_information=mi[j],
            variation_ratio=vr[j],
            std_error=dict(zip(labels, err[j], strict=True)),
            oov_fraction=encoded.oov_fraction(i),
            n_tokens=encoded.n_tokens[i],
            n_known_tokens=encoded.n_known_tokens[i],
            n_samples_used=n_used[j],
            novelty=novelty[j],
            prediction_set=sets[j],
            decision=decisions[j],
        )
        for j, i in enumerate(inputs)
    ]
