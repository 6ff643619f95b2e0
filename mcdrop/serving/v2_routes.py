"""Open Inference Protocol (KServe "V2" REST) endpoints, on the same server, batcher, auth, limits and metrics as
``/v1`` (DESIGN §10; request and answer shapes in :mod:`.v2_codec` and :mod:`.v2_encode`).

``create_app`` includes ``infer_router`` (the two infer routes) and ``router`` (the rest). Inference follows
``/v1/predict`` step for step (body read with the byte limit, one parse, the limits, the decision policy,
``Batcher.submit`` / ``Batcher.wait``), so a seeded request gets the same numbers on both. The model named in the
path is resolved first: it decides which outputs exist, and an unknown model is refused before its body is read.
A model's only version is its checkpoint's ``version``; any other is 404. ``/v2/health/*`` are open like
``/healthz`` and ``/readyz``; everything else needs the API key when keys are configured. Refusals answer
``{"error": "<one line>"}`` (:mod:`.errors`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.requests import ClientDisconnect

from mcdrop import __version__
from mcdrop.core.decisions import DecisionPolicy
from mcdrop.core.errors import ModelNotFound
from mcdrop.serving import request_terms
from mcdrop.serving.context import TIMING_KEY, RequestTiming, request_id_var
from mcdrop.serving.dependencies import AnyService, Authorized, ReadyService, not_ready, read_body, run_prediction
from mcdrop.serving.registry import ServedModel, Service
from mcdrop.serving.tickets import Result, Ticket
from mcdrop.serving.v2_codec import HEADER_LENGTH, InferRequest, parse_infer_request
from mcdrop.serving.v2_encode import (
    available_outputs,
    check_outputs,
    encode_infer_response,
    model_metadata,
    server_metadata,
)

_TAGS: list[str | Enum] = ["Open Inference Protocol (V2)"]
# FastAPI tries routes in order and each candidate that fails costs microseconds: ``create_app`` puts the inference
# routes (``infer_router``) next to ``/v1/predict``, ahead of the metadata and health routes (``router``).
infer_router = APIRouter(tags=_TAGS)
router = APIRouter(tags=_TAGS)

_INFER_EXAMPLE: dict[str, Any] = {
    "id": "req-1",
    "parameters": {"n_samples": 100, "seed": 1234},
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a gripping drama", "a dull mess"]}],
    "outputs": [{"name": "label"}, {"name": "probs"}, {"name": "mutual_information"}],
}


def _error(description: str, example: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": {"error": example}}}}


_AUTH: dict[int | str, dict[str, Any]] = {
    401: _error("API keys are on and none was sent", "missing API key: send 'Authorization: Bearer <key>'"),
    403: _error("the API key is not one of the configured keys", "invalid API key"),
}
_MODEL: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    404: _error("unknown model or version", "model 'nope' not found; available: rt-gru, rt-mlp"),
    503: _error("models are still loading (Retry-After)", "not ready: models are loading"),
}
_INFER: dict[int | str, dict[str, Any]] = {
    **_MODEL,
    400: _error("invalid input: the input, parameter or output is named", "input 'text': datatype must be BYTES"),
    413: _error("body too large", "body: at most 1048576 bytes (Content-Length is 2000000)"),
    415: _error("a compressed body", "header Content-Encoding: 'gzip' is not supported (send the body as it is)"),
    503: _error("overloaded, shutting down or not ready (Retry-After)", "model rt-mlp is overloaded; retry later"),
    504: _error("no answer within MCDROP_REQUEST_TIMEOUT_S", "deadline exceeded: no answer within 30s"),
}


def _served(service: Service, name: str, version: str | None) -> ServedModel:
    served = service.resolve(name)
    if version is not None and version != served.engine.version:
        raise ModelNotFound(f"model {name!r} has no version {version!r} (served: {served.engine.version})")
    return served


def _outputs(served: ServedModel) -> list[str]:
    calibration = served.engine.calibration
    novelty = calibration is not None and calibration.novelty is not None and served.engine.novelty_model is not None
    return available_outputs(calibration is not None, novelty)


@router.get("/v2", summary="Server metadata", responses=_AUTH)
async def v2_server_metadata(_: Authorized) -> dict[str, Any]:
    """Name, version and the protocol extensions supported (``binary_tensor_data``)."""
    return server_metadata(__version__)


@router.get("/v2/health/live", summary="Server live")
async def v2_live() -> dict[str, bool]:
    """200 once the process answers (it does not wait for models), like ``/healthz``."""
    return {"live": True}


@router.get("/v2/health/ready", summary="Server ready", responses={503: _MODEL[503]})
async def v2_ready(service: AnyService) -> dict[str, bool]:
    """200 once every model is loaded and warmed; 503 with Retry-After before, like ``/readyz``."""
    if not service.ready:
        raise not_ready(service)
    return {"ready": True}


@router.get("/v2/models/{name}", summary="Model metadata", responses=_MODEL)
async def v2_model_metadata(name: str, _: Authorized, service: ReadyService) -> dict[str, Any]:
    """The input, every output the model can produce (with datatype and shape) and the class order (``labels``)."""
    served = _served(service, name, None)
    return model_metadata(served.engine.name, served.engine.version, served.engine.labels, _outputs(served))


@router.get("/v2/models/{name}/versions/{version}", summary="Model metadata (one version)", responses=_MODEL)
async def v2_model_version_metadata(name: str, version: str, _: Authorized, service: ReadyService) -> dict[str, Any]:
    """As ``/v2/models/{name}``; 404 unless ``version`` is the model's version."""
    served = _served(service, name, version)
    return model_metadata(served.engine.name, served.engine.version, served.engine.labels, _outputs(served))


@router.get("/v2/models/{name}/ready", summary="Model ready", responses=_MODEL)
async def v2_model_ready(name: str, _: Authorized, service: ReadyService) -> dict[str, Any]:
    """200 when the model is served and ready; 404 for an unknown model, 503 while models load."""
    return {"name": _served(service, name, None).engine.name, "ready": True}


@router.get("/v2/models/{name}/versions/{version}/ready", summary="Model ready (one version)", responses=_MODEL)
async def v2_model_version_ready(name: str, version: str, _: Authorized, service: ReadyService) -> dict[str, Any]:
    """As ``/v2/models/{name}/ready``; 404 unless ``version`` is the model's version."""
    return {"name": _served(service, name, version).engine.name, "ready": True}


def _openapi_infer(*path_parameters: str) -> dict[str, Any]:
    """The request body's example and the path parameters of an infer route. Its handler reads the path
    parameters from ``request.path_params``: declared as ``str`` arguments, FastAPI would validate them on every
    request, several microseconds of event-loop time each."""
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "title": name.title()}}
        for name in path_parameters
    ]
    body = {"required": True, "content": {"application/json": {"example": _INFER_EXAMPLE}}}
    return {"parameters": parameters, "requestBody": body}


@infer_router.post("/v2/models/{name}/infer", summary="Infer", responses=_INFER, openapi_extra=_openapi_infer("name"))
async def v2_infer(request: Request, _: Authorized, service: ReadyService) -> Response:
    """MC dropout predictions as output tensors; parameters ``n_samples``, ``seed``, ``max_risk``, ``coverage``,
    ``max_novelty`` as in ``/v1/predict``. JSON or binary tensor data (``Inference-Header-Content-Length``)."""
    return await _infer(request, service, request.path_params["name"], None)


@infer_router.post(
    "/v2/models/{name}/versions/{version}/infer",
    summary="Infer (one version)",
    responses=_INFER,
    openapi_extra=_openapi_infer("name", "version"),
)
async def v2_infer_version(request: Request, _: Authorized, service: ReadyService) -> Response:
    """As ``/v2/models/{name}/infer``; 404 unless ``version`` is the model's version."""
    return await _infer(request, service, request.path_params["name"], request.path_params["version"])


@dataclass(frozen=True)
class _Admitted:
    served: ServedModel
    request: InferRequest
    policy: DecisionPolicy
    n_samples: int
    mc_tolerance: float


def _admit(request: Request, service: Service, served: ServedModel, body: bytes) -> _Admitted:
    """Parse and check the body against the limits, the model's outputs and its calibration (400 on any problem)."""
    parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), service.limits, _outputs(served))
    policy = request_terms.decision_policy(
        service.settings, served, parsed.max_risk, parsed.coverage, parsed.max_novelty
    )
    check_outputs(parsed.outputs, policy.max_risk is not None)
    mc_tolerance = request_terms.mc_tolerance(service.settings, served, parsed.mc_tolerance)
    return _Admitted(served, parsed, policy, parsed.n_samples or served.default_n_samples, mc_tolerance)


async def _infer(request: Request, service: Service, name: str, version: str | None) -> Response:
    timing: RequestTiming = request.scope[TIMING_KEY]
    settings = service.settings
    served = _served(service, name, version)
    encoding = request.headers.get("content-encoding", "identity")
    if encoding != "identity":  # a compressed body could expand past max_body_bytes after the limit was checked
        raise HTTPException(415, f"header Content-Encoding: {encoding!r} is not supported (send the body as it is)")
    try:
        body = await read_body(request, settings.max_body_bytes)
    except ClientDisconnect:
        return Response(status_code=499)  # the client went away mid-upload: nobody to answer; counted as a 4xx
    admitted = _admit(request, service, served, body)
    parsed_at = time.perf_counter()
    timing.parse_s = parsed_at - timing.start
    remaining_s = settings.request_timeout_s - (parsed_at - timing.start)
    texts, n_samples = admitted.request.texts, admitted.n_samples
    cost = request_terms.admissible_cost(service.settings, served, texts, n_samples)
    ticket, result = await run_prediction(
        request, service, served, texts, n_samples, admitted.request.seed, remaining_s, admitted.policy, cost,
        admitted.mc_tolerance,
    )  # fmt: skip
    if result is None:
        return Response(status_code=499)  # nobody is listening; counted as a 4xx
    return _respond(admitted, ticket, result, timing)


def _respond(admitted: _Admitted, ticket: Ticket, result: Result, timing: RequestTiming) -> Response:
    answered = time.perf_counter()
    engine = admitted.served.engine
    request_id = request_id_var.get()
    parameters: dict[str, Any] = {"n_samples": admitted.n_samples, "seed": result.seed, "request_id": request_id}
    if engine.calibration is not None:  # the levels applied, server defaults included
        parameters["coverage"] = admitted.policy.coverage
        if admitted.policy.max_risk is not None:
            parameters["max_risk"] = admitted.policy.max_risk
    header = {
        "model_name": engine.name,
        "model_version": engine.version,
        "id": admitted.request.id if admitted.request.id is not None else request_id,
        "parameters": parameters,
    }
    content, headers = encode_infer_response(admitted.request, result.predictions, engine.labels, header)
    timing.queue_s = result.queue_s
    timing.engine_s = result.engine_s
    timing.handoff_s = answered - ticket.enqueued - result.queue_s - result.engine_s
    timing.encode_s = time.perf_counter() - answered
    timing.batch_texts = result.batch_texts
    timing.batch_requests = result.batch_requests
    timing.predicted = True
    return Response(content, media_type=headers.pop("content-type"), headers=headers or None)
