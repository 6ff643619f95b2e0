"""Typed FastAPI dependencies of the routes: the API-key check, the ready service, and the bounded body read.

    async def route(service: ReadyService, _: Authorized) -> ...

``Authorized`` answers 401/403 when API keys are on and the request has none or a wrong one; ``ReadyService`` is
the :class:`~mcdrop.serving.registry.Service`, or 503 with Retry-After while models load, after loading failed, and
once the server is shutting down.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mcdrop.serving.errors import RETRY_AFTER_LOADING_S
from mcdrop.serving.registry import Service

_bearer = HTTPBearer(auto_error=False, description="Needed when the server runs with MCDROP_API_KEYS.")


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def ready_service(request: Request) -> Service:
    """The service once it is ready; 503 with Retry-After before, after a failed load, and while shutting down."""
    service = service_of(request)
    if not service.ready:
        service.metrics.reject(None, "not_ready")
        reasons = {"failed": f"not ready: {service.detail}", "stopping": "not ready: shutting down"}
        reason = reasons.get(service.status, "not ready: models are loading")
        raise HTTPException(503, reason, headers={"Retry-After": str(RETRY_AFTER_LOADING_S)})
    return service


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """With API keys configured: 401 when no bearer key is sent, 403 when it is not one of them."""
    digests = service_of(request).api_key_digests
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
