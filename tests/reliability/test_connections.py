"""The HTTP layer of a real ``mcdrop serve`` under hostile or broken clients, over raw sockets on 127.0.0.1.

Reproduces what a stock uvicorn gets wrong: an endless header held in memory, idle, half-sent and stalled
connections never closed, text/plain parser errors without a request id, and an early 413 that reaches the client
as a broken pipe. Timeouts are 1 s (keep-alive 2 s), so the module runs in well under a minute; every loop is
bounded in bytes and time.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mcdrop.serving.launch import ServerProcess
from mcdrop.serving.loadgen import Slowloris, healthz_seconds, parse_response, read_until_closed, rss_bytes
from reliability_kit import (
    KEEP_ALIVE_S,
    SHORT_TIMEOUTS,
    TIMEOUT_S,
    StartServer,
    connect,
    port_of,
    server_starter,
    tiny_models,
)

DRAIN_BYTES = 4 * 1024 * 1024  # the default
OVER_LIMIT = 1_100_000  # bytes: past the default 1 MiB body limit
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory) -> StartServer:
    workdir = tmp_path_factory.mktemp("connections")
    return server_starter(tiny_models(workdir), workdir)


@pytest.fixture(scope="module")
def server(start: StartServer) -> Iterator[ServerProcess]:
    with start(**SHORT_TIMEOUTS) as running:
        yield running


def assert_json_error(raw: bytes, status: int) -> dict[str, str]:
    code, headers, body = parse_response(raw)
    assert code == status, raw[:200]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    assert isinstance(json.loads(body)["detail"], str)
    return headers


def test_endless_header_gets_431_and_memory_stays_bounded(server: ServerProcess) -> None:
    rss_before = rss_bytes(server.process.pid)
    socks = [connect(server) for _ in range(4)]
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    chunk = b"a" * 65536
    sent = [0] * len(socks)
    answers = [b""] * len(socks)
    still_open = set(range(len(socks)))
    deadline = time.monotonic() + 10
    while still_open and time.monotonic() < deadline:  # stream until the server hangs up, at most 40 MB each
        for i in list(still_open):
            try:
                socks[i].settimeout(0.5)
                socks[i].sendall(chunk)
                sent[i] += len(chunk)
                socks[i].setblocking(False)
                try:
                    data = socks[i].recv(65536)
                except BlockingIOError:
                    continue
                answers[i] += data
                if not data:
                    still_open.discard(i)
            except OSError:  # reset once the drain budget is spent
                still_open.discard(i)
            assert sent[i] <= 40 * 1024 * 1024, "the server kept reading an endless header"
    assert not still_open
    for raw, n in zip(answers, sent, strict=True):
        if raw:  # the answer usually arrives; a reset may destroy it, and closing is what matters
            assert_json_error(raw, 431)
        assert n <= DRAIN_BYTES + 4 * 1024 * 1024
    assert rss_bytes(server.process.pid) - rss_before < 20 * 1024 * 1024
    assert healthz_seconds(port_of(server)) < 0.5


def test_header_just_over_the_limit_gets_431_and_within_it_is_served(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n")
        raw, elapsed = read_until_closed(sock)
    assert json.loads(parse_response(raw)[2]) == {"detail": "request headers: at most 16384 bytes"}
    assert_json_error(raw, 431)
    assert elapsed < 0.5
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"b" * 15000 + b"\r\n\r\n")
        assert parse_response(read_until_closed(sock)[0])[0] == 200


@pytest.mark.parametrize(
    "start_bytes", [b"", b"GET /healthz HTTP/1.1\r\n", b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Half: ab"]
)
def test_idle_and_incomplete_connections_are_closed_at_the_header_timeout(
    server: ServerProcess, start_bytes: bytes
) -> None:
    with connect(server) as sock:
        sock.sendall(start_bytes)
        raw, elapsed = read_until_closed(sock)
    assert raw == b""
    assert TIMEOUT_S * 0.8 < elapsed < TIMEOUT_S + 0.7


def test_header_timeout_counts_from_the_start_not_per_byte(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        start = time.monotonic()
        while time.monotonic() - start < TIMEOUT_S + 1.5:
            try:
                sock.sendall(b"a")
            except OSError:
                break
            time.sleep(0.05)
        else:
            assert read_until_closed(sock, 1.0)[0] == b""
    assert time.monotonic() - start < TIMEOUT_S + 1.5


def test_headers_and_half_the_body_get_408(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 1000\r\n\r\n" + b"x" * 500)
        raw, elapsed = read_until_closed(sock)
    assert_json_error(raw, 408)
    assert TIMEOUT_S * 0.8 < elapsed < TIMEOUT_S + 0.7


def test_body_timeout_is_for_the_whole_body(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 1000\r\n\r\n")
        start = time.monotonic()
        for _ in range(40):  # one byte every 50 ms would take 50 s
            try:
                sock.sendall(b"x")
                sock.setblocking(False)
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            sock.setblocking(True)
            time.sleep(0.05)
        sock.setblocking(True)
        raw, _ = read_until_closed(sock)
    assert_json_error(raw, 408)
    assert time.monotonic() - start < TIMEOUT_S + 0.7


def test_malformed_request_gets_json_400_with_a_request_id(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        raw, _ = read_until_closed(sock)
    assert_json_error(raw, 400)


def test_200_stuck_connections_are_closed_while_healthz_stays_fast(server: ServerProcess) -> None:
    port = port_of(server)
    with Slowloris(port, 200, drip_s=0.2) as drips:
        opened = time.monotonic()
        latencies = []
        while time.monotonic() - opened < TIMEOUT_S + 1.5:
            latencies.append(healthz_seconds(port))
            time.sleep(0.02)
    assert drips.opened == 200 and drips.still_open == 0
    assert max(latencies) < 0.5


def test_keep_alive_client_is_unaffected(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=5)
    conn.connect()
    first_socket = conn.sock
    start, n = time.monotonic(), 0
    # longer in all than the header timeout: each request gets its own header window
    while time.monotonic() - start < TIMEOUT_S * 1.5 or n < 60:
        if n % 20 == 19:
            time.sleep(TIMEOUT_S * 0.5)  # idle, but less than the keep-alive and header timeouts
        conn.request("POST", "/v1/predict", body=json.dumps({"texts": [f"film {n}"], "n_samples": 2}), headers=JSON)
        response = conn.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["predictions"]) == 1
        n += 1
    assert conn.sock is first_socket
    conn.close()


def test_keep_alive_idle_connection_is_closed(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        raw, elapsed = read_until_closed(sock, 5.0)
    assert parse_response(raw)[0] == 200
    assert elapsed < min(KEEP_ALIVE_S, TIMEOUT_S) + 0.7


def test_pipelined_requests_are_answered(server: ServerProcess) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(request * 3 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw, _ = read_until_closed(sock)
    assert raw.count(b"HTTP/1.1 200 OK") == 4


def test_urllib_gets_the_413_not_a_broken_pipe(server: ServerProcess) -> None:
    url = server.url + "/v1/predict"
    for _ in range(10):  # urllib sends "Connection: close": the server closes while the body is still coming
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(urllib.request.Request(url, data=b"x" * OVER_LIMIT, headers=JSON), timeout=5)
        assert error.value.code == 413
        assert json.loads(error.value.read())["detail"].startswith("body: at most 1048576 bytes")


def test_keep_alive_client_gets_413_and_keeps_its_connection(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, headers=JSON, timeout=10) as client:
        for _ in range(5):
            assert client.post("/v1/predict", content=b"x" * OVER_LIMIT).status_code == 413
            assert client.post("/v1/predict", json={"texts": ["a"], "n_samples": 2}).status_code == 200

        def chunks() -> Iterator[bytes]:  # no Content-Length: the route counts, then refuses mid-body
            for _ in range(20):
                yield b"x" * 65536

        assert client.post("/v1/predict", content=chunks()).status_code == 413
        assert client.get("/healthz").status_code == 200


def test_drain_is_bounded(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 1000000000\r\n\r\n")
        sent = 0
        sock.settimeout(2)
        with pytest.raises(OSError):  # a reset once the drain budget is spent
            while sent < 100 * 1024 * 1024:
                sock.sendall(b"x" * 65536)
                sent += 65536
    assert sent < DRAIN_BYTES + 8 * 1024 * 1024


def test_stalled_client_after_413_is_closed_by_the_drain_timeout(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 2000000\r\n\r\n")
        raw, elapsed = read_until_closed(sock)
        assert parse_response(raw)[0] == 413 and elapsed < 0.5  # the answer and the half-close come at once
        time.sleep(TIMEOUT_S + 0.5)  # then the full close, within the drain timeout: what is sent is refused
        with pytest.raises(OSError):
            for _ in range(10):
                sock.sendall(b"x" * 1000)
                time.sleep(0.05)


def test_client_still_sending_when_answered_reads_the_413(server: ServerProcess) -> None:
    # Stock uvicorn resets nearly every one of these: it closes with the rest of the body unread.
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
    for _ in range(10):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port_of(server)))
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % OVER_LIMIT)
            for i in range(0, OVER_LIMIT, 8192):
                sock.sendall(b"x" * min(8192, OVER_LIMIT - i))
            assert parse_response(read_until_closed(sock)[0])[0] == 413


def test_requests_and_curl_get_the_413(server: ServerProcess, tmp_path: Path) -> None:
    requests = pytest.importorskip("requests")
    url = server.url + "/v1/predict"
    with requests.Session() as session:
        for _ in range(3):
            assert session.post(url, data=b"x" * OVER_LIMIT, headers=JSON, timeout=5).status_code == 413
            closing = {**JSON, "Connection": "close"}
            assert requests.post(url, data=b"x" * OVER_LIMIT, headers=closing, timeout=5).status_code == 413
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl")
    big = tmp_path / "big"
    big.write_bytes(b"x" * OVER_LIMIT)
    for extra in ([], ["-H", "Expect:", "-H", "Connection: close"]):
        for _ in range(3):
            command = [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json"]
            command += ["--data-binary", f"@{big}", *extra, url]
            out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
            assert out.stdout == "413"


def test_connection_idle_after_a_discarded_body_is_closed(server: ServerProcess) -> None:
    with connect(server) as sock:  # keep-alive: the body is read and discarded after the early 413, then idle
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: %d\r\n\r\n" % OVER_LIMIT)
        time.sleep(0.1)
        sock.sendall(b"x" * OVER_LIMIT)
        raw, elapsed = read_until_closed(sock)
    assert parse_response(raw)[0] == 413
    assert elapsed < KEEP_ALIVE_S + 0.7


def test_connections_beyond_the_limit_get_a_json_503(start: StartServer) -> None:
    with start(max_connections=4) as limited:
        held = [connect(limited) for _ in range(4)]
        try:
            time.sleep(0.2)
            with connect(limited) as extra:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                raw, waited = read_until_closed(extra)
            headers = assert_json_error(raw, 503)
            assert headers["retry-after"] == "1"
            # held like a busy refusal (MCDROP_BUSY_DELAY_S, 1 s jittered 0.5-1.5x), so that a client that
            # reconnects at once cannot turn a storm past the limit into thousands of connections a second
            assert waited >= 0.45, waited
            held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert parse_response(read_until_closed(held[0])[0])[0] == 200  # established ones are served
        finally:
            for sock in held:
                sock.close()


def test_predictions_past_the_in_flight_limit_get_a_held_503_that_plain_clients_read_on_a_kept_connection(
    start: StartServer,
) -> None:
    with start(max_in_flight=1, busy_delay_s=0.2, header_timeout_s=5, body_timeout_s=5) as limited:
        holder = connect(limited)  # a prediction whose body never completes holds the only slot
        holder.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        holder.sendall(b'Content-Length: 100\r\n\r\n{"texts":')
        time.sleep(0.3)
        body = json.dumps({"texts": ["a fine film"], "n_samples": 2})
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port_of(limited), timeout=5)
            for path in ("/v1/predict", "/v2/models/tiny-mlp/infer", "/v1/predict"):  # one keep-alive connection
                started = time.perf_counter()
                conn.request("POST", path, body=body, headers=JSON)
                response = conn.getresponse()
                answer = json.loads(response.read())
                assert response.status == 503 and response.getheader("retry-after") == "1", answer
                assert len(response.getheader("x-request-id") or "") == 32
                assert response.getheader("connection") is None  # kept alive
                assert time.perf_counter() - started >= 0.09  # held for the jittered delay (0.1-0.3 s)
                key = "error" if path.startswith("/v2") else "detail"
                assert answer == {key: "server busy: 1 predictions in progress (limit 1); retry later"}
            with pytest.raises(urllib.error.HTTPError) as refused:  # a plain client reads it too
                urllib.request.urlopen(urllib.request.Request(limited.url + "/v1/predict", body.encode(), JSON))
            assert refused.value.code == 503
            assert httpx.get(limited.url + "/healthz").status_code == 200  # other routes are not limited
        finally:
            holder.close()
        time.sleep(0.3)
        conn.request("POST", "/v1/predict", body=body, headers=JSON)  # the slot is free: the same connection
        assert conn.getresponse().status == 200
        metrics = httpx.get(limited.url + "/metrics").text
        assert 'mcdrop_rejected_requests_total{model="",reason="busy"} 4.0' in metrics
        conn.close()
