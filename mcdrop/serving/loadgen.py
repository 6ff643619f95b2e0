"""Raw-socket clients for load and abuse runs against a local ``mcdrop serve``: tests and benchmarks share them.

They speak just enough HTTP/1.1 to cost the client a few microseconds per request (a general-purpose client
costs about a millisecond, which on a small machine shared with the server would measure the client). Every
loop here is bounded in time and count and stops by itself; they connect to 127.0.0.1 only.

    result = asyncio.run(closed_loop(port, clients=64, seconds=5))       # goodput and p99 of the 200s
    with Slowloris(port, 200), EndlessHeaders(port): latencies = probe_healthz(port, seconds=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
PREDICT_BODY = json.dumps({"texts": ["a gripping and beautifully acted drama with a dull script"]}).encode()
_MAX_TRIP_S = 30.0  # no single exchange waits longer


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """One HTTP/1.1 request, ``Content-Type: application/json`` when it has a body."""
    lines = [f"{method} {path} HTTP/1.1", "Host: mcdrop"]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers and body of one complete response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def read_until_closed(sock: socket.socket, limit_s: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``limit_s`` passes), and how long that took."""
    start = time.monotonic()
    sock.settimeout(limit_s)
    chunks = []
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - start


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux)."""
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) * 1024 if match else 0


def healthz_seconds(port: int, timeout_s: float = 15.0) -> float:
    """Time for ``GET /healthz`` on a fresh connection; ``inf`` when it fails or takes over ``timeout_s``."""
    start = time.perf_counter()
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            sock.sendall(request_bytes("GET", "/healthz", headers={"Connection": "close"}))
            raw, _ = read_until_closed(sock, timeout_s)
    except OSError:
        return float("inf")
    return time.perf_counter() - start if raw.startswith(b"HTTP/1.1 200") else float("inf")


def probe_healthz(port: int, seconds: float, pause_s: float = 0.05) -> list[float]:
    """``/healthz`` latencies measured one after another for ``seconds``."""
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        latencies.append(healthz_seconds(port))
        time.sleep(pause_s)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class LoadResult:
    """What closed-loop clients saw over the measured part of a run."""

    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)  # of the 200s

    @property
    def goodput(self) -> float:
        return len(self.latencies_s) / self.seconds

    def p99_ms(self) -> float:
        return 1000 * percentile(self.latencies_s, 0.99)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bool]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    await reader.readexactly(int(match.group(1)) if match else 0)
    return int(head[9:12]), b"connection: close" in head.lower()


async def closed_loop(
    port: int, clients: int, seconds: float, body: bytes = PREDICT_BODY, warmup_s: float = 1.0
) -> LoadResult:
    """``clients`` keep-alive connections each sending ``POST /v1/predict`` again as soon as it has an answer,
    whatever it was (a 503's ``Retry-After`` ignored), for ``warmup_s + seconds``; counts the last ``seconds``."""
    request = request_bytes("POST", "/v1/predict", body)
    begin = time.perf_counter()
    measure_from, stop = begin + warmup_s, begin + warmup_s + seconds
    result = LoadResult(seconds)

    async def client() -> None:
        streams = None
        while (sent := time.perf_counter()) < stop:
            try:
                if streams is None:
                    streams = await asyncio.wait_for(asyncio.open_connection(HOST, port), _MAX_TRIP_S)
                status, closed = await asyncio.wait_for(_exchange(*streams, request), _MAX_TRIP_S)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                status, closed = 0, True
                await asyncio.sleep(0.01)
            if sent >= measure_from:
                result.statuses[status] += 1
                if status == 200:
                    result.latencies_s.append(time.perf_counter() - sent)
            if closed and streams is not None:
                streams[1].close()
                streams = None
        if streams is not None:
            streams[1].close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return result


class _Attack:
    """A background thread that runs until the ``with`` block ends (or ``limit_s`` passes)."""

    def __init__(self, limit_s: float = 120.0) -> None:
        self.stop = threading.Event()
        self.limit_s = limit_s
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Attack:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


class Slowloris(_Attack):
    """``count`` connections that send a request line and then one header byte every ``drip_s``; ``still_open``
    says how many the server had not closed by the end."""

    def __init__(self, port: int, count: int, drip_s: float = 0.5, limit_s: float = 120.0) -> None:
        super().__init__(limit_s)
        self.port, self.count, self.drip_s = port, count, drip_s
        self.opened = self.still_open = 0

    def _run(self) -> None:
        socks: list[socket.socket] = []
        for _ in range(self.count):
            with contextlib.suppress(OSError):
                sock = socket.create_connection((HOST, self.port), timeout=2)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Drip: ")
                socks.append(sock)
        self.opened = len(socks)
        end = time.monotonic() + self.limit_s
        while socks and not self.stop.wait(self.drip_s) and time.monotonic() < end:
            for sock in list(socks):
                try:
                    sock.sendall(b"a")
                except OSError:
                    socks.remove(sock)
        self.still_open = len(socks)
        for sock in socks:
            sock.close()


class EndlessHeaders(_Attack):
    """A connection streaming one header that never ends, as fast as it can, reconnecting when the server closes
    it, until ``max_bytes`` are sent; ``sent`` is what it managed to send, ``connections`` how many it opened."""

    def __init__(self, port: int, max_bytes: int = 100 * 2**20, limit_s: float = 120.0) -> None:
        super().__init__(limit_s)
        self.port, self.max_bytes = port, max_bytes
        self.sent = self.connections = 0

    def _run(self) -> None:
        chunk = b"b" * 65536
        end = time.monotonic() + self.limit_s
        while not self.stop.is_set() and time.monotonic() < end and self.sent < self.max_bytes:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=2) as sock:
                self.connections += 1
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
                while not self.stop.is_set() and self.sent < self.max_bytes:
                    sock.sendall(chunk)
                    self.sent += len(chunk)
            self.stop.wait(0.05)
