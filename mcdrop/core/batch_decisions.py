"""A chunk's decisions at once: what :class:`~mcdrop.core.decisions.Calibration` says for each of its predictions.

This runs for every served text, so the comparisons are array operations over the batch, the per-policy work
(threshold, quantile) is done once per distinct policy, and per prediction only the objects it returns are made.
The floats are those of ``Calibration.decide`` and ``Calibration.prediction_set`` one prediction at a time (the
same operations on the same numbers; a test checks it).

    sets, decisions = decide_many(calibration, mean, entropy, mutual_information, novelties, policies, labels)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import compress

import numpy as np
from numpy.typing import NDArray

from mcdrop.core.decisions import Action, Calibration, Decision, DecisionPolicy
from mcdrop.core.risk import RiskThreshold

FloatArray = NDArray[np.float64]
FEW = 2  # up to this many predictions are decided one at a time: Python floats cost less than array operations
_MAX_LABELS_BY_CODE = 8  # with up to 8 labels, the 2^8 possible sets are made once
_LABEL_BITS = 1 << np.arange(_MAX_LABELS_BY_CODE)

# The scores of mcdrop.core.decisions.SCORES for a batch: (mean (B, C), entropy (B,), mutual information (B,)).
SCORE_ARRAYS: dict[str, Callable[[FloatArray, FloatArray, FloatArray], FloatArray]] = {
    "entropy": lambda mean, entropy, mi: entropy,
    "one_minus_max_prob": lambda mean, entropy, mi: 1.0 - mean.max(axis=-1),
    "mutual_information": lambda mean, entropy, mi: mi,
}


def decide_many(
    calibration: Calibration,
    mean: FloatArray,
    entropy: FloatArray,
    mutual_information: FloatArray,
    novelties: Sequence[float | None],
    policies: Sequence[DecisionPolicy],
    labels: Sequence[str],
) -> tuple[list[list[str]], list[Decision | None]]:
    """The conformal set (names from ``labels``) and the decision (``None`` without ``max_risk``) of each prediction,
    from its mean probabilities (rows of ``mean``), entropy and mutual information."""
    if len(policies) <= FEW:
        return _decide_few(
            calibration, mean.tolist(), entropy.tolist(), mutual_information.tolist(), novelties, policies, labels
        )
    qhat, found = _plans(calibration, policies)
    sets = _label_sets((1.0 - mean) <= qhat, labels)
    if all(f is None for f in found):
        return sets, [None] * len(sets)
    scores = SCORE_ARRAYS[calibration.score](mean, entropy, mutual_information).tolist()
    first = found[0]
    if first is not None and first.threshold is not None and all(p is policies[0] for p in policies):
        # the usual case, one policy with a threshold: the checks of Calibration.decide, in its order, without calls
        alpha, threshold, limit = first.max_risk, first.threshold, policies[0].max_novelty
        return sets, [
            Decision("abstain", "novel", alpha, score, threshold, novelty, limit)
            if novelty is not None and novelty > limit
            else Decision("accept", None, alpha, score, threshold, novelty, limit)
            if score <= threshold
            else Decision("abstain", "uncertain", alpha, score, threshold, novelty, limit)
            for score, novelty in zip(scores, novelties, strict=True)
        ]
    decide = calibration.decide
    return sets, [
        None if f is None else decide(score, novelty, policy)
        for score, novelty, policy, f in zip(scores, novelties, policies, found, strict=True)
    ]


def actions(
    calibration: Calibration,
    mean: FloatArray,
    entropy: FloatArray,
    mutual_information: FloatArray,
    novelties: Sequence[float | None],
    policies: Sequence[DecisionPolicy],
) -> list[Action | None]:
    """Only the ``action`` of each prediction's decision (``None`` without ``max_risk``): what adaptive sampling
    compares between rounds, with no objects made."""
    _, found = _plans(calibration, policies)
    scores = SCORE_ARRAYS[calibration.score](mean, entropy, mutual_information).tolist()
    out: list[Action | None] = []
    for score, novelty, policy, f in zip(scores, novelties, policies, found, strict=True):
        if f is None:
            out.append(None)
        elif f.threshold is None or (novelty is not None and novelty > policy.max_novelty):
            out.append("abstain")
        else:
            out.append("accept" if score <= f.threshold else "abstain")
    return out


def _decide_few(
    calibration: Calibration,
    means: list[list[float]],
    entropies: list[float],
    mis: list[float],
    novelties: Sequence[float | None],
    policies: Sequence[DecisionPolicy],
    labels: Sequence[str],
) -> tuple[list[list[str]], list[Decision | None]]:
    sets: list[list[str]] = []
    decisions: list[Decision | None] = []
    for mean, h, mi, novelty, policy in zip(means, entropies, mis, novelties, policies, strict=True):
        qhat = calibration.quantile(policy.coverage)
        sets.append([label for label, p in zip(labels, mean, strict=True) if 1.0 - p <= qhat])
        score = calibration.score_of(mean, h, mi)
        decisions.append(None if policy.max_risk is None else calibration.decide(score, novelty, policy))
    return sets, decisions


def _plans(
    calibration: Calibration, policies: Sequence[DecisionPolicy]
) -> tuple[float | FloatArray, list[RiskThreshold | None]]:
    """The LAC quantile (one number, or a column with a row per prediction) and the threshold (``None`` without
    ``max_risk``) of each prediction's policy."""
    if policies and all(policy is policies[0] for policy in policies):  # a request's texts share one object
        policy = policies[0]
        found = None if policy.max_risk is None else calibration.threshold(policy.max_risk)
        return calibration.quantile(policy.coverage), [found] * len(policies)
    plans: dict[int, tuple[float, RiskThreshold | None]] = {}  # by object: hashing a policy costs more
    for policy in policies:
        if id(policy) not in plans:
            found = None if policy.max_risk is None else calibration.threshold(policy.max_risk)
            plans[id(policy)] = (calibration.quantile(policy.coverage), found)
    rows = [plans[id(policy)] for policy in policies]
    return np.array([q for q, _ in rows])[:, None], [f for _, f in rows]


def _label_sets(inside: NDArray[np.bool_], labels: Sequence[str]) -> list[list[str]]:
    """The names of the labels marked in each row of ``inside`` (B, C). With a few labels a row is read as one
    number (its bits the labels), and the list of every such number is made once per set of labels."""
    n_labels = inside.shape[1]
    if n_labels > _MAX_LABELS_BY_CODE:
        return [list(compress(labels, row)) for row in inside.tolist()]
    names = _sets_by_code(tuple(labels))
    return [names[code].copy() for code in inside.dot(_LABEL_BITS[:n_labels]).tolist()]


@lru_cache(maxsize=64)
def _sets_by_code(labels: tuple[str, ...]) -> list[list[str]]:
    return [[label for c, label in enumerate(labels) if code >> c & 1] for code in range(1 << len(labels))]
