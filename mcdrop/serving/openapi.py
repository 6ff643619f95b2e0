"""The OpenAPI schema ``/openapi.json`` serves, made to match the server's settings.

FastAPI derives the schema from the routes, once per process. ``install_openapi(app, settings)`` then states the
request limits in the ``POST /v1/predict`` body (:func:`mcdrop.serving.schemas.request_schema`: ``maxItems``,
``maxLength``, ``minimum``/``maximum`` from the settings, as ``check_limits`` enforces them) and declares Bearer
authentication only when API keys are configured (``MCDROP_API_KEYS``): without keys nothing asks for one.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from mcdrop.serving.schemas import Limits, request_schema
from mcdrop.serving.settings import Settings

PREDICT_PATH = "/v1/predict"


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's schema for ``app`` with the limits of ``settings`` and, without API keys, no security."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    limits = Limits(settings.max_texts_per_request, settings.max_text_chars, settings.max_n_samples)
    body = schema["paths"][PREDICT_PATH]["post"]["requestBody"]["content"]["application/json"]
    body["schema"] = request_schema(limits)
    if not settings.api_keys:
        schema.get("components", {}).pop("securitySchemes", None)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation.pop("security", None)
    return schema


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve :func:`build_openapi`'s schema (built on first use, then kept) as ``app``'s OpenAPI schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
