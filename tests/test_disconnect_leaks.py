"""100 clients that hang up at random points leave nothing behind.

A server of its own (real app, real demo engines and SNAC, uvicorn on loopback) gets 100
streamed requests from raw sockets, 4 at a time against 3 stream slots (so some wait in the
admission queue): speech as raw pcm, as pcm SSE and as mp3 SSE, chat with audio streamed, chat
text streamed. A seeded RNG picks each client's hang-up point: right after sending the request
(before any response byte) or after a random number of response bytes; half close with an
RST (SO_LINGER 0), half with a FIN. The request bodies carry seeds too, so every reply, and so
where each hang-up lands in it, is the same on every run. Afterwards:

- no request is in flight in either engine, and admission is back to 0 active, 0 queued;
- the server's event loop has exactly the tasks it had before (no leaked task);
- the SNAC decoder has no queued work and is not decoding any more;
- the engine abort counters (`oai_engine_aborts_total`) grew, and nothing was logged as an error
  (a client leaving is routine: the stream is closed in order, not torn down by an exception);
- the server still answers full speech and chat streams correctly.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from oai_server.engines.demo import DemoModels

from .helpers import LiveServer, demo_settings, sdk_client, sse_json, start_server, steady, wait_until

pytestmark = pytest.mark.slow

STREAMS = 100
SEED = 20240611
TEXT = "Hello there, how are you today? This is a longer test of the speech endpoint. It has three sentences."
CHAT_MESSAGES = [{"role": "user", "content": "Tell me a short story."}]
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "speech-pcm": (
        "/v1/audio/speech",
        {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "pcm", "seed": 1},
    ),
    "speech-sse": (
        "/v1/audio/speech",
        {"model": "tts-1", "voice": "nova", "input": TEXT, "response_format": "pcm", "stream_format": "sse", "seed": 2},
    ),
    "speech-sse-mp3": (
        "/v1/audio/speech",
        {"model": "tts-1", "voice": "echo", "input": TEXT, "response_format": "mp3", "stream_format": "sse", "seed": 3},
    ),
    "chat-audio": (
        "/v1/chat/completions",
        {
            "model": "gpt-4o-audio-preview",
            "messages": CHAT_MESSAGES,
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"},
            "stream": True,
            "max_tokens": 80,
            "seed": 1,
        },
    ),
    "chat-text": (
        "/v1/chat/completions",
        {"model": "gpt-4o-audio-preview", "messages": CHAT_MESSAGES, "stream": True, "max_tokens": 80, "seed": 1},
    ),
}
MAX_CUT = {
    "speech-pcm": 24_000,
    "speech-sse": 24_000,
    "speech-sse-mp3": 1_500,
    "chat-audio": 24_000,
    "chat-text": 2_000,
}
"""The latest hang-up point of each kind, in response bytes: well inside its shortest replies."""


@dataclass(frozen=True)
class Plan:
    """One client: what it asks for, after how many response bytes it hangs up, and how."""

    kind: str
    cut_after: int
    """0: right after the request is sent, before any response byte."""
    reset: bool
    """Close with an RST (SO_LINGER 0) instead of a FIN."""


def plans(rng: random.Random) -> list[Plan]:
    chosen = []
    for _ in range(STREAMS):
        kind = rng.choice(list(REQUESTS))
        cut = 0 if rng.random() < 0.2 else rng.randint(1, MAX_CUT[kind])
        chosen.append(Plan(kind, cut, rng.random() < 0.5))
    return chosen


def raw_request(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def hang_up(address: tuple[str, int], plan: Plan) -> str:
    """Run one client; 'cut' if it hung up mid-response, 'complete' if the response ended first."""
    path, body = REQUESTS[plan.kind]
    sock = socket.create_connection(address, timeout=60)
    try:
        sock.sendall(raw_request(path, body))
        received = 0
        while received < plan.cut_after:
            data = sock.recv(min(65536, plan.cut_after - received))
            if not data:
                return "complete"
            received += len(data)
        return "cut"
    finally:
        if plan.reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


@pytest.fixture(scope="module")
def server(demo_cache: Path, demo_models: DemoModels) -> Iterator[LiveServer]:
    live = start_server(demo_settings(demo_cache, max_concurrent_streams=3, max_queued=32))
    yield live
    live.stop()


def full_speech_stream(server: LiveServer) -> None:
    """A complete speech SSE stream: deltas, then `speech.audio.done` with its usage."""
    body = REQUESTS["speech-sse"][1]
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, timeout=60) as response:
        assert response.status_code == 200
        events = sse_json(response.iter_lines())
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    audio = base64.b64decode("".join(event["audio"] for event in events[:-1]))
    assert audio and len(audio) % 2 == 0


def full_chat_audio_stream(server: LiveServer) -> None:
    """A complete chat audio stream through the official SDK, ending with usage."""
    chunks = list(
        sdk_client(server).chat.completions.create(
            model="gpt-4o-audio-preview",
            messages=CHAT_MESSAGES,
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "pcm16"},
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=30,
            seed=1,
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens_details.audio_tokens > 0
    data = "".join(c.choices[0].delta.audio.data or "" for c in chunks if c.choices and c.choices[0].delta.audio)
    assert base64.b64decode(data)


def test_random_disconnects_leave_nothing_behind(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    full_speech_stream(server)  # warm: every lazily created part exists before the baseline
    full_chat_audio_stream(server)
    assert wait_until(server.idle, 10)
    baseline_tasks = server.tasks()
    aborts_before = server.scrape()

    caplog.clear()
    chosen = plans(random.Random(SEED))
    address = urlsplit(server.url)
    steps_before = server.generated_tokens()
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda plan: hang_up((address.hostname or "", address.port or 0), plan), chosen))
    seconds = time.monotonic() - started
    tally = Counter(outcomes)
    print(f"\n{STREAMS} clients in {seconds:.1f} s: {dict(Counter(p.kind for p in chosen))}; {dict(tally)}")
    print(f"hung up before any byte: {sum(p.cut_after == 0 for p in chosen)}, with RST: {sum(p.reset for p in chosen)}")
    assert tally["cut"] >= 90  # nearly every client really left mid-stream

    # Nothing in flight anywhere, and the loop is back to its own tasks.
    assert wait_until(server.idle, 30), (
        server.services.engines.llm.active_requests(),
        server.services.engines.tts.active_requests(),
        server.services.admission.active,
        server.services.admission.queued,
    )
    assert wait_until(lambda: server.tasks() == baseline_tasks, 10), (server.tasks(), baseline_tasks)
    engines: Any = server.services.engines
    # Nothing queued for the SNAC decoder thread. A decode cancelled by a hang-up leaves its job queued
    # until the thread takes (and skips) it, so on a busy machine this can take a moment.
    assert wait_until(engines.snac._jobs.empty, 10)
    # Nobody decodes or generates any more: watched for 20 steps at the speed of the run itself.
    speed = (server.generated_tokens() - steps_before) / seconds

    def work() -> tuple[int, int]:
        return engines.snac.windows_decoded, server.generated_tokens()

    unchanged, before, after = steady(work, window=min(max(20 / speed, 0.2), 5.0))
    assert unchanged, f"work went on after every client left: {before} -> {after}"

    aborts_after = server.scrape()
    series = {engine: f'oai_engine_aborts_total{{engine="{engine}"}}' for engine in ("llm", "tts")}
    aborts = {engine: aborts_after[name] - aborts_before.get(name, 0.0) for engine, name in series.items()}
    print(f"engine aborts counted: {aborts}; server loop tasks: {sum(baseline_tasks.values())} before and after")
    assert aborts["tts"] >= 20 and aborts["llm"] >= 10
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:5]

    # And it still serves complete replies.
    full_speech_stream(server)
    full_chat_audio_stream(server)
    assert wait_until(server.idle, 10)
    assert wait_until(lambda: server.tasks() == baseline_tasks, 10)
