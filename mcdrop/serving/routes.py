"""HTTP endpoints (DESIGN §4): predict, model listing, health, readiness and metrics.

The predict hot path is kept to: (past the in-flight limit, a 503 before any of this: :mod:`.admission`) auth ->
media type -> read the body (counting bytes) -> a structural pass and one pydantic pass over the JSON -> limits ->
queue -> engine (on the inference thread) -> one serialisation of the dicts the batcher already built.
The response model documents the answer in OpenAPI but is not re-validated per request: FastAPI's default
response path (validate, ``jsonable_encoder``, ``json.dumps``) costs 57 µs for a one-text answer and 1.7 ms for
32 texts; ``pydantic_core.to_json`` on the dicts costs 1.6 µs and 40 µs. Refusals are raised as domain errors or
``HTTPException`` and answered by :mod:`mcdrop.serving.errors`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic_core import to_json
from starlette.requests import ClientDisconnect

from mcdrop.serving import request_terms
from mcdrop.serving.context import TIMING_KEY, RequestTiming, request_id_var
from mcdrop.serving.dependencies import (
    AnyService,
    Authorized,
    ReadyService,
    check_media_type,
    read_body,
    run_prediction,
)
from mcdrop.serving.errors import RETRY_AFTER_LOADING_S
from mcdrop.serving.presentation import model_description
from mcdrop.serving.registry import ServedModel, Service
from mcdrop.serving.responses import ErrorBody, Health, ModelDetail, ModelList, PredictResponse, Readiness
from mcdrop.serving.schemas import PREDICT_EXAMPLE_REQUEST, PredictRequest, check_limits, parse_predict_request

logger = logging.getLogger(__name__)
# FastAPI tries routes in order and each candidate that fails costs microseconds: ``create_app`` puts the predict
# route (``predict_router``) first, then /v2's inference routes, ahead of the listing and health routes (``router``).
predict_router = APIRouter()
router = APIRouter()


def _error(status: int, detail: str, example: str) -> dict[str, Any]:
    return {
        "model": ErrorBody,
        "description": detail,
        "content": {"application/json": {"example": {"detail": example}}},
    }


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error(401, "API keys are on and none was sent", "missing API key: send 'Authorization: Bearer <key>'"),
    403: _error(403, "the API key is not one of the configured keys", "invalid API key"),
}
_NOT_READY = _error(503, "models are still loading (Retry-After)", "not ready: models are loading")


@predict_router.post(
    "/v1/predict",
    response_model=PredictResponse,
    summary="MC dropout predictions with uncertainty",
    responses={
        **_AUTH_ERRORS,
        404: _error(404, "unknown model", "model 'nope' not found; available: rt-gru, rt-mlp"),
        413: _error(413, "body too large", "body: at most 1048576 bytes (Content-Length is 2000000)"),
        415: _error(
            415, "the body is not declared as JSON, or is compressed", "body: expected Content-Type: application/json"
        ),
        422: _error(
            422, "invalid input: the field and the limit are named", "texts: at most 64 texts per request (got 65)"
        ),
        503: _error(
            503,
            "overloaded: too many predictions in progress or queued, or not ready (Retry-After)",
            "model rt-mlp is overloaded: 1020 texts queued (limit 1024); retry later",
        ),
        504: _error(504, "no answer within MCDROP_REQUEST_TIMEOUT_S", "deadline exceeded: no answer within 30s"),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": PredictRequest.model_json_schema(),
                    "example": PREDICT_EXAMPLE_REQUEST,
                }
            },
        }
    },
)
async def predict(request: Request, _: Authorized, service: ReadyService) -> Response:
    """Classify texts with N stochastic passes and report the uncertainty of each prediction.

    A seeded request gets the same answer whether it ran alone or merged with others. Without a seed the server
    draws one and returns it, so any answer can be reproduced.
    """
    try:
        check_media_type(request)
        body = await read_body(request, service.settings.max_body_bytes)
    except ClientDisconnect:
        return Response(status_code=499)  # the client went away mid-upload: nobody to answer; counted as a 4xx
    return await _predict(request, service, body)


async def _predict(request: Request, service: Service, body: bytes) -> Response:
    timing: RequestTiming = request.scope[TIMING_KEY]
    settings = service.settings
    parsed = parse_predict_request(body, service.limits)
    check_limits(parsed, service.limits)
    served = service.resolve(parsed.model)
    policy = request_terms.decision_policy(
        service.settings, served, parsed.max_risk, parsed.coverage, parsed.max_novelty
    )
    mc_tolerance = request_terms.mc_tolerance(service.settings, served, parsed.mc_tolerance)
    n_samples = parsed.n_samples or served.default_n_samples
    cost = request_terms.admissible_cost(service.settings, served, parsed.texts, n_samples)
    parsed_at = time.perf_counter()
    timing.parse_s = parsed_at - timing.start
    remaining_s = settings.request_timeout_s - (parsed_at - timing.start)
    ticket, result = await run_prediction(
        request, service, served, parsed.texts, n_samples, parsed.seed, remaining_s, policy, cost, mc_tolerance
    )
    if result is None:
        return Response(status_code=499)  # nobody is listening; counted as a 4xx
    answered = time.perf_counter()
    content = to_json(  # pydantic-core's serializer: several times faster than json.dumps on these dicts
        {
            "request_id": request_id_var.get(),
            "model": served.engine.name,
            "model_version": served.engine.version,
            "n_samples": n_samples,
            "seed": result.seed,
            "predictions": result.predictions,
        }
    )
    timing.queue_s = result.queue_s
    timing.engine_s = result.engine_s
    timing.handoff_s = answered - ticket.enqueued - result.queue_s - result.engine_s
    timing.encode_s = time.perf_counter() - answered
    timing.batch_texts = result.batch_texts
    timing.batch_requests = result.batch_requests
    timing.predicted = True
    return Response(content, media_type="application/json")


def _model_summary(service: Service, served: ServedModel) -> dict[str, Any]:
    info = model_description(served.engine)
    info["default_n_samples"] = served.default_n_samples
    info["default"] = served.engine.name == service.default_model
    return info


@router.get("/v1/models", response_model=ModelList, responses={**_AUTH_ERRORS, 503: _NOT_READY})
async def list_models(_: Authorized, service: ReadyService) -> dict[str, Any]:
    """Every served model: name, version, architecture, labels, default n_samples and training metrics."""
    return {
        "models": [_model_summary(service, served) for served in service.models.values()],
        "default_model": service.default_model,
    }


@router.get(
    "/v1/models/{name}",
    response_model=ModelDetail,
    responses={**_AUTH_ERRORS, 404: _error(404, "unknown model", "model 'nope' not found"), 503: _NOT_READY},
)
async def get_model(name: str, _: Authorized, service: ReadyService) -> dict[str, Any]:
    """One model's summary plus its full checkpoint configuration (training set-up and metrics)."""
    served = service.resolve(name)
    return {**_model_summary(service, served), "config": served.engine.config}


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers (it does not wait for models)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
async def readyz(service: AnyService) -> JSONResponse:
    """200 once the models are loaded and warmed up, with any checkpoint that failed to load named in ``failed``;
    503 with Retry-After before, when loading failed as a whole, or once shutting down."""
    body = {
        "status": service.status,
        "models": sorted(service.models),
        "detail": service.detail,
        "failed": {failure.entry: failure.detail for failure in service.failures},
    }
    if service.ready:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_LOADING_S)})


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(service: AnyService) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
