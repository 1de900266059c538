"""Graceful shutdown of a real `oai-server serve --demo` process on SIGTERM.

Each test starts the CLI as a subprocess on a free loopback port, streams a long speech
request (SSE, so the end of the stream is explicit: `speech.audio.done` with its usage), and
sends SIGTERM mid-stream:

- with a drain long enough, the stream completes with every byte, new connections are refused
  (or answered 503 in the envelope) while it drains, and the process exits 0 right after;
- with a drain shorter than the stream, the stream is cut after the drain (no final event,
  no terminating chunk; uvicorn logs the cancellation) and the process still exits 0.

The streams are sized from the speed measured on the server itself just before (a calibration
request), so "still streaming when the signal arrives" holds on a busy machine as on an idle one.
"""

from __future__ import annotations

import base64
import math
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from oai_server.engines.demo import DemoModels
from oai_server.pipeline.segmenter import split_text

from .helpers import answers_ready, expected_samples, sse_json, wait_until

pytestmark = pytest.mark.slow

RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


MAX_SENTENCES = 300
"""What `--max-input-chars 20000` allows of `long_text`."""


def long_text(sentences: int) -> str:
    return " ".join(f"Sentence number {i} is here to make the input long enough." for i in range(sentences))


def sentences_lasting(url: str, seconds: float) -> int:
    """How many sentences of `long_text` take at least `seconds` to speak on this server, measured now."""
    probe = 10
    body = {"model": "tts-1", "voice": "alloy", "input": "Warm up.", "response_format": "pcm", "seed": 1}
    assert httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120).status_code == 200  # first-call costs
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/audio/speech", json={**body, "input": long_text(probe)}, timeout=120)
    assert response.status_code == 200 and response.content
    per_sentence = (time.monotonic() - started) / probe
    return min(MAX_SENTENCES, max(probe, math.ceil(seconds / per_sentence)))


@dataclass
class Process:
    """The server subprocess, its URL and everything it wrote to stderr."""

    popen: subprocess.Popen[str]
    url: str
    log: list[str]


@contextmanager
def oai_server(cache: Path, drain_seconds: float) -> Iterator[Process]:
    """`python -m oai_server serve --demo` on an OS-chosen port (read from uvicorn's log), ready."""
    command = [
        sys.executable, "-m", "oai_server", "serve", "--demo", "--cache-dir", str(cache),
        "--host", "127.0.0.1", "--port", "0", "--log-level", "info",
        "--shutdown-drain-seconds", str(drain_seconds), "--max-input-chars", "20000",
    ]  # fmt: skip
    popen = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log: list[str] = []
    port: list[int] = []

    def pump() -> None:  # keep the pipe drained; note the port when uvicorn reports it
        assert popen.stderr is not None
        for line in popen.stderr:
            log.append(line)
            found = RUNNING.search(line)
            if found:
                port.append(int(found.group(1)))

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert wait_until(lambda: bool(port) or popen.poll() is not None, 180, 0.1), "server did not start"
        assert port, "".join(log)
        url = f"http://127.0.0.1:{port[0]}"
        assert wait_until(lambda: answers_ready(url), 60, 0.2), "".join(log)
        yield Process(popen, url, log)
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(30)


@dataclass
class Stream:
    """A speech SSE request read in a background thread."""

    url: str
    text: str
    events: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None
    ended_at: float = 0.0
    thread: threading.Thread | None = None

    def start(self) -> Stream:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        body = {
            "model": "tts-1",
            "voice": "alloy",
            "input": self.text,
            "response_format": "pcm",
            "stream_format": "sse",
            "seed": 2,
        }
        try:
            with httpx.stream("POST", f"{self.url}/v1/audio/speech", json=body, timeout=120) as response:
                assert response.status_code == 200
                for line in response.iter_lines():  # one event at a time, as they arrive
                    self.events.extend(sse_json([line]))
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream hung"


def refused_or_503(url: str) -> bool:
    """True when a new request cannot get in: connection refused; closed unanswered (a connection accepted
    just before the listener closed is dropped by uvicorn's shutdown); reset (one still in the kernel's
    accept queue when the listener closes gets a RST: `ReadError`, ECONNRESET); or a 503 `shutting_down`
    envelope. Clients retry the first three as connection errors."""
    try:
        response = httpx.get(f"{url}/v1/models", timeout=5)
    except (httpx.ConnectError, httpx.RemoteProtocolError):
        return True
    except httpx.ReadError as error:
        return connection_reset(error)
    return response.status_code == 503 and response.json()["error"]["code"] == "shutting_down"


def connection_reset(error: BaseException) -> bool:
    """Whether `error` was caused, somewhere down its chain, by the peer resetting the connection."""
    seen: list[BaseException] = [error]
    while seen:  # httpx and httpcore wrap the OSError, as the cause or as the argument
        cause = seen.pop()
        if isinstance(cause, ConnectionResetError):
            return True
        seen += [link for link in (cause.__cause__, cause.__context__, *cause.args) if isinstance(link, BaseException)]
    return False


def test_sigterm_drains_the_stream_then_exits_0(demo_cache: Path, demo_models: DemoModels) -> None:
    drain = 90.0
    with oai_server(demo_cache, drain) as server:
        text = long_text(sentences_lasting(server.url, 10.0))  # far longer than the checks while it drains
        stream = Stream(server.url, text).start()
        assert wait_until(lambda: len(stream.events) >= 2 or not stream.running, 60)
        assert stream.running, stream.error
        server.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # While the stream drains, nothing new gets in.
        assert wait_until(lambda: refused_or_503(server.url), 10, 0.05)
        assert stream.running, "the stream should still be draining"

        stream.join(120)
        assert stream.error is None, repr(stream.error)
        code = server.popen.wait(timeout=drain + 30)
        exited = time.monotonic()

    assert code == 0, "".join(server.log)
    assert exited - signalled < drain  # it exits once the stream is over, not at the drain's end
    assert not any("graceful shutdown exceeded" in line for line in server.log)  # nothing was cut
    # The stream is complete: every delta, then `speech.audio.done`, and the samples its usage promises.
    assert stream.events[-1]["type"] == "speech.audio.done"
    assert all(event["type"] == "speech.audio.delta" for event in stream.events[:-1])
    audio = base64.b64decode("".join(event["audio"] for event in stream.events[:-1]))
    usage = stream.events[-1]["usage"]
    assert len(audio) == 2 * expected_samples(usage["output_tokens"], len(split_text(text, 300)))
    assert any("draining for up to" in line for line in server.log), "admission did not start draining"


def test_sigterm_cuts_a_stream_longer_than_the_drain(demo_cache: Path, demo_models: DemoModels) -> None:
    drain = 1.0
    with oai_server(demo_cache, drain) as server:
        # At least 15 s of generation at the speed just measured: far past the 1 s drain.
        stream = Stream(server.url, long_text(sentences_lasting(server.url, 15.0))).start()
        assert wait_until(lambda: len(stream.events) >= 2 or not stream.running, 60)
        assert stream.running, stream.error
        server.popen.send_signal(signal.SIGTERM)
        stream.join(60)
        code = server.popen.wait(timeout=drain + 30)

    assert code == 0, "".join(server.log)
    # Cut after the drain: no final event, and the body ended without its terminating chunk.
    assert isinstance(stream.error, httpx.RemoteProtocolError), repr(stream.error)
    assert stream.events and all(event["type"] == "speech.audio.delta" for event in stream.events)
    assert any("graceful shutdown exceeded" in line for line in server.log), "".join(server.log)
