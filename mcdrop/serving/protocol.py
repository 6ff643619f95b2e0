"""The HTTP/1.1 protocol ``mcdrop serve`` runs: uvicorn's httptools protocol with bounds on what a peer may hold.

uvicorn's ``HttpToolsProtocol`` trusts the peer: it buffers a header that never ends (the parser concatenates it
again and again: memory and CPU grow without bound), keeps a fresh, idle or half-sent connection open forever,
answers malformed requests in text/plain, and closes a connection with the rest of a request body unread, which
makes the kernel reset it, often before the client has read the answer (a 413 becomes a broken pipe). The class
``protocol_class`` returns fixes these without touching the parser:

* header bytes are counted before they reach the parser; past ``max_header_bytes`` the answer is 431;
* deadlines: ``header_timeout_s`` from the connection's start, or from the end of the previous exchange, to
  complete headers; then ``body_timeout_s`` for the whole body, not per read (408 if the app still waits for
  it): a client sending a byte every few seconds defeats an inactivity timeout; between requests the idle limit
  is ``idle_timeout_s`` (uvicorn's ``timeout_keep_alive`` when unset);
* past the in-flight limit, a prediction is refused here with the app's ``BusyGate`` (:mod:`.busy`): its 503
  is one write when the gate's timer releases it, with no ASGI task;
* uvicorn's ``limit_concurrency`` becomes a connection limit: a request on a connection opened while that many
  were open, or made while that many requests are in progress, is answered 503 with ``Retry-After`` and closed,
  written here without starting the app, after the gate's delay and under its rate ceiling (a client that
  reconnects at once is then held too, instead of reconnecting thousands of times a second); established
  connections keep being served;
* the error answers written here (400, 408, 431, 503) are JSON ``{"detail": ...}`` with an ``X-Request-ID``;
* a connection closed while the request body is still coming (after an early 413, a 431 or a 400) is first
  half-closed and drained: up to ``drain_bytes`` are read and discarded, for up to ``drain_timeout_s``, so that
  the client can finish sending and read the answer. On a keep-alive connection the rest of the body is
  discarded as before, but at most ``drain_bytes`` of it.

It subclasses uvicorn internals (``HttpToolsProtocol`` and the cycle's ``transport``, ``response_started``,
``response_complete``, ``disconnected`` and ``message_event``; ``_start_asgi_task``, ``on_response_complete``,
``send_400_response``), as they behave in uvicorn 0.54; ``pyproject.toml`` pins the range it was checked with.
:mod:`mcdrop.serving.serve` builds it from the settings::

    limits = ConnectionLimits(max_header_bytes=16 * 1024, header_timeout_s=10, body_timeout_s=30)
    http = protocol_class(limits, app.state.busy_gate)
    config = uvicorn.Config(app, http=http, timeout_keep_alive=5, limit_concurrency=2048)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from mcdrop.serving.busy import PREDICT_PATH, BusyGate, is_prediction
from mcdrop.serving.raw_answers import OverLimitLog, error_response

__all__ = ["ConnectionLimits", "HardenedHttpToolsProtocol", "protocol_class"]

# Read phases of the request being received.
_IDLE, _HEADERS, _BODY, _DONE, _DRAIN, _UPGRADED = range(6)


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection bounds (checked by the settings). Times are in seconds; ``idle_timeout_s=None`` keeps
    ``Config.timeout_keep_alive``."""

    max_header_bytes: int = 16 * 1024  # request line + headers (+ blank lines before them)
    header_timeout_s: float = 10.0  # connection start / end of previous exchange -> complete headers
    body_timeout_s: float = 30.0  # complete headers -> complete body, for the whole body (not per read)
    idle_timeout_s: float | None = None  # keep-alive idle time between requests
    drain_bytes: int = 4 * 1024 * 1024  # read and discarded before closing with a body still coming
    drain_timeout_s: float = 5.0  # the longest such a drain may last


class _CycleTransport(asyncio.Transport):
    """What the request/response cycles of one connection see as its transport: closing is left to the protocol.

    A cycle closes the connection as soon as it has sent a non-keep-alive answer; the protocol turns that into
    a drain when the request body is still arriving. One per connection, and it holds no cycle: the cycles
    hold it, and a reference cycle per request would leave every request's objects to the garbage collector.
    """

    __slots__ = ("_protocol", "_transport")

    def __init__(self, protocol: HardenedHttpToolsProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._protocol.phase == _DRAIN or self._transport.is_closing()

    def close(self) -> None:
        self._protocol.close_for_cycle()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the bounds of ``limits``; make one per set of limits with ``protocol_class``."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    busy_gate: ClassVar[BusyGate | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.limits
        self.idle_timeout_s = float(self.timeout_keep_alive if limits.idle_timeout_s is None else limits.idle_timeout_s)
        self.phase = _HEADERS
        self._budget = limits.max_header_bytes
        self._deadline: float | None = None  # when the current phase must be over (loop time)
        self._idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._drained = 0  # body bytes discarded after the answer, for the current request
        self._headers_seen = 0
        self._cycle_transport: _CycleTransport | None = None
        # a 503 waiting for its delay: the function that sends it, and its arguments (the cycle first)
        self._held: tuple[Callable[..., None], tuple[Any, ...]] | None = None
        # uvicorn answers every request 503 once limit_concurrency connections are open, and logs each one; here
        # only connections beyond the limit are refused (see _start_asgi_task), and the log is a periodic count.
        self.max_connections, self.limit_concurrency = self.limit_concurrency, None
        self._over_limit = False

    # One lazy timer for all phases (they never overlap). Moving a deadline later leaves the timer alone: when
    # it fires early it re-arms for what is left. So a request usually costs no timer operation, where uvicorn's
    # keep-alive timer is armed and cancelled once per request; this timer replaces that one too.
    def _expect(self, delay: float, since: float | None = None) -> None:
        at = (self.loop.time() if since is None else since) + delay
        self._deadline = at
        if self._timer is None or self._timer_at > at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = self.loop.call_at(at, self._on_timer), at

    def _on_timer(self) -> None:
        self._timer = None
        if self._deadline is None or self.transport.is_closing():
            return
        if self.loop.time() < self._deadline - 0.005:  # the phase changed since: wait for what is left
            self._timer, self._timer_at = self.loop.call_at(self._deadline, self._on_timer), self._deadline
            return
        self._deadline = None
        cycle = self.cycle
        if self.phase == _BODY and cycle is not None and not cycle.response_started:
            # The app may still be waiting for the body: tell it the client is gone, then answer for it.
            cycle.response_started = cycle.disconnected = True
            cycle.message_event.set()
            self._reject(408, "request body not received in time")
        else:  # idle, stuck in its headers, draining, or too late to answer: close without a word
            self.transport.close()

    def _await_next_request(self) -> None:
        """Both the request and its answer are done: the connection is idle until the next one starts."""
        self.phase = _IDLE  # the header budget was renewed at the end of the request: pipelined bytes count
        self._idle_since = self.loop.time()
        self._expect(min(self.idle_timeout_s, self.limits.header_timeout_s), since=self._idle_since)

    def _reject(self, status: int, detail: str) -> None:
        response, request_id = error_response(status, detail, self.server_state.default_headers)
        if status != 503:  # those come in floods: OverLimitLog counts them
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            self.logger.info("%s %d %s (request id %s)", client, status, detail, request_id)
        self.transport.write(response)
        self._drain_then_close()

    def _drain_then_close(self) -> None:
        """Half-close, then read and discard what the client is still sending, within bounds, then close.

        Closing a socket with unread bytes makes the kernel send a reset, which can destroy the answer before
        the client reads it; after the drain the client has usually finished sending and closed its side.
        """
        self.phase = _DRAIN
        self._drained = 0
        if self.limits.drain_bytes == 0:
            self.transport.close()
            return
        self.flow.resume_reading()  # the body may have paused reading; it must flow to be drained
        if self.transport.can_write_eof():
            self.transport.write_eof()  # FIN once the answer is flushed: nothing more is coming from us
        self._expect(self.limits.drain_timeout_s)

    def close_for_cycle(self) -> None:
        """A cycle closes the connection: after a non-keep-alive answer, or when its app failed.

        Only the newest cycle can have completed its answer while a body is arriving: older (pipelined)
        ones finished reading their bodies before the newest was parsed.
        """
        if self.cycle.response_complete and self.phase == _BODY:
            self._drain_then_close()
        elif not self.transport.is_closing():
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._over_limit = self.max_connections is not None and len(self.connections) > self.max_connections
        self._cycle_transport = _CycleTransport(self)
        self._expect(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._cycle_transport = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase == _DRAIN:
            self._drained += len(data)
            if self._drained > self.limits.drain_bytes:
                self.transport.close()
            return
        if phase != _BODY:
            if phase == _IDLE:  # the next request starts: its headers are due header_timeout_s after the answer
                self.phase = _HEADERS
                self._expect(self.limits.header_timeout_s, since=self._idle_since)
            # Counted before the parser sees them: it keeps an unfinished header in one growing buffer.
            if len(data) > self._budget:
                seen = self._headers_seen
                head, data = data[: self._budget], data[self._budget :]
                super().data_received(head)
                if self.phase == _DRAIN or self.transport.is_closing():
                    return
                if self._headers_seen == seen:  # the budget is spent and the headers are still not complete
                    if self.cycle is not None and not self.cycle.response_complete:
                        self.transport.close()  # pipelined behind an answer in progress: no room for ours
                    else:
                        self._reject(431, f"request headers: at most {self.limits.max_header_bytes} bytes")
                    return
            else:
                self._budget -= len(data)
        super().data_received(data)

    # httptools parser callbacks
    def on_headers_complete(self) -> None:
        previous = self.cycle
        self._headers_seen += 1
        self.phase = _BODY
        self._drained = 0
        self._expect(self.limits.body_timeout_s)
        super().on_headers_complete()
        if self.cycle is not previous:
            self.cycle.transport = self._cycle_transport  # type: ignore[assignment]  # set since connection_made

    def on_body(self, body: bytes) -> None:
        if self.cycle.response_complete:
            # Answered already (an early 413): the rest is discarded, but only so much of it.
            self._drained += len(body)
            if self._drained > self.limits.drain_bytes:
                self.transport.close()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.phase == _DRAIN:
            return  # refused here before the app started (503): the drain's deadline stands
        self.phase = _DONE  # the app has the request: no read deadline until it has answered
        self._deadline = None
        self._budget = self.limits.max_header_bytes  # a pipelined request may follow in this read
        if self.cycle.response_complete and not self.transport.is_closing():
            self._await_next_request()  # the body was discarded after an early answer

    def on_response_complete(self) -> None:
        # uvicorn's version, with this class's idle deadline in place of its keep-alive timer.
        self.server_state.total_requests += 1
        if self.phase == _DRAIN or self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.phase == _DONE:
            self._await_next_request()

    def send_400_response(self, msg: str) -> None:
        self._reject(400, msg)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        limit = self.max_connections
        gate = self.busy_gate
        if limit is not None and (self._over_limit or len(self.tasks) >= limit):
            OverLimitLog.refused(self.logger, limit)
            detail = f"server busy: more than {limit} connections or requests at once; retry later"
            if gate is None or not gate.delay_s:
                self._reject(503, detail)
                return
            # Held like a busy refusal, and under its rate ceiling: answered at once, clients that reconnect at
            # once would turn a storm past the connection limit into a storm of connections.
            self._hold(gate, self._send_over_limit, cycle, detail)
            return
        if gate is not None and gate.full() and is_prediction(cycle.scope["method"], cycle.scope["path"]):
            self._hold(gate, self._send_busy, cycle, gate, cycle.scope["path"] != PREDICT_PATH, time.perf_counter())
            return
        super()._start_asgi_task(cycle, app)

    def _hold(self, gate: BusyGate, send: Callable[..., None], cycle: RequestResponseCycle, *args: Any) -> None:
        cycle.response_started = True  # answered here: a stalled body now just closes the connection
        self._held = (send, (cycle, *args))
        gate.hold(self.loop, send, cycle, *args)

    def _release_held(self, cycle: RequestResponseCycle) -> bool:
        """Forget ``cycle``'s held refusal; whether it is still to be sent."""
        if self._held is not None and self._held[1][0] is cycle:
            self._held = None
        return not (self.transport.is_closing() or cycle.response_complete)  # gone meanwhile, or sent at shutdown

    def _send_over_limit(self, cycle: RequestResponseCycle, detail: str) -> None:
        """The 503 for a connection beyond ``MCDROP_MAX_CONNECTIONS``; the connection is closed after it."""
        if self._release_held(cycle):
            cycle.response_complete = True
            self._reject(503, detail)

    def _send_busy(self, cycle: RequestResponseCycle, gate: BusyGate, v2: bool, since: float) -> None:
        """The gate's 503 for ``cycle``, in place of the app. The connection stays open when the request is
        complete and may be kept alive; with its body still coming it is closed after a drain."""
        if not self._release_held(cycle):
            return
        body_pending = cycle is self.cycle and self.phase == _BODY
        keep_alive = cycle.keep_alive and not body_pending
        self.transport.write(gate.response_bytes(v2, self.server_state.default_headers, keep_alive))
        cycle.response_complete = True
        gate.refused(v2, since)
        if keep_alive:
            self.on_response_complete()  # the next request, pipelined or to come
        elif body_pending:
            self._drain_then_close()
        else:
            self.transport.close()

    def shutdown(self) -> None:
        """The server stops: a refusal still held is sent now, with ``Connection: close``, instead of never."""
        super().shutdown()
        if self._held is not None:
            send, args = self._held
            send(*args)

    def handle_websocket_upgrade(self) -> None:
        self._deadline = None  # the connection now belongs to the WebSocket protocol and its own timers
        self.phase = _UPGRADED
        super().handle_websocket_upgrade()


def protocol_class(
    limits: ConnectionLimits | None = None, busy_gate: BusyGate | None = None
) -> type[HardenedHttpToolsProtocol]:
    """A protocol class bound to ``limits`` (and refusing predictions with ``busy_gate`` when it is full), to pass
    as ``uvicorn.Config(app, http=...)``."""
    attributes = {"limits": limits or ConnectionLimits(), "busy_gate": busy_gate}
    return type("HardenedHttpToolsProtocol", (HardenedHttpToolsProtocol,), attributes)
