"""Typed FastAPI dependencies of the routes: the API-key check, the ready service, the body's media type and its
bounded read, and the watcher that notices a client that went away.

    async def route(service: ReadyService, _: Authorized) -> ...

``Authorized`` answers 401/403 when API keys are on and the request has none or a wrong one; ``ReadyService`` is
the :class:`~mcdrop.serving.registry.Service`, or 503 with Retry-After while models load, after loading failed, and
once the server is shutting down. ``check_media_type`` answers 415 unless the body is declared as uncompressed
JSON; ``read_body`` 413 past the limit.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Receive

from mcdrop.core.decisions import DecisionPolicy
from mcdrop.core.errors import DeadlineExceeded, Overloaded
from mcdrop.serving.errors import RETRY_AFTER_LOADING_S
from mcdrop.serving.registry import ServedModel, Service
from mcdrop.serving.schemas import shorten
from mcdrop.serving.tickets import Result, Ticket

_bearer = HTTPBearer(auto_error=False, description="Needed when the server runs with MCDROP_API_KEYS.")


# async: FastAPI would run a plain function on its thread pool, a thread hop per request
async def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def not_ready(service: Service) -> HTTPException:
    """The 503 (with Retry-After) that answers while models load, after a failed load, and while shutting down."""
    reasons = {"failed": f"not ready: {service.detail}", "stopping": "not ready: shutting down"}
    reason = reasons.get(service.status, "not ready: models are loading")
    return HTTPException(503, reason, headers={"Retry-After": str(RETRY_AFTER_LOADING_S)})


async def ready_service(request: Request) -> Service:
    """The service once it is ready; 503 with Retry-After before, after a failed load, and while shutting down."""
    service: Service = request.app.state.service
    if not service.ready:
        service.metrics.reject(None, "not_ready")
        raise not_ready(service)
    return service


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """With API keys configured: 401 when no bearer key is sent, 403 when it is not one of them."""
    digests = request.app.state.service.api_key_digests
    if not digests:
        return
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            401, "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
        )
    # digests of equal length: compare_digest on the raw keys would take time that depends on the keys' lengths
    sent = hashlib.sha256(credentials.credentials.encode()).digest()
    matched = False
    for digest in digests:  # compare against every key: the time taken does not say which one (or whether one) matched
        matched |= hmac.compare_digest(sent, digest)
    if not matched:
        raise HTTPException(403, "invalid API key")


Authorized = Annotated[None, Depends(require_api_key)]
ReadyService = Annotated[Service, Depends(ready_service)]
AnyService = Annotated[Service, Depends(service_of)]


_JSON_TYPE = re.compile(r"application/(?:[a-z0-9!#$&^_.-]+\+)?json")  # application/json, application/*+json
_UTF8 = ("utf-8", "utf8")


def check_media_type(request: Request) -> None:
    """415 unless the body is declared as JSON (``application/json`` or ``application/*+json``, in UTF-8 when a
    charset is given) and not compressed: a gzip body would otherwise read as invalid JSON."""
    encoding = request.headers.get("content-encoding", "identity")
    if encoding.strip().lower() not in ("", "identity"):
        raise HTTPException(
            415, f"body: Content-Encoding {shorten(encoding)!r} is not supported; send the JSON uncompressed"
        )
    declared = request.headers.get("content-type")
    media_type, *params = (declared or "").lower().split(";")
    if not _JSON_TYPE.fullmatch(media_type.strip()):
        got = shorten(declared) if declared else "none"
        raise HTTPException(415, f"body: expected Content-Type: application/json (got {got})")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in _UTF8:
            raise HTTPException(415, f"body: JSON must be UTF-8 (got charset={shorten(value.strip())})")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body: at most {limit} bytes (Content-Length is {declared})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # counts what actually arrives (chunked bodies have no Content-Length)
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body: at most {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone (or the response is complete): the ``gone`` of ``Batcher.wait``."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_prediction(
    request: Request,
    service: Service,
    served: ServedModel,
    texts: list[str],
    n_samples: int,
    seed: int | None,
    timeout_s: float,
    policy: DecisionPolicy,
    cost: int,
    mc_tolerance: float,
) -> tuple[Ticket, Result | None]:
    """Queue a prediction and wait for it, as both APIs do: overload counted and re-raised (503), the deadline
    answered 504, and ``None`` for the result when the client went away first."""
    try:
        ticket = served.batcher.submit(texts, n_samples, seed, timeout_s, policy, cost, mc_tolerance=mc_tolerance)
    except Overloaded:
        service.metrics.reject(served.engine.name, "overloaded")
        raise
    try:
        result = await served.batcher.wait(ticket, timeout_s, disconnected(request.receive))
    except (TimeoutError, DeadlineExceeded):  # waited past the deadline, or the engine stopped at it
        service.metrics.reject(served.engine.name, "timeout")
        deadline_s = service.settings.request_timeout_s
        raise HTTPException(504, f"deadline exceeded: no answer within {deadline_s:g}s") from None
    return ticket, result
