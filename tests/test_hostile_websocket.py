"""The connection guards cover WebSocket sessions too (the future `/v1/realtime` route).

A small app with the real middleware and one flooding WebSocket endpoint, served with the CLI's
guarded protocols (`runtime_limits.uvicorn_options`) on loopback: a client that stops reading has
its session cut within the write-stall timeout (the endpoint sees the disconnect, `write_stall` is
counted), WebSocket sessions count against the connection cap (the next connection gets the 503
envelope), and an upgrade request with too many headers gets the 431 envelope.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from oai_server.metrics import Metrics
from oai_server.routes.errors import install_error_handlers
from oai_server.routes.middleware import install_middleware
from oai_server.runtime_limits import uvicorn_options
from oai_server.settings import Settings

from .helpers import wait_until

STALL_S = 1.0
MAX_CONNECTIONS = 4


@dataclass
class WsServer:
    """The running server, its address, and what the flooding endpoint saw."""

    host: str
    port: int
    metrics: Metrics
    ended: threading.Event
    server: uvicorn.Server
    connections: set[object]


@pytest.fixture(scope="module")
def ws_server() -> Iterator[WsServer]:
    settings = Settings(max_connections=MAX_CONNECTIONS, write_stall_timeout_seconds=STALL_S, max_headers=32)
    app = FastAPI()
    install_error_handlers(app)
    install_middleware(app, settings)
    ended = threading.Event()

    @app.websocket("/flood")
    async def flood(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_bytes(b"x" * 65536)
        except WebSocketDisconnect:  # the session was cut
            ended.set()

    @app.websocket("/idle")
    async def idle(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive()

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **uvicorn_options(settings, app))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started or not thread.is_alive(), timeout=60) and server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    yield WsServer("127.0.0.1", port, app.state.metrics, ended, server, server.server_state.connections)
    server.should_exit = True
    thread.join(timeout=30)


def handshake(path: str, extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n%s\r\n" % (path.encode(), key, extra)
    )


def open_session(server: WsServer, path: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((server.host, server.port))
    sock.sendall(handshake(path))
    return sock


def closed(server: WsServer, reason: str) -> float:
    return server.metrics.registry.get_sample_value("oai_connections_closed_total", {"reason": reason}) or 0.0


def test_a_websocket_client_that_stops_reading_is_cut(ws_server: WsServer) -> None:
    sock = open_session(ws_server, "/flood", rcvbuf=4096)
    try:
        assert ws_server.ended.wait(timeout=STALL_S + 10)
        assert closed(ws_server, "write_stall") == 1
    finally:
        sock.close()


def test_websocket_sessions_count_against_the_connection_cap(ws_server: WsServer) -> None:
    assert wait_until(lambda: len(ws_server.connections) == 0, timeout=10)
    sessions = [open_session(ws_server, "/idle") for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in sessions:
            assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        response = httpx.get(f"http://{ws_server.host}:{ws_server.port}/anything", timeout=10)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "too_many_connections"
    finally:
        for sock in sessions:
            sock.close()


def test_an_upgrade_with_too_many_headers_gets_a_431(ws_server: WsServer) -> None:
    assert wait_until(lambda: len(ws_server.connections) == 0, timeout=10)
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(100))
    with socket.create_connection((ws_server.host, ws_server.port), timeout=10) as sock:
        sock.sendall(handshake("/idle", headers))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431")
    assert b'"code":"request_headers_too_large"' in answer
