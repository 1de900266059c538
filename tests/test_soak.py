"""A bounded loopback soak: 1,000 mixed requests, 8 at a time, every reply checked whole.

A server of its own (the real app on the demo engines and SNAC, over loopback) gets a seeded
mix of cheap requests (model lists, health, bad inputs that must come back as 4xx envelopes)
and real work (short speech in every format, raw and as SSE; chat text and chat audio, streamed
and not). Every response must be complete and well formed: the expected status; audio that
decodes, with WAV headers whose sizes match the body; SSE ending with `speech.audio.done` or
`[DONE]`; JSON error envelopes. After a warm-up of the same mix, the process's RSS may grow by
at most `RSS_BOUND_MB`, and the server loop must end with the tasks it started with.

The figures (requests, time, RSS before and after, tasks) are printed; see them with `pytest -s`.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil
import pytest

from oai_server.engines.demo import DemoModels
from oai_server.pipeline.segmenter import split_text

from .helpers import (
    LiveServer,
    decode_audio,
    demo_settings,
    expected_samples,
    sse_data,
    sse_json,
    start_server,
    wait_until,
    wav_samples,
)

pytestmark = pytest.mark.slow

REQUESTS = 1000
WARM_UP = 150
CONCURRENCY = 8
SEED = 7
RSS_BOUND_MB = 150
MAX_BODY = 64 * 1024
TEXTS = ("Hello there.", "How are you today?", "This is a short test. It has two sentences.")
CHAT = [{"role": "user", "content": "Say something nice."}]
CHAT_MODEL = "gpt-4o-audio-preview"


@dataclass(frozen=True)
class Call:
    """One request of the mix and how to check its reply."""

    kind: str
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None
    """A body sent as is (malformed or oversize), instead of `body` as JSON."""


def envelope(response: httpx.Response, status: int, code: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code


def check_speech(response: httpx.Response, fmt: str) -> None:
    assert response.status_code == 200, response.text
    data = response.content
    if fmt == "pcm":
        assert data and len(data) % 2 == 0
    elif fmt == "wav":
        assert wav_samples(data, streamed=True) > 0
    else:
        decoded = decode_audio(data, fmt)
        assert decoded.channels == 1 and decoded.count > 0


def check_speech_sse(response: httpx.Response, text: str) -> None:
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_json(response.text)
    assert events[-1]["type"] == "speech.audio.done"
    assert all(event["type"] == "speech.audio.delta" for event in events[:-1])
    audio = base64.b64decode("".join(event["audio"] for event in events[:-1]))
    assert len(audio) == 2 * expected_samples(events[-1]["usage"]["output_tokens"], len(split_text(text, 300)))


def check_chat_stream(response: httpx.Response, audio: bool) -> None:
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] in ("stop", "length")
    if audio:  # the pcm is exactly the audio tokens' frames, less one crossfade per segment join
        deltas = [c["choices"][0]["delta"].get("audio") or {} for c in chunks if c["choices"]]
        pcm = base64.b64decode("".join(delta.get("data") or "" for delta in deltas))
        segments = sum(1 for delta in deltas if delta.get("transcript"))
        tokens = usage["completion_tokens_details"]["audio_tokens"]
        assert len(pcm) == (2 * expected_samples(tokens, segments) if tokens else 0)
    else:
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert bool(text) == (usage["completion_tokens"] > 0)


def check_chat(response: httpx.Response, audio: bool) -> None:
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["object"] == "chat.completion"
    message, usage = reply["choices"][0]["message"], reply["usage"]
    if audio:  # (a demo reply may be empty: the tiny random model can end its turn at once)
        samples = wav_samples(base64.b64decode(message["audio"]["data"]), streamed=False)
        assert (samples > 0) == (usage["completion_tokens_details"]["audio_tokens"] > 0)
    else:
        assert bool(message["content"]) == (usage["completion_tokens"] > 0)


def speech(fmt: str, text: str, sse: bool = False, seed: int = 0) -> dict[str, Any]:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt, "seed": seed}
    return {**body, "stream_format": "sse"} if sse else body


def chat(audio: bool, stream: bool, seed: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"model": CHAT_MODEL, "messages": CHAT, "max_tokens": 16, "stream": stream, "seed": seed}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if audio:
        body["modalities"] = ["text", "audio"]
        body["audio"] = {"voice": "alloy", "format": "pcm16" if stream else "wav"}
    return body


Check = Callable[[httpx.Response], None]


def mix(rng: random.Random, count: int) -> list[tuple[Call, Check]]:
    """`count` requests: about 70 % cheap (lists, health, bad inputs), 30 % real speech and chat.

    Real requests carry a seed from `rng`, so the whole mix, replies included, is the same every run.
    """
    cheap: list[tuple[Call, Check]] = [
        (Call("models", "GET", "/v1/models"), lambda r: assert_models(r)),
        (Call("model", "GET", "/v1/models/tts-1"), lambda r: assert_status_json(r, 200)),
        (Call("model-404", "GET", "/v1/models/org%2Fnope"), lambda r: envelope(r, 404, "model_not_found")),
        (Call("health", "GET", "/health"), lambda r: assert_status_json(r, 200)),
        (Call("ready", "GET", "/health/ready"), lambda r: assert_status_json(r, 200)),
        (Call("seed-models", "GET", "/models"), lambda r: assert_status_json(r, 200)),
        (
            Call("bad-voice", "POST", "/v1/audio/speech", {**speech("mp3", "Hi."), "voice": "nobody"}),
            lambda r: envelope(r, 400, "invalid_value"),
        ),
        (
            Call("bad-speed", "POST", "/v1/audio/speech", {**speech("mp3", "Hi."), "speed": 9}),
            lambda r: envelope(r, 400, "invalid_value"),
        ),
        (
            Call("bad-n", "POST", "/v1/chat/completions", {**chat(False, False), "n": 2}),
            lambda r: envelope(r, 400, "unsupported_value"),
        ),
        (
            Call("too-many-tokens", "POST", "/v1/chat/completions", {**chat(False, False), "max_tokens": 10**6}),
            lambda r: envelope(r, 400, "invalid_value"),
        ),
        (
            Call("bad-json", "POST", "/v1/chat/completions", raw=b'{"model": "x", "messages": ['),
            lambda r: envelope(r, 400, "invalid_json"),
        ),
        (
            Call("too-large", "POST", "/v1/audio/speech", raw=b"{" + b" " * MAX_BODY + b"}"),
            lambda r: envelope(r, 413, "request_too_large"),
        ),
        (Call("no-route", "GET", "/v1/nothing"), lambda r: envelope(r, 404, "not_found")),
        (Call("wrong-method", "GET", "/v1/audio/speech"), lambda r: envelope(r, 405, "method_not_allowed")),
    ]
    calls: list[tuple[Call, Check]] = []
    for _ in range(count):
        if rng.random() < 0.7:
            calls.append(rng.choice(cheap))
            continue
        text = rng.choice(TEXTS)
        fmt = rng.choice(["pcm", "wav", "mp3", "flac", "opus", "aac"])
        seed = rng.randrange(10_000)
        real: list[tuple[Call, Check]] = [
            (Call(f"speech-{fmt}", "POST", "/v1/audio/speech", speech(fmt, text, seed=seed)), make_speech_check(fmt)),
            (
                Call("speech-sse", "POST", "/v1/audio/speech", speech("pcm", text, sse=True, seed=seed)),
                make_sse_check(text),
            ),
            (
                Call("chat-text", "POST", "/v1/chat/completions", chat(False, False, seed)),
                lambda r: check_chat(r, False),
            ),
            (
                Call("chat-text-stream", "POST", "/v1/chat/completions", chat(False, True, seed)),
                lambda r: check_chat_stream(r, False),
            ),
            (
                Call("chat-audio", "POST", "/v1/chat/completions", chat(True, False, seed)),
                lambda r: check_chat(r, True),
            ),
            (
                Call("chat-audio-stream", "POST", "/v1/chat/completions", chat(True, True, seed)),
                lambda r: check_chat_stream(r, True),
            ),
            (
                Call("seed-tts", "GET", "/tts?" + urlencode({"prompt": text, "voice": "tara", "seed": seed})),
                make_speech_check("wav"),
            ),
        ]
        calls.append(rng.choice(real))
    return calls


def make_speech_check(fmt: str) -> Check:
    return lambda response: check_speech(response, fmt)


def make_sse_check(text: str) -> Check:
    return lambda response: check_speech_sse(response, text)


def assert_status_json(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert isinstance(response.json(), dict)


def assert_models(response: httpx.Response) -> None:
    assert_status_json(response, 200)
    ids = {card["id"] for card in response.json()["data"]}
    assert {"tts-1", CHAT_MODEL, "demo-orpheus", "demo-gemma-2"} <= ids


def send(client: httpx.Client, call: Call, check: Check) -> str:
    """Send one request, read it whole, check it; returns the kind (the error propagates)."""
    content = call.raw if call.raw is not None else (json.dumps(call.body).encode() if call.body is not None else None)
    headers = {"content-type": "application/json"} if content is not None else {}
    response = client.request(call.method, call.path, content=content, headers=headers)
    try:
        check(response)
    except AssertionError as exc:
        raise AssertionError(f"{call.kind}: {exc}") from exc
    return call.kind


def run(server: LiveServer, calls: list[tuple[Call, Check]]) -> Counter[str]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    with (
        httpx.Client(base_url=server.url, timeout=120, limits=limits) as client,
        ThreadPoolExecutor(CONCURRENCY) as pool,
    ):
        return Counter(pool.map(lambda item: send(client, *item), calls))


@pytest.fixture(scope="module")
def server(demo_cache: Path, demo_models: DemoModels) -> Iterator[LiveServer]:
    # Short audio (at most 10 SNAC frames, 0.85 s, per segment) keeps 1,000 requests within minutes on 2 cores.
    live = start_server(demo_settings(demo_cache, max_body_bytes=MAX_BODY, tts_max_tokens=70))
    yield live
    live.stop()


def test_soak_1000_mixed_requests(server: LiveServer) -> None:
    process = psutil.Process()
    rng = random.Random(SEED)
    run(server, mix(rng, WARM_UP))  # warm-up: every code path, allocator and thread pool touched once
    assert wait_until(lambda: server.services.admission.active == 0, 10)
    tasks_before = server.tasks()
    rss_before = process.memory_info().rss

    calls = mix(rng, REQUESTS)
    started = time.monotonic()
    kinds = run(server, calls)
    seconds = time.monotonic() - started

    assert sum(kinds.values()) == REQUESTS
    svc = server.services
    assert wait_until(
        lambda: (
            (svc.admission.active, svc.admission.queued, svc.engines.llm.active_requests()) == (0, 0, 0)
            and svc.engines.tts.active_requests() == 0
        ),
        10,
    )
    assert wait_until(lambda: server.tasks() == tasks_before, 10), (server.tasks(), tasks_before)
    rss_after = process.memory_info().rss
    growth_mb = (rss_after - rss_before) / 2**20
    real = sum(count for kind, count in kinds.items() if kind.startswith(("speech-", "chat-", "seed-tts")))
    print(
        f"\nsoak: {REQUESTS} requests ({real} speech/chat, {REQUESTS - real} cheap) in {seconds:.1f} s "
        f"({REQUESTS / seconds:.1f} req/s, {CONCURRENCY} at a time)\n"
        f"RSS {rss_before / 2**20:.0f} MB -> {rss_after / 2**20:.0f} MB (growth {growth_mb:+.1f} MB, "
        f"bound {RSS_BOUND_MB} MB); server loop tasks {sum(tasks_before.values())} -> "
        f"{sum(server.tasks().values())}\n"
        f"mix: {dict(sorted(kinds.items()))}"
    )
    assert real >= 250
    assert growth_mb < RSS_BOUND_MB
