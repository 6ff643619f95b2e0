"""Load benchmark of a real ``mcdrop serve``: throughput and latency with batching on and off.

Starts the server (one per setting) on 127.0.0.1, drives it with closed-loop async clients (each client sends its
next request when the previous answer arrives), one text per request, to ``POST /v1/predict`` or, with
``--endpoint v2``, to the Open Inference Protocol's ``POST /v2/models/{model}/infer``, and prints throughput,
p50/p99 latency, the mean answer size, the CPU time per request of the server process and of the clients, the
batching on/off ratio and where a request's time goes, from the ``Server-Timing`` header:

    parse    body read + JSON/type validation + limits
    queue    waiting for its batch (the batching window, or the engine busy with earlier batches)
    engine   the engine call of its batch (shared with the requests merged into it)
    handoff  results to dicts, metrics, back to the event loop
    encode   JSON response (/v2: the output tensors)
    outside  client latency minus the server's own total: HTTP parsing/writing, event-loop waits, the client

What a ``/v2`` request asks for: by default no ``outputs`` list, so the answer holds every output, as JSON data.
That is what both protocol clients send unless told otherwise (KServe's ``InferenceRESTClient`` names no outputs;
``tritonclient`` names none either but asks for binary data: ``--v2-binary``), and it carries what a ``/v1``
answer carries, every field of the prediction, so the two endpoints are compared on the same information (for one
text about 1230 bytes of tensors against 570 of ``/v1`` JSON). ``--outputs label,probs,mutual_information``
measures a client that picks a few (about 430 bytes).

``--endpoint v1,v2 --repeat 3`` alternates the endpoints on the same server (v1, v2, v1, v2, ...) and prints the
ratio of each pair and their median: the machine's other load changes from one run to the next, so only
interleaved pairs compare the endpoints. The figures measured so far, and how they spread, are in docs/api.md
(Throughput), e.g. for

    python benchmarks/bench_server.py --models rt-mlp --clients 32 --seconds 5 --endpoint v1,v2 --repeat 5 --batching on

Usage (uses ``models/rt-mlp`` and ``models/rt-gru``; stand-ins of the training defaults' shapes when absent):

    python benchmarks/bench_server.py [--clients 1,8,32] [--n-samples 100] [--seconds 5] [--endpoint v1|v2|v1,v2]
        [--repeat N] [--batching both|on|off] [--outputs NAME,...] [--v2-binary]

The clients share the machine with the server (2 cores here), so absolute numbers include that contention; the
CPU times per request (server: every thread of its process) depend much less on it than throughput does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from mcdrop.core.checkpoint import save_checkpoint
from mcdrop.core.registry import build_model
from mcdrop.core.text import TextEncoder
from mcdrop.serving.launch import ServerStartError, add_env_argument, start_server

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    "the",
    "a",
    "film",
    "movie",
    "story",
    "acting",
    "plot",
    "script",
    "characters",
    "director",
    "performance",
    "great",
    "good",
    "bad",
    "boring",
    "wonderful",
    "dull",
    "funny",
    "moving",
    "beautiful",
    "terrible",
    "brilliant",
    "slow",
    "charming",
    "mess",
    "fun",
    "best",
    "worst",
    "year",
    "ever",
    "never",
    "quite",
    "really",
    "too",
    "much",
    "little",
    "lot",
    "with",
    "and",
    "but",
    "not",
    "is",
    "was",
    "it",
    "its",
    "this",
    "that",
    "of",
    "in",
    "on",
    "by",
    "for",
    "as",
    "an",
]
STAND_INS: dict[str, tuple[str, dict[str, Any]]] = {  # the shapes `mcdrop train` uses by default
    "rt-mlp": ("mlp", {"embed_dim": 64, "hidden_dims": [64], "dropout_p": [0.5, 0.5]}),
    "rt-gru": ("gru", {"embed_dim": 64, "hidden_dim": 128, "output_dropout_p": 0.5}),
}


def sentences(n: int, seed: int = 0) -> list[str]:
    """Review-like texts, 6-40 words (median about 18, like the RT corpus)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 40))) for _ in range(n)]


def stand_in_models(directory: Path) -> None:
    corpus = sentences(500, seed=1)
    for name, (architecture, params) in STAND_INS.items():
        torch.manual_seed(0)
        encoder = TextEncoder.fit(corpus, max_size=20000, ngram_max=2 if architecture == "mlp" else 1, max_tokens=64)
        model = build_model(architecture, len(encoder.vocab), 2, params)
        config = {"name": name, "version": "stand-in", "labels": ["negative", "positive"], "model_params": params}
        save_checkpoint(directory / name, model, encoder, config)


@dataclass
class Run:
    latencies_s: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    body_bytes: int = 0  # of the measured answers, together
    server_cpu_s: float | None = None  # the server process over the measured time
    client_cpu_s: float = 0.0  # this process (the clients) over the measured time

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0

    def per_request_us(self, seconds: float | None) -> float:
        return 1e6 * seconds / len(self.latencies_s) if seconds is not None and self.latencies_s else float("nan")

    def summary(self) -> str:
        mean_bytes = self.body_bytes / len(self.latencies_s) if self.latencies_s else 0
        return (
            f"{self.throughput:7.1f} req/s  p50 {self.percentile_ms(0.5):7.1f} ms  p99 {self.percentile_ms(0.99):7.1f} "
            f"ms  errors {self.errors}  body {mean_bytes:.0f} B  CPU/req server "
            f"{self.per_request_us(self.server_cpu_s):.0f} µs, clients {self.per_request_us(self.client_cpu_s):.0f} µs"
        )

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def breakdown_ms(self) -> dict[str, float]:
        keys = ("parse", "queue", "engine", "handoff", "encode", "total")
        out = {k: statistics.fmean(t.get(k, 0.0) for t in self.timings) for k in keys} if self.timings else {}
        if self.timings:
            out["outside"] = 1000 * statistics.fmean(self.latencies_s) - out["total"]
        return out


def parse_server_timing(header: str) -> dict[str, float]:
    parts = {}
    for item in header.split(","):
        name, _, value = item.strip().partition(";dur=")
        if value:
            parts[name] = float(value)
    return parts


def request(
    endpoint: str,
    model: str,
    text: str,
    n_samples: int,
    outputs: Sequence[str] | None = None,
    binary_output: bool = False,
) -> tuple[str, bytes]:
    """The path and JSON body of one prediction request on ``/v1`` or ``/v2``; for ``/v2``, ``outputs`` names the
    outputs to answer (``None``: every one) and ``binary_output`` asks for them as binary data."""
    if endpoint == "v2":
        tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}
        parameters: dict[str, Any] = {"n_samples": n_samples}
        if binary_output:
            parameters["binary_data_output"] = True
        body: dict[str, Any] = {"inputs": [tensor], "parameters": parameters}
        if outputs is not None:
            body["outputs"] = [{"name": name} for name in outputs]
        return f"/v2/models/{model}/infer", json.dumps(body).encode()
    return "/v1/predict", json.dumps({"texts": [text], "model": model, "n_samples": n_samples}).encode()


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RawClient:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for this benchmark.

    A general-purpose client costs about a millisecond of CPU per request, which on a 2-core machine shared with
    the server would measure the client rather than the server; this one costs a few microseconds.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> RawClient:
        return cls(*await asyncio.open_connection(host, port))

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        content = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, content

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class Load:
    """What the clients send, and for how long."""

    model: str
    clients: int
    n_samples: int
    seconds: float
    warmup_s: float
    client_kind: str
    endpoint: str = "v1"
    texts: Sequence[str] | None = None  # one per request, drawn in turn; review-like stand-ins by default
    outputs: Sequence[str] | None = None  # /v2: the outputs asked for; None: every one
    binary_output: bool = False  # /v2: outputs as binary data
    server_pid: int | None = None  # to measure the server's CPU time


async def drive(url: str, load: Load) -> Run:
    """Closed-loop clients, one text per request (drawn from ``load.texts``, review-like stand-ins by default)."""
    texts = load.texts or sentences(1000, seed=2)
    # built before the clients start, so that building them costs the clients nothing (and the same on both APIs)
    requests = [request(load.endpoint, load.model, t, load.n_samples, load.outputs, load.binary_output) for t in texts]
    run = Run()
    host, port = url.removeprefix("http://").split(":")
    limits = httpx.Limits(max_connections=load.clients, max_keepalive_connections=load.clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as pool:
        start = time.perf_counter()
        measure_from = start + load.warmup_s
        stop = measure_from + load.seconds

        async def one_client(index: int) -> None:
            rng = random.Random(index)
            raw = await RawClient.connect(host, int(port)) if load.client_kind == "raw" else None
            try:
                while (now := time.perf_counter()) < stop:
                    path, body = rng.choice(requests)
                    if raw is not None:
                        status, headers, content = await raw.post(path, body)
                    else:
                        response = await pool.post(path, content=body, headers={"content-type": "application/json"})
                        status, headers, content = response.status_code, dict(response.headers), response.content
                    done = time.perf_counter()
                    if now < measure_from:
                        continue
                    if status != 200:
                        run.errors += 1
                        continue
                    run.latencies_s.append(done - now)
                    run.body_bytes += len(content)
                    run.timings.append(parse_server_timing(headers.get("server-timing", "")))
            finally:
                if raw is not None:
                    raw.close()

        async def cpu_meter() -> None:  # CPU times over the measured time only
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            server_from, client_from = process_cpu_s(load.server_pid or 0), time.process_time()
            await asyncio.sleep(max(0.0, stop - time.perf_counter()))
            server_to = process_cpu_s(load.server_pid or 0)
            run.client_cpu_s = time.process_time() - client_from
            if load.server_pid and server_from is not None and server_to is not None:
                run.server_cpu_s = server_to - server_from

        await asyncio.gather(cpu_meter(), *(one_client(i) for i in range(load.clients)))
        run.seconds = time.perf_counter() - measure_from
    return run


def prepare_models(source_dir: Path, names: list[str], workdir: Path) -> Path:
    """A model directory with the named checkpoints: copies from ``source_dir``, stand-ins for those missing."""
    model_dir = workdir / "models"
    model_dir.mkdir()
    for name in names:
        source = source_dir / name
        if (source / "config.json").is_file():
            shutil.copytree(source, model_dir / name)
    missing = [n for n in names if not (model_dir / n).exists()]
    if missing:
        print(f"note: {', '.join(missing)} not under {source_dir}; using untrained stand-ins of the default shapes")
        stand_in_dir = workdir / "stand-ins"
        stand_in_models(stand_in_dir)
        for name in missing:
            shutil.copytree(stand_in_dir / name, model_dir / name)
    return model_dir


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The load every server benchmark takes: which models, how many clients, samples and seconds."""
    parser.add_argument("--model-dir", type=Path, default=REPO / "models")
    parser.add_argument("--models", default="rt-mlp,rt-gru")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per point")
    parser.add_argument("--warmup-seconds", type=float, default=1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_arguments(parser)
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw", help="raw: a minimal HTTP/1.1 client (default)"
    )
    parser.add_argument(
        "--endpoint",
        default="v1",
        help="v1: /v1/predict; v2: /v2/models/{model}/infer; v1,v2: both in turn, with the v2/v1 ratios",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each endpoint per point, interleaved")
    parser.add_argument("--batching", choices=["both", "on", "off"], default="both")
    parser.add_argument("--outputs", default=None, help="/v2: the outputs to ask for, comma-separated (default all)")
    parser.add_argument("--v2-binary", action="store_true", help="/v2: ask for the outputs as binary data")
    add_env_argument(parser)
    args = parser.parse_args()
    names = args.models.split(",")
    clients = [int(c) for c in args.clients.split(",")]
    endpoints = args.endpoint.split(",")
    if not endpoints or any(e not in ("v1", "v2") for e in endpoints):
        parser.error("--endpoint: v1, v2 or v1,v2")
    outputs = tuple(args.outputs.split(",")) if args.outputs else None
    settings = {"both": (True, False), "on": (True,), "off": (False,)}[args.batching]
    extra_env = dict(args.env)

    workdir = Path(tempfile.mkdtemp(prefix="mcdrop-bench-"))
    model_dir = prepare_models(args.model_dir, names, workdir)

    results: dict[tuple[str, bool, int, str], list[Run]] = {}
    for batching in settings:
        env = {"MCDROP_BATCHING": str(batching).lower(), "MCDROP_ACCESS_LOG": "false", **extra_env}
        try:
            server = start_server(model_dir, workdir / f"server-{batching}.log", env)
        except ServerStartError as error:
            raise SystemExit(str(error)) from None
        url = server.url
        try:
            for name in names:
                for n_clients in clients:
                    for _ in range(args.repeat):
                        for endpoint in endpoints:
                            load = Load(
                                name, n_clients, args.n_samples, args.seconds, args.warmup_seconds, args.client,
                                endpoint, None, outputs, args.v2_binary, server.process.pid,
                            )  # fmt: skip
                            run = asyncio.run(drive(url, load))
                            results.setdefault((name, batching, n_clients, endpoint), []).append(run)
                            b = run.breakdown_ms()
                            print(
                                f"{name:8s} {endpoint} batching={'on ' if batching else 'off'} clients={n_clients:3d}  "
                                + run.summary()
                                + "  | "
                                + "  ".join(f"{k} {v:.2f}" for k, v in b.items()),
                                flush=True,
                            )
        finally:
            server.stop(grace_s=60)

    def throughput(name: str, batching: bool, n_clients: int, endpoint: str) -> float:
        return statistics.median(run.throughput for run in results[(name, batching, n_clients, endpoint)])

    if len(settings) == 2:
        for endpoint in endpoints:
            print(f"\nbatching on/off throughput ratio (N={args.n_samples}, one text per request, /{endpoint}):")
            for name in names:
                on_off = [
                    throughput(name, True, c, endpoint) / max(1e-9, throughput(name, False, c, endpoint))
                    for c in clients
                ]
                ratios = [f"{c} clients: {r:.2f}x" for c, r in zip(clients, on_off, strict=True)]
                print(f"  {name}: " + ", ".join(ratios))
    if endpoints == ["v1", "v2"]:
        print("\n/v2 throughput over /v1's, each interleaved pair:")
        for (name, batching, n_clients, endpoint), v1_runs in sorted(results.items()):
            if endpoint != "v1":
                continue
            v2_runs = results[(name, batching, n_clients, "v2")]
            ratios = [b.throughput / max(1e-9, a.throughput) for a, b in zip(v1_runs, v2_runs, strict=True)]
            print(
                f"  {name} batching={'on ' if batching else 'off'} clients={n_clients:3d}: "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + f"  (median {statistics.median(ratios):.2f})"
            )
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
