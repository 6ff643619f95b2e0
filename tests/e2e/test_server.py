"""The real server: ``mcdrop serve`` in a subprocess on 127.0.0.1, driven over HTTP.

Covers what only a real process shows: readiness while models load, batching of concurrent connections,
overload and deadlines under a busy engine, and SIGTERM with requests in flight. Every server is stopped, every
wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import assert_predictions_close, write_tiny_checkpoint
from mcdrop.serving.launch import ServerProcess, ServerStartError, start_server

KEY = "server-test-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
# A GRU whose dropout sits before the recurrence: every sample is a GRU pass, so 8 texts x 100 samples keep
# the engine busy for a good fraction of a second on a 2-core CPU.
SLOW_GRU: dict[str, Any] = {"hidden_dim": 64, "embed_dim": 64}
LONG_TEXT = "a wonderful moving film with great acting and a boring script the worst film of the year " * 2


@dataclass
class Server(ServerProcess):
    def metric(self, name: str, labels: str = "") -> float:
        return _metric_value(httpx.get(self.url + "/metrics", timeout=10).text, name, labels)


def _metric_value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


async def _poll_metrics(server: Server, done: Callable[[str], bool], what: str, timeout_s: float = 30.0) -> None:
    """Polls ``/metrics`` until ``done(text)``; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=10) as probe:
        while time.monotonic() < deadline:
            if done((await probe.get(server.url + "/metrics")).text):
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"{what} within {timeout_s:g}s")


@contextmanager
def running_server(model_dir: Path, workdir: Path, *, wait_ready: bool = True, **settings: Any) -> Iterator[Server]:
    """``mcdrop serve`` with the given settings (as MCDROP_* variables); always stopped."""
    env = {"MCDROP_DEVICE": "cpu"}  # the timings these tests rely on are a CPU's, whatever the host has
    env.update({f"MCDROP_{k.upper()}": str(v) for k, v in settings.items()})
    handle, log_name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=workdir)
    os.close(handle)
    try:
        started = start_server(
            model_dir, Path(log_name), env, wait_ready=wait_ready, timeout_s=START_TIMEOUT_S, cwd=REPO
        )
    except ServerStartError as error:
        pytest.fail(str(error))
    server = Server(started.url, started.process, started.log_path)
    try:
        yield server
    finally:
        server.stop(grace_s=20)


def wait_ready_(server: Server) -> None:
    try:
        server.wait_until("/readyz", 200, START_TIMEOUT_S)
    except ServerStartError as error:
        pytest.fail(str(error))


async def _post_all(
    url: str, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:
        return await asyncio.gather(*(client.post(url, json=body) for body in bodies))


@pytest.fixture(scope="module")
def main_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Tiny MLP and GRU, API keys on, a batching window wide enough that concurrent requests surely merge."""
    workdir = tmp_path_factory.mktemp("main")
    write_tiny_checkpoint(workdir / "models", "mlp", "tiny-mlp")
    write_tiny_checkpoint(workdir / "models", "gru", "tiny-gru")
    with running_server(
        workdir / "models", workdir, api_keys=KEY, default_model="tiny-mlp", max_wait_ms=20, max_body_bytes=4096
    ) as server:
        yield server


def test_prediction_over_http(main_server: Server) -> None:
    body = {"texts": ["a wonderful film", ""], "model": "tiny-gru", "n_samples": 10, "seed": 3}
    response = httpx.post(main_server.url + "/v1/predict", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert {"request_id", "model", "model_version", "n_samples", "seed", "predictions"} <= answer.keys()
    assert (answer["model"], answer["n_samples"], answer["seed"]) == ("tiny-gru", 10, 3)
    fields = {
        "label", "probs", "variance", "entropy", "expected_entropy", "mutual_information", "variation_ratio",
        "std_error", "oov_fraction", "n_tokens", "n_known_tokens", "n_samples_used", "novelty", "prediction_set",
        "decision",
    }  # fmt: skip
    assert all(set(p) == fields for p in answer["predictions"])
    assert answer["predictions"][1]["oov_fraction"] == 1.0
    assert answer["request_id"] == response.headers["x-request-id"]
    assert "engine;dur=" in response.headers["server-timing"]


def test_error_codes_over_http(main_server: Server) -> None:
    url = main_server.url + "/v1/predict"

    def post(**kwargs: Any) -> httpx.Response:
        return httpx.post(url, timeout=30, **kwargs)

    too_many = post(json={"texts": ["a"] * 65}, headers=AUTH)
    assert (too_many.status_code, too_many.json()) == (422, {"detail": "texts: at most 64 texts per request (got 65)"})
    unknown = post(json={"texts": ["a"], "model": "nope"}, headers=AUTH)
    assert (unknown.status_code, unknown.json()["detail"]) == (
        404,
        "model 'nope' not found; available: tiny-gru, tiny-mlp",
    )
    big = post(content=b'{"texts": ["' + b"a" * 5000 + b'"]}', headers=AUTH | JSON)
    assert big.status_code == 413 and big.json()["detail"].startswith("body: at most 4096 bytes")
    malformed = post(content=b'{"texts": [\xff', headers=AUTH | JSON)
    assert malformed.status_code == 422
    missing = post(json={"texts": ["a"]})
    assert (missing.status_code, missing.headers["www-authenticate"]) == (401, "Bearer")
    wrong = post(json={"texts": ["a"]}, headers={"authorization": "Bearer not-the-key"})
    assert (wrong.status_code, wrong.json()) == (403, {"detail": "invalid API key"})
    for path in ("/healthz", "/readyz", "/metrics"):  # open even with keys on
        assert httpx.get(main_server.url + path, timeout=10).status_code == 200


def test_metrics_are_exported_and_count(main_server: Server) -> None:
    before = main_server.metric("mcdrop_predictions_total", 'model="tiny-mlp"')
    for _ in range(2):
        ok = httpx.post(main_server.url + "/v1/predict", json={"texts": ["a", "b", "c"]}, headers=AUTH, timeout=30)
        assert ok.status_code == 200
    assert main_server.metric("mcdrop_predictions_total", 'model="tiny-mlp"') == before + 6
    text = httpx.get(main_server.url + "/metrics", timeout=10).text
    for name in (
        "mcdrop_requests_total", "mcdrop_request_duration_seconds_bucket", "mcdrop_inference_duration_seconds_bucket",
        "mcdrop_batch_size_bucket", "mcdrop_mc_samples_total", "mcdrop_queue_depth", "mcdrop_predictive_entropy_bucket",
        "mcdrop_mutual_information_bucket", "mcdrop_high_uncertainty_total", "mcdrop_uncertainty_baseline",
        "mcdrop_model_info", "mcdrop_ready 1.0", "process_cpu_seconds_total", "python_info",
    ):  # fmt: skip
        assert name in text, name
    assert 'mcdrop_requests_total{endpoint="/v1/predict",method="POST",status="2xx"}' in text
    assert 'mcdrop_requests_total{endpoint="/v1/predict",method="POST",status="4xx"}' in text


def test_concurrent_requests_are_merged_and_answer_as_if_alone(main_server: Server) -> None:
    bodies = [{"texts": [f"film number {i} was great"], "n_samples": 30, "seed": 100 + i} for i in range(32)]
    url = main_server.url + "/v1/predict"
    batches_before = main_server.metric("mcdrop_batch_size_count", 'model="tiny-mlp"')
    texts_before = main_server.metric("mcdrop_batch_size_sum", 'model="tiny-mlp"')
    merged = asyncio.run(_post_all(url, bodies, AUTH))
    batches = main_server.metric("mcdrop_batch_size_count", 'model="tiny-mlp"') - batches_before
    assert main_server.metric("mcdrop_batch_size_sum", 'model="tiny-mlp"') - texts_before == 32
    assert batches < 32 / 2, f"32 concurrent requests ran in {batches} engine batches"
    assert all(r.status_code == 200 for r in merged)
    with httpx.Client(headers=AUTH, timeout=30) as client:
        alone = [client.post(url, json=body) for body in bodies]
    for together, single in zip(merged, alone, strict=True):
        assert_predictions_close(together.json()["predictions"], single.json()["predictions"])


def test_not_ready_while_loading_then_deadline(tmp_path: Path) -> None:
    """Warm-up passes make loading take seconds; a 50 ms deadline cannot be met by the slow GRU. No API keys."""
    write_tiny_checkpoint(tmp_path / "models", "gru", "slow-gru", **SLOW_GRU)
    with running_server(
        tmp_path / "models", tmp_path, wait_ready=False, warmup_passes=10, max_batch_rows=2048, request_timeout_s=0.05
    ) as server:
        first = httpx.get(server.url + "/readyz", timeout=10)
        assert (first.status_code, first.headers["retry-after"], first.json()["status"]) == (503, "5", "loading")
        refused = httpx.post(server.url + "/v1/predict", json={"texts": ["a"]}, timeout=10)
        assert (refused.status_code, refused.json()) == (503, {"detail": "not ready: models are loading"})
        wait_ready_(server)
        assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 200  # open without keys
        started = time.monotonic()
        late = httpx.post(server.url + "/v1/predict", json={"texts": [LONG_TEXT] * 8, "n_samples": 300}, timeout=30)
        assert (late.status_code, late.json()) == (504, {"detail": "deadline exceeded: no answer within 0.05s"})
        assert time.monotonic() - started < 2.0
        assert server.metric("mcdrop_rejected_requests_total", 'model="slow-gru",reason="timeout"') == 1


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The slow GRU with room for one request in the queue (8 texts); no API keys."""
    workdir = tmp_path_factory.mktemp("slow")
    write_tiny_checkpoint(workdir / "models", "gru", "slow-gru", **SLOW_GRU)
    with running_server(
        workdir / "models", workdir, warmup_passes=0, max_texts_per_request=8, queue_limit=8, max_wait_ms=0
    ) as server:
        yield server


def test_overload_answers_503_without_starting_work(slow_server: Server) -> None:
    samples_before = slow_server.metric("mcdrop_mc_samples_total", 'model="slow-gru"')
    body = {"texts": [LONG_TEXT] * 8, "n_samples": 100, "seed": 1}
    responses = asyncio.run(_post_all(slow_server.url + "/v1/predict", [body] * 10))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert re.fullmatch(
        r"model slow-gru is overloaded: \d+ texts queued \(limit 8\); retry later", refused.json()["detail"]
    )
    accepted = statuses.count(200)
    assert slow_server.metric("mcdrop_mc_samples_total", 'model="slow-gru"') - samples_before == accepted * 8 * 100
    assert slow_server.metric("mcdrop_rejected_requests_total", 'model="slow-gru",reason="overloaded"') == 10 - accepted


def test_client_that_disconnects_costs_no_engine_work(slow_server: Server) -> None:
    url = slow_server.url + "/v1/predict"
    depth = ("mcdrop_queue_depth", 'model="slow-gru"')
    samples_before = slow_server.metric("mcdrop_mc_samples_total", 'model="slow-gru"')
    busy_n_samples = (300, 299)  # never merged: whichever arrives first runs, the other waits behind it

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            busy = [
                asyncio.ensure_future(client.post(url, json={"texts": [LONG_TEXT] * 4, "n_samples": n}))
                for n in busy_n_samples
            ]
            # 4 texts queued: one request in the engine, the other waiting, whatever their order
            await _poll_metrics(slow_server, lambda text: _metric_value(text, *depth) == 4, "the engine never got busy")
            with pytest.raises(httpx.ReadTimeout):  # queued behind both; the client gives up and disconnects
                await client.post(
                    url, json={"texts": [LONG_TEXT] * 4, "n_samples": 200}, timeout=httpx.Timeout(None, read=0.05)
                )
            return list(await asyncio.gather(*busy))

    assert [r.status_code for r in asyncio.run(scenario())] == [200, 200]
    assert httpx.post(url, json={"texts": ["still serving"], "n_samples": 3}, timeout=30).status_code == 200
    samples = slow_server.metric("mcdrop_mc_samples_total", 'model="slow-gru"') - samples_before
    assert samples == 4 * sum(busy_n_samples) + 3  # nothing for the request whose client went away
    assert slow_server.metric(*depth) == 0


def test_sigterm_finishes_requests_in_flight(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "models", "gru", "slow-gru", **SLOW_GRU)
    n_requests = 5
    # one request per batch (800 rows), so most of them are still queued when SIGTERM arrives
    with running_server(tmp_path / "models", tmp_path, warmup_passes=0, max_batch_rows=800, max_wait_ms=0) as server:
        bodies = [{"texts": [LONG_TEXT] * 8, "n_samples": 100, "seed": i} for i in range(n_requests)]

        def all_received(text: str) -> bool:
            # queued (8 texts each) + answered batches, plus the one in the engine while any is queued
            queued = _metric_value(text, "mcdrop_queue_depth", 'model="slow-gru"') / 8
            answered = _metric_value(text, "mcdrop_batch_size_count", 'model="slow-gru"')
            return queued >= 1 and queued + answered + 1 >= n_requests

        async def scenario() -> list[httpx.Response]:
            sending = asyncio.ensure_future(_post_all(server.url + "/v1/predict", bodies))
            await _poll_metrics(server, all_received, "the requests never queued up")
            server.process.send_signal(signal.SIGTERM)  # with requests in the engine and still queued
            return await sending

        responses = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * n_requests
        assert server.process.wait(timeout=30) == 0  # a clean, requested shutdown is a success
        log = server.log()
        assert "Application shutdown complete" in log and "mcdrop.serving.app [-] stopped" in log


SHIPPED = REPO / "models"


@pytest.mark.skipif(
    not any(SHIPPED.glob("*/config.json")), reason="no trained checkpoints under models/ (run `make models`)"
)
def test_shipped_models_serve(tmp_path: Path) -> None:
    with running_server(SHIPPED, tmp_path) as server:
        models = httpx.get(server.url + "/v1/models", timeout=10).json()["models"]
        assert models
        for model in models:
            response = httpx.post(
                server.url + "/v1/predict",
                json={
                    "texts": ["a gripping, beautifully acted drama", "le film était ennuyeux"],
                    "model": model["name"],
                    "seed": 1,
                },
                timeout=60,
            )
            assert response.status_code == 200, response.text
            first, foreign = response.json()["predictions"]
            assert first["oov_fraction"] < foreign["oov_fraction"]
