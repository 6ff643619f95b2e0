"""``mcdrop serve``: one flag per setting (overriding its ``MCDROP_*`` variable), then the app under uvicorn.

    mcdrop serve --model-dir models --port 8000 --max-wait-ms 2

The settings are validated before anything binds a port; a directory without checkpoints fails with one line.
Logs carry the id of the request being served. SIGINT/SIGTERM stop the server gracefully within
``MCDROP_SHUTDOWN_GRACE_S``: ``/readyz`` answers 503 at once, work still running near the end is stopped (503), and
the process exits with status 0 (uvicorn alone would re-raise the signal and end with 143).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
import threading
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from mcdrop import __version__
from mcdrop.core.errors import ConfigError, McdropError
from mcdrop.serving.app import create_app
from mcdrop.serving.context import RequestIdFilter
from mcdrop.serving.protocol import ConnectionLimits, protocol_class
from mcdrop.serving.registry import Service
from mcdrop.serving.settings import Settings, describe_errors, env_name, flag_name

logger = logging.getLogger(__name__)


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


class _Server(uvicorn.Server):
    """uvicorn's server, with the service told at the first SIGINT/SIGTERM, and no signal re-raised after a clean
    shutdown: a requested stop that completed is a success (exit status 0), not death by SIGTERM (143)."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        # a signal handler runs between two bytecodes of the event loop's thread: hand over to the loop
        with contextlib.suppress(RuntimeError):  # no loop running: nothing is served yet, or any more
            asyncio.get_running_loop().call_soon_threadsafe(self.service.begin_shutdown)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration: the hardened protocol (:mod:`.protocol`) with the settings' connection limits."""
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        idle_timeout_s=settings.keep_alive_s,
        drain_bytes=settings.drain_bytes,
        drain_timeout_s=settings.drain_timeout_s,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(limits, app.state.busy_gate),
        timeout_keep_alive=math.ceil(settings.keep_alive_s),  # the protocol keeps the exact value
        limit_concurrency=settings.max_connections,  # a connection limit in the protocol
        log_config=None,
        log_level=settings.log_level,
        access_log=False,  # the request-context middleware logs each request with its id and timing
        lifespan="on",
        server_header=False,
        # a backstop only: the service stops its work 2 s before the grace period ends, so requests end first
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s) - 1),
    )


def run(args: argparse.Namespace) -> int:
    """``mcdrop serve``: validate the settings, then serve until SIGINT/SIGTERM (single process)."""
    settings = build_settings(args)
    configure_logging(settings.log_level)
    app = create_app(settings)
    service: Service = app.state.service
    service.discover()  # fail with one clear line before binding a port
    server = _Server(uvicorn_config(app, settings), service)

    def stop() -> None:
        server.should_exit = True

    service.on_fatal = stop
    logger.info("mcdrop %s serving %s on http://%s:%d", __version__, settings.model_dir, settings.host, settings.port)
    logger.info("settings: %s", settings)
    server.run()
    if service.status == "failed":
        raise McdropError(f"cannot serve: {service.detail}")
    return 0
