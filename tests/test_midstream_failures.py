"""Failures after the 200: an engine that raises or stalls mid-stream, on the real demo engines.

The server runs `create_app(settings, engines=...)` on the real engines opened by the factory
(`open_engines`: tiny Gemma, tiny Orpheus, SNAC), each wrapped in a `FaultyEngine` that passes
every call through and, when a test arms it, raises `EngineError` or stalls forever after N
generated tokens. Once the status line is out the server must end the stream recognisably:

- speech SSE: a final `data: {"error": ...}` event (no `speech.audio.done`);
- chat streaming: the error event, which the official SDK raises as `openai.APIError`;
- raw audio: the body is cut without its terminating chunk (the client sees a broken transfer);
- a stall: the per-request deadline (`request_timeout_seconds`) cancels the engine request.

Failures below the engine seam come from the real parts: a forward hook on the real model makes the
engine's worker thread raise (`EngineError` at the seam, "The engine failed: ..." on the wire), and one
on the first stage of SNAC's decoder (which every decode runs, whole or cropped) makes the batched decode
fail (any other exception: the generic 500 message, with no internals leaked), streamed and whole. After each
fault the server serves the next request normally.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from oai_server.engines.bundle import Engines
from oai_server.engines.demo import DemoModels
from oai_server.engines.factory import open_engines, resolve_models

from .fault_engine import Fault, FaultyEngine
from .helpers import LiveServer, demo_settings, sdk_client, sse_json, start_server, wait_until

GENERIC = "The server had an error while processing your request."

DEADLINE = 4.0
"""`request_timeout_seconds` of this server: far above a normal demo reply (< 1 s), short to wait for."""
MODEL = "gpt-4o-audio-preview"
MESSAGES = [{"role": "user", "content": "Tell me something nice."}]


@dataclass
class FaultServer:
    live: LiveServer
    llm: FaultyEngine
    tts: FaultyEngine
    client: Any

    @contextmanager
    def armed(self, engine: FaultyEngine, fault: Fault) -> Iterator[None]:
        """Inject `fault` into every request of `engine` inside the block (the counters restart at 0)."""
        engine.raised = engine.stalled = engine.cancelled = 0
        engine.fault = fault
        try:
            yield
        finally:
            engine.fault = None

    def idle(self) -> bool:
        """No request left anywhere: admission, the wrappers, the real engines."""
        return self.live.idle() and not self.llm.live and not self.tts.live


class Breakage:
    """A forward hook that makes a real module raise `error` from its `after`-th call on (while installed)."""

    def __init__(self, after: int, error: Exception) -> None:
        self.after = after
        self.error = error
        self.calls = 0

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        self.calls += 1
        if self.calls >= self.after:
            raise self.error


@contextmanager
def broken(module: torch.nn.Module, after: int, error: Exception) -> Iterator[Breakage]:
    """Break `module` (a real model or part of one) inside the block."""
    breakage = Breakage(after, error)
    handle = module.register_forward_hook(breakage)
    try:
        yield breakage
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def fault_server(demo_cache: Path, demo_models: DemoModels) -> Iterator[FaultServer]:
    settings = resolve_models(demo_settings(demo_cache, request_timeout_seconds=DEADLINE))
    loop = asyncio.new_event_loop()  # the engines are opened (and closed) here; they serve any loop
    opened = open_engines(settings)
    real: Engines = loop.run_until_complete(opened.__aenter__())
    llm, tts = FaultyEngine(real.llm), FaultyEngine(real.tts)
    live = start_server(settings, engines=replace(real, llm=llm, tts=tts))
    try:
        yield FaultServer(live, llm, tts, sdk_client(live))
    finally:
        live.stop()
        loop.run_until_complete(opened.__aexit__(None, None, None))
        loop.close()


def speech_body(fmt: str = "pcm", sse: bool = True, text: str = "Hello there. This is a test.") -> dict[str, Any]:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt, "seed": 3}
    if sse:
        body["stream_format"] = "sse"
    return body


def sse_payloads(server: FaultServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Status 200 and the JSON of every `data:` event of a speech SSE request."""
    with httpx.stream("POST", f"{server.live.url}/v1/audio/speech", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_json(response.iter_lines())


def assert_serves_normally(server: FaultServer) -> None:
    """A full speech stream and a full chat reply right after a fault."""
    assert wait_until(server.idle, 10)
    events = sse_payloads(server, speech_body())
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    reply = server.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, seed=1)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    assert wait_until(server.idle, 10)


def test_speech_sse_ends_with_an_error_event(fault_server: FaultServer) -> None:
    with fault_server.armed(fault_server.tts, Fault(after_tokens=21)):
        events = sse_payloads(fault_server, speech_body())
    assert fault_server.tts.raised == 1
    deltas, last = events[:-1], events[-1]
    assert deltas and all(event["type"] == "speech.audio.delta" for event in deltas)  # audio went out first
    assert base64.b64decode("".join(event["audio"] for event in deltas))
    assert set(last) == {"error"}
    assert last["error"]["type"] == "server_error" and "injected fault" in last["error"]["message"]
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert_serves_normally(fault_server)


def test_chat_stream_failure_raises_api_error_in_the_sdk(fault_server: FaultServer) -> None:
    with fault_server.armed(fault_server.llm, Fault(after_tokens=3)):
        stream = fault_server.client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=40, seed=1, stream=True
        )
        chunks = []
        with pytest.raises(openai.APIError) as error:
            for chunk in stream:
                chunks.append(chunk)
    assert fault_server.llm.raised == 1
    assert "injected fault" in error.value.message
    assert isinstance(error.value.body, dict) and error.value.body["type"] == "server_error"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert any(c.choices and c.choices[0].delta.content for c in chunks)  # text went out before the failure
    assert_serves_normally(fault_server)


def test_chat_audio_stream_failure_in_tts_raises_api_error(fault_server: FaultServer) -> None:
    with fault_server.armed(fault_server.tts, Fault(after_tokens=21)):
        stream = fault_server.client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=40,
            seed=1,
            stream=True,
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "pcm16"},
        )
        chunks = []
        with pytest.raises(openai.APIError):
            for chunk in stream:
                chunks.append(chunk)
    assert fault_server.tts.raised == 1
    deltas = [c.choices[0].delta.audio for c in chunks if c.choices and c.choices[0].delta.audio]
    assert deltas and deltas[0].id.startswith("audio_")  # the audio had started
    assert not any(c.choices and c.choices[0].finish_reason for c in chunks)  # no normal ending
    assert_serves_normally(fault_server)


def test_raw_audio_stream_is_cut_without_its_final_chunk(fault_server: FaultServer) -> None:
    received = 0
    url = f"{fault_server.live.url}/v1/audio/speech"
    with (
        fault_server.armed(fault_server.tts, Fault(after_tokens=21)),
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", url, json=speech_body("pcm", sse=False), timeout=60) as response,
    ):
        assert response.status_code == 200 and response.headers["content-type"] == "audio/pcm"
        for chunk in response.iter_bytes():
            received += len(chunk)
    assert fault_server.tts.raised == 1
    assert received > 0  # audio went out before the cut
    assert_serves_normally(fault_server)


def test_deadline_cancels_a_stalled_speech_stream(fault_server: FaultServer) -> None:
    started = time.monotonic()
    with fault_server.armed(fault_server.tts, Fault(after_tokens=14, stall=True)):
        events = sse_payloads(fault_server, speech_body())
    elapsed = time.monotonic() - started
    assert fault_server.tts.stalled == 1 and fault_server.tts.cancelled == 1  # the engine request was cancelled
    assert elapsed >= DEADLINE - 0.5
    assert events[-1] == {
        "error": {
            "message": "The request exceeded its deadline and was cancelled.",
            "type": "server_error",
            "param": None,
            "code": "timeout",
        }
    }
    assert_serves_normally(fault_server)


def test_deadline_cancels_a_stalled_chat_completion(fault_server: FaultServer) -> None:
    with (
        fault_server.armed(fault_server.llm, Fault(after_tokens=2, stall=True)),
        pytest.raises(openai.APIStatusError) as error,
    ):
        fault_server.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, seed=1)
    assert error.value.status_code == 504 and error.value.code == "timeout"
    assert fault_server.llm.stalled == 1 and fault_server.llm.cancelled == 1
    assert_serves_normally(fault_server)


def test_a_model_failure_in_the_engine_worker_ends_the_stream_with_an_error_event(fault_server: FaultServer) -> None:
    """The TTS model raises inside the engine's worker thread after some steps: the speech stream ends with
    the engine's error (the worker's exception crossed the thread into `EngineError`)."""
    model = fault_server.tts.inner._model  # type: ignore[attr-defined]
    with broken(model, after=20, error=RuntimeError("injected model failure")) as breakage:
        events = sse_payloads(fault_server, speech_body())
    assert breakage.calls >= 20
    deltas, last = events[:-1], events[-1]
    assert deltas and all(event["type"] == "speech.audio.delta" for event in deltas)  # audio went out first
    assert set(last) == {"error"} and last["error"]["type"] == "server_error"
    message = last["error"]["message"]
    assert message.startswith("The engine failed: request tts-") and message.endswith("failed: injected model failure")
    assert_serves_normally(fault_server)


def test_a_model_failure_in_the_llm_worker_is_a_500_for_a_whole_reply(fault_server: FaultServer) -> None:
    model = fault_server.llm.inner._model  # type: ignore[attr-defined]
    with broken(model, after=3, error=RuntimeError("injected model failure")):
        response = httpx.post(
            f"{fault_server.live.url}/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 20, "seed": 1},
            timeout=60,
        )
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "injected model failure" in error["message"]
    assert_serves_normally(fault_server)


def test_a_snac_failure_mid_stream_is_a_generic_error_event(
    fault_server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    """SNAC's decoder raises on its third batch: the stream, its audio started, ends with the generic 500
    error (nothing of the internals on the wire) and the failure is logged with its traceback."""
    snac = fault_server.live.services.engines.snac
    caplog.set_level(logging.ERROR)
    with broken(snac.model.decoder.model[0], after=3, error=RuntimeError("secret internals")):
        events = sse_payloads(fault_server, speech_body())
    deltas, last = events[:-1], events[-1]
    assert deltas and base64.b64decode("".join(event["audio"] for event in deltas))
    assert last == {"error": {"message": GENERIC, "type": "server_error", "param": None, "code": None}}
    assert any(r.getMessage() == "SNAC decode failed" and r.exc_info for r in caplog.records)
    assert_serves_normally(fault_server)


def test_a_generic_failure_in_a_whole_reply_is_a_generic_500(fault_server: FaultServer) -> None:
    """Any exception that is not an engine's, in a non-streamed spoken chat reply: the generic 500 envelope."""
    snac = fault_server.live.services.engines.snac
    with broken(snac.model.decoder.model[0], after=1, error=ValueError("secret internals")):
        response = httpx.post(
            f"{fault_server.live.url}/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 20, "seed": 1,
                  "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
            timeout=60,
        )  # fmt: skip
    assert response.status_code == 500
    assert response.json() == {"error": {"message": GENERIC, "type": "server_error", "param": None, "code": None}}
    assert "x-should-retry" not in response.headers  # a 500 may be retried
    assert_serves_normally(fault_server)
