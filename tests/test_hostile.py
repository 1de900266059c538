"""Hostile clients against the demo server over loopback (issue 20): none can stall, starve or crash it.

One server of its own, started the way `oai-server serve` starts it (`runtime_limits.uvicorn_options`:
the guarded httptools/WebSocket protocols) with short timeouts and small limits, so every probe is
bounded in count and time. While each hostile request runs, a prober process times `/health` and the
server's event-loop monitor is read (`watched`): `/health` answers under 200 ms, work on the loop never
holds it for 100 ms, and its wall-clock lag (waiting for the CPU and the GIL included) stays under 500 ms.

1. A 255-message chat history of 4,096 characters each (1 MB) is answered without freezing the loop;
   bodies of millions of JSON values are refused (400) before anything parses them on the loop.
2. Too many headers, a 1 MB and a 16 MB header value get a 431 envelope at once; so does a WebSocket
   upgrade with too many headers.
3. Stalled readers lose their admission slot within the write-stall timeout (engine requests aborted,
   `write_stall` counted); trickling headers and bodies, a body never completed and an idle socket are
   closed within their timeouts (408 envelope where a request started), a slow but steady body is not;
   past the connection cap a new connection gets a 503 envelope and a log line; the fd limit is raised
   at start.
4. Lone surrogates in any text field are a 400 naming the field; a hypothesis fuzz of text fields
   (surrogates, NULs, control and combining characters) gets zero 5xx.
5. One chat message longer than `max_input_chars` is a 400 naming `messages[i].content`.
6. The allocator's arena cap is set at start (and exported for child processes).
7. A NUL byte in a header gets the OpenAI envelope, not uvicorn's plain-text 400.
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oai_server.app import create_app
from oai_server.engines.demo import DemoModels
from oai_server.routes.json_guard import count_json_values
from oai_server.runtime_limits import fd_reserve, max_connections, prepare_process, raise_fd_limit, uvicorn_options
from oai_server.settings import Settings

from .helpers import LiveServer, demo_settings, wait_until

pytestmark = pytest.mark.slow

STALL_S = 1.0
HEADER_S = 1.5
BODY_S = 1.5
MAX_CONNECTIONS = 24
MAX_HEADERS = 64
MAX_HEADER_BYTES = 32768
LAG_LIMIT_S = 0.1
WALL_LAG_LIMIT_S = 1.0
HEALTH_LIMIT_S = 0.2
SPEECH = {"model": "tts-1", "voice": "alloy", "response_format": "pcm"}
CHAT = {"model": "gpt-4o-audio-preview", "max_tokens": 4, "seed": 1}


def start_guarded(settings: Settings) -> LiveServer:
    """The app on a free loopback port, with the CLI's connection guards (`uvicorn_options`)."""
    app = create_app(settings)
    return LiveServer(app, options=uvicorn_options(settings, app))


@pytest.fixture(scope="module")
def server(demo_cache: Path, demo_models: DemoModels) -> Iterator[LiveServer]:
    live = start_guarded(
        demo_settings(
            demo_cache,
            max_concurrent_streams=2,
            max_queued=2,
            queue_timeout_seconds=2,
            max_connections=MAX_CONNECTIONS,
            max_headers=MAX_HEADERS,
            max_header_bytes=MAX_HEADER_BYTES,
            header_timeout_seconds=HEADER_S,
            body_timeout_seconds=BODY_S,
            write_stall_timeout_seconds=STALL_S,
            llm_max_tokens=16,
        )
    )
    # Warm up (first-use imports and allocations in the engines' threads): the probes measure steady state.
    for path, body in (
        ("/v1/audio/speech", {**SPEECH, "input": "Hello there.", "stream_format": "sse"}),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "Hi."}], "stream": True}),
    ):
        assert httpx.post(f"{live.url}{path}", json=body, timeout=120).status_code == 200
    yield live
    live.stop()


def address(server: LiveServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def metric(server: LiveServer, name: str, labels: dict[str, str] | None = None) -> float:
    return server.app.state.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def closed_count(server: LiveServer, reason: str) -> float:
    return metric(server, "oai_connections_closed_total", {"reason": reason})


PROBER = """
import http.client, sys, time
host, port = sys.argv[1], int(sys.argv[2])
while True:
    start = time.monotonic()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", "/health")
        status = conn.getresponse().status
        conn.close()
    except OSError:
        status = 0
    print(f"{start:.6f} {time.monotonic() - start:.6f} {status}", flush=True)
    time.sleep(0.05)
"""


@dataclass
class Prober:
    """A separate process timing `GET /health` every 50 ms (an outside client: no GIL shared with the server)."""

    process: subprocess.Popen[bytes]
    log: Path

    def probes(self, since: float) -> list[tuple[float, int]]:
        """(seconds, status) of the probes that started after `since` and finished."""
        found = []
        for line in self.log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and float(parts[0]) >= since:
                found.append((float(parts[1]), int(parts[2])))
        return found


@pytest.fixture(scope="module")
def prober(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prober]:
    log = tmp_path_factory.mktemp("prober") / "health.log"
    host, port = address(server)
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", PROBER, host, str(port)], stdout=out)
    yield Prober(process, log)
    process.kill()
    process.wait(timeout=10)


@dataclass
class Watch:
    """What the watcher saw: the worst `/health` time, the worst loop lag, and the loop's own part of it."""

    health_s: float = 0.0
    probes: int = 0
    lag_s: float = 0.0
    busy_s: float = 0.0


@contextlib.contextmanager
def watched(server: LiveServer, prober: Prober) -> Iterator[Watch]:
    """While the body runs, `/health` is timed from outside and the loop's lag sampled; then both are checked.

    The loop's own work (lag while its thread computed) must stay under 100 ms, `/health` under 200 ms.
    The loop's wall-clock lag also counts time spent waiting for the CPU or for the GIL held by another
    thread (the demo engines, this test's client), which on the shared 2-core CI machine reached 380 ms
    and once 543 ms with the loop thread computing for 2-4 ms of it: it is held to `WALL_LAG_LIMIT_S`,
    which still catches every stall of the kinds this file reproduces (seconds). Before the window opens,
    this process's garbage is collected (so no full collection in the test's own thread holds the GIL
    inside it) and the monitor takes a fresh sample (so a lag that began earlier is not counted in it).
    """
    gc.collect()
    time.sleep(2 * server.app.state.loop_monitor.interval)
    seen = Watch()
    since = time.monotonic()
    yield seen
    assert wait_until(lambda: bool(prober.probes(since)), timeout=30)  # a hostile request may be over at once
    probes = prober.probes(since)
    seen.probes = len(probes)
    seen.health_s = max(seconds for seconds, _ in probes)
    monitor = server.app.state.loop_monitor
    seen.lag_s, seen.busy_s = monitor.max_since(since), monitor.max_busy_since(since)
    assert all(status == 200 for _, status in probes), probes
    assert seen.busy_s < LAG_LIMIT_S, f"work on the event loop blocked it for {seen.busy_s * 1000:.0f} ms"
    assert seen.lag_s < WALL_LAG_LIMIT_S, f"event loop lagged {seen.lag_s * 1000:.0f} ms"
    assert seen.health_s < HEALTH_LIMIT_S, f"/health took {seen.health_s * 1000:.0f} ms"


def spin(seconds: float) -> None:
    """Compute (holding the thread) for `seconds`."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.mark.parametrize(
    ("stall", "complaint"),
    [(lambda: spin(0.3), "work on the event loop blocked it"), (lambda: time.sleep(1.2), "event loop lagged")],
    ids=["computing", "waiting"],
)
def test_the_watcher_catches_a_stalled_loop(
    server: LiveServer, prober: Prober, stall: Callable[[], None], complaint: str
) -> None:
    with pytest.raises(AssertionError, match=complaint), watched(server, prober):
        server.loop.call_soon_threadsafe(stall)
        time.sleep(1.5)


def post_raw(server: LiveServer, path: str, body: str, timeout: float = 120) -> httpx.Response:
    """POST a JSON text as is (httpx's `json=` cannot encode lone surrogates; `json.dumps` escapes them)."""
    return httpx.post(
        f"{server.url}{path}", content=body.encode(), headers={"content-type": "application/json"}, timeout=timeout
    )


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout` passes: then fail)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not piece:
            return data
        data += piece


def envelope(response: bytes) -> tuple[int, dict[str, Any], bytes]:
    """Status, envelope and raw head of an HTTP response read from a socket."""
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body), head.lower()


# --------------------------------------------------------------------------- 1. prompt building


def test_long_chat_history_does_not_freeze_the_loop(server: LiveServer, prober: Prober) -> None:
    text = ("the train leaves at seven so we should pack our bags and go to bed early " * 60)[:4096]
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i in range(255)]
    body = json.dumps({**CHAT, "messages": messages})
    assert len(body) > 1_000_000
    with watched(server, prober):
        response = post_raw(server, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 1000  # trimmed to the context, not refused


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [0] * 1_900_000},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}] * 120_000}]},
        {"stop": [[]] * 1_300_000},
    ],
    ids=["2M-numbers", "120k-content-parts", "1.3M-empty-lists"],
)
def test_bodies_with_too_many_json_values_are_refused_off_the_loop(
    server: LiveServer, prober: Prober, extra: dict[str, Any]
) -> None:
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "hi"}], **extra}, separators=(",", ":"))
    assert len(body) > 3_000_000
    with watched(server, prober):
        response = post_raw(server, "/v1/chat/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "request_too_complex"


def test_json_values_are_counted_exactly() -> None:
    body = b'{"a": [1, 2.5e3, -1, "x\\"y, [z]", {"b": null}], "c": false, "d": {}}'
    assert count_json_values(body, 100) == 14
    assert count_json_values(body, 5) == 6  # stops past the limit
    assert count_json_values(b"{'a': 1}", 100) is None  # not JSON: the framework answers


def test_the_loop_lag_is_a_metric_and_the_startup_heap_is_frozen(server: LiveServer) -> None:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    count = next(line for line in text.splitlines() if line.startswith("oai_event_loop_lag_seconds_count"))
    assert float(count.split()[-1]) > 0
    assert "oai_open_connections" in text
    assert gc.get_freeze_count() > 10_000  # models, tokenizers and modules: out of the collector's reach
    assert gc.get_threshold()[0] == Settings().gc_young_threshold == 20_000  # set once startup completed


def test_freezing_the_startup_heap_sets_the_young_threshold_when_asked() -> None:
    from oai_server.serving.loop_monitor import freeze_startup_heap

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, before[1], before[2])
        freeze_startup_heap(0)
        assert gc.get_threshold() == (700, before[1], before[2])  # 0 keeps what Python has
        freeze_startup_heap(12_345)
        assert gc.get_threshold() == (12_345, before[1], before[2])
    finally:
        gc.set_threshold(*before)


# --------------------------------------------------------------------------- 2. header limits


def send_headers(server: LiveServer, head: bytes, chunk: int = 1 << 20) -> bytes:
    """Send a request head in pieces (stopping if the server closes), then read the answer."""
    with socket.create_connection(address(server), timeout=30) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for start in range(0, len(head), chunk):
                sock.sendall(head[start : start + chunk])
        return read_until_closed(sock, 30)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)) + b"\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n",
        b"GET /v1/" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 100) + b"\r\n\r\n",
        b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        + b"\r\n",
    ],
    ids=["10k-headers", "1MB-value", "16MB-value", "1MB-url", "just-over-in-one-read", "websocket-200-headers"],
)
def test_oversized_headers_get_a_431_envelope(server: LiveServer, prober: Prober, head: bytes) -> None:
    before = closed_count(server, "headers_too_large")
    with watched(server, prober):
        answer = send_headers(server, head)
    status, body, raw_head = envelope(answer)
    assert status == 431
    assert body["error"]["code"] == "request_headers_too_large"
    assert b"x-request-id: req_" in raw_head and b"connection: close" in raw_head
    assert closed_count(server, "headers_too_large") == before + 1


def test_headers_within_the_limits_pass(server: LiveServer) -> None:
    headers = {f"x-h{i}": "v" * 200 for i in range(MAX_HEADERS - 8)}
    assert httpx.get(f"{server.url}/health", headers=headers, timeout=30).status_code == 200


# --------------------------------------------------------------------------- 7. NUL in a header


def test_nul_in_a_header_gets_the_envelope(server: LiveServer) -> None:
    answer = send_headers(server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
    status, body, raw_head = envelope(answer)
    assert status == 400
    assert body == {
        "error": {
            "message": "Invalid HTTP request received.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request",
        }
    }
    assert b"content-type: application/json" in raw_head and b"x-should-retry: false" in raw_head


# --------------------------------------------------------------------------- 3. slow and stalled clients


def stalled_reader(server: LiveServer, body: dict[str, Any]) -> socket.socket:
    """A client that sends a streaming request and never reads (a tiny receive buffer, so the server fills up)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address(server))
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(data) + data
    )
    return sock


def test_stalled_readers_lose_their_slots(server: LiveServer, prober: Prober) -> None:
    admission = server.services.admission
    before = closed_count(server, "write_stall")
    # The longest input: its audio takes the demo seconds to generate, so the readers stall long before it ends.
    text = ("Once upon a time, a curious little robot wandered through the city looking for new friends. " * 45)[:4096]
    with watched(server, prober):
        sockets = [stalled_reader(server, {**SPEECH, "input": text, "seed": seed}) for seed in (1, 2)]
        try:
            assert wait_until(lambda: admission.active == 2, timeout=30)
            # Both slots are held by clients that read nothing: within the stall timeout (plus the
            # check interval and the moment their 4 KB windows take to fill) both are free again.
            assert wait_until(lambda: admission.active == 0, timeout=STALL_S + 2)
            assert closed_count(server, "write_stall") == before + 2
        finally:
            for sock in sockets:
                sock.close()
    engines = server.services.engines.roles()
    assert wait_until(lambda: all(engine.active_requests() == 0 for engine in engines.values()), timeout=10)
    response = httpx.post(f"{server.url}/v1/audio/speech", json={**SPEECH, "input": "Hello there."}, timeout=60)
    assert response.status_code == 200 and len(response.content) > 0


@pytest.mark.parametrize(
    ("first", "trickle", "status"),
    [
        (b"", b"", None),  # an idle connection: closed, nothing said
        (b"POST /v1/chat/completions HTTP/1.1\r\n", b"X-Slow: abcdefghijklmnopqrstuvwxyz\r\n" * 4, 408),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n",
         b'{"model": "x", "messages": []' + b" " * 400, 408),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
         b"", 408),  # a declared body never completed
    ],
    ids=["idle", "trickling-headers", "trickling-body", "unfinished-body"],
)  # fmt: skip
def test_slow_requests_are_closed_within_their_timeout(
    server: LiveServer, prober: Prober, first: bytes, trickle: bytes, status: int | None
) -> None:
    reason = "header_timeout" if status is None or b"\r\n\r\n" not in first else "body_timeout"
    before = closed_count(server, reason)
    with watched(server, prober), socket.create_connection(address(server), timeout=30) as sock:
        sock.sendall(first)
        opened = time.monotonic()
        sock.settimeout(0.2)
        answer = b""
        for byte in trickle:  # one byte every 0.2 s, for longer than the timeouts
            with contextlib.suppress(TimeoutError):
                answer += sock.recv(65536)
            if answer:
                break
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.send(bytes([byte]))
        answer += read_until_closed(sock, HEADER_S + BODY_S + 5)
        assert time.monotonic() - opened < HEADER_S + BODY_S + 5
    if status is None:
        assert answer == b""
    else:
        code, body, _ = envelope(answer)
        assert code == status and body["error"]["code"] == "request_timeout"
    assert closed_count(server, reason) == before + 1


def test_a_slow_but_steady_body_is_not_cut(server: LiveServer) -> None:
    """1 KiB every 0.9 s: slower in all than the body timeout, but never 1 KiB short of it in any period."""
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "Hi."}]}).ljust(3072).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    with socket.create_connection(address(server), timeout=30) as sock:
        sock.sendall(head)
        for start in range(0, len(body), 1024):
            if start:
                time.sleep(0.9)  # the client's pace, not a wait for the server
            sock.sendall(body[start : start + 1024])
        answer = read_until_closed(sock, 60)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_idle_kept_alive_connections_outlive_client_pools_then_close(demo_cache: Path, demo_models: DemoModels) -> None:
    """The server keeps an idle connection longer than clients' pools (httpx 5 s) and load balancers (60 s)
    keep theirs, so a client never reuses one the server is closing; past `keep_alive_timeout_seconds`
    it closes."""
    assert Settings.model_fields["keep_alive_timeout_seconds"].default > 60
    live = start_guarded(demo_settings(demo_cache, keep_alive_timeout_seconds=1.0))
    conn = http.client.HTTPConnection(*address(live), timeout=10)
    try:
        statuses = []
        for pause in (0.0, 0.5):
            time.sleep(pause)  # an idle gap shorter than the keep-alive
            conn.request("GET", "/v1/models")
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            if not pause:
                sock = conn.sock
        assert statuses == [200, 200]
        assert conn.sock is sock  # the one connection served both
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(1) == b""  # the server closed the idle connection
        assert 0.3 < time.monotonic() - started < 3
    finally:
        conn.close()
        live.stop()


def test_connections_past_the_cap_get_a_503_envelope(
    demo_cache: Path, demo_models: DemoModels, caplog: pytest.LogCaptureFixture
) -> None:
    """A server of its own, whose header timeout outlasts the test: with the shared server's 1.5 s, a loaded machine
    could see held connections time out before the cap was checked, and the request past it then admitted."""
    server = start_guarded(demo_settings(demo_cache, max_connections=MAX_CONNECTIONS, header_timeout_seconds=60.0))
    before = closed_count(server, "over_capacity")
    held = []
    try:
        for _ in range(MAX_CONNECTIONS + 5):
            sock = socket.create_connection(address(server), timeout=30)
            held.append(sock)
        assert wait_until(lambda: len(server.server.server_state.connections) == MAX_CONNECTIONS, timeout=10)
        with caplog.at_level(logging.WARNING, logger="oai_server.routes.connections"):
            response = httpx.get(f"{server.url}/health", timeout=10)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "too_many_connections"
        assert response.headers["retry-after"] == "1"
        assert closed_count(server, "over_capacity") >= before + 6
        assert any("refused a connection" in record.getMessage() for record in caplog.records)
        for sock in held:
            sock.close()
        held.clear()
        # The held ones close as their clients go; then connections are served again.
        assert wait_until(lambda: len(server.server.server_state.connections) == 0, timeout=10)
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_fd_limit_is_raised_to_the_hard_limit(caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        before, after = raise_fd_limit()
        assert (before, after) == (low, hard)
        assert max_connections(Settings(), 256) == 256 - fd_reserve(256) == 192
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        with caplog.at_level(logging.WARNING, logger="oai_server.runtime_limits"):
            prepare_process(Settings(max_concurrent_streams=100_000, malloc_arena_max=0))
        assert any("connection cap" in record.getMessage() for record in caplog.records)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------- 4. invalid Unicode


SURROGATE_CASES = [
    ("/v1/audio/speech", {**SPEECH, "input": "hi \ud800"}, "input"),
    ("/v1/audio/speech", {**SPEECH, "input": "hi", "voice": "\udfff"}, "voice"),
    ("/v1/audio/speech", {**SPEECH, "input": "hi", "voice": {"id": "a\ud800"}}, "voice"),
    ("/v1/audio/speech", {**SPEECH, "input": "hi", "stream_format": "sse", "instructions": "\ud83d"}, "instructions"),
    ("/v1/audio/speech", {**SPEECH, "input": "hi", "model": "\ud800"}, "model"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "x\udc00"}]}]},
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "\ud800"}},
        "response_format",
    ),
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "messages": [{"role": "user", "content": "hi"}],
            "modalities": ["text", "audio"],
            "audio": {"voice": "\ud800", "format": "pcm16"},
        },
        "audio.voice",
    ),
    ("/tts", {"prompt": "\ud800"}, "prompt"),
    ("/tts", {"prompt": "hi", "voice": "\ud800"}, "voice"),
    ("/chat", {"message": "\ud800"}, "message"),
    ("/chat", {"message": "hi", "history": [{"role": "user", "content": "\ud800"}]}, "history[0].content"),
]


@pytest.mark.parametrize(("path", "body", "param"), SURROGATE_CASES)
def test_lone_surrogates_are_a_400_naming_the_field(
    server: LiveServer, path: str, body: dict[str, Any], param: str
) -> None:
    response = post_raw(server, path, json.dumps(body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "lone surrogate" in error["message"]


HOSTILE_CHARS = st.sampled_from(["\ud800", "\udfff", "\ud83d", "\x00", "\x01", "\x1b", "\x7f", "\u0301", "\u200b"])
HOSTILE_TEXT = st.lists(
    st.one_of(HOSTILE_CHARS, st.sampled_from(["a", " ", "Hello", ".", "\n"]), st.characters()), max_size=12
).map("".join)


def fuzz_body(kind: str, text: str, where: str) -> tuple[str, dict[str, Any]]:
    """A small valid request of `kind` with `text` in one of its text fields."""
    if kind == "speech":
        body: dict[str, Any] = {**SPEECH, "input": "Hi.", "stream_format": "sse", "seed": 1}
        body["voice" if where == "voice" else "input"] = text
        return "/v1/audio/speech", body
    if kind == "chat":
        message: dict[str, Any] = {"role": "user", "content": "Hi."}
        if where == "voice":
            message = {"role": "user", "content": [{"type": "text", "text": text}]}
        else:
            message["content"] = text
        return "/v1/chat/completions", {
            **CHAT,
            "stream": True,
            "messages": [{"role": "system", "content": text}, message],
        }
    body = {"message": "Hi.", "stream_text": True, "max_tokens": 4, "seed": 1}
    body["voice" if where == "voice" else "message"] = text
    return "/chat", body


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(kind=st.sampled_from(["speech", "chat", "seed"]), text=HOSTILE_TEXT, where=st.sampled_from(["text", "voice"]))
def test_text_fuzz_has_no_server_errors(server: LiveServer, prober: Prober, kind: str, text: str, where: str) -> None:
    path, body = fuzz_body(kind, text, where)
    with watched(server, prober):
        response = post_raw(server, path, json.dumps(body))
    assert response.status_code < 500, response.text
    assert response.status_code in (200, 400), response.text
    assert b"server_error" not in response.content, response.text


# --------------------------------------------------------------------------- 5. one long chat message


def test_one_chat_message_is_bounded_by_max_input_chars(server: LiveServer) -> None:
    limit = server.services.settings.max_input_chars
    messages = [{"role": "user", "content": "hi"}, {"role": "user", "content": "x" * (limit + 1)}]
    response = httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, "messages": messages}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages[1].content", "string_above_max_length")
    history = [{"role": "user", "content": "x" * (limit + 1)}]
    response = httpx.post(f"{server.url}/chat", json={"message": "hi", "history": history}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "history[0].content"


# --------------------------------------------------------------------------- 6. allocator


def test_malloc_arenas_are_capped_at_start() -> None:
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    code = (
        "import os\nfrom oai_server.runtime_limits import configure_allocator\n"
        "from oai_server.settings import Settings\n"
        "print(configure_allocator(Settings(malloc_arena_max=2)), os.environ['MALLOC_ARENA_MAX'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "malloc arenas capped at 2 2"
    env["MALLOC_ARENA_MAX"] = "4"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "MALLOC_ARENA_MAX=4 from the environment 4"


def test_flow_control_reaches_both_the_uvicorn_protocol_and_the_write_watch() -> None:
    """Without TCP_INFO the watch's only progress signal is the transport pausing the protocol's writes."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from oai_server.routes.connections import GuardedHttpToolsProtocol
    from oai_server.routes.websocket_guard import GuardedWebSocketProtocol
    from oai_server.routes.write_stall import WriteStallGuard

    for guarded, uvicorn_protocol in (
        (GuardedHttpToolsProtocol, HttpToolsProtocol),
        (GuardedWebSocketProtocol, WebSocketsSansIOProtocol),
    ):
        assert guarded.__mro__.index(WriteStallGuard) < guarded.__mro__.index(uvicorn_protocol)

    calls: list[str] = []

    class Protocol:
        def pause_writing(self) -> None:
            calls.append("pause")

        def resume_writing(self) -> None:
            calls.append("resume")

    class Guarded(WriteStallGuard, Protocol):
        pass

    guarded = Guarded()
    guarded.pause_writing()
    assert calls == ["pause"] and guarded._write_paused_flag
    guarded.resume_writing()
    assert calls == ["pause", "resume"] and not guarded._write_paused_flag
