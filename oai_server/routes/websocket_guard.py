"""The guarded WebSocket protocol: uvicorn's (through the `websockets` package) with the write-stall abort.

Kept apart from `connections.py` because it needs the `websockets` package, which the HTTP guard does not:
`runtime_limits.uvicorn_options` imports this module inside a try, so a machine without `websockets` keeps every
HTTP guard and gives uvicorn `ws="auto"` (wsproto if installed, else no WebSocket), with one warning.

`GuardedWebSocketProtocol` gives WebSocket connections (after their upgrade, whose headers went through all of
`connections.GuardedHttpToolsProtocol`'s limits, and which count against the connection cap) the same write-stall
abort (`write_stall.py`); a silent peer is closed by uvicorn's ping timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .connection_events import ConnectionEvents, ConnectionLimits
from .write_stall import WriteStallGuard


class GuardedWebSocketProtocol(WriteStallGuard, WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with the write-stall abort, watched for the connection's whole life."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """uvicorn's setup, then the write watch."""
        super().connection_made(transport)
        self._watch_writes()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the watch, then uvicorn's bookkeeping."""
        self._stop_watching_writes()
        super().connection_lost(exc)

    async def send(self, message: Any) -> None:
        """uvicorn's send; a refused handshake answered with an HTTP response (`routes.errors.reject_websocket`)
        is a finished handshake, not the "returned without completing handshake" error uvicorn would log."""
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True


def bind_websocket(limits: ConnectionLimits, events: ConnectionEvents) -> type[GuardedWebSocketProtocol]:
    """The WebSocket protocol class for uvicorn's `ws=`, bound to `limits` and `events`."""
    attrs = {"limits": limits, "events": events}
    return type("BoundGuardedWebSocketProtocol", (GuardedWebSocketProtocol,), attrs)
