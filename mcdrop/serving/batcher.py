"""Batching across concurrent requests: one bounded queue, one worker task and one inference thread per model.

Requests are queued with their own texts, sample count and seed. The worker takes the oldest live request, then
every other queued request with the same ``n_samples`` (FIFO) until the merged batch reaches ``max_batch_rows``
rows (texts x samples), waiting at most ``max_wait_ms`` after the first one arrived for more to join. The batch is
one ``engine.predict_many`` call, run on the model's own executor thread (never on the event loop, never behind
another model's work); each request gets its own slice. The engine derives every request's dropout masks from its
own seed alone, so a seeded request gets the same answer merged or alone. Requests with different ``mc_tolerance``
merge too: the engine stops each text on its own samples and tolerance (a text of a tolerance-0 request simply runs
every round), so merging them changes no answer and keeps batches large, where splitting by tolerance would only
make more, smaller engine calls. Requests without a seed share one seed drawn for their batch: each answer is
reproducible from the seed it reports, and the batch pays for one set of masks instead of one per request. Under
load no waiting is needed: requests that arrive while the engine is busy form the next batch.

Overload and deadlines: ``submit`` refuses at once (:class:`~mcdrop.core.errors.Overloaded`) when the queued texts,
rows or cost units (queued plus running) would pass their limits (:mod:`mcdrop.serving.queue`), before anything
starts. A request whose future is cancelled or whose deadline has passed is skipped by the worker, so a client
that gave up costs nothing more. The engine call itself gets a deadline it checks before every tail pass: the
latest deadline among the batch's requests still waiting (none waiting: now), so a batch nobody waits for stops
within one pass and answers :class:`~mcdrop.core.errors.DeadlineExceeded`. An unexpected error while forming or
handing back a batch fails that batch's requests (and is logged); the worker goes on with the next.

Shutdown: ``stop_at(t)`` refuses new requests and caps every engine deadline at ``t``; queued requests still run
until then, and whatever is left at ``t`` (queued, or in the engine) is answered
:class:`~mcdrop.core.errors.ShuttingDown`. ``close`` then waits for the worker.

    policy = BatchPolicy(max_batch_rows=32768, max_wait_ms=2, queue_limit=1024, queue_limit_rows=1_048_576)
    batcher = Batcher(engine, executor, policy)
    batcher.start()                                   # inside the running event loop
    ticket = batcher.submit(["good film"], n_samples=100, seed=7, timeout_s=30, cost=300)
    result = await batcher.wait(ticket, timeout_s=30)  # TimeoutError past it; None if `gone` fires first
    batcher.stop_at(time.perf_counter() + 23)         # SIGTERM: no new work, nothing running past that
    await batcher.close()                             # finishes what is queued (until then), stops the worker
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol

from mcdrop.core.cost import Deadline
from mcdrop.core.decisions import DecisionPolicy
from mcdrop.core.engine import DEFAULT_POLICY, Prediction
from mcdrop.core.errors import DeadlineExceeded, ShuttingDown
from mcdrop.serving.presentation import PredictionDict, prediction_dict
from mcdrop.serving.queue import TicketQueue
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
        deadline: Deadline = None,
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
        self.queue = TicketQueue(engine.name, policy, self._set_depth)
        self._wakeup = asyncio.Event()
        self._closing = False
        self._stop_at = math.inf  # engine work and queued requests end here (shutdown); +inf: no shutdown
        self._worker: asyncio.Task[None] | None = None
        self._seeds = random.Random()  # seeds must be reproducible, not secret: no system call per batch

    @property
    def queued_texts(self) -> int:
        return self.queue.texts

    @property
    def queued_rows(self) -> int:
        return self.queue.rows

    @property
    def queued_cost(self) -> int:
        """Cost units queued or in the engine."""
        return self.queue.cost + self.queue.running_cost

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
        cost: int = 0,
        mc_tolerance: float = 0.0,
    ) -> Ticket:
        """Queue a request that costs ``cost`` units; raises :class:`Overloaded` (nothing queued) or
        :class:`ShuttingDown`."""
        if self._closing or self._stop_at < math.inf:
            raise ShuttingDown(f"model {self.engine.name} is shutting down")
        self.queue.admit(len(texts), len(texts) * n_samples, cost)
        now = time.perf_counter()
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        ticket = Ticket(
            texts, n_samples, seed, now + timeout_s, future, now, policy, cost=cost, mc_tolerance=mc_tolerance
        )
        self.queue.push(ticket)
        self._wakeup.set()
        return ticket

    def abandon(self, ticket: Ticket) -> None:
        """The caller gave up (deadline, disconnect): cancel it so the worker skips it, or the engine stops it."""
        ticket.future.cancel()
        self.queue.release(ticket)

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

    def stop_at(self, when: float) -> None:
        """Shutdown: refuse new requests, and let no work (queued or running) go on past ``when``
        (``time.perf_counter()``)."""
        self._stop_at = min(self._stop_at, when)
        self._wakeup.set()

    async def close(self) -> None:
        """Refuse new work, finish everything queued (until ``stop_at``, if given), then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
            self._worker = None

    # -- worker -------------------------------------------------------------------------------------------------

    def _set_depth(self, texts: int) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(texts)

    async def _next_head(self) -> Ticket | None:
        """The oldest live request, waiting for one; ``None`` once closing with nothing left (or past stop_at)."""
        while True:
            now = time.perf_counter()
            if now >= self._stop_at and len(self.queue):
                left = list(self.queue.pending)
                self._fail(left, ShuttingDown(f"model {self.engine.name} is shutting down; retry later"))
            first = self.queue.live_head(now)
            if first is not None or self._closing:
                return first
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _next_batch(self, first: Ticket) -> list[Ticket]:
        """``first`` and the requests merged with it; empty when none is still live (abandoned or expired)."""
        if self.policy.batching and self.policy.max_wait_ms > 0:
            # the window opens when the first request arrived: one that already waited for a busy engine runs now
            until = first.enqueued + self.policy.max_wait_ms / 1000
            while not self._closing and self.queue.rows_waiting(first.n_samples) < self.policy.max_batch_rows:
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
        return self.queue.take(first, time.perf_counter())

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
                self._fail([first, *batch] if first is not None else list(self.queue.pending), error)
                await asyncio.sleep(0)  # never a busy loop that starves the event loop, whatever failed

    def _fail(self, tickets: Sequence[Ticket], error: Exception) -> None:
        """Take ``tickets`` out of the queue and resolve each with ``error``."""
        self.queue.remove(tickets)
        for ticket in tickets:
            self.queue.release(ticket)
            if not ticket.future.done():
                ticket.future.set_exception(error)

    def _deadline(self, batch: Sequence[Ticket]) -> Deadline:
        """The engine's deadline for ``batch``: the latest of its requests still waiting, at most ``stop_at``."""

        def deadline() -> float:  # called on the inference thread: it only reads the futures' states
            waiting = [t.deadline for t in batch if not t.future.done()]
            return min(max(waiting, default=-math.inf), self._stop_at)

        return deadline

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
        self.queue.running_cost = sum(t.cost for t in batch)
        try:
            outputs, engine_s = await loop.run_in_executor(
                self.executor, self._infer, requests, n_samples, policies, tolerances, self._deadline(batch)
            )
        except Exception as error:  # the engine failed or stopped: every request in the batch gets the error
            if isinstance(error, DeadlineExceeded) and time.perf_counter() >= self._stop_at:
                error = ShuttingDown(f"model {self.engine.name} is shutting down; its work was stopped, retry later")
            for ticket in batch:
                if not ticket.future.done():
                    ticket.future.set_exception(error)
            return
        finally:
            self.queue.running_cost = 0
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
        deadline: Deadline,
    ) -> tuple[list[list[PredictionDict]], float]:
        """Executor thread: one engine call, then the JSON-ready dicts and the metrics."""
        start = time.perf_counter()
        results = self.engine.predict_many(requests, n_samples, policies, tolerances, deadline=deadline)
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
