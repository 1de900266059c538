"""Connection-level protection below the ASGI app: header limits, slow and stalled clients, a connection cap.

The server speaks HTTP/1.1 through uvicorn's httptools protocol (uvicorn's own choice when
httptools is installed, as `uvicorn[standard]` does); `GuardedHttpToolsProtocol` adds, per connection:

- **Header limits**: bytes from a request's first byte to the end of its headers are counted
  before they reach the parser (httptools concatenates a header's pieces, so an unbounded header
  costs quadratic CPU: the parser never sees more than one socket read past the limit), and the
  URL and header fields the parser reports are counted exactly: more than `max_header_bytes`, or
  more than `max_headers` fields, is answered 431 and the connection closes.
- **Header timeout**: a connection that opens, or a request that starts, must deliver its
  headers within `header_timeout`; then it is closed (with a 408 if part of a request came).
- **Body timeout**: a declared body must keep arriving: at least `BODY_PROGRESS_BYTES` (or all of
  it) within each `body_timeout` after its headers. A body trickling slower, or never completed,
  gets a 408 (if no response started) and the connection closes; the app sees a disconnect. A large
  upload on a slow link passes (1 KiB per 30 s is 34 bytes/s).
- **Write stall** (`write_stall.py`): a client that acknowledges nothing of a response for
  `write_stall_timeout` (it stopped reading) is cut off; the app sees the disconnect at once, so
  the stream's engine requests are aborted and its admission slot is freed.
- **Connection cap**: past `max_connections` open connections (HTTP and WebSocket), a new one
  gets a 503 envelope at once and a log line.
- **Malformed requests** (a NUL in a header, a bad request line) get the OpenAI envelope, not
  uvicorn's plain-text 400.

Every answer given here is followed by a lingering close: a FIN after the envelope, whatever the
client still sends is read and dropped for up to `LINGER_SECONDS`, then the socket is closed (a
plain close with unread input would send an RST, which can destroy the answer before the client
reads it).

WebSocket connections (after their upgrade, whose headers went through all of the above, and which
count against the cap) get the same write-stall abort from `websocket_guard.GuardedWebSocketProtocol`,
in its own module because it needs the `websockets` package and this one does not: without
`websockets`, HTTP keeps every guard here (`runtime_limits.uvicorn_options`). A silent WebSocket peer
is closed by uvicorn's ping timeout. Every refusal and cut is counted and logged through
`connection_events.ConnectionEvents`.
"""

from __future__ import annotations

import asyncio
import json
from typing import cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..errors import APIError
from .connection_events import ConnectionEvents, ConnectionLimits
from .middleware import REQUEST_ID_HEADER, new_request_id
from .write_stall import WriteStallGuard

BODY_PROGRESS_BYTES = 1024
"""Body bytes that must arrive within each `body_timeout` (a smaller body must arrive whole)."""
LINGER_SECONDS = 2.0
"""How long a connection answered here may take to read the answer before the socket is aborted."""


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


class GuardedHttpToolsProtocol(WriteStallGuard, HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol with this server's connection limits (`bind` sets them)."""

    _refused = False
    _lingering = False
    _awaiting_headers = True
    _request_started = False
    _header_bytes = 0
    _header_count = 0
    _header_size = 0
    _body_progress = 0
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
        self._refused = True
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
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
        self._answer_and_close(error)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop every timer, then uvicorn's bookkeeping."""
        for timer in (self._header_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = self._linger_timer = None
        self._stop_watching_writes()
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count header bytes before the parser sees them; after an answer given here, bytes are dropped."""
        if self._lingering or self.transport.is_closing():
            return
        if self._awaiting_headers:
            self._header_bytes += len(data)
            self._request_started = True
            self._arm_header_timer()
        super().data_received(data)
        too_large = self._awaiting_headers and self._header_bytes > self.limits.max_header_bytes
        if too_large and not self._lingering and not self.transport.is_closing():
            self._headers_too_large()  # at most one read past the limit reached the parser

    def eof_received(self) -> None:
        """A client that got an answer here and is done sending: close now."""
        if self._lingering:
            self.transport.close()

    def handle_websocket_upgrade(self) -> None:
        """The WebSocket protocol takes over: this one's timers stop."""
        self._disarm_header_timer()
        self._disarm_body_timer()
        self._stop_watching_writes()
        super().handle_websocket_upgrade()

    def _nothing_to_send(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    # --- parser callbacks ---

    def on_message_begin(self) -> None:
        """A request starts: its header block is counted from here."""
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_count = 0
        self._header_size = 0

    def on_url(self, url: bytes) -> None:
        """Count the request line against `max_header_bytes`."""
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count header fields and their bytes; stop parsing past `max_headers` or `max_header_bytes`."""
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._reject = self._too_large_error()
            raise _StopParsing
        self._count_header_bytes(len(name) + len(value) + 4)  # "name: value\r\n"
        super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> None:
        self._header_size += size
        if self._header_size > self.limits.max_header_bytes:
            self._reject = self._too_large_error()
            raise _StopParsing

    def on_headers_complete(self) -> None:
        """Headers are in: stop the header clock; a body (if any) must now arrive within the body timeout."""
        self._disarm_header_timer()
        self._awaiting_headers = False
        self._request_started = False
        self._header_bytes = 0
        super().on_headers_complete()
        if not self.pipeline and not self.parser.should_upgrade():
            self._body_progress = 0
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
            self._watch_writes()

    def on_body(self, body: bytes) -> None:
        """Count the body's progress (see the body timeout)."""
        self._body_progress += len(body)
        super().on_body(body)

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
        """Write the envelope, then the lingering close (see the module docstring)."""
        if self._lingering or self.transport.is_closing():
            return
        self._lingering = True
        self._disarm_header_timer()
        self._disarm_body_timer()
        self.transport.write(raw_error_response(error, self.server_state.default_headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()  # uvicorn may have paused reading; drop what comes
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.abort)

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
        if self._lingering or self.transport.is_closing() or not self._awaiting_headers:
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
        if self._lingering or self.transport.is_closing() or self.cycle is None:
            return
        if self._body_progress >= BODY_PROGRESS_BYTES:  # slow but steady: another period
            self._body_progress = 0
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
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
            error = APIError(
                408,
                f"The request body stalled: less than {BODY_PROGRESS_BYTES} bytes arrived in {seconds:g} s.",
                code="request_timeout",
            )
            self._answer_and_close(error)


def bind(limits: ConnectionLimits, events: ConnectionEvents) -> type[GuardedHttpToolsProtocol]:
    """The HTTP protocol class for uvicorn's `http=`, bound to `limits` and `events` (the WebSocket one:
    `websocket_guard.bind_websocket`)."""
    attrs = {"limits": limits, "events": events}
    return type("BoundGuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attrs)
