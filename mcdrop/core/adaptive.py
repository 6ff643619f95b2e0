"""Adaptive Monte Carlo (DESIGN §9): sample in rounds and stop each input once its estimate has settled.

``n_samples`` is the most samples an input gets; ``mc_tolerance`` τ ≥ 0 says when fewer will do. Samples come in
rounds whose totals double (10, 20, 40, 80, ..., then ``n_samples``): the Monte Carlo error of a mean falls as
1/√s, so each round cuts it by √2, an input is checked at most log2(N/10) + 1 times (each check is one tail pass
and one summary, the fixed cost that dominates small batches), and it never runs more than twice the samples it
needed. Input i stops after a round once

* max_c √(var_c / s) ≤ τ (the standard error of every class probability), and
* its verdict (label, and accept/abstain when it asks for a decision) is the same as after the round before,

so the earliest stop is after the second round. τ = 0 never stops early: the answer is the fixed-N one.

Samples are never drawn anew for a round: the engine's :class:`~mcdrop.core.dropout.MaskSampler` draws every
sample's masks up front and each round runs the next sample range, so sample s uses the same masks whether or
not sampling stopped early, and an input's stopping point depends only on its own samples, never on the inputs it
shares a batch with.

    probs, used = run_rounds(tail, n_inputs=8, n_samples=100, n_classes=2, samples_per_pass=100,
                             tolerances=[0.01] * 8, verdict=None)  # None: the label is the whole verdict
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mcdrop.core.uncertainty import ArraySummary, summary_arrays

FIRST_ROUND = 10
MC_TOLERANCE_RANGE = (0.0, 0.5)  # a probability's standard error never exceeds 0.5

# (rows of the inputs still sampling, or None for all; sample range) -> probabilities (samples, rows, C) on the CPU
Tail = Callable[[Tensor | None, slice], Tensor]
# (indices of the inputs still sampling, their statistics so far) -> one comparable verdict per input
Verdict = Callable[[list[int], ArraySummary], Sequence[Hashable]]


def round_ends(n_samples: int, first: int = FIRST_ROUND) -> list[int]:
    """Total samples after each round: ``first``, doubling, capped at ``n_samples`` (which always ends it)."""
    ends = []
    total = first
    while total < n_samples:
        ends.append(total)
        total *= 2
    ends.append(n_samples)
    return ends


def select_rows(state: Any, rows: Tensor) -> Any:
    """The inputs ``rows`` of a model's prefix result: a tensor or a tuple of tensors, inputs on the first axis."""
    if isinstance(state, Tensor):
        return state.index_select(0, rows.to(state.device))
    if isinstance(state, tuple):
        return tuple(select_rows(part, rows) for part in state)
    raise TypeError(f"a prefix result must be a tensor or a tuple of tensors to select inputs (got {type(state)})")


def run_rounds(
    tail: Tail,
    n_inputs: int,
    n_samples: int,
    n_classes: int,
    samples_per_pass: int,
    tolerances: Sequence[float],
    verdict: Verdict | None,
    eager: bool = False,
) -> tuple[Tensor, list[int]]:
    """Probabilities ``(n_samples, n_inputs, C)`` and the samples each input used (its rows past that are 0).

    Without any positive tolerance this is one round of ``n_samples``: exactly the fixed-N computation. With
    ``eager``, every sample is computed in the first round and the rule is applied to the same samples
    afterwards: the same answers, for tails whose samples cost less than the passes that rounds would add.
    ``verdict`` ``None`` means the label alone (what an input without a decision must keep).
    """
    if not any(t > 0 for t in tolerances):
        if samples_per_pass >= n_samples:
            return tail(None, slice(0, n_samples)), [n_samples] * n_inputs  # fixed N in one pass: most calls
        shape = (n_samples, n_inputs, n_classes)
        return _compute(tail, None, None, slice(0, n_samples), samples_per_pass, shape), [n_samples] * n_inputs
    if eager and verdict is None:
        every = _compute(tail, None, None, slice(0, n_samples), samples_per_pass, (n_samples, n_inputs, n_classes))
        return every, _stops_at_once(every, round_ends(n_samples), tolerances)
    used = [n_samples] * n_inputs
    active = list(range(n_inputs))
    previous: Sequence[Hashable] | None = None  # verdicts of the active inputs after the last round
    probs: Tensor | None = None
    computed = 0
    for end in round_ends(n_samples):
        rows = None if len(active) == n_inputs else torch.tensor(active)
        if computed < end:
            upto = n_samples if eager else end
            probs = _compute(
                tail, probs, rows, slice(computed, upto), samples_per_pass, (n_samples, n_inputs, n_classes)
            )
            computed = upto
        if end == n_samples:
            break
        assert probs is not None
        stats = summary_arrays(probs[:end] if rows is None else probs[:end, active])
        verdicts = stats.mean.argmax(axis=-1).tolist() if verdict is None else verdict(active, stats)
        errors = stats.std_error.max(axis=-1).tolist()
        kept: list[tuple[int, Hashable]] = []
        for j, i in enumerate(active):
            settled = previous is not None and errors[j] <= tolerances[i] and verdicts[j] == previous[j]
            if tolerances[i] > 0 and settled:
                used[i] = end
            else:
                kept.append((i, verdicts[j]))
        active, previous = [i for i, _ in kept], [v for _, v in kept]
        if not active:
            break
    assert probs is not None
    return probs, used


def _compute(
    tail: Tail,
    probs: Tensor | None,
    rows: Tensor | None,
    samples: slice,
    samples_per_pass: int,
    shape: tuple[int, int, int],
) -> Tensor:
    """``probs`` (``shape``, made on the first pass when ``None``) with the sample range ``samples`` of ``rows``
    (all inputs for ``None``) filled in, in passes of at most ``samples_per_pass`` samples."""
    for first in range(samples.start, samples.stop, samples_per_pass):
        part_samples = slice(first, min(samples.stop, first + samples_per_pass))
        part = tail(rows, part_samples)
        if probs is None:
            probs = torch.zeros(shape, dtype=part.dtype)  # rows an input never reaches stay 0
        if rows is None:
            probs[part_samples] = part
        else:
            probs[part_samples].index_copy_(1, rows, part)
    assert probs is not None
    return probs


def _stops_at_once(probs: Tensor, ends: list[int], tolerances: Sequence[float]) -> list[int]:
    """The rounds' rule on samples already computed, every round at once: running sums give each round's means
    and variances, so the checks cost a few array operations instead of a summary per round."""
    p = probs.numpy().astype(np.float64)
    at = np.asarray(ends) - 1
    counts = np.asarray(ends, dtype=np.float64)[:, None, None]
    mean = np.cumsum(p, axis=0)[at] / counts  # (R, B, C): the means after each round
    var = np.maximum(np.cumsum(p * p, axis=0)[at] / counts - mean * mean, 0.0)
    errors = np.sqrt(var / counts).max(axis=-1)  # (R, B)
    labels = mean.argmax(axis=-1)
    tolerance = np.asarray(tolerances, dtype=np.float64)
    settled = (errors[1:] <= tolerance) & (labels[1:] == labels[:-1]) & (tolerance > 0)  # rounds 2.., (R-1, B)
    first = np.where(settled.any(axis=0), settled.argmax(axis=0) + 1, len(ends) - 1)
    return [int(ends[k]) for k in first]
