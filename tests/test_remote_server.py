"""The server with ``--engine remote``: the factory's remote branch, end to end, against real upstreams.

`remote_server` (conftest) runs the app on `RemoteEngine`s pointed at two upstreams on loopback
(`tests/upstream_server.py`, vLLM's wire shape) that serve the demo Gemma and the demo Orpheus.
The speech, chat and disconnect tests of `test_speech_api` / `test_chat_api` also run through it
(`any_server`); here: it answers exactly like the in-process server, health and readiness follow
the upstreams, and an overloaded upstream is a retryable 503.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from .helpers import LiveServer, expected_samples, sdk_client, sse_json, wait_until
from .upstream_server import UpstreamFaults

MODEL = "gpt-4o-audio-preview"
MESSAGES = [{"role": "user", "content": "Tell me about the weather."}]


@pytest.fixture
def remote(remote_server: LiveServer) -> Iterator[LiveServer]:
    """The remote server with clean upstreams before and after each test."""
    for app in remote_server.upstream_apps.values():
        app.state.faults = UpstreamFaults()
        app.state.received.clear()
    yield remote_server
    for app in remote_server.upstream_apps.values():
        app.state.faults = UpstreamFaults()
    assert wait_until(remote_server.idle, 10)


def speech(server: LiveServer, seed: int) -> tuple[bytes, dict[str, Any]]:
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello there, remote world.", "seed": seed,
            "response_format": "pcm", "stream_format": "sse"}  # fmt: skip
    response = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=60)
    assert response.status_code == 200, response.text
    events = sse_json(response.text)
    assert events[-1]["type"] == "speech.audio.done"
    return base64.b64decode("".join(e["audio"] for e in events[:-1])), events[-1]["usage"]


def test_the_factory_built_remote_engines(remote: LiveServer) -> None:
    settings, engines = remote.services.settings, remote.services.engines
    assert (engines.llm.info.kind, engines.tts.info.kind) == ("remote-gemma", "remote-orpheus")
    assert engines.llm.info.details["base_url"] == settings.llm_remote_url
    assert engines.tts.info.details["base_url"] == settings.tts_remote_url
    assert (engines.llm.config.model, engines.tts.config.model) == ("gemma-demo", "orpheus-demo")
    health = httpx.get(f"{remote.url}/health", timeout=10).json()
    assert {role: health["engines"][role]["kind"] for role in ("llm", "tts")} == {
        "llm": "remote-gemma",
        "tts": "remote-orpheus",
    }


def test_remote_answers_exactly_like_in_process(remote: LiveServer, live_server: LiveServer) -> None:
    """Same engines behind HTTP, same seeds: the same text, the same usage, the same amount of audio."""
    replies = [
        sdk_client(server).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, seed=21)
        for server in (live_server, remote)
    ]
    assert replies[1].choices[0].message.content == replies[0].choices[0].message.content
    assert replies[1].usage == replies[0].usage
    (local_pcm, local_usage), (remote_pcm, remote_usage) = speech(live_server, 22), speech(remote, 22)
    assert remote_usage == local_usage and local_usage["output_tokens"] > 0
    assert len(remote_pcm) == len(local_pcm) == 2 * expected_samples(local_usage["output_tokens"], 1)
    # Both requests really went upstream, as token ids, with the seed.
    llm_body = remote.upstream_apps["llm"].state.received[-1]["body"]
    tts_body = remote.upstream_apps["tts"].state.received[-1]["body"]
    assert llm_body["seed"] == 21 and isinstance(llm_body["prompt"], list) and llm_body["model"] == "gemma-demo"
    assert tts_body["seed"] == 22 and tts_body["vllm_xargs"] == {"orpheus_audio_slots": 1}


def test_ready_follows_the_upstreams(remote: LiveServer) -> None:
    assert httpx.get(f"{remote.url}/health/ready", timeout=10).json() == {"status": "ready"}
    remote.upstream_apps["tts"].state.faults.unhealthy = True
    response = httpx.get(f"{remote.url}/health/ready", timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and set(body["failures"]) == {"tts"}
    assert "/health answered 503" in body["failures"]["tts"]
    remote.upstream_apps["tts"].state.faults.unhealthy = False
    assert httpx.get(f"{remote.url}/health/ready", timeout=10).status_code == 200


def test_an_overloaded_upstream_is_a_retryable_503(remote: LiveServer) -> None:
    """The upstream answers 503 to every attempt: a whole reply is a 503 envelope with `retry-after` (the SDK
    retries it); a streamed one, already 200, ends with the same error as its last event."""
    faults = remote.upstream_apps["llm"].state.faults
    attempts = remote.services.engines.llm.config.max_retries + 1
    faults.retry_after = "0"
    faults.statuses_before_stream = [503] * attempts
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "seed": 1}
    whole = httpx.post(f"{remote.url}/v1/chat/completions", json=body, timeout=60)
    assert whole.status_code == 503, whole.text
    assert whole.headers["retry-after"] == "1" and "x-should-retry" not in whole.headers
    error = whole.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "engine_overloaded")
    assert len(remote.upstream_apps["llm"].state.received) == attempts  # retried before giving up
    faults.statuses_before_stream = [503] * attempts
    with pytest.raises(openai.APIError) as raised:
        list(sdk_client(remote).chat.completions.create(**body, stream=True))
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "engine_overloaded"
    faults.statuses_before_stream = []
    reply = sdk_client(remote).chat.completions.create(**body)
    assert reply.choices[0].message.content  # and it serves again once the upstream does
