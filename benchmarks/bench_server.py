"""Load benchmark of a real ``mcdrop serve``: throughput and latency with batching on and off.

Starts the server (one per setting) on 127.0.0.1, drives it with closed-loop async clients (each client sends its
next request when the previous answer arrives), one text per request, to ``POST /v1/predict`` or, with
``--endpoint v2``, to the Open Inference Protocol's ``POST /v2/models/{model}/infer`` (JSON tensors, every
output), and prints throughput,
p50/p99 latency, the batching on/off ratio and where a request's time goes, from the ``Server-Timing`` header:

    parse    body read + JSON/type validation + limits
    queue    waiting for its batch (the batching window, or the engine busy with earlier batches)
    engine   the engine call of its batch (shared with the requests merged into it)
    handoff  results to dicts, metrics, back to the event loop
    encode   JSON response (/v2: the output tensors)
    outside  client latency minus the server's own total: HTTP parsing/writing, event-loop waits, the client

Usage (uses ``models/rt-mlp`` and ``models/rt-gru``; stand-ins of the training defaults' shapes when absent):

    python benchmarks/bench_server.py [--clients 1,8,32] [--n-samples 100] [--seconds 5] [--endpoint v1|v2]

The clients share the machine with the server (2 cores here), so absolute numbers include that contention.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from mcdrop.serving.launch import ServerStartError, start_server

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

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0

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


def request(endpoint: str, model: str, text: str, n_samples: int) -> tuple[str, bytes]:
    """The path and JSON body of one prediction request on ``/v1`` or ``/v2``."""
    if endpoint == "v2":
        tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}
        body: dict[str, Any] = {"inputs": [tensor], "parameters": {"n_samples": n_samples}}
        return f"/v2/models/{model}/infer", json.dumps(body).encode()
    return "/v1/predict", json.dumps({"texts": [text], "model": model, "n_samples": n_samples}).encode()


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


async def drive(url: str, load: Load) -> Run:
    """Closed-loop clients, one text per request (drawn from ``load.texts``, review-like stand-ins by default)."""
    texts = load.texts or sentences(1000, seed=2)
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
                    path, body = request(load.endpoint, load.model, rng.choice(texts), load.n_samples)
                    if raw is not None:
                        status, headers, _ = await raw.post(path, body)
                    else:
                        response = await pool.post(path, content=body, headers={"content-type": "application/json"})
                        status, headers = response.status_code, dict(response.headers)
                    done = time.perf_counter()
                    if now < measure_from:
                        continue
                    if status != 200:
                        run.errors += 1
                        continue
                    run.latencies_s.append(done - now)
                    run.timings.append(parse_server_timing(headers.get("server-timing", "")))
            finally:
                if raw is not None:
                    raw.close()

        await asyncio.gather(*(one_client(i) for i in range(load.clients)))
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=REPO / "models")
    parser.add_argument("--models", default="rt-mlp,rt-gru")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per point")
    parser.add_argument("--warmup-seconds", type=float, default=1.0)
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw", help="raw: a minimal HTTP/1.1 client (default)"
    )
    parser.add_argument(
        "--endpoint", choices=["v1", "v2"], default="v1", help="v1: /v1/predict; v2: /v2/models/{model}/infer"
    )
    parser.add_argument("--env", action="append", default=[], help="extra MCDROP_X=Y for the server")
    args = parser.parse_args()
    names = args.models.split(",")
    clients = [int(c) for c in args.clients.split(",")]
    extra_env = dict(item.split("=", 1) for item in args.env)

    workdir = Path(tempfile.mkdtemp(prefix="mcdrop-bench-"))
    model_dir = prepare_models(args.model_dir, names, workdir)

    results: dict[tuple[str, bool, int], Run] = {}
    for batching in (True, False):
        env = {"MCDROP_BATCHING": str(batching).lower(), "MCDROP_ACCESS_LOG": "false", **extra_env}
        try:
            server = start_server(model_dir, workdir / f"server-{batching}.log", env)
        except ServerStartError as error:
            raise SystemExit(str(error)) from None
        url = server.url
        try:
            for name in names:
                for n_clients in clients:
                    load = Load(
                        name, n_clients, args.n_samples, args.seconds, args.warmup_seconds, args.client, args.endpoint
                    )
                    run = asyncio.run(drive(url, load))
                    results[(name, batching, n_clients)] = run
                    b = run.breakdown_ms()
                    print(
                        f"{name:8s} {args.endpoint} batching={'on ' if batching else 'off'} clients={n_clients:3d}  "
                        f"{run.throughput:7.1f} req/s  p50 {run.percentile_ms(0.5):7.1f} ms  "
                        f"p99 {run.percentile_ms(0.99):7.1f} ms  errors {run.errors}  | "
                        + "  ".join(f"{k} {v:.2f}" for k, v in b.items()),
                        flush=True,
                    )
        finally:
            server.stop(grace_s=60)

    print(f"\nbatching on/off throughput ratio (N={args.n_samples}, one text per request, /{args.endpoint}):")
    for name in names:
        ratios = [
            f"{c} clients: {results[(name, True, c)].throughput / max(1e-9, results[(name, False, c)].throughput):.2f}x"
            for c in clients
        ]
        print(f"  {name}: " + ", ".join(ratios))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
