"""Request context for every HTTP request: request id, timing, request metrics and the last-resort 500.

``RequestContextMiddleware`` is a plain ASGI middleware (no per-request ``Request`` object or extra task):

* takes ``X-Request-ID`` from the client when it is sane (1-64 characters from ``[A-Za-z0-9._:-]``), else makes
  one, puts it in a context variable (``RequestIdFilter`` adds it to every log record as ``request_id``) and
  returns it in the ``X-Request-ID`` response header;
* times the request and exposes where the time went (``RequestTiming``, filled by the routes) as a
  ``Server-Timing`` header and in the access log line;
* counts ``mcdrop_requests_total`` / ``mcdrop_request_duration_seconds`` by route template (never the raw path);
* writes the access log line (:mod:`mcdrop.serving.access_log`);
* turns an unexpected exception into a logged traceback (with the request id) and a plain
  ``500 {"detail": "internal server error"}`` (``{"error": ...}`` under ``/v2``); a client that went away
  mid-request is no error (counted 499).

How each refusal reads (``{"detail": "<one line>"}``) is :mod:`mcdrop.serving.errors`' job.
"""

from __future__ import annotations

import contextvars
import logging
import random
import re
import time
from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcdrop.serving.access_log import log_request, logged_path
from mcdrop.serving.errors import is_v2_path
from mcdrop.serving.telemetry import Metrics

logger = logging.getLogger(__name__)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("mcdrop_request_id", default="-")

TIMING_KEY = "mcdrop.timing"
_ids = random.Random()  # seeded from os.urandom once; a syscall per request id would cost more than the id
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_INTERNAL_ERROR = b'{"detail":"internal server error"}'
_INTERNAL_ERROR_V2 = b'{"error":"internal server error"}'  # the Open Inference Protocol's clients read "error"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request) so log formats can use ``%(request_id)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


@dataclass
class RequestTiming:
    """Where a request's time went, in seconds; the predict route fills the parts it knows."""

    start: float
    parse_s: float = 0.0  # body read + JSON/type validation + limits
    queue_s: float = 0.0  # waiting for its batch to start
    engine_s: float = 0.0  # the engine call of its batch
    handoff_s: float = 0.0  # results to dicts, metrics, back to the event loop
    encode_s: float = 0.0  # building the JSON response
    batch_texts: int = 0
    batch_requests: int = 0
    predicted: bool = False

    def server_timing(self, total_s: float) -> bytes:
        if not self.predicted:
            return f"total;dur={total_s * 1000:.3f}".encode()
        parts = (
            ("total", total_s),
            ("parse", self.parse_s),
            ("queue", self.queue_s),
            ("engine", self.engine_s),
            ("handoff", self.handoff_s),
            ("encode", self.encode_s),
        )
        return ", ".join(f"{name};dur={value * 1000:.3f}" for name, value in parts).encode()


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SANE_ID.fullmatch(candidate):
                return candidate
            break
    return f"{_ids.getrandbits(128):032x}"


class RequestContextMiddleware:
    """See the module docstring. Must be the outermost user middleware."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        timing = RequestTiming(start)
        scope[TIMING_KEY] = timing
        status = 0
        total_s = 0.0

        async def send_with_context(message: Message) -> None:
            nonlocal status, total_s
            if message["type"] == "http.response.start":
                status = message["status"]
                total_s = time.perf_counter() - start
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"server-timing", timing.server_timing(total_s)))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        except ClientDisconnect:
            pass  # the client went away while its request was read: nobody to answer (counted 499 below)
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], logged_path(scope))
            if status == 0:
                body = _INTERNAL_ERROR_V2 if is_v2_path(scope["path"]) else _INTERNAL_ERROR
                await send_with_context(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            if status == 0:  # nothing was sent (the client went away before any answer)
                status, total_s = 499, time.perf_counter() - start
            self.metrics.observe_request(endpoint, scope["method"], status, total_s)
            if self.access_log:
                log_request(scope, status, total_s, timing)
            request_id_var.reset(token)


__all__ = ["TIMING_KEY", "RequestContextMiddleware", "RequestIdFilter", "RequestTiming", "request_id_var"]
