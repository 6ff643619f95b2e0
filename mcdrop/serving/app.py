"""The HTTP app factory: ``create_app`` builds the FastAPI app that ``mcdrop serve`` (:mod:`.serve`) runs.

``create_app(settings)`` returns an app whose lifespan finds every checkpoint under ``settings.model_dir``, then
loads and warms them up in the background: the server accepts connections at once, ``/healthz`` answers 200 and
``/readyz`` 503 (with Retry-After) until the models are ready. On shutdown (SIGTERM) the service turns unready and
stops taking work, uvicorn stops accepting and waits for requests in flight; the lifespan then lets every batcher
finish its queue, all within ``MCDROP_SHUTDOWN_GRACE_S``, and stops the inference threads. Endpoints live in
:mod:`.routes` (``/v1``) and :mod:`.v2_routes` (``/v2``), request context in :mod:`.context`, how refusals read in
:mod:`.errors` and the model state in :mod:`.registry`.

    app = create_app(Settings(model_dir="models"))     # then: uvicorn.run(app) or mcdrop serve
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from mcdrop import __version__
from mcdrop.serving.admission import AdmissionMiddleware
from mcdrop.serving.busy import BusyGate, InFlight
from mcdrop.serving.context import RequestContextMiddleware
from mcdrop.serving.errors import install_error_handlers
from mcdrop.serving.openapi import install_openapi
from mcdrop.serving.registry import Service
from mcdrop.serving.routes import predict_router, router
from mcdrop.serving.settings import Settings
from mcdrop.serving.telemetry import Metrics
from mcdrop.serving.v2_routes import infer_router
from mcdrop.serving.v2_routes import router as v2_router

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
    service.start(len(paths))
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
    app.state.in_flight = in_flight = InFlight(settings.max_in_flight)
    # the protocol under ``mcdrop serve`` refuses with this gate before the app starts (see busy.py)
    app.state.busy_gate = gate = BusyGate(in_flight, metrics, settings.busy_delay_s, settings.busy_max_rate)
    install_error_handlers(app)
    # the prediction routes first: a request is matched against the routes in order (see routes.py)
    app.include_router(predict_router)
    app.include_router(infer_router)  # the Open Inference Protocol (KServe V2 REST) on the same models
    app.include_router(router)
    app.include_router(v2_router)
    install_openapi(app, settings)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, access_log=settings.access_log)
    app.add_middleware(AdmissionMiddleware, gate=gate)  # added last: the outermost
    return app
