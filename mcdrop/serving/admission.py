"""The in-flight limit as ASGI middleware: it counts the predictions the app has, and refuses past the limit.

Under ``mcdrop serve`` most refusals never get here: the HTTP protocol answers them before it would start the app
(:mod:`.busy`). ``AdmissionMiddleware`` sits outside every other middleware; it holds a prediction's slot from its
arrival to its answer, its body included (which ``MCDROP_BODY_TIMEOUT_S`` bounds: taking the slot only once the
body is read would let every request that arrives meanwhile through, and the limit would not hold), and refuses,
with the gate's answer and delay, what reaches it while the limit is full: requests the protocol let through in
the same loop turn, and every request under another server or an in-process client.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from mcdrop.serving.busy import PREDICT_PATH, BusyGate, is_prediction
from mcdrop.serving.errors import RETRY_AFTER_OVERLOADED_S
from mcdrop.serving.raw_answers import new_request_id


class AdmissionMiddleware:
    """Refuses ``POST /v1/predict`` and the ``/v2`` infer calls at once, before anything reads them, while
    ``gate`` is full (``{"error"}`` on ``/v2``, as the protocol's clients expect)."""

    def __init__(self, app: ASGIApp, gate: BusyGate) -> None:
        self.app = app
        self.gate = gate
        self._headers = {
            key: [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"%d" % RETRY_AFTER_OVERLOADED_S),
            ]
            for key, body in gate.bodies.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_prediction(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if gate.full():
            await self._refuse(scope, send)
            return
        gate.in_flight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            gate.in_flight.count -= 1

    async def _refuse(self, scope: Scope, send: Send) -> None:
        start = time.perf_counter()
        await self.gate.wait()
        v2 = scope["path"] != PREDICT_PATH
        key = "error" if v2 else "detail"
        headers = [*self._headers[key], (b"x-request-id", new_request_id().encode())]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": self.gate.bodies[key]})
        self.gate.refused(v2, start)
