"""How every refusal reads over HTTP: the domain errors of :mod:`mcdrop.core.errors` mapped to statuses, once.

Every refusal answers ``{"detail": "<one line>"}`` (``{"error": "<one line>"}`` under ``/v2``, see below):

* a domain error (:class:`~mcdrop.core.errors.McdropError`) gets the status of its class in ``STATUS`` (503s
  also say when to retry);
* FastAPI's own refusals (``HTTPException``: auth, 413, 504, unknown paths) keep their status and detail;
* a request FastAPI itself could not validate (path or query parameters) gets 422 naming each field.

Under ``/v2`` (the Open Inference Protocol) the same refusals answer ``{"error": "<one line>"}``, the body the
protocol's clients read, and invalid input is 400 instead of 422; auth, 413, 404, 503 and 504 keep their status.

Whatever the request, a message stays short: at most ``MAX_PROBLEMS`` problems are listed (and the rest counted),
values a client sent are cut (:func:`mcdrop.serving.schemas.shorten`), and a body never exceeds
``MAX_ERROR_BODY_BYTES``.

Anything else is an unexpected error: :class:`~mcdrop.serving.context.RequestContextMiddleware` logs it with the
request id and answers a plain 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mcdrop.core.errors import (
    DeadlineExceeded,
    InputError,
    McdropError,
    ModelNotFound,
    ModelUnavailable,
    OutOfMemory,
    Overloaded,
    ShuttingDown,
)
from mcdrop.serving.schemas import MAX_PROBLEMS, join_problems, shorten

logger = logging.getLogger(__name__)

RETRY_AFTER_OVERLOADED_S = 1
RETRY_AFTER_LOADING_S = 5
V2_PREFIX = "/v2"
# Statuses the Open Inference Protocol spells differently: invalid input is 400 there.
V2_STATUS: dict[int, int] = {422: 400}
MAX_ERROR_BODY_BYTES = 4096
_MAX_DETAIL_CHARS = 1000  # escaped control characters take 6 bytes each: the body stays under 4 KiB anyway

# The status of each domain error a request can meet; checked in order (subclasses first).
STATUS: tuple[tuple[type[McdropError], int], ...] = (
    (InputError, 422),
    (ModelNotFound, 404),
    (Overloaded, 503),
    (ShuttingDown, 503),
    (OutOfMemory, 503),
    (ModelUnavailable, 503),
    (DeadlineExceeded, 504),
)


def status_of(error: McdropError) -> int:
    """The HTTP status that answers ``error``; 500 for a domain error no request should meet (a bug)."""
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 500


def retry_after(status: int) -> dict[str, str] | None:
    return {"Retry-After": str(RETRY_AFTER_OVERLOADED_S)} if status == 503 else None


def _capped(key: str, message: Any) -> dict[str, str]:
    """``{key: message}``, the message cut so that the body stays within ``MAX_ERROR_BODY_BYTES``."""
    text = shorten(message if isinstance(message, str) else str(message), _MAX_DETAIL_CHARS)
    while len(json.dumps({key: text}, ensure_ascii=False).encode()) > MAX_ERROR_BODY_BYTES:
        text = shorten(text, len(text) // 2)
    return {key: text}


def detail_response(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``{"detail": ...}``, cut so that the body stays within ``MAX_ERROR_BODY_BYTES``."""
    return JSONResponse(_capped("detail", detail), status_code=status, headers=headers)


def is_v2_path(path: str) -> bool:
    """Whether ``path`` belongs to the Open Inference Protocol endpoints (``/v2`` and below)."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def _refusal(request: Request, status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The answer to a refusal in the dialect of the request's path."""
    if is_v2_path(request.url.path):
        return JSONResponse(_capped("error", detail), status_code=V2_STATUS.get(status, status), headers=headers)
    return detail_response(status, detail, headers)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    return _refusal(request, error.status_code, error.detail, error.headers)


async def _domain_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, McdropError)
    status = status_of(error)
    if status == 500:
        raise error  # not a refusal: the request-context middleware logs it and answers 500
    if isinstance(error, OutOfMemory):
        logger.warning("%s", error)
    return _refusal(request, status, str(error), retry_after(status))


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    errors = error.errors()
    messages = [
        f"{shorten('.'.join(str(part) for part in item['loc'][1:]) or str(item['loc'][0]))}: {item['msg']}"
        for item in errors[:MAX_PROBLEMS]
    ]
    return _refusal(request, 422, join_problems(messages, len(errors)) or "invalid request")


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal answers ``{"detail": "<one line>"}`` (``{"error": ...}`` under ``/v2``) with the right status."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(McdropError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
