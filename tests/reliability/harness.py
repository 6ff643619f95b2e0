"""Helpers of the reliability tests: a real ``mcdrop serve`` started with settings, and requests timed against it
(the fake engine held until released is ``fake_engine.FakeEngine``).

    with serve(model_dir, tmp_path, max_request_cost=500_000) as server:
        status, seconds = timed_post(server.url, {"texts": ["a"]})

Every server is stopped on exit (SIGTERM, then SIGKILL after 20 s); every request has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcdrop.serving.launch import ServerProcess, ServerStartError, start_server

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
# A GRU whose dropout sits before the recurrence: every sample is a GRU pass, a few µs per cost unit on a CPU.
SLOW_GRU: dict[str, Any] = {"hidden_dim": 64, "embed_dim": 64}
LONG_TEXT = "a wonderful moving film with great acting and a boring script the worst film of the year " * 2


@contextlib.contextmanager
def serve(model_dir: Path, workdir: Path, *, wait_ready: bool = True, **settings: Any) -> Iterator[ServerProcess]:
    """``mcdrop serve`` on the CPU with ``settings`` as MCDROP_* variables; always stopped."""
    env = {"MCDROP_DEVICE": "cpu", "MCDROP_ACCESS_LOG": "false"}
    env.update({f"MCDROP_{k.upper()}": str(v) for k, v in settings.items()})
    handle, log_name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=workdir)
    os.close(handle)
    try:
        server = start_server(
            model_dir, Path(log_name), env, wait_ready=wait_ready, timeout_s=START_TIMEOUT_S, cwd=REPO
        )
    except ServerStartError as error:
        pytest.fail(str(error))
    try:
        yield server
    finally:
        server.stop(grace_s=20)


def timed_post(
    url: str, body: dict[str, Any], timeout_s: float = 60.0, client: httpx.Client | None = None
) -> tuple[int, float]:
    """POST ``body`` to ``url``/v1/predict (on ``client``'s kept-alive connection when given): (status, seconds)."""
    started = time.perf_counter()
    if client is None:
        response = httpx.post(url + "/v1/predict", json=body, timeout=timeout_s)
    else:
        response = client.post(url + "/v1/predict", json=body, timeout=timeout_s)
    return response.status_code, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
