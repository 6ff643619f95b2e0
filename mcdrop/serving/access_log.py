"""The access log: one line per request (``mcdrop.access`` logger), with the timing breakdown of predictions.

Paths are logged as their route template; an unmatched path is logged escaped and cut to 200 characters, since
the server percent-decodes paths and a raw ``%0A`` would otherwise write a line break (a forged log line)::

    "POST /v1/predict" 200 4.1ms parse=0.21ms queue=0.05ms engine=3.20ms batch=1/2
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.types import Scope

if TYPE_CHECKING:
    from mcdrop.serving.context import RequestTiming

access_logger = logging.getLogger("mcdrop.access")

_LOGGED_PATH_CHARS = 200


def logged_path(scope: Scope) -> str:
    """The route template when one matched, else the path with control and non-ASCII characters escaped."""
    route_path = getattr(scope.get("route"), "path", None)
    if isinstance(route_path, str):
        return route_path
    path: str = scope["path"]
    escaped = path.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= _LOGGED_PATH_CHARS else escaped[:_LOGGED_PATH_CHARS] + "..."


def log_request(scope: Scope, status: int, total_s: float, timing: RequestTiming) -> None:
    if not access_logger.isEnabledFor(logging.INFO):
        return
    if timing.predicted:
        access_logger.info(
            '"%s %s" %d %.1fms parse=%.2fms queue=%.2fms engine=%.2fms batch=%d/%d',
            scope["method"],
            logged_path(scope),
            status,
            total_s * 1000,
            timing.parse_s * 1000,
            timing.queue_s * 1000,
            timing.engine_s * 1000,
            timing.batch_requests,
            timing.batch_texts,
        )
    else:
        access_logger.info('"%s %s" %d %.1fms', scope["method"], logged_path(scope), status, total_s * 1000)
