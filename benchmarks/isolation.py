"""Isolation benchmark: do heavy requests to one model slow down, or time out, small requests to another?

Starts ``mcdrop serve`` with the shipped models on 127.0.0.1 and measures small rt-mlp requests (one text, sent at a
fixed rate whatever the answers, so a stalled server shows as latency and 504s instead of fewer requests) in three
phases of the same run:

    alone      no other traffic
    maximal    two closed-loop clients sending the largest request the request limits allow to rt-gru:
               64 texts x 10,000 characters at n_samples 1000 (about 640 KB)
    at-limit   two clients sending the costliest rt-gru request the cost limit admits (64 texts of 256 tokens at
               the largest n_samples under MCDROP_MAX_REQUEST_COST), so the GRU is busy all the time

For each phase it prints the rt-mlp p50/p99 and how many got 504 (or anything but 200), the ratio of p99 to the
alone phase, and what the heavy clients got (statuses, and the time of their answers). Every loop is bounded in
count and time.

Usage (CPU; clients and server share the machine, 2 cores here):

    python benchmarks/isolation.py [--small 100] [--rate 10] [--phase-seconds 90] [--max-request-cost N]
                                   [--torch-threads N]

Against another checkout (for a before/after comparison), put its package first: ``PYTHONPATH=/path/to/checkout``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mcdrop.serving.launch import add_env_argument, start_server

REPO = Path(__file__).resolve().parents[1]
WORD = "word "
MAX_TEXTS, MAX_CHARS, MAX_N_SAMPLES, GRU_TOKENS = 64, 10_000, 1000, 256
DEFAULT_MAX_REQUEST_COST = 1_000_000


@dataclass
class Phase:
    name: str
    small_latencies: list[float] = field(default_factory=list)
    small_statuses: Counter[int] = field(default_factory=Counter)
    heavy_statuses: Counter[int] = field(default_factory=Counter)
    heavy_seconds: list[float] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")  # the slowest small request and its Server-Timing header

    def small_ms(self, q: float) -> float:
        ordered = sorted(self.small_latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _post(client: httpx.Client, url: str, body: dict[str, Any], timeout_s: float) -> tuple[int, float]:
    """(status, seconds); status 0 when the client gave up (counted apart from the server's answers)."""
    started = time.perf_counter()
    try:
        status = client.post(url + "/v1/predict", json=body, timeout=timeout_s).status_code
    except httpx.TimeoutException:
        status = 0
    return status, time.perf_counter() - started


async def _small_requests(url: str, phase: Phase, n: int, rate: float) -> None:
    """``n`` rt-mlp requests, one every ``1 / rate`` seconds whatever the answers (open loop)."""
    body = {"texts": ["a gripping, beautifully acted drama"], "model": "rt-mlp", "n_samples": 100}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one(i: int) -> None:
            await asyncio.sleep(i / rate)
            started = time.perf_counter()
            try:
                response = await client.post(url + "/v1/predict", json=body)
            except httpx.HTTPError:
                phase.small_statuses[0] += 1
                return
            latency = time.perf_counter() - started
            phase.small_statuses[response.status_code] += 1
            phase.small_latencies.append(latency)
            phase.slowest = max(phase.slowest, (latency, response.headers.get("server-timing", "")))

        await asyncio.gather(*(one(i) for i in range(n)))


def _heavy_client(url: str, body: dict[str, Any], phase: Phase, stop: threading.Event, until: float) -> None:
    with httpx.Client() as client:
        while not stop.is_set() and time.monotonic() < until:
            status, seconds = _post(client, url, body, timeout_s=max(1.0, until - time.monotonic()) + 60)
            phase.heavy_statuses[status] += 1
            phase.heavy_seconds.append(seconds)
            if status == 503:
                stop.wait(1.0)  # Retry-After


def run_phase(url: str, name: str, heavy: dict[str, Any] | None, args: argparse.Namespace) -> Phase:
    """``args.small`` rt-mlp requests, with two heavy clients sending ``heavy`` meanwhile (at most
    ``args.phase_seconds`` of heavy traffic)."""
    phase = Phase(name)
    stop = threading.Event()
    until = time.monotonic() + args.phase_seconds
    clients = [
        threading.Thread(target=_heavy_client, args=(url, heavy, phase, stop, until), daemon=True)
        for _ in range(2 if heavy is not None else 0)
    ]
    for client in clients:
        client.start()
    if clients:
        time.sleep(2.0)  # the heavy requests are in (or queued for) the engine
    asyncio.run(_small_requests(url, phase, args.small, args.rate))
    stop.set()
    for client in clients:
        client.join(180)  # an answer in flight arrives, or its client times out
    return phase


def report(phases: list[Phase]) -> None:
    alone = phases[0].small_ms(0.99)
    print(f"{'phase':<9} {'rt-mlp n':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99/alone':>9} {'504':>4} {'other':>5}  heavy")
    for phase in phases:
        statuses = phase.small_statuses
        other = sum(n for status, n in statuses.items() if status not in (200, 504))
        heavy = ", ".join(f"{status}: {n}" for status, n in sorted(phase.heavy_statuses.items())) or "-"
        if phase.heavy_seconds:
            heavy += (
                f" (answers p50 {statistics.median(phase.heavy_seconds):.1f}s, max {max(phase.heavy_seconds):.1f}s)"
            )
        print(
            f"{phase.name:<9} {len(phase.small_latencies):>8} {phase.small_ms(0.5):>8.1f} {phase.small_ms(0.99):>8.1f}"
            f" {phase.small_ms(0.99) / alone:>9.2f} {statuses[504]:>4} {other:>5}  {heavy}"
        )
    for phase in phases:  # where the slowest small request's time went, in the server (ms)
        print(f"slowest rt-mlp request, {phase.name}: {1000 * phase.slowest[0]:.1f} ms; server: {phase.slowest[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=str(REPO / "models"))
    parser.add_argument("--small", type=int, default=100, help="rt-mlp requests per phase")
    parser.add_argument("--rate", type=float, default=10.0, help="rt-mlp requests per second")
    parser.add_argument("--phase-seconds", type=float, default=90.0, help="longest the heavy clients send")
    parser.add_argument(
        "--max-request-cost", type=int, default=None, help="MCDROP_MAX_REQUEST_COST for the server (default: its own)"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="MCDROP_TORCH_THREADS for the server (default: its own)"
    )
    add_env_argument(parser)
    args = parser.parse_args()
    limit = args.max_request_cost or DEFAULT_MAX_REQUEST_COST
    maximal = {"texts": [WORD * (MAX_CHARS // len(WORD))] * MAX_TEXTS, "model": "rt-gru", "n_samples": MAX_N_SAMPLES}
    at_limit = {**maximal, "n_samples": max(1, min(MAX_N_SAMPLES, limit // (MAX_TEXTS * GRU_TOKENS)))}
    env = {"MCDROP_DEVICE": "cpu", "MCDROP_ACCESS_LOG": "false"}
    if args.max_request_cost is not None:
        env["MCDROP_MAX_REQUEST_COST"] = str(args.max_request_cost)
    if args.torch_threads is not None:
        env["MCDROP_TORCH_THREADS"] = str(args.torch_threads)
    env.update(args.env)
    with tempfile.TemporaryDirectory() as workdir:
        server = start_server(args.model_dir, Path(workdir) / "serve.log", env, timeout_s=180)
        try:
            phases = [run_phase(server.url, "alone", None, args)]
            for name, heavy in (("maximal", maximal), ("at-limit", at_limit)):
                phases.append(run_phase(server.url, name, heavy, args))
        finally:
            server.stop(grace_s=90)
    n_at_limit = at_limit["n_samples"]
    print(
        f"heavy rt-gru requests: maximal = 64 texts x 10,000 chars x n_samples 1000; at-limit = n_samples {n_at_limit}"
    )
    report(phases)


if __name__ == "__main__":
    main()
