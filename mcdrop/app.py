"""The HTTP service: ``create_app`` builds the FastAPI app; ``mcdrop serve`` runs it under uvicorn.

``create_app(settings)`` returns an app whose lifespan finds every checkpoint under ``settings.model_dir``, then
loads and warms them up in the background: the server accepts connections at once, ``/healthz`` answers 200 and
``/readyz`` 503 (with Retry-After) until every model is ready. On shutdown (SIGTERM) uvicorn stops accepting and
waits for requests in flight; the lifespan then lets every batcher finish its queue and stops the inference
thread. Endpoints live in ``mcdrop.api_routes``, request context in ``mcdrop.api_middleware`` and the model state
in ``mcdrop.api_service``.

    mcdrop serve --model-dir models --port 8000 --max-wait-ms 2       # flags override MCDROP_* variables
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import types
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from mcdrop import __version__
from mcdrop.api_middleware import RequestContextMiddleware, RequestIdFilter, install_error_handlers
from mcdrop.api_routes import router
from mcdrop.api_service import Service
from mcdrop.errors import ConfigError, McdropError
from mcdrop.metrics import Metrics
from mcdrop.settings import Settings, describe_errors, env_name, flag_name

logger = logging.getLogger(__name__)

_DESCRIPTION = """Monte Carlo dropout predictions with uncertainty for text classifiers.

Each prediction reports the mean class probabilities over N dropout samples, their variance, predictive entropy,
expected entropy and mutual information (disagreement between the sampled networks), plus `oov_fraction`:
mutual information does not rise on out-of-domain text, the share of unknown tokens does.
"""


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: Service = app.state.service
    paths = service.discover()  # no checkpoints at all: fail start-up at once
    service.start()
    logger.info("loading %d checkpoint(s) from %s", len(paths), service.settings.model_dir)
    loader = asyncio.create_task(service.load(paths), name="mcdrop-load")
    try:
        yield
    finally:
        if not loader.done():
            loader.cancel()  # a checkpoint being loaded finishes on its thread; nothing more starts
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        await service.close()
        logger.info("stopped")


def create_app(settings: Settings | None = None, registry: CollectorRegistry | None = None) -> FastAPI:
    """The service app. ``settings`` default to ``Settings()`` (the environment); metrics go to ``registry``
    (a fresh one by default, with the process and platform collectors)."""
    settings = Settings() if settings is None else settings
    metrics = Metrics(CollectorRegistry() if registry is None else registry)
    app = FastAPI(
        title="mcdrop",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=_lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service = Service(settings, metrics)
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, access_log=settings.access_log)
    return app


# -- command line ------------------------------------------------------------------------------------------------


def _dest(field: str) -> str:
    return f"serve_{field}"  # apart from the top-level parser's own --log-level


_METAVARS = {"host": "HOST", "default_model": "NAME", "device": "DEVICE", "api_keys": "KEY[,KEY...]"}


def _flag_kwargs(field: str, annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"choices": list(args), "type": str.lower}
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_kwargs(field, args[0])
    if annotation in (int, float):
        return {"type": annotation, "metavar": "N" if annotation is int else "X"}
    if annotation is Path:
        return {"metavar": "DIR"}
    return {"metavar": _METAVARS.get(field, "VALUE")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mcdrop serve`` flags: one per setting; a flag overrides its ``MCDROP_*`` variable."""
    for field, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = (
            ("on" if default else "off")
            if isinstance(default, bool)
            else default
            if default not in (None, [])
            else "none"
        )
        help_text = f"{info.description} [env {env_name(field)}; default {shown}]"
        if field == "api_keys":
            help_text += " Prefer the variable: flags are visible to other users in the process list."
        parser.add_argument(
            flag_name(field),
            dest=_dest(field),
            default=None,
            help=help_text.replace("%", "%%"),
            **_flag_kwargs(field, info.annotation),
        )


def build_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the given flags on top; raises :class:`ConfigError` naming the value."""
    overrides = {
        field: value for field in Settings.model_fields if (value := getattr(args, _dest(field), None)) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None


def configure_logging(level: str) -> None:
    """One stderr handler whose lines carry the request id of the request being served (``-`` outside)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def run(args: argparse.Namespace) -> int:
    """``mcdrop serve``: validate the settings, then serve until SIGINT/SIGTERM (single process)."""
    settings = build_settings(args)
    configure_logging(settings.log_level)
    app = create_app(settings)
    service: Service = app.state.service
    service.discover()  # fail with one clear line before binding a port
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,  # the request-context middleware logs each request with its id and timing
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    service.on_fatal = stop
    logger.info("mcdrop %s serving %s on http://%s:%d", __version__, settings.model_dir, settings.host, settings.port)
    logger.info("settings: %s", settings)
    server.run()
    if service.status == "failed":
        raise McdropError(f"cannot serve: {service.detail}")
    return 0
