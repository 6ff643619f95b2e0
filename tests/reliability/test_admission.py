"""Admission by cost and one inference thread per model, in-process: a costly request is refused up front (422) or
queued against a cost limit (503), the engine is told when nobody waits any more, and one model's engine being
busy never holds another model's requests.

Measured before: one request of 64 texts x 10,000 characters at n_samples 1000 held the only inference thread for
about a minute and both models with it; 38 of 45 small requests to the other model meanwhile got 504.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from conftest import MakeCheckpoint
from fake_engine import FakeEngine
from mcdrop.core.errors import Overloaded
from mcdrop.serving.app import create_app
from mcdrop.serving.batcher import Batcher
from mcdrop.serving.registry import Service
from mcdrop.serving.settings import Settings, describe_errors
from mcdrop.serving.tickets import BatchPolicy


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


async def _until(condition: Any, what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.002)


def test_queued_and_running_cost_is_limited(executor: ThreadPoolExecutor) -> None:
    engine = FakeEngine(threading.Event(), name="gated")

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(queue_limit_cost=100, max_wait_ms=0))
        batcher.start()
        running = batcher.submit(["x"], 5, 0, 10, cost=60)
        await _until(engine.entered.is_set, "the engine was never called")
        queued = batcher.submit(["y"], 5, 0, 10, cost=30)
        assert batcher.queued_cost == 90  # what the engine has yet to pay: the running batch counts
        with pytest.raises(Overloaded) as refused:
            batcher.submit(["z"], 5, 0, 10, cost=20)
        assert str(refused.value) == (
            "model gated is overloaded: 90 cost units queued or running (limit 100, this request 20); "
            "retry later or with fewer texts or samples"
        )
        batcher.submit(["w"], 5, 0, 10, cost=10)  # exactly at the limit is fine
        engine.gate.set()
        for ticket in (running, queued):
            assert await batcher.wait(ticket, 10) is not None
        await batcher.close()
        assert batcher.queued_cost == 0

    asyncio.run(main())


def test_the_engine_deadline_is_the_latest_of_the_requests_still_waiting(executor: ThreadPoolExecutor) -> None:
    engine = FakeEngine(threading.Event(), name="gated")

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(max_wait_ms=0))
        batcher.start()
        blocker = batcher.submit(["x"], 5, 0, 10)
        await _until(engine.entered.is_set, "the engine was never called")
        early = batcher.submit(["a"], 5, 1, 10)
        late = batcher.submit(["b"], 5, 2, 20)
        engine.entered.clear()
        engine.gate.set()
        assert await batcher.wait(blocker, 10) is not None
        await _until(lambda: len(engine.deadlines) == 2, "the merged batch never ran")
        assert engine.deadlines[1] == pytest.approx(late.deadline)
        await batcher.wait(early, 10)
        await batcher.wait(late, 10)
        await batcher.close()

    asyncio.run(main())


def test_work_nobody_waits_for_is_stopped(executor: ThreadPoolExecutor) -> None:
    """The client's deadline passes while its batch runs: the engine is told, stops, and the next request runs."""
    engine = FakeEngine(threading.Event(), name="gated")

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(max_wait_ms=0))
        batcher.start()
        ticket = batcher.submit(["x"], 5, 0, 0.2)
        with pytest.raises(TimeoutError):
            await batcher.wait(ticket, 0.2)
        await _until(engine.stopped.is_set, "the engine went on with work nobody waited for", timeout_s=2)
        engine.gate.set()
        follow_up = batcher.submit(["y"], 5, 0, 10)
        assert await batcher.wait(follow_up, 10) is not None
        await batcher.close()

    asyncio.run(main())


def test_settings_size_the_cost_queue_and_the_torch_threads() -> None:
    settings = Settings(max_request_cost=1000)
    assert settings.queue_cost == 2000  # one request at the limit running, one waiting
    assert Settings(max_request_cost=1000, queue_limit_cost=5000).queue_cost == 5000
    with pytest.raises(ValidationError) as caught:
        Settings(max_request_cost=1000, queue_limit_cost=999)
    assert "MCDROP_QUEUE_LIMIT_COST (999) is below MCDROP_MAX_REQUEST_COST (1000)" in describe_errors(caught.value)
    assert Settings(torch_threads=3).inference_threads(2) == 3
    cores = Settings().inference_threads(1) + 1
    assert Settings().inference_threads(2) == max(1, (cores - 1) // 2)


def _client(model_dir: Path, **overrides: Any) -> TestClient:
    settings = Settings(**{"model_dir": model_dir, "warmup_passes": 0, "access_log": False, **overrides})
    return TestClient(create_app(settings, CollectorRegistry()), raise_server_exceptions=False)


def _wait_ready(client: TestClient) -> Service:
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.01)
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


@pytest.fixture
def two_models(make_checkpoint: MakeCheckpoint) -> Path:
    make_checkpoint("mlp", name="tiny-mlp")
    return make_checkpoint("gru", name="tiny-gru").parent


def test_a_costly_request_is_refused_up_front_naming_the_limit(two_models: Path) -> None:
    with _client(two_models, max_request_cost=1_000_000) as client:
        _wait_ready(client)
        body = {"texts": ["word " * 2000] * 64, "model": "tiny-gru", "n_samples": 1000}  # 32 tokens each
        refused = client.post("/v1/predict", json=body)
        assert (refused.status_code, refused.json()["detail"]) == (
            422,
            "request: costs at least 1024000 units (1000 samples x 1024 tokens read in the first 32 of 64 texts by "
            "tiny-gru), more than "
            "MCDROP_MAX_REQUEST_COST (1000000); send fewer or shorter texts, or fewer samples",
        )
        mlp = client.post("/v1/predict", json={**body, "model": "tiny-mlp"})
        assert mlp.status_code == 200, mlp.text  # 64,000 units: tokens cost a bag-of-words model nothing more
        short = client.post("/v1/predict", json={**body, "texts": ["word " * 15] * 64})  # 960,000 units
        assert short.status_code == 200, short.text


def test_a_full_cost_queue_answers_503_with_retry_after(two_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _client(two_models, max_request_cost=5000, default_model="tiny-gru") as client:
        served = _wait_ready(client).models["tiny-gru"]
        release = threading.Event()
        original = served.engine.predict_many

        def held(*args: Any, **kwargs: Any) -> Any:
            assert release.wait(10)
            return original(*args, **kwargs)

        monkeypatch.setattr(served.engine, "predict_many", held)
        body = {"texts": ["one two three four five"] * 10, "n_samples": 100}  # 5000 units: the request limit
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/v1/predict", json=body)
            second = pool.submit(client.post, "/v1/predict", json=body)
            deadline = time.monotonic() + 10
            while served.batcher.queued_cost < 10_000:
                assert time.monotonic() < deadline, served.batcher.queued_cost
                time.sleep(0.005)
            refused = client.post("/v1/predict", json={**body, "texts": ["one"]})
            release.set()
            assert [f.result().status_code for f in (first, second)] == [200, 200]
        assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
        assert refused.json()["detail"] == (
            "model tiny-gru is overloaded: 10000 cost units queued or running (limit 10000, this request 100); "
            "retry later or with fewer texts or samples"
        )


def test_a_busy_model_does_not_hold_another_models_requests(two_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _client(two_models) as client:
        service = _wait_ready(client)
        gru, mlp = service.models["tiny-gru"], service.models["tiny-mlp"]
        assert gru.batcher.executor is not mlp.batcher.executor
        release = threading.Event()
        original = gru.engine.predict_many

        def held(*args: Any, **kwargs: Any) -> Any:
            assert release.wait(20)
            return original(*args, **kwargs)

        monkeypatch.setattr(gru.engine, "predict_many", held)
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(client.post, "/v1/predict", json={"texts": ["a"], "model": "tiny-gru"})
            deadline = time.monotonic() + 10
            while gru.batcher.queued_cost == 0:  # its cost counts from queueing until its batch ends
                assert time.monotonic() < deadline
                time.sleep(0.005)
            started = time.perf_counter()
            for _ in range(5):
                answer = client.post("/v1/predict", json={"texts": ["a film"], "model": "tiny-mlp", "n_samples": 5})
                assert answer.status_code == 200
            took = time.perf_counter() - started
            release.set()
            assert busy.result().status_code == 200
        assert took < 5.0, f"5 requests to an idle model took {took:.1f}s while another model was busy"
        assert math.isfinite(took)
