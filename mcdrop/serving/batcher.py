"""Batching across concurrent requests: one bounded queue and one worker task per model.

Requests are queued with their own texts, sample count and seed. The worker takes the oldest live request, then
every other queued request with the same ``n_samples`` (FIFO) until the merged batch reaches ``max_batch_rows``
rows (texts x samples), waiting at most ``max_wait_ms`` after the first one arrived for more to join. The batch is
one ``engine.predict_many`` call, run on an executor thread (never on the event loop); each request gets its own
slice. The engine derives every request's dropout masks from its own seed alone, so a seeded request gets the
same answer merged or alone. Requests with different ``mc_tolerance`` merge too: the engine stops each text on
its own samples and tolerance (a text of a tolerance-0 request simply runs every round), so merging them changes
no answer and keeps batches large, where splitting by tolerance would only make more, smaller engine calls.
Requests without a seed share one seed drawn for their batch: each answer is reproducible from the seed it
reports, and the batch pays for one set of masks instead of one per request. Under load no waiting is needed:
requests that arrive while the engine is busy form the next batch.

Overload and deadlines: ``submit`` refuses at once (:class:`~mcdrop.core.errors.Overloaded`) when the queued texts
would exceed ``queue_limit`` or the queued rows (texts x samples) ``queue_limit_rows``, before anything starts; a
text costs the engine one row per sample, so the row limit is what bounds how long the queue takes to drain. A
request whose future is cancelled or whose deadline has passed is skipped by the worker, so a client that gave up
costs nothing more; one already in the engine finishes and its answer is dropped. An unexpected error while forming
or handing back a batch fails that batch's requests (and is logged); the worker goes on with the next.

    policy = BatchPolicy(max_batch_rows=32768, max_wait_ms=2, queue_limit=1024, queue_limit_rows=1_048_576)
    batcher = Batcher(engine, executor, policy)
    batcher.start()                                   # inside the running event loop
    ticket = batcher.submit(["good film"], n_samples=100, seed=7, timeout_s=30)
    result = await batcher.wait(ticket, timeout_s=30)  # TimeoutError past it; None if `gone` fires first
    await batcher.close()                             # finishes what is queued, then stops the worker
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol

from mcdrop.core.decisions import DecisionPolicy
from mcdrop.core.engine import DEFAULT_POLICY, Prediction
from mcdrop.core.errors import Overloaded, ShuttingDown
from mcdrop.serving.presentation import PredictionDict, prediction_dict
from mcdrop.serving.telemetry import ModelMetrics
from mcdrop.serving.tickets import BatchPolicy, Result, Ticket

logger = logging.getLogger(__name__)


class EngineLike(Protocol):
    """What the batcher needs from :class:`mcdrop.core.engine.MCEngine`."""

    @property
    def name(self) -> str: ...

    def predict_many(
        self,
        requests: Sequence[tuple[Sequence[str], int]],
        n_samples: int,
        policies: Sequence[DecisionPolicy] | None = None,
        mc_tolerances: Sequence[float] | None = None,
    ) -> Sequence[Sequence[Prediction]]: ...


class Batcher:
    """Queue, merge and run prediction requests for one engine."""

    def __init__(
        self,
        engine: EngineLike,
        executor: Executor,
        policy: BatchPolicy,
        metrics: ModelMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.executor = executor
        self.policy = policy
        self.metrics = metrics
        self._pending: deque[Ticket] = deque()
        self._pending_texts = 0
        self._pending_rows = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._seeds = random.Random()  # seeds must be reproducible, not secret: no system call per batch

    @property
    def queued_texts(self) -> int:
        return self._pending_texts

    @property
    def queued_rows(self) -> int:
        return self._pending_rows

    @property
    def running(self) -> bool:
        """Whether the worker is started and has not stopped."""
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.engine.name}")
            self._worker.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("batch worker of %s stopped", self.engine.name, exc_info=task.exception())

    def submit(
        self,
        texts: Sequence[str],
        n_samples: int,
        seed: int | None,
        timeout_s: float,
        policy: DecisionPolicy = DEFAULT_POLICY,
        mc_tolerance: float = 0.0,
    ) -> Ticket:
        """Queue a request; raises :class:`Overloaded` (nothing queued) or :class:`ShuttingDown`."""
        if self._closing:
            raise ShuttingDown(f"model {self.engine.name} is shutting down")
        n_texts = len(texts)
        if self._pending_texts + n_texts > self.policy.queue_limit:
            raise Overloaded(
                f"model {self.engine.name} is overloaded: {self._pending_texts} texts queued "
                f"(limit {self.policy.queue_limit}); retry later"
            )
        if self._pending_rows + n_texts * n_samples > self.policy.queue_limit_rows:
            raise Overloaded(
                f"model {self.engine.name} is overloaded: {self._pending_rows} rows (texts x samples) queued "
                f"(limit {self.policy.queue_limit_rows}); retry later or with fewer samples"
            )
        now = time.perf_counter()
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        ticket = Ticket(texts, n_samples, seed, now + timeout_s, future, now, policy, mc_tolerance)
        self._pending.append(ticket)
        self._pending_texts += n_texts
        self._pending_rows += ticket.rows
        self._set_depth()
        self._wakeup.set()
        return ticket

    def abandon(self, ticket: Ticket) -> None:
        """The caller gave up (deadline, disconnect): cancel it so the worker skips it if not yet started."""
        ticket.future.cancel()
        self._release(ticket)

    async def wait(self, ticket: Ticket, timeout_s: float, gone: Awaitable[object] | None = None) -> Result | None:
        """The ticket's result (or the engine's exception); ``None`` when ``gone`` (e.g. "the client
        disconnected") completes first; :class:`TimeoutError` past ``timeout_s``. Unless it was answered, the ticket
        is given up, so its texts stop counting against the queue at once and the worker skips it."""
        watcher = asyncio.ensure_future(gone) if gone is not None else None
        waiting: set[asyncio.Future[Any]] = {ticket.future} if watcher is None else {ticket.future, watcher}
        try:
            await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watcher is not None:
                watcher.cancel()
            if not ticket.future.done():
                self.abandon(ticket)  # timed out, the caller left, or the waiting task was cancelled
        if ticket.future.done() and not ticket.future.cancelled():
            return ticket.future.result()
        if watcher is not None and watcher.done() and not watcher.cancelled():
            return None
        raise TimeoutError(f"no answer within {timeout_s:g}s")

    async def close(self) -> None:
        """Refuse new work, finish everything queued, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
            self._worker = None

    # -- worker -------------------------------------------------------------------------------------------------

    def _release(self, ticket: Ticket) -> None:
        if not ticket.released:
            ticket.released = True
            self._pending_texts -= len(ticket.texts)
            self._pending_rows -= ticket.rows
            self._set_depth()

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._pending_texts)

    def _live_head(self, now: float) -> Ticket | None:
        """Drop abandoned or expired requests from the front; return the oldest live one."""
        pending = self._pending
        while pending:
            head = pending[0]
            if head.future.done() or now >= head.deadline:
                pending.popleft()
                self._release(head)
                continue
            return head
        return None

    def _rows_waiting(self, n_samples: int) -> int:
        return sum(t.rows for t in self._pending if t.n_samples == n_samples and not t.future.done())

    def _take(self, first: Ticket, now: float) -> list[Ticket]:
        """Remove and return ``first`` plus the queued live requests with its ``n_samples`` that fit in a batch."""
        if not self.policy.batching:
            self._pending.popleft()
            self._release(first)
            return [first]
        batch: list[Ticket] = []
        keep: deque[Ticket] = deque()
        rows = 0
        full = False
        for ticket in self._pending:
            if ticket.future.done() or now >= ticket.deadline:
                self._release(ticket)
            elif full or ticket.n_samples != first.n_samples:
                keep.append(ticket)
            elif not batch or rows + ticket.rows <= self.policy.max_batch_rows:
                batch.append(ticket)
                rows += ticket.rows
                self._release(ticket)
            else:
                full = True  # keep FIFO order among equal n_samples: later ones wait for the next batch
                keep.append(ticket)
        self._pending = keep
        return batch

    async def _next_head(self) -> Ticket | None:
        """The oldest live request, waiting for one; ``None`` once closing with nothing left."""
        while True:
            first = self._live_head(time.perf_counter())
            if first is not None or self._closing:
                return first
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _next_batch(self, first: Ticket) -> list[Ticket]:
        """``first`` and the requests merged with it; empty when none is still live (abandoned or expired)."""
        if self.policy.batching and self.policy.max_wait_ms > 0:
            # the window opens when the first request arrived: one that already waited for a busy engine runs now
            until = first.enqueued + self.policy.max_wait_ms / 1000
            while not self._closing and self._rows_waiting(first.n_samples) < self.policy.max_batch_rows:
                remaining = until - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            if first.future.done():  # abandoned while waiting: the next head opens its own window
                return []
        return self._take(first, time.perf_counter())

    async def _run(self) -> None:
        while True:
            first: Ticket | None = None
            batch: list[Ticket] = []
            try:
                first = await self._next_head()
                if first is None:
                    return
                batch = await self._next_batch(first)
                if batch:  # empty when every candidate expired during the window
                    await self._dispatch(batch)
            except Exception as error:
                # a bug here must cost only the requests at hand, never the worker: every later request of this
                # model would otherwise wait for its deadline while /readyz still reports ready
                logger.exception("batch of model %s failed", self.engine.name)
                self._fail([first, *batch] if first is not None else list(self._pending), error)
                await asyncio.sleep(0)  # never a busy loop that starves the event loop, whatever failed

    def _fail(self, tickets: Sequence[Ticket], error: Exception) -> None:
        """Take ``tickets`` out of the queue and resolve each with ``error`` (the route answers 500)."""
        failed = {id(t) for t in tickets}
        self._pending = deque(t for t in self._pending if id(t) not in failed)
        for ticket in tickets:
            self._release(ticket)
            if not ticket.future.done():
                ticket.future.set_exception(error)

    async def _dispatch(self, batch: list[Ticket]) -> None:
        """One engine call for ``batch`` on the executor; each request gets its slice (or the engine's error)."""
        loop = asyncio.get_running_loop()
        n_samples = batch[0].n_samples
        started = time.perf_counter()
        batch_seed = self._seeds.getrandbits(31)
        seeds = [batch_seed if t.seed is None else t.seed for t in batch]
        requests = [(t.texts, seed) for t, seed in zip(batch, seeds, strict=True)]
        policies = [t.policy for t in batch]
        tolerances = [t.mc_tolerance for t in batch]
        try:
            outputs, engine_s = await loop.run_in_executor(
                self.executor, self._infer, requests, n_samples, policies, tolerances
            )
        except Exception as error:  # the engine failed: every request in the batch gets the error
            for ticket in batch:
                if not ticket.future.done():
                    ticket.future.set_exception(error)
            return
        if len(outputs) != len(batch):
            raise RuntimeError(f"model {self.engine.name} answered {len(outputs)} of {len(batch)} requests")
        n_texts = sum(len(t.texts) for t in batch)
        for ticket, seed, predictions in zip(batch, seeds, outputs, strict=True):
            if not ticket.future.done():
                ticket.future.set_result(
                    Result(predictions, seed, started - ticket.enqueued, engine_s, n_texts, len(batch))
                )

    def _infer(
        self,
        requests: list[tuple[Sequence[str], int]],
        n_samples: int,
        policies: list[DecisionPolicy],
        tolerances: list[float],
    ) -> tuple[list[list[PredictionDict]], float]:
        """Executor thread: one engine call, then the JSON-ready dicts and the metrics."""
        start = time.perf_counter()
        results = self.engine.predict_many(requests, n_samples, policies, tolerances)
        engine_s = time.perf_counter() - start
        for predictions in results:
            for p in predictions:  # NaN would propagate into both; refuse to serve it (the caller answers 500)
                if not (math.isfinite(p.entropy) and math.isfinite(p.mutual_information)):
                    raise FloatingPointError(f"model {self.engine.name} produced a non-finite prediction")
        outputs = [[prediction_dict(p) for p in predictions] for predictions in results]
        if self.metrics is not None:
            flat = [p for predictions in results for p in predictions]
            self.metrics.observe_batch(len(flat), [p.n_samples_used for p in flat], engine_s)
            self.metrics.observe_predictions(
                (p.entropy for p in flat), (p.mutual_information for p in flat), (p.oov_fraction for p in flat)
            )
            self.metrics.observe_decisions(flat)
        return outputs, engine_s
