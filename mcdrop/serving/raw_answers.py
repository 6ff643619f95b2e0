"""Answers the HTTP protocol writes itself, as bytes, before (or instead of) the app: JSON errors with a request id,
and the count of refusals for too many connections, logged periodically instead of once each."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

RETRY_AFTER_S = 1  # what a 503 for too many connections tells the client
_WARN_EVERY_S = 10.0  # refusals for too many connections are logged at most this often, with their count
_ids = random.Random()  # request ids of the answers written here: unique, not secret


def error_response(status: int, detail: str, default_headers: list[tuple[bytes, bytes]]) -> tuple[bytes, str]:
    """A complete ``Connection: close`` JSON error answer and the request id it carries."""
    request_id = f"{_ids.getrandbits(128):032x}"
    body = json.dumps({"detail": detail}).encode()
    head = [STATUS_LINE[status]]
    head += [name + b": " + value + b"\r\n" for name, value in default_headers]
    if status == 503:
        head.append(b"retry-after: %d\r\n" % RETRY_AFTER_S)
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"x-request-id: " + request_id.encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body, request_id


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
