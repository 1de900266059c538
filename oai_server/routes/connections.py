"""Connection-level protection below the ASGI app: header limits, slow and stalled clients, a connection cap.

The server speaks HTTP/1.1 through uvicorn's httptools protocol (uvicorn's own choice when
httptools is installed, as `uvicorn[standard]` does); `GuardedHttpToolsProtocol` adds, per connection:

- **Header limits**: bytes from a request's first byte to the end of its headers are counted
  before they reach the parser (httptools concatenates a header's pieces, so an unbounded header
  costs quadratic CPU) and more than `max_header_bytes`, or more than `max_headers` fields, is
  answered 431 and closed after at most one more socket read.
- **Header timeout**: a connection that opens, or a request that starts, must deliver its
  headers within `header_timeout`; then it is closed (with a 408 if part of a request came).
- **Body timeout**: a declared body must arrive within `body_timeout` of its headers; then 408
  (if no response started) and close; the app sees a disconnect.
- **Write stall**: a connection whose socket stays full (the client stopped reading) for
  `write_stall_timeout` is aborted. The app sees the disconnect at once, so the stream's engine
  requests are aborted and its admission slot is freed; counted as `write_stall`.
- **Connection cap**: past `max_connections` open connections (HTTP and WebSocket), a new one
  gets a 503 envelope at once (a FIN after it, the request is read and dropped) and a log line.
- **Malformed requests** (a NUL in a header, a bad request line) get the OpenAI envelope, not
  uvicorn's plain-text 400.

`GuardedWebSocketProtocol` gives WebSocket connections (after their upgrade, whose headers went
through all of the above) the same write-stall abort; their idle limit is uvicorn's ping timeout.
Every refusal and cut is counted in `oai_connections_closed_total{reason}` and logged (at most
once per `LOG_EVERY_SECONDS` per reason, with a count).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ..errors import APIError
from ..metrics import Metrics
from .middleware import REQUEST_ID_HEADER, new_request_id

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0
"""A reason is logged at most this often (with how many happened since): a flood cannot flood the log."""
REFUSED_LINGER_SECONDS = 2.0
"""How long a refused connection may take to read its 503 before the socket is aborted."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits one server enforces on every connection (see the module docstring)."""

    max_connections: int
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    write_stall_timeout: float


@dataclass
class ConnectionEvents:
    """Counts (metrics) and rate-limited logs of the connections the server closes or refuses."""

    metrics: Metrics | None = None
    connections: set[Any] = field(default_factory=set)
    """uvicorn's set of open connection protocols, bound when the first connection opens."""
    _last_logged: dict[str, float] = field(default_factory=dict)
    _unlogged: dict[str, int] = field(default_factory=dict)

    def closed(self, reason: str, message: str) -> None:
        """Count one closed or refused connection; log `message` unless `reason` was logged just now."""
        if self.metrics is not None:
            self.metrics.count_connection_closed(reason)
        now = time.monotonic()
        if now - self._last_logged.get(reason, -LOG_EVERY_SECONDS) < LOG_EVERY_SECONDS:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return
        self._last_logged[reason] = now
        more = self._unlogged.pop(reason, 0)
        suffix = f" ({more} more since the last such line)" if more else ""
        logger.warning("%s%s", message, suffix)


def raw_error_response(error: APIError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/1.1 response carrying the error envelope, closing the connection, as bytes for the socket."""
    body = json.dumps(error.body(), ensure_ascii=False, separators=(",", ":")).encode()
    headers = [
        *default_headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (REQUEST_ID_HEADER.encode(), new_request_id().encode()),
        *((name.encode(), value.encode()) for name, value in error.response_headers().items()),
    ]
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return STATUS_LINE[error.status] + head + b"\r\n" + body


class _StopParsing(Exception):
    """Raised from a parser callback to stop at once (httptools turns it into a parser error)."""


class _WriteStallGuard:
    """Aborts the transport when it stays paused for writing (the client stopped reading) too long."""

    limits: ClassVar[ConnectionLimits]
    events: ClassVar[ConnectionEvents]
    transport: asyncio.Transport
    _stall_timer: asyncio.TimerHandle | None = None

    def _arm_stall(self) -> None:
        if self._stall_timer is None:
            loop = asyncio.get_running_loop()
            self._stall_timer = loop.call_later(self.limits.write_stall_timeout, self._stalled)

    def _disarm_stall(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        self._stall_timer = None
        peer = self.transport.get_extra_info("peername")
        self.events.closed(
            "write_stall",
            f"closing connection from {peer}: it read nothing for {self.limits.write_stall_timeout:g} s",
        )
        self.transport.abort()  # close() would wait for the full buffer to drain: never


class GuardedHttpToolsProtocol(_WriteStallGuard, HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol with this server's connection limits (`bind` sets them)."""

    _refused = False
    _awaiting_headers = True
    _request_started = False
    _header_bytes = 0
    _header_count = 0
    _reject: APIError | None = None
    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _linger_timer: asyncio.TimerHandle | None = None

    # --- connection ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Refuse past the cap, else serve, expecting headers within the header timeout."""
        self.events.connections = self.connections
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_timer()

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._refused = True
        self.transport = transport
        error = APIError(
            503,
            "The server has too many open connections; please retry shortly.",
            type="server_error",
            code="too_many_connections",
            headers={"retry-after": "1"},
        )
        self.events.closed(
            "over_capacity",
            f"refused a connection: {len(self.connections)} open, the cap is {self.limits.max_connections}",
        )
        transport.write(raw_error_response(error, self.server_state.default_headers))
        if transport.can_write_eof():
            transport.write_eof()
        self._linger_timer = self.loop.call_later(REFUSED_LINGER_SECONDS, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop every timer, then uvicorn's bookkeeping."""
        for timer in (self._header_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = self._linger_timer = None
        self._disarm_stall()
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count header bytes before the parser sees them; refused connections' bytes are dropped."""
        if self._refused or self.transport.is_closing():
            return
        if self._awaiting_headers:
            self._header_bytes += len(data)
            self._request_started = True
            self._arm_header_timer()
        super().data_received(data)
        too_large = self._awaiting_headers and self._header_bytes > self.limits.max_header_bytes
        if too_large and not self.transport.is_closing():
            self._headers_too_large()  # at most one read past the limit reached the parser

    def eof_received(self) -> None:
        """A refused client that is done: close now."""
        if self._refused:
            self.transport.close()

    def pause_writing(self) -> None:
        """The socket is full: start the write-stall clock."""
        super().pause_writing()
        self._arm_stall()

    def resume_writing(self) -> None:
        """The client read: stop the write-stall clock."""
        super().resume_writing()
        self._disarm_stall()

    def handle_websocket_upgrade(self) -> None:
        """The WebSocket protocol takes over: this one's timers stop."""
        self._disarm_header_timer()
        self._disarm_body_timer()
        super().handle_websocket_upgrade()

    # --- parser callbacks ---

    def on_message_begin(self) -> None:
        """A request starts: its header block is counted from here."""
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count header fields; stop parsing past `max_headers`."""
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._reject = self._too_large_error()
            raise _StopParsing
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Headers are in: stop the header clock; a body (if any) must now arrive within the body timeout."""
        self._disarm_header_timer()
        self._awaiting_headers = False
        self._request_started = False
        self._header_bytes = 0
        super().on_headers_complete()
        if not self.pipeline and not self.parser.should_upgrade():
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        """The whole request arrived."""
        self._disarm_body_timer()
        super().on_message_complete()
        self._awaiting_headers = True

    # --- answers and timers ---

    def send_400_response(self, msg: str) -> None:
        """A request that cannot be parsed: the envelope (431 when a header limit stopped it), then close."""
        error = self._reject or APIError(400, "Invalid HTTP request received.", code="invalid_request")
        reason = "headers_too_large" if error.status == 431 else "bad_request"
        self.events.closed(reason, f"{error.status} for a request from {self.client}: {error.message}")
        self._answer_and_close(error)

    def _answer_and_close(self, error: APIError) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(raw_error_response(error, self.server_state.default_headers))
        self.transport.close()

    def _too_large_error(self) -> APIError:
        return APIError(
            431,
            f"The request headers are too large: at most {self.limits.max_headers} fields and "
            f"{self.limits.max_header_bytes} bytes are accepted.",
            code="request_headers_too_large",
        )

    def _headers_too_large(self) -> None:
        self._reject = self._too_large_error()
        self.send_400_response("")

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers:
            return
        seconds = self.limits.header_timeout
        if self._responding():  # bytes behind a response still streaming: judged once it is done
            self._arm_header_timer()
            return
        self.events.closed("header_timeout", f"closing connection from {self.client}: no headers within {seconds:g} s")
        if self._request_started:
            error = APIError(408, f"The request headers did not arrive within {seconds:g} s.", code="request_timeout")
            self._answer_and_close(error)
        else:
            self.transport.close()  # an idle connection: a plain close, as for keep-alive

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.cycle is None:
            return
        seconds = self.limits.body_timeout
        self.events.closed("body_timeout", f"closing connection from {self.client}: no body within {seconds:g} s")
        cycle = self.cycle
        started = cycle.response_started
        cycle.disconnected = True  # the app's receive() now says http.disconnect; its sends are dropped
        cycle.message_event.set()
        if started:
            self.transport.abort()
        else:
            error = APIError(408, f"The request body did not arrive within {seconds:g} s.", code="request_timeout")
            self._answer_and_close(error)


class GuardedWebSocketProtocol(_WriteStallGuard, WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with the write-stall abort."""

    def pause_writing(self) -> None:
        """The socket is full: start the write-stall clock."""
        super().pause_writing()
        self._arm_stall()

    def resume_writing(self) -> None:
        """The client read: stop the write-stall clock."""
        super().resume_writing()
        self._disarm_stall()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock, then uvicorn's bookkeeping."""
        self._disarm_stall()
        super().connection_lost(exc)


def bind(limits: ConnectionLimits, events: ConnectionEvents) -> tuple[type[GuardedHttpToolsProtocol], type[Any]]:
    """The HTTP and WebSocket protocol classes for uvicorn's `http=` and `ws=`, bound to `limits` and `events`."""
    attrs = {"limits": limits, "events": events}
    http = type("BoundGuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attrs)
    ws = type("BoundGuardedWebSocketProtocol", (GuardedWebSocketProtocol,), attrs)
    return http, ws
