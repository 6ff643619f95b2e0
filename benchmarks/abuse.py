"""Abuse benchmark of a real ``mcdrop serve``: what hostile or careless clients cost it, from one run.

    python benchmarks/abuse.py                           # about 1.5 minutes
    python benchmarks/abuse.py --storm 1500 --seconds 5  # the full-size storm, if the machine can drive it
    python benchmarks/abuse.py --only storm --storm 1500 --busy-delay 2   # one part, another refusal delay
    python benchmarks/abuse.py --server-pythonpath /tmp/old-tree   # the same figures for another source tree
    python benchmarks/abuse.py --only storm --storm 1500 --pin     # server on CPU 0, clients on the others

Starts ``mcdrop serve`` on 127.0.0.1 (``models/`` if it has checkpoints, else a tiny stand-in) and prints:

* headers: memory growth and /healthz latency while ``--slowloris`` connections drip a header and an endless
  header streams as fast as it can, against /healthz when quiet;
* idle: how many of ``--idle`` fresh, idle or half-sent connections the server closed within the header timeout;
* storm: goodput and p99 of ``--clients`` closed-loop clients (the capacity run), then with ``--storm`` more that
  retry every 503 at once, ignoring Retry-After; as ratios. The server's in-flight limit is ``--in-flight``, by
  default half again ``--clients``: a limit at exactly the concurrency that reaches capacity loses goodput to
  every moment a freed slot waits for the next request;
* 422: size and time of the answer to a 1 MB body ``{"texts": [1, 1, ...]}``.

Every loop is bounded in time and count; the clients share the machine with the server. With ``--pin`` they do
not share its CPUs: the server runs on CPU 0 and the clients on the rest, the nearest a single machine comes to
clients on other machines, so that a storm's figures are what the storm costs the server and not what its 1,500
clients cost the CPU they would otherwise share with it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from mcdrop.serving.launch import ServerProcess, add_env_argument, start_server
from mcdrop.serving.loadgen import (
    EndlessHeaders,
    Slowloris,
    closed_loop,
    percentile,
    probe_healthz,
    read_until_closed,
    rss_bytes,
)

REPO = Path(__file__).resolve().parents[1]


def _port(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _ms(values: list[float], q: float) -> str:
    value = percentile(values, q)
    return "no answer" if value == float("inf") else f"{value * 1000:.1f} ms"


def headers(server: ServerProcess, args: argparse.Namespace) -> None:
    port = _port(server)
    quiet = probe_healthz(port, 3.0)
    rss_before = rss_bytes(server.process.pid)
    peak = rss_before
    with Slowloris(port, args.slowloris) as drips, EndlessHeaders(port) as endless:
        under = []
        end = time.monotonic() + args.attack_seconds
        while time.monotonic() < end:
            under += probe_healthz(port, 0.5)
            peak = max(peak, rss_bytes(server.process.pid))
    print(
        f"headers: {drips.opened} slowloris + an endless header ({endless.sent / 2**20:.0f} MB sent over "
        f"{endless.connections} connections) for {args.attack_seconds:.0f} s"
    )
    print(f"  memory {rss_before / 2**20:.0f} -> {peak / 2**20:.0f} MB (+{(peak - rss_before) / 2**20:.1f} MB)")
    print(f"  /healthz p50 {_ms(under, 0.5)}, p99 {_ms(under, 0.99)}", end=" ")
    print(f"(quiet: p50 {_ms(quiet, 0.5)}, p99 {_ms(quiet, 0.99)})")
    print(
        f"  {sum(x == float('inf') for x in under)} of {len(under)} probes failed; drips still open: {drips.still_open}"
    )


def idle(server: ServerProcess, args: argparse.Namespace) -> None:
    starts = [b"", b"GET /healthz HTTP/1.1\r\n", b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"]
    socks = []
    for i in range(args.idle):
        sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=5)
        sock.sendall(starts[i % 3])
        socks.append(sock)
    limit_s = args.header_timeout + 2.0
    start = time.monotonic()
    closed = 0
    for sock in socks:  # each read returns when the server closes, or when the limit has passed
        read_until_closed(sock, max(0.01, limit_s - (time.monotonic() - start)))
        closed += time.monotonic() - start < limit_s
        sock.close()
    print(f"idle: {closed} of {len(socks)} idle, half-sent or body-less connections closed within {limit_s:.0f} s")


def storm(server: ServerProcess, args: argparse.Namespace) -> None:
    port = _port(server)
    calm, stormy = [], []
    for _ in range(args.rounds):
        calm.append(asyncio.run(closed_loop(port, args.clients, args.seconds, warmup_s=0.5)))
        stormy.append(asyncio.run(closed_loop(port, args.clients + args.storm, args.seconds, warmup_s=1.5)))
    capacity, goodput = (statistics.median(r.goodput for r in runs) for runs in (calm, stormy))
    p99, storm_p99 = (statistics.median(r.p99_ms() for r in runs) for runs in (calm, stormy))
    refused = statistics.median(r.statuses[503] / r.seconds for r in stormy)
    print(
        f"storm: {args.clients} clients (in-flight limit {args.in_flight}), then {args.storm} more retrying every 503 "
        f"at once ({args.rounds} rounds; refusals held {args.busy_delay:g} s, at most {args.busy_max_rate:g}/s)"
    )
    print(f"  capacity {capacity:.0f} req/s, p99 {p99:.1f} ms; storm {goodput:.0f} req/s, p99 {storm_p99:.1f} ms")
    print(f"  goodput ratio {goodput / capacity:.2f}, p99 ratio {storm_p99 / p99:.2f}, {refused:.0f} refusals/s")


def amplification(server: ServerProcess, args: argparse.Namespace) -> None:
    body = b'{"texts": [' + b",".join([b"1"] * 500_000) + b"]}"
    request = urllib.request.Request(
        server.url + "/v1/predict", data=body, headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    try:
        urllib.request.urlopen(request, timeout=60)
        status, answer = 200, b""
    except urllib.error.HTTPError as error:
        status, answer = error.code, error.read()
    print(
        f"422: a {len(body) / 1e6:.1f} MB body of numbers -> {status}, {len(answer)} bytes in "
        f"{(time.perf_counter() - start) * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slowloris", type=int, default=500)
    parser.add_argument("--attack-seconds", type=float, default=12.0)
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--header-timeout", type=float, default=2.0, help="the server's header and body timeouts")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients of the capacity run")
    parser.add_argument("--storm", type=int, default=300, help="clients added for the storm")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=None,
        help="the server's MCDROP_MAX_IN_FLIGHT (default: 1.5 x --clients, the sizing docs/api.md recommends)",
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy-delay", type=float, default=1.0, help="the server's MCDROP_BUSY_DELAY_S")
    parser.add_argument(
        "--busy-max-rate", type=float, default=500.0, help="the server's MCDROP_BUSY_MAX_RATE (0: no ceiling)"
    )
    parser.add_argument(
        "--only", choices=["422", "idle", "headers", "storm"], action="append", help="run only these parts"
    )
    parser.add_argument("--server-pythonpath", help="run the server from this source tree (PYTHONPATH)")
    parser.add_argument("--pin", action="store_true", help="run the server on CPU 0 and the clients on the others")
    add_env_argument(parser)
    args = parser.parse_args()
    args.in_flight = args.in_flight or (3 * args.clients + 1) // 2
    models = REPO / "models"
    workdir = Path(tempfile.mkdtemp(prefix="abuse-"))
    if not any(models.glob("*/config.json")):
        import sys

        sys.path.insert(0, str(REPO / "tests"))
        from conftest import write_tiny_checkpoint

        models = workdir / "models"
        write_tiny_checkpoint(models, "mlp", "tiny-mlp")
    env = {
        "MCDROP_DEVICE": "cpu",
        "MCDROP_ACCESS_LOG": "false",
        "MCDROP_DEFAULT_MODEL": "rt-mlp" if (models / "rt-mlp").exists() else "tiny-mlp",
        "MCDROP_HEADER_TIMEOUT_S": str(args.header_timeout),
        "MCDROP_BODY_TIMEOUT_S": str(args.header_timeout),
        "MCDROP_MAX_IN_FLIGHT": str(args.in_flight),
        "MCDROP_BUSY_DELAY_S": str(args.busy_delay),
        "MCDROP_BUSY_MAX_RATE": str(args.busy_max_rate),
        # the same scale-down for a server without the in-flight limit: its 503s come from the queue limit
        "MCDROP_QUEUE_LIMIT": str(max(64, args.clients * 4)),
    }
    env.update(args.env)
    if args.server_pythonpath:
        env["PYTHONPATH"] = args.server_pythonpath
    server_cpus = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs at least two CPUs")
        server_cpus = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))
    server = start_server(models, workdir / "serve.log", env, cwd=REPO, cpus=server_cpus)
    try:
        pinned = f", on CPU {min(server_cpus)}, clients on {sorted(os.sched_getaffinity(0))}" if server_cpus else ""
        print(f"mcdrop serve {server.url} on {models}{pinned} (log: {workdir / 'serve.log'})")
        parts = {"422": amplification, "idle": idle, "headers": headers, "storm": storm}
        for name, part in parts.items():
            if args.only is None or name in args.only:
                part(server, args)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
