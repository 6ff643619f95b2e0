"""The in-flight limit on predictions: past it, ``POST /v1/predict`` and the ``/v2`` infer calls are refused before
their body is read.

A 503 that is answered only after the body was read, parsed and validated costs about as much Python as an
answer, on the event loop and under the GIL the inference thread needs: clients that ignore ``Retry-After`` then
cut the goodput several fold. ``AdmissionMiddleware`` sits outside every other middleware and refuses a
prediction while ``InFlight.limit`` of them are being parsed, queued or run, with a prebuilt answer::

    503 {"detail": "server busy: 64 predictions in progress (limit 64); retry later"}   Retry-After: 1

The refusal is cheap but not instant: it is sent ``delay_s`` after the request arrived (``MCDROP_BUSY_DELAY_S``),
so a client that retries at once, ignoring ``Retry-After``, retries at most that often: however fast the clients,
a storm of refusals then costs a bounded share of the CPU (a timer and two sends each). A prediction holds its
slot from its arrival to its answer, its body included (which ``MCDROP_BODY_TIMEOUT_S`` bounds): taking the slot
only once the body is read would let every request that arrives meanwhile through, and the limit would not hold.
Refusals are counted in ``mcdrop_requests_total`` (as 5xx) and ``mcdrop_rejected_requests_total{reason="busy"}``,
without an access-log line: they come in floods.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcdrop.serving.errors import RETRY_AFTER_OVERLOADED_S
from mcdrop.serving.telemetry import Metrics

PREDICT_PATH = "/v1/predict"
V2_INFER_TEMPLATE = "/v2/models/{name}/infer"
_ids = random.Random()


class InFlight:
    """How many predictions are being parsed, queued or run, and how many may be."""

    __slots__ = ("count", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0


class AdmissionMiddleware:
    """Refuses ``POST /v1/predict`` and the ``/v2`` infer calls at once, before anything reads them, while
    ``in_flight`` is full (``{"error"}`` on ``/v2``, as the protocol's clients expect)."""

    def __init__(self, app: ASGIApp, in_flight: InFlight, metrics: Metrics, delay_s: float = 0.0) -> None:
        self.app = app
        self.in_flight = in_flight
        self.metrics = metrics
        self.delay_s = delay_s
        message = f"server busy: {in_flight.limit} predictions in progress (limit {in_flight.limit}); retry later"
        self._answers = {key: self._answer(key, message) for key in ("detail", "error")}

    @staticmethod
    def _answer(key: str, message: str) -> tuple[list[tuple[bytes, bytes]], Message]:
        body = json.dumps({key: message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_OVERLOADED_S).encode()),
        ]
        return headers, {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not _is_prediction(scope["path"]):
            await self.app(scope, receive, send)
            return
        in_flight = self.in_flight
        if in_flight.count >= in_flight.limit:
            await self._refuse(scope, send)
            return
        in_flight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            in_flight.count -= 1

    async def _refuse(self, scope: Scope, send: Send) -> None:
        start = time.perf_counter()
        if self.delay_s:  # jittered (0.5-1.5x): refusals held together would come back together
            await asyncio.sleep(self.delay_s * (0.5 + _ids.random()))
        request_id = f"{_ids.getrandbits(128):032x}".encode()
        v2 = scope["path"] != PREDICT_PATH
        headers, body = self._answers["error" if v2 else "detail"]
        await send({"type": "http.response.start", "status": 503, "headers": [*headers, (b"x-request-id", request_id)]})
        await send(body)
        self.metrics.reject(None, "busy")
        endpoint = V2_INFER_TEMPLATE if v2 else PREDICT_PATH  # a route template, never the raw path
        self.metrics.observe_request(endpoint, scope["method"], 503, time.perf_counter() - start)


def _is_prediction(path: str) -> bool:
    return path == PREDICT_PATH or (path.startswith("/v2/models/") and path.endswith("/infer"))
