"""Helpers of the reliability tests: a real ``mcdrop serve`` (tiny checkpoints, CPU) with the settings a test
needs, and raw connections to it. Each test module makes its own module-scoped server fixture with them::

    start = server_starter(tiny_models(workdir), workdir)
    with start(header_timeout_s=1) as server: ...
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import write_tiny_checkpoint
from mcdrop.serving.launch import ServerProcess, ServerStartError, start_server

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1.0  # header, body and drain timeouts of the short-timeout server
KEEP_ALIVE_S = 2.0
SHORT_TIMEOUTS = {
    "header_timeout_s": TIMEOUT_S,
    "body_timeout_s": TIMEOUT_S,
    "drain_timeout_s": TIMEOUT_S,
    "keep_alive_s": KEEP_ALIVE_S,
}

StartServer = Callable[..., contextlib.AbstractContextManager[ServerProcess]]


def server_starter(model_dir: Path, workdir: Path) -> StartServer:
    """``with start(**settings) as server``: ``mcdrop serve`` with those settings as ``MCDROP_*`` variables."""

    @contextlib.contextmanager
    def start(**settings: Any) -> Iterator[ServerProcess]:
        env = {"MCDROP_DEVICE": "cpu", "MCDROP_WARMUP_PASSES": "0", "MCDROP_ACCESS_LOG": "false"}
        env.update({f"MCDROP_{name.upper()}": str(value) for name, value in settings.items()})
        handle, log = tempfile.mkstemp(prefix="serve-", suffix=".log", dir=workdir)
        os.close(handle)
        try:
            server = start_server(model_dir, Path(log), env, timeout_s=60.0, cwd=REPO)
        except ServerStartError as error:
            pytest.fail(str(error))
        try:
            yield server
        finally:
            server.stop()

    return start


def tiny_models(workdir: Path) -> Path:
    """A directory with one calibrated tiny MLP (``tiny-mlp``)."""
    write_tiny_checkpoint(workdir / "models", "mlp", "tiny-mlp", calibrated=True)
    return workdir / "models"


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


def connect(server: ServerProcess, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(server)), timeout=timeout)
