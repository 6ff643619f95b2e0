"""A storm of clients that ignore Retry-After: goodput and latency of the answered predictions stay those of a
server at capacity, because refusals past the in-flight limit cost next to nothing.

Scaled down for a 2-core machine shared by server and clients: ``CLIENTS`` closed-loop clients are the capacity
run (the in-flight limit admits that many), then ``STORM`` more send the same requests and retry at once on every
503. Before the in-flight limit, the 503s came from the queue limit after the body was read and validated, and a
storm cut goodput several fold (245 -> 51 req/s with 1,500 clients). The rounds alternate, and the medians are
compared, so that a slow spell of the machine hits both. The larger storm (the targets: goodput at least 0.8 of
capacity, p99 within 2x) runs with ``RELIABILITY_SLOW=1 pytest -m slow tests/reliability``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcdrop.serving.launch import ServerProcess
from mcdrop.serving.loadgen import LoadResult, closed_loop
from reliability_kit import StartServer, port_of, server_starter, tiny_models

CLIENTS = 16
NOISE_MS = 10.0  # scheduling noise allowed on top of 2x the p99 at capacity (a few ms here)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("storm")
    start: StartServer = server_starter(tiny_models(workdir), workdir)
    with start(max_in_flight=CLIENTS) as running:
        yield running


def _rounds(
    server: ServerProcess, storm: int, rounds: int, seconds: float
) -> tuple[list[LoadResult], list[LoadResult]]:
    port = port_of(server)
    calm, stormy = [], []
    for _ in range(rounds):
        calm.append(asyncio.run(closed_loop(port, CLIENTS, seconds, warmup_s=0.5)))
        stormy.append(asyncio.run(closed_loop(port, CLIENTS + storm, seconds, warmup_s=1.0)))
    return calm, stormy


def _check(calm: list[LoadResult], stormy: list[LoadResult], min_goodput: float, max_p99: float) -> None:
    capacity = statistics.median(r.goodput for r in calm)
    goodput = statistics.median(r.goodput for r in stormy)
    p99, storm_p99 = statistics.median(r.p99_ms() for r in calm), statistics.median(r.p99_ms() for r in stormy)
    refused = sum(r.statuses[503] for r in stormy)
    summary = f"capacity {capacity:.0f} req/s p99 {p99:.1f} ms; storm {goodput:.0f} req/s p99 {storm_p99:.1f} ms"
    print(summary, f"({refused} refused)")
    assert refused > 0, "the storm never reached the in-flight limit"
    assert set().union(*(r.statuses for r in stormy)) <= {200, 503}, [dict(r.statuses) for r in stormy]
    assert goodput >= min_goodput * capacity, summary
    assert storm_p99 <= max_p99 * p99 + NOISE_MS, summary


def test_a_storm_of_retries_keeps_goodput_and_latency(server: ServerProcess) -> None:
    # Looser than the slow test's targets: this one runs in every CI run, on a machine that may be busy. Without
    # the in-flight limit all 166 clients are admitted and the p99 is about ten times the one at capacity.
    _check(*_rounds(server, storm=150, rounds=3, seconds=2.0), min_goodput=0.7, max_p99=3.0)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RELIABILITY_SLOW"), reason="set RELIABILITY_SLOW=1: about a minute of load")
def test_a_larger_storm_keeps_goodput_and_latency(server: ServerProcess) -> None:
    _check(*_rounds(server, storm=600, rounds=3, seconds=4.0), min_goodput=0.8, max_p99=2.0)


def test_refusals_go_out_no_faster_than_the_rate_ceiling_however_many_clients_wait(tmp_path: Path) -> None:
    # 120 clients retrying at once past a 1 s hold would be refused about 120 times a second; at a ceiling of 40
    # a second each waits about 3 s instead. The admitted clients keep being answered meanwhile.
    start: StartServer = server_starter(tiny_models(tmp_path), tmp_path)
    with start(max_in_flight=4, busy_delay_s=1.0, busy_max_rate=40) as server:
        result = asyncio.run(closed_loop(port_of(server), 120, seconds=3.0, warmup_s=1.5))
    refusals_per_s = result.statuses[503] / result.seconds
    print(f"{refusals_per_s:.0f} refusals/s, {result.goodput:.0f} answered/s, {dict(result.statuses)}")
    assert set(result.statuses) <= {200, 503}, dict(result.statuses)
    assert 10 <= refusals_per_s <= 60 and result.goodput > 0, dict(result.statuses)
