"""How every refusal reads over HTTP: the domain errors of :mod:`mcdrop.core.errors` mapped to statuses, once.

Every refusal answers ``{"detail": "<one line>"}``:

* a domain error (:class:`~mcdrop.core.errors.McdropError`) gets the status of its class in ``STATUS`` (503s
  also say when to retry);
* FastAPI's own refusals (``HTTPException``: auth, 413, 504, unknown paths) keep their status and detail;
* a request FastAPI itself could not validate (path or query parameters) gets 422 naming each field.

Anything else is an unexpected error: :class:`~mcdrop.serving.context.RequestContextMiddleware` logs it with the
request id and answers a plain 500.
"""

from __future__ import annotations

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

logger = logging.getLogger(__name__)

RETRY_AFTER_OVERLOADED_S = 1
RETRY_AFTER_LOADING_S = 5

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


def detail_response(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    if not isinstance(detail, str):
        detail = str(detail)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    return detail_response(error.status_code, error.detail, error.headers)


async def _domain_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, McdropError)
    status = status_of(error)
    if status == 500:
        raise error  # not a refusal: the request-context middleware logs it and answers 500
    if isinstance(error, OutOfMemory):
        logger.warning("%s", error)
    return detail_response(status, str(error), retry_after(status))


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    messages = [
        f"{'.'.join(str(part) for part in item['loc'][1:]) or item['loc'][0]}: {item['msg']}" for item in error.errors()
    ]
    return detail_response(422, "; ".join(messages) or "invalid request")


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal answers ``{"detail": "<one line>"}`` with the right status."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(McdropError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
