"""Finding: one costly request blocked every model. A real server, heavy clients on one model, small requests on
the other: the small ones stay fast and none gets 504; a request over the cost limit is refused at once, and one
past its deadline stops the engine instead of holding it.

The fast tests use tiny checkpoints (a deliberately slow GRU); the slow one uses the shipped models.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import write_tiny_checkpoint
from harness import LONG_TEXT, REPO, SLOW_GRU, percentile, serve, timed_post


def _heavy_clients(url: str, body: dict[str, Any], n: int, stop: threading.Event, until_s: float) -> list[int]:
    """``n`` closed-loop clients sending ``body`` until ``stop`` is set (at most ``until_s``); their statuses."""
    statuses: list[int] = []
    deadline = time.monotonic() + until_s

    def client() -> None:
        with httpx.Client() as session:
            while not stop.is_set() and time.monotonic() < deadline:
                status, _ = timed_post(url, body, timeout_s=until_s + 30, client=session)
                statuses.append(status)
                if status == 503:
                    time.sleep(0.2)  # Retry-After says 1 s; a shorter pause keeps the model busy

    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    stop.wait(until_s)
    stop.set()
    for thread in threads:
        thread.join(until_s + 60)
    return statuses


def _small_requests(url: str, body: dict[str, Any], count: int, max_s: float) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + max_s
    with httpx.Client() as session:  # a kept-alive connection: the latency measured is the server's
        while len(latencies) < count and time.monotonic() < deadline:
            status, seconds = timed_post(url, body, timeout_s=60, client=session)
            statuses[status] += 1
            latencies.append(seconds)
            time.sleep(0.02)
    return latencies, statuses


def _isolation(url: str, heavy: dict[str, Any], small: dict[str, Any], count: int) -> tuple[float, float, Counter[int]]:
    stop = threading.Event()
    heavy_statuses: list[int] = []
    runner = threading.Thread(target=lambda: heavy_statuses.extend(_heavy_clients(url, heavy, 2, stop, 120)))
    runner.start()
    time.sleep(1.0)  # both heavy clients are in (or queued for) the engine
    try:
        latencies, statuses = _small_requests(url, small, count, max_s=100)
    finally:
        stop.set()
        runner.join(200)
    assert heavy_statuses and set(heavy_statuses) <= {200, 503}, Counter(heavy_statuses)
    assert heavy_statuses.count(200) >= 1, "the heavy clients never got an answer: there was no load"
    return percentile(latencies, 0.5), percentile(latencies, 0.99), statuses


def test_heavy_requests_on_one_model_leave_the_other_fast(tmp_path: Path) -> None:
    """About 2 s per heavy GRU request; sharing one inference thread, half the small requests waited about 1 s."""
    write_tiny_checkpoint(tmp_path / "models", "mlp", "tiny-mlp")
    write_tiny_checkpoint(tmp_path / "models", "gru", "slow-gru", **SLOW_GRU)
    with serve(tmp_path / "models", tmp_path, warmup_passes=0) as server:
        heavy = {"texts": [LONG_TEXT] * 16, "model": "slow-gru", "n_samples": 1000}  # 512,000 cost units
        small = {"texts": ["a wonderful film"], "model": "tiny-mlp", "n_samples": 30}
        p50, p99, statuses = _isolation(server.url, heavy, small, count=40)
    assert statuses == {200: 40}, statuses
    assert p50 < 0.25 and p99 < 1.0, f"small requests: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"


def test_over_the_cost_limit_is_refused_and_past_the_deadline_stops(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "models", "gru", "slow-gru", **SLOW_GRU)
    with serve(tmp_path / "models", tmp_path, warmup_passes=0, request_timeout_s=1) as server:
        status, seconds = timed_post(server.url, {"texts": ["word " * 2000] * 64, "n_samples": 1000})
        assert status == 422 and seconds < 2.0  # 2,048,000 units, over the default limit: refused, nothing run
        started = time.perf_counter()
        status, _ = timed_post(server.url, {"texts": [LONG_TEXT] * 30, "n_samples": 1000})  # 960,000: ~4 s
        assert status == 504
        status, seconds = timed_post(server.url, {"texts": ["a film"], "n_samples": 5})
        after = time.perf_counter() - started
        assert status == 200, status
        # without the engine's deadline the small request waited for the whole heavy one (about 4 s)
        assert after < 2.5, f"the small request was answered {after:.1f}s after the heavy one was sent"


SHIPPED = REPO / "models"


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "rt-gru" / "config.json").exists(), reason="no shipped models")
def test_shipped_models_heavy_gru_clients_leave_rt_mlp_fast(tmp_path: Path) -> None:
    """The finding's figures: maximal rt-gru requests are refused; requests at the cost limit keep the GRU busy;
    rt-mlp keeps p99 under 250 ms and no 504."""
    with serve(SHIPPED, tmp_path) as server:
        maximal = {"texts": ["word " * 2000] * 64, "model": "rt-gru", "n_samples": 1000}
        status, seconds = timed_post(server.url, maximal)
        assert status == 422 and seconds < 2.0
        at_limit = {"texts": ["word " * 2000] * 64, "model": "rt-gru", "n_samples": 61}  # 999,424 units
        status, seconds = timed_post(server.url, at_limit)
        assert status == 200 and seconds < 30.0, (status, seconds)
        small = {"texts": ["a gripping, beautifully acted drama"], "model": "rt-mlp", "n_samples": 100}
        p50, p99, statuses = _isolation(server.url, at_limit, small, count=100)
    assert statuses == {200: 100}, statuses
    assert p99 < 0.25, f"rt-mlp: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
