"""The in-flight limit on predictions and its refusals, shared by the HTTP protocol and the ASGI app.

Past ``InFlight.limit`` predictions being parsed, queued or run, ``POST /v1/predict`` and the ``/v2`` infer calls
are answered::

    503 {"detail": "server busy: 64 predictions in progress (limit 64); retry later"}   Retry-After: 1

(``{"error": ...}`` on ``/v2``, as that protocol's clients expect), ``delay_s`` (jittered 0.5-1.5x) after the
request arrived, so that a client retrying at once, ignoring ``Retry-After``, retries at most that often. While
more refusals are held than ``max_rate`` x ``delay_s``, the hold grows to ``held / max_rate``: the refusals go out
at no more than ``max_rate`` a second however many clients wait for one, so the share of the machine a storm can
take has a ceiling that does not grow with the storm (each waiting client costs a connection, not CPU). No
refusal is held longer than ``MAX_HOLD_S`` (jittered alike), whatever the storm: past ``max_rate`` x that many
waiting clients the ceiling gives way, so that no client waits for its answer longer than a request may take.

A storm of such clients is paid for on the event loop, under the GIL the inference threads need, so the price of
one refusal decides how much of the machine the storm takes. ``BusyGate`` keeps it to what cannot be avoided: under
``mcdrop serve`` the HTTP protocol (:mod:`.protocol`) asks it before it would start the app, and the refusal is a
loop timer and one write around a prebuilt body, with no ASGI task, no middleware and no response objects. The app's
``AdmissionMiddleware`` (:mod:`.admission`) counts the admitted predictions and refuses, with the same answer,
what the protocol let through in the same loop turn, and everything under other servers or in-process clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from mcdrop.serving.raw_answers import json_answer
from mcdrop.serving.telemetry import Metrics

PREDICT_PATH = "/v1/predict"
V2_INFER_TEMPLATE = "/v2/models/{name}/infer"
_jitter = random.Random()
TICK_S = 0.005  # held refusals are released together, on ticks this far apart
MAX_HOLD_S = 30.0  # the longest hold the rate ceiling asks for: the default request deadline
logger = logging.getLogger(__name__)


class InFlight:
    """How many predictions are being parsed, queued or run, and how many may be."""

    __slots__ = ("count", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0


def is_prediction(method: str, path: str) -> bool:
    """Whether a request counts against the in-flight limit: ``POST /v1/predict`` and ``POST /v2/.../infer``."""
    return method == "POST" and (path == PREDICT_PATH or (path.startswith("/v2/models/") and path.endswith("/infer")))


class BusyGate:
    """Whether predictions are refused now, and the refusal: its delay, its bytes and its metrics."""

    def __init__(self, in_flight: InFlight, metrics: Metrics, delay_s: float = 0.0, max_rate: float = 0.0) -> None:
        self.in_flight = in_flight
        self.metrics = metrics
        self.delay_s = delay_s
        self.max_rate = max_rate  # refusals sent per second at most, on average (0: no ceiling)
        self.held = 0  # refusals waiting for their delay
        limit = in_flight.limit
        message = f"server busy: {limit} predictions in progress (limit {limit}); retry later"
        self.bodies = {key: json.dumps({key: message}).encode() for key in ("detail", "error")}
        self._held: dict[tuple[int, int], list[tuple[Callable[..., None], tuple[Any, ...]]]] = {}

    def full(self) -> bool:
        in_flight = self.in_flight
        return in_flight.count >= in_flight.limit

    def delay(self) -> float:
        """How long this refusal waits: ``delay_s``, or ``held / max_rate`` when that is longer, jittered, since
        refusals sent together would come back together. With ``held`` clients each retrying as soon as its
        refusal comes, refusals go out at ``held / mean delay``: at most ``max_rate`` a second."""
        base = self.delay_s
        if self.max_rate and self.held > base * self.max_rate:
            base = max(base, min(self.held / self.max_rate, MAX_HOLD_S))
        return base * (0.5 + _jitter.random()) if base else 0.0

    def hold(self, loop: asyncio.AbstractEventLoop, send: Callable[..., None], *args: Any) -> None:
        """Call ``send(*args)`` after ``delay()``, rounded up to a tick, with every refusal due on that tick.

        One timer per tick instead of one per refusal: a storm of a thousand refusals a second would otherwise
        wake the event loop a thousand times a second, and each wake hands the GIL to and from the inference
        threads. ``send`` must check that its connection is still open: a refusal is not withdrawn.
        """
        delay = self.delay()
        if delay <= 0:
            loop.call_soon(send, *args)
            return
        key = (id(loop), math.ceil((loop.time() + delay) / TICK_S))
        due = self._held.get(key)
        if due is None:
            due = self._held[key] = []
            loop.call_at(key[1] * TICK_S, self._release, key)
        due.append((send, args))
        self.held += 1

    async def wait(self) -> None:
        """Wait ``delay()`` for a refusal in a coroutine (the middleware's), counted among those held."""
        if delay := self.delay():
            self.held += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self.held -= 1

    def _release(self, key: tuple[int, int]) -> None:
        due = self._held.pop(key, ())
        self.held -= len(due)
        for send, args in due:
            try:
                send(*args)
            except Exception:  # one broken connection must not hold back the others' answers
                logger.exception("a held refusal could not be sent")

    def response_bytes(self, v2: bool, default_headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
        """The complete HTTP/1.1 answer, for a protocol that writes it itself."""
        body = self.bodies["error" if v2 else "detail"]
        return json_answer(503, body, default_headers, keep_alive=keep_alive)[0]

    def refused(self, v2: bool, since: float) -> None:
        """Count a refusal: ``mcdrop_rejected_requests_total{reason="busy"}`` and the request metrics (as a 5xx),
        without an access-log line (they come in floods). ``since``: ``time.perf_counter()`` at its arrival."""
        self.metrics.reject(None, "busy")
        endpoint = V2_INFER_TEMPLATE if v2 else PREDICT_PATH  # a route template, never the raw path
        self.metrics.observe_request(endpoint, "POST", 503, time.perf_counter() - since)
