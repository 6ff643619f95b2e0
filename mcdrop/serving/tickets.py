"""What the batcher queues and answers: the batching policy, a queued request (``Ticket``) and its ``Result``.

A ticket's deadline and enqueue time are read from one clock, ``time.perf_counter()``, so waiting times, windows
and deadlines compare without conversion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from mcdrop.core.decisions import DecisionPolicy
from mcdrop.serving.presentation import PredictionDict


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_rows: int = 32768
    max_wait_ms: float = 2.0
    queue_limit: int = 1024  # texts
    queue_limit_rows: int = 262_144  # texts x samples
    batching: bool = True
    queue_limit_cost: int = 0  # cost units (mcdrop.core.cost) queued or running; 0: no limit


@dataclass(frozen=True)
class Result:
    """One request's predictions (JSON-ready dicts, in input order) and where its time went."""

    predictions: list[PredictionDict]
    seed: int  # the seed the request's masks came from (drawn for the batch when the request gave none)
    queue_s: float  # enqueued -> its batch started
    engine_s: float  # the whole batch's engine call (shared with the requests merged into it)
    batch_texts: int
    batch_requests: int


@dataclass(eq=False)
class Ticket:
    """A queued request. ``future`` resolves to a :class:`Result` (or the engine's exception)."""

    texts: Sequence[str]
    n_samples: int
    seed: int | None  # None: use the seed drawn for its batch
    deadline: float  # time.perf_counter() after which it is not started
    future: asyncio.Future[Result]
    enqueued: float = field(default_factory=time.perf_counter)  # the same clock as the deadline
    policy: DecisionPolicy = field(default_factory=DecisionPolicy)  # what to decide; no effect on sampling
    released: bool = False  # its texts, rows and cost no longer count against the queue limits
    cost: int = 0  # what the engine will pay for it, in cost units (mcdrop.core.cost)
    mc_tolerance: float = 0.0  # adaptive sampling: when its texts may stop before n_samples (0: never)

    @property
    def rows(self) -> int:
        return len(self.texts) * self.n_samples
