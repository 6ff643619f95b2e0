"""Answers the HTTP protocol writes itself, as bytes, before (or instead of) the app: JSON errors with a request id,
and the count of refusals for too many connections, logged periodically instead of once each."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from mcdrop.serving.errors import RETRY_AFTER_OVERLOADED_S

_WARN_EVERY_S = 10.0  # refusals for too many connections are logged at most this often, with their count
_ids = random.Random()  # request ids of the answers written here: unique, not secret


def new_request_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


def json_answer(
    status: int, body: bytes, default_headers: list[tuple[bytes, bytes]], *, keep_alive: bool = False
) -> tuple[bytes, str]:
    """A complete HTTP/1.1 answer with the JSON ``body`` (a 503 with ``Retry-After``), and the request id it
    carries; ``Connection: close`` unless ``keep_alive``."""
    request_id = new_request_id()
    head = [STATUS_LINE[status]]
    head += [name + b": " + value + b"\r\n" for name, value in default_headers]
    if status == 503:
        head.append(b"retry-after: %d\r\n" % RETRY_AFTER_OVERLOADED_S)
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"x-request-id: " + request_id.encode() + b"\r\n",
        b"\r\n" if keep_alive else b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body, request_id


def error_response(status: int, detail: str, default_headers: list[tuple[bytes, bytes]]) -> tuple[bytes, str]:
    """A complete ``Connection: close`` JSON error answer ``{"detail": ...}`` and the request id it carries."""
    return json_answer(status, json.dumps({"detail": detail}).encode(), default_headers)


class OverLimitLog:
    """Refusals for too many connections, logged as one warning with a count at most every ``_WARN_EVERY_S``."""

    count = 0
    last = 0.0

    @classmethod
    def refused(cls, logger: Any, limit: int) -> None:
        cls.count += 1
        now = time.monotonic()
        if now - cls.last >= _WARN_EVERY_S:
            logger.warning("%d request(s) refused: more than %d connections or requests at once", cls.count, limit)
            cls.count, cls.last = 0, now
