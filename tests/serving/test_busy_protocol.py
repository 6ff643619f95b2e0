"""Past the in-flight limit the HTTP protocol itself refuses predictions: no ASGI task, a timer and one write.

Driven in-process, byte by byte, through the protocol class ``mcdrop serve`` runs, with a transport that records
what is written, so that what must not happen (the app started for a refused request) can be seen. The real
server's behaviour under a storm is in ``tests/reliability/test_storm.py``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from uvicorn.server import ServerState

from mcdrop.serving.busy import MAX_HOLD_S, BusyGate, InFlight
from mcdrop.serving.protocol import ConnectionLimits, HardenedHttpToolsProtocol, protocol_class
from mcdrop.serving.telemetry import Metrics

PREDICT = b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n"
BODY = b'{"texts":[1]}'


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.eof = False

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Harness:
    """One connection of the protocol to an app that answers 200 ``{"ok": true}`` and counts its calls."""

    def __init__(
        self, limit: int = 1, delay_s: float = 0.0, gate: BusyGate | None = None, max_connections: int | None = None
    ) -> None:
        self.app_calls = 0
        self.registry = CollectorRegistry()
        metrics = Metrics(self.registry, process_collectors=False)
        self.gate = gate if gate is not None else BusyGate(InFlight(limit), metrics, delay_s)
        config = uvicorn.Config(
            self.app,
            http=protocol_class(ConnectionLimits(), self.gate),
            log_config=None,
            interface="asgi3",
            limit_concurrency=max_connections,
        )
        config.load()
        self.state = ServerState()
        self.transport = RecordingTransport()
        cls: type[HardenedHttpToolsProtocol] = config.http_protocol_class  # type: ignore[assignment]
        self.protocol = cls(config=config, server_state=self.state, app_state={})
        self.protocol.connection_made(self.transport)

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        self.app_calls += 1
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"11")]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    def answers(self) -> list[tuple[int, dict[str, str], bytes]]:
        """The complete answers written so far: status, headers, body."""
        found, rest = [], bytes(self.transport.written)
        while rest:
            head, _, rest = rest.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            length = int(headers["content-length"])
            found.append((int(lines[0].split()[1]), headers, rest[:length]))
            rest = rest[length:]
        return found


async def _settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


def test_a_prediction_past_the_limit_is_answered_without_starting_the_app() -> None:
    async def main() -> None:
        harness = Harness(limit=1)
        harness.gate.in_flight.count = 1  # full
        harness.protocol.data_received(PREDICT + BODY)
        assert not harness.state.tasks  # no ASGI task, not even for a moment
        await _settle()
        assert harness.app_calls == 0
        [(status, headers, body)] = harness.answers()
        assert (status, headers["retry-after"], headers["content-type"]) == (503, "1", "application/json")
        assert json.loads(body) == {"detail": "server busy: 1 predictions in progress (limit 1); retry later"}
        assert len(headers["x-request-id"]) == 32 and "connection" not in headers
        assert not harness.transport.closed  # kept alive
        metrics = generate_latest(harness.registry).decode()
        assert 'mcdrop_rejected_requests_total{model="",reason="busy"} 1.0' in metrics
        assert 'mcdrop_requests_total{endpoint="/v1/predict",method="POST",status="5xx"} 1.0' in metrics

        harness.gate.in_flight.count = 0  # a slot frees: the same connection's next request reaches the app
        harness.protocol.data_received(PREDICT + BODY)
        await _settle()
        assert harness.app_calls == 1
        assert [a[0] for a in harness.answers()] == [503, 200]

    asyncio.run(main())


def test_v2_infer_is_refused_in_its_own_dialect_and_other_routes_are_not_limited() -> None:
    async def main() -> None:
        harness = Harness(limit=1)
        harness.gate.in_flight.count = 1
        v2 = PREDICT.replace(b"/v1/predict", b"/v2/models/m/infer")
        harness.protocol.data_received(v2 + BODY)
        await _settle()
        harness.protocol.data_received(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        await _settle()
        harness.protocol.data_received(PREDICT.replace(b"POST", b"PUT") + BODY)  # not a prediction: the app's
        await _settle()
        answers = harness.answers()
        assert [a[0] for a in answers] == [503, 200, 200]
        assert "error" in json.loads(answers[0][2]) and harness.app_calls == 2

    asyncio.run(main())


def test_refusals_wait_the_jittered_delay_and_pipelined_requests_keep_their_order() -> None:
    async def main() -> None:
        harness = Harness(limit=1, delay_s=0.2)
        harness.gate.in_flight.count = 1
        loop = asyncio.get_running_loop()
        start = loop.time()
        harness.protocol.data_received((PREDICT + BODY) * 3)  # pipelined: answered one after another
        await _settle(0.05)
        assert harness.answers() == []  # not before half the delay
        while len(harness.answers()) < 3 and loop.time() - start < 2.0:
            await _settle(0.02)
        took = loop.time() - start
        assert [a[0] for a in harness.answers()] == [503, 503, 503]
        assert 0.3 <= took <= 1.5, took  # three delays of 0.1-0.3 s each, one after another
        assert len({a[1]["x-request-id"] for a in harness.answers()}) == 3

    asyncio.run(main())


@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_refusal_with_its_body_still_coming_closes_after_a_drain(keep_alive: bool) -> None:
    async def main() -> None:
        harness = Harness(limit=1)
        harness.gate.in_flight.count = 1
        head = PREDICT if keep_alive else PREDICT.replace(b"host: x", b"host: x\r\nconnection: close")
        harness.protocol.data_received(head + BODY[:5])
        await _settle()
        [(status, headers, _)] = harness.answers()
        assert (status, headers["connection"]) == (503, "close")
        assert harness.transport.eof and not harness.transport.closed  # half-closed, draining the rest
        harness.protocol.data_received(BODY[5:])  # discarded
        assert harness.app_calls == 0 and len(harness.answers()) == 1

    asyncio.run(main())


def test_a_refusal_for_a_connection_that_went_away_writes_nothing() -> None:
    async def main() -> None:
        harness = Harness(limit=1, delay_s=0.1)
        harness.gate.in_flight.count = 1
        harness.protocol.data_received(PREDICT + BODY)
        harness.transport.closed = True
        harness.protocol.connection_lost(None)
        await _settle(0.3)
        assert harness.transport.written == b"" and harness.app_calls == 0

    asyncio.run(main())


def test_a_held_refusal_is_sent_at_shutdown_instead_of_never() -> None:
    async def main() -> None:
        harness = Harness(limit=1, delay_s=30.0)
        harness.gate.in_flight.count = 1
        harness.protocol.data_received(PREDICT + BODY)
        await _settle()
        assert harness.answers() == []
        harness.protocol.shutdown()
        [(status, headers, _)] = harness.answers()
        assert (status, headers["connection"], harness.transport.closed) == (503, "close", True)

    asyncio.run(main())


def test_the_hold_grows_with_the_refusals_waiting_past_the_rate_ceiling() -> None:
    gate = BusyGate(InFlight(1), Metrics(CollectorRegistry(), process_collectors=False), delay_s=0.1, max_rate=100)
    assert all(0.05 <= gate.delay() <= 0.15 for _ in range(200))  # 10 waiting or fewer: the plain delay
    gate.held = 50  # 50 waiting at 100 a second: half a second each, on average
    delays = [gate.delay() for _ in range(200)]
    assert all(0.25 <= d <= 0.75 for d in delays) and 0.45 < sum(delays) / len(delays) < 0.55
    gate.held = 1_000_000  # however many wait, none is held past MAX_HOLD_S (jittered)
    assert all(0.5 * MAX_HOLD_S <= gate.delay() <= 1.5 * MAX_HOLD_S for _ in range(200))
    gate.max_rate = 0  # no ceiling
    assert all(0.05 <= gate.delay() <= 0.15 for _ in range(200))


def _storm_refusals(max_rate: float, clients: int = 80, seconds: float = 1.0) -> tuple[int, int]:
    """Refusals sent in ``seconds`` to ``clients`` connections that each send again as soon as one comes, and
    how many refusals the gate still holds at the end."""

    async def main() -> tuple[int, int]:
        gate = BusyGate(
            InFlight(1), Metrics(CollectorRegistry(), process_collectors=False), delay_s=0.02, max_rate=max_rate
        )
        gate.in_flight.count = 1
        harnesses = [Harness(gate=gate) for _ in range(clients)]
        seen = [0] * clients
        for harness in harnesses:
            harness.protocol.data_received(PREDICT + BODY)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            await _settle(0.005)
            for i, harness in enumerate(harnesses):
                if (answered := len(harness.answers())) > seen[i]:
                    seen[i] = answered
                    harness.protocol.data_received(PREDICT + BODY)  # at once, Retry-After ignored
        assert {a[0] for h in harnesses for a in h.answers()} == {503} and not any(h.app_calls for h in harnesses)
        return sum(seen), gate.held

    return asyncio.run(main())


def test_a_storm_of_impatient_clients_is_refused_at_no_more_than_the_rate_ceiling() -> None:
    # 80 clients retrying at once against a 20 ms hold would be refused 4,000 times a second; at a ceiling of
    # 100 a second each waits about 0.8 s instead, and every client still gets its answers.
    capped, held = _storm_refusals(max_rate=100)
    assert 50 <= capped <= 150, capped  # about 100 in the second, the first ones sooner
    assert held > 50  # the rest wait, holding a connection each and no CPU
    uncapped, _ = _storm_refusals(max_rate=0)
    assert uncapped > 3 * capped, (uncapped, capped)


def test_a_request_beyond_the_connection_limit_is_held_like_a_busy_refusal_then_closed() -> None:
    async def main() -> None:
        harness = Harness(delay_s=30.0, max_connections=0)  # every connection is beyond the limit
        harness.protocol.data_received(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        await _settle()
        assert harness.answers() == [] and harness.gate.held == 1  # held, not answered at once
        harness.protocol.shutdown()  # sent now instead of never
        [(status, headers, body)] = harness.answers()
        assert (status, headers["connection"], harness.transport.eof) == (503, "close", True)  # half-closed
        assert "more than 0 connections" in json.loads(body)["detail"] and harness.app_calls == 0

    asyncio.run(main())


def test_a_refusal_waiting_in_the_middleware_counts_among_those_held() -> None:
    async def main() -> None:
        gate = BusyGate(InFlight(1), Metrics(CollectorRegistry(), process_collectors=False), delay_s=0.1)
        waiting = asyncio.create_task(gate.wait())
        await _settle(0.02)
        assert gate.held == 1  # so the rate ceiling sees it too
        await waiting
        assert gate.held == 0

    asyncio.run(main())
