"""Shutdown within the grace period: readiness turns 503 at SIGTERM, work in flight stops before the grace period
ends (503, retry elsewhere), and a clean SIGTERM exits with status 0.

Before, a shutdown with a long engine call in flight took 61 s (Kubernetes kills at 30 s by default) and even a
clean one ended with status 143 (uvicorn re-raises the signal).
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from conftest import MakeCheckpoint, write_tiny_checkpoint
from fake_engine import FakeEngine
from harness import LONG_TEXT, REPO, SLOW_GRU, serve
from mcdrop.core.errors import ShuttingDown
from mcdrop.serving.app import create_app
from mcdrop.serving.batcher import Batcher
from mcdrop.serving.registry import SHUTDOWN_MARGIN_S, Service
from mcdrop.serving.settings import Settings
from mcdrop.serving.tickets import BatchPolicy

DEPLOY = REPO / "deploy" / "k8s" / "base"


def test_readiness_turns_503_and_new_work_is_refused_once_shutting_down(make_checkpoint: MakeCheckpoint) -> None:
    settings = Settings(model_dir=make_checkpoint().parent, warmup_passes=0, access_log=False)
    with TestClient(create_app(settings, CollectorRegistry()), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        service: Service = client.app.state.service  # type: ignore[attr-defined]
        service.begin_shutdown()
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()["status"], ready.headers["retry-after"]) == (503, "stopping", "5")
        refused = client.post("/v1/predict", json={"texts": ["a"]})
        assert (refused.status_code, refused.json()) == (503, {"detail": "not ready: shutting down"})
        assert "mcdrop_ready 0.0" in client.get("/metrics").text


def test_work_still_running_or_queued_at_the_stop_time_is_answered_503() -> None:
    engine = FakeEngine(threading.Event(), name="gated")  # never released: only the stop time ends its call

    async def main() -> None:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = Batcher(engine, executor, BatchPolicy(max_wait_ms=0))
            batcher.start()
            running = batcher.submit(["x"], 5, 0, 60)
            while not engine.entered.is_set():
                await asyncio.sleep(0.002)
            queued = batcher.submit(["y"], 6, 0, 60)
            started = time.perf_counter()
            batcher.stop_at(started + 0.2)
            with pytest.raises(ShuttingDown, match="model gated is shutting down"):
                batcher.submit(["z"], 5, 0, 60)
            for ticket in (running, queued):
                with pytest.raises(ShuttingDown, match="model gated is shutting down"):
                    await batcher.wait(ticket, 60)
            await batcher.close()
            assert time.perf_counter() - started < 0.2 + 1.0

    asyncio.run(main())


@pytest.mark.parametrize("grace_s", [3.0])
def test_sigterm_with_a_long_engine_call_in_flight_exits_0_within_the_grace_period(
    tmp_path: Path, grace_s: float
) -> None:
    """A request of about 9 s in the engine and one queued behind it, a 3 s grace period."""
    write_tiny_checkpoint(tmp_path / "models", "gru", "slow-gru", **SLOW_GRU)
    heavy = {"texts": [LONG_TEXT] * 64, "n_samples": 1000}  # 2,048,000 cost units
    settings = {"warmup_passes": 0, "request_timeout_s": 120, "max_request_cost": 3_000_000}
    with serve(tmp_path / "models", tmp_path, shutdown_grace_s=grace_s, **settings) as server:
        with ThreadPoolExecutor(2) as pool:
            answers = [pool.submit(httpx.post, server.url + "/v1/predict", json=heavy, timeout=60) for _ in range(2)]
            time.sleep(1.5)  # one in the engine, one queued
            assert not any(answer.done() for answer in answers)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            status = server.process.wait(timeout=60)
            took = time.monotonic() - started
            responses = [answer.result() for answer in answers]
        log = server.log()
    assert status == 0, log[-2000:]
    assert took < grace_s, f"SIGTERM to exit took {took:.1f}s, grace period {grace_s:g}s"
    for response in responses:
        assert (response.status_code, response.headers["retry-after"]) == (503, "1"), response.text
        assert re.fullmatch(r"model slow-gru is shutting down.*", response.json()["detail"])
    assert "Application shutdown complete" in log and "mcdrop.serving.app [-] stopped" in log


def test_the_kubernetes_grace_period_covers_the_pre_stop_pause_and_the_service_grace() -> None:
    deployment = (DEPLOY / "deployment.yaml").read_text(encoding="utf-8")
    configmap = (DEPLOY / "configmap.yaml").read_text(encoding="utf-8")
    termination = int(re.search(r"terminationGracePeriodSeconds:\s*(\d+)", deployment).group(1))  # type: ignore[union-attr]
    pre_stop = int(re.search(r"preStop:\s*\n\s*sleep:\s*\n\s*seconds:\s*(\d+)", deployment).group(1))  # type: ignore[union-attr]
    found = re.search(r'MCDROP_SHUTDOWN_GRACE_S:\s*"?([0-9.]+)"?', configmap)
    grace = float(found.group(1)) if found else Settings.model_fields["shutdown_grace_s"].default
    # Kubernetes counts the preStop pause in terminationGracePeriodSeconds, then SIGKILLs; leave a margin
    assert termination >= pre_stop + grace + SHUTDOWN_MARGIN_S, (termination, pre_stop, grace)
