"""`/v1/chat/completions` with the openai SDK, LangChain and curl, on the tiny models over loopback.

The tests that take `any_server`/`any_client` run twice: on in-process engines and with
``--engine remote`` against two upstreams. Every request whose content a test relies on is seeded.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from oai_server.codec.orpheus import SAMPLES_PER_FRAME, TOKENS_PER_FRAME
from oai_server.engines.demo import DemoModels
from oai_server.engines.loading import load_tokenizer
from oai_server.pipeline.chat_prompt import Turn, build_chat_prompt
from oai_server.pipeline.speech import CROSSFADE_SAMPLES

from .helpers import (
    LiveServer,
    decode_audio,
    demo_settings,
    expected_samples,
    require_tool,
    sdk_client,
    sse_data,
    start_server,
    steady,
    wait_until,
    wav_samples,
)

MODEL = "gpt-4o-audio-preview"
MESSAGES = [{"role": "user", "content": "Tell me something nice."}]
AUDIO = {"voice": "alloy", "format": "pcm16"}


def audio_stream(client: Any, **extra: Any) -> list[Any]:
    """All chunks of a streamed audio reply."""
    stream = client.chat.completions.create(
        model=MODEL,
        messages=extra.pop("messages", MESSAGES),
        modalities=["text", "audio"],
        audio=AUDIO,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=extra.pop("max_tokens", 48),
        seed=extra.pop("seed", 1),
        **extra,
    )
    return list(stream)


def finish_reason(text_tokens: int, max_tokens: int) -> str:
    """What a reply of `text_tokens` under `max_tokens` (no stop string) must finish with."""
    return "length" if text_tokens >= max_tokens else "stop"


def test_streamed_audio_follows_the_contract(any_client: Any) -> None:
    chunks = audio_stream(any_client)
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1
    # 1. role chunk
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None
    body = chunks[1:]
    # 7./6. usage chunk last (choices: []), expires_at chunk before it, finish chunk before that
    usage_chunk, expiry_chunk, finish_chunk = body[-1], body[-2], body[-3]
    assert usage_chunk.choices == []
    usage = usage_chunk.usage
    assert all(c.usage is None for c in chunks[:-1])
    text_tokens = usage.completion_tokens_details.text_tokens
    assert finish_chunk.choices[0].finish_reason == finish_reason(text_tokens, 48)
    assert finish_chunk.choices[0].delta.audio is None
    expiry = expiry_chunk.choices[0].delta.audio
    assert expiry.expires_at > time.time() and expiry.id is None and expiry.data is None
    assert expiry_chunk.choices[0].finish_reason is None
    audio_chunks = body[:-3]
    deltas = [c.choices[0].delta.audio for c in audio_chunks]
    assert all(d is not None for d in deltas)
    # 2. the first audio delta carries the id and the first transcript; id appears once
    assert deltas[0].id.startswith("audio_") and deltas[0].transcript
    assert sum(1 for d in deltas if d.id) == 1
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.audio and c.choices[0].delta.audio.expires_at) == 1
    # 3. data pieces: each but the last is whole 6-byte groups; together they are the pcm
    pieces = [base64.b64decode(d.data) for d in deltas if d.data]
    assert pieces and all(len(p) % 6 == 0 for p in pieces[:-1])
    pcm = b"".join(pieces)
    segments = len([d.transcript for d in deltas if d.transcript is not None])
    audio_tokens = usage.completion_tokens_details.audio_tokens
    assert len(pcm) == 2 * expected_samples(audio_tokens, segments)
    assert usage.completion_tokens == text_tokens + audio_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # each transcript piece comes before the audio it describes
    first_data = next(i for i, d in enumerate(deltas) if d.data)
    assert first_data > 0 and deltas[0].transcript


def test_streamed_audio_as_dicts_for_old_clients(client: Any) -> None:
    """Clients before SDK 3.25 see `delta.audio` only through `model_dump()` (dicts)."""
    chunks = audio_stream(client, seed=2)
    dumped = [c.model_dump() for c in chunks]
    audio = [c["choices"][0]["delta"].get("audio") for c in dumped if c["choices"]]
    first = next(a for a in audio if a)
    assert isinstance(first, dict) and first["id"].startswith("audio_") and first["transcript"]


def test_text_only_streaming_and_not(any_client: Any) -> None:
    reply = any_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, seed=4)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content and reply.choices[0].message.audio is None
    tokens = reply.usage.completion_tokens
    assert tokens > 0 and reply.choices[0].finish_reason == finish_reason(tokens, 20)
    stream = any_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=20, seed=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content  # same seed, same reply
    assert chunks[-1].usage.completion_tokens == tokens


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "aac", "pcm16"])
def test_non_streaming_audio_in_every_format(any_client: Any, fmt: str) -> None:
    reply = any_client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        modalities=["text", "audio"],
        audio={"voice": "nova", "format": fmt},
        max_tokens=30,
        seed=5,
    )
    message = reply.choices[0].message
    assert message.content is None
    audio = message.audio
    assert audio.id.startswith("audio_") and audio.expires_at > time.time() and audio.transcript
    data = base64.b64decode(audio.data)
    details = reply.usage.completion_tokens_details
    assert details.audio_tokens > 0 and details.text_tokens > 0
    frames = details.audio_tokens // TOKENS_PER_FRAME
    if fmt in ("pcm16", "wav", "flac"):  # lossless: every frame, less one crossfade per segment join
        samples = len(data) // 2 if fmt == "pcm16" else decode_audio(data, fmt).count
        joins, rest = divmod(frames * SAMPLES_PER_FRAME - samples, CROSSFADE_SAMPLES)
        assert rest == 0 and 0 <= joins < frames, (samples, frames)
        return
    decoded = decode_audio(data, fmt)
    assert decoded.channels == 1 and decoded.rate == (48000 if fmt == "opus" else 24000)
    assert decoded.count >= (frames - 1) * SAMPLES_PER_FRAME * decoded.rate // 24000


def test_follow_up_turn_with_audio_id(client: Any, live_server: LiveServer, demo_models: DemoModels) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        max_tokens=20,
        seed=6,
    )
    audio = first.choices[0].message.audio
    follow = [*MESSAGES, {"role": "assistant", "audio": {"id": audio.id}}, {"role": "user", "content": "More."}]
    second = client.chat.completions.create(model=MODEL, messages=follow, max_tokens=10, seed=6)
    # The id stood for exactly its transcript in the prompt.
    turns = [Turn("user", MESSAGES[0]["content"]), Turn("assistant", audio.transcript), Turn("user", "More.")]
    prompt = build_chat_prompt(
        load_tokenizer(demo_models.llm_dir), turns, live_server.services.settings.system_prompt, max_prompt_tokens=10**6
    )
    assert audio.transcript and second.usage.prompt_tokens == len(prompt.token_ids)
    bad = [*MESSAGES, {"role": "assistant", "audio": {"id": "audio_unknown"}}, {"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=bad, max_tokens=10)
    assert error.value.param == "messages[1].audio" and error.value.code == "invalid_value"


def test_langchain_audio_and_follow_up(live_server: LiveServer) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{live_server.url}/v1",
        api_key="sk-test",
        max_retries=0,
        max_tokens=20,
        seed=7,
        model_kwargs={"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
    )
    first = llm.invoke([HumanMessage("Hello there")])
    audio = first.additional_kwargs["audio"]
    assert audio["id"].startswith("audio_") and base64.b64decode(audio["data"])[:4] == b"RIFF"
    assert audio["transcript"] and first.usage_metadata["output_token_details"]["audio"] > 0
    second = llm.invoke([HumanMessage("Hello there"), first, HumanMessage("And then?")])
    assert second.additional_kwargs["audio"]["id"].startswith("audio_")
    assert second.additional_kwargs["audio"]["id"] != audio["id"]  # the follow-up (its id resolved) was answered


def test_curl_reads_sse(live_server: LiveServer) -> None:
    curl = require_tool("curl", "apt-get install -y curl")
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "modalities": ["text", "audio"],
        "audio": AUDIO,
        "stream": True,
        "max_tokens": 20,
        "seed": 8,
    }
    out = subprocess.run(
        [curl, "-sN", f"{live_server.url}/v1/chat/completions", "-H", "content-type: application/json",
         "-d", json.dumps(body)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout  # fmt: skip
    events = [event for event in out.split("\n\n") if event]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(data) for data in sse_data(out) if data != "[DONE]"]
    assert len(payloads) == len(events) - 1  # every event is one data line
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    audio = [
        p["choices"][0]["delta"]["audio"] for p in payloads if p["choices"] and "audio" in p["choices"][0]["delta"]
    ]
    assert audio[0]["id"].startswith("audio_") and base64.b64decode("".join(a.get("data") or "" for a in audio))


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"n": 2}, "n", "unsupported_value"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_value"),
        ({"logprobs": True}, "logprobs", "unsupported_value"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
            "unsupported_value",
        ),
        (
            {"modalities": ["text", "audio"], "stream": True, "audio": {"voice": "alloy", "format": "wav"}},
            "audio.format",
            "unsupported_value",
        ),
        ({"modalities": ["text", "audio"]}, "audio", "missing_required_parameter"),
        (
            {"modalities": ["text", "audio"], "audio": {"voice": "nobody", "format": "wav"}},
            "audio.voice",
            "invalid_value",
        ),
        (
            {"audio": {"voice": "alloy", "format": "ogg"}, "modalities": ["text", "audio"]},
            "audio.format",
            "invalid_value",
        ),
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"messages": []}, "messages", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].type",
            "unsupported_value",
        ),
        ({"max_tokens": 10**6}, "max_tokens", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ],
)
def test_bad_chat_input(live_server: LiveServer, extra: dict[str, Any], param: str, code: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, **extra}
    response = httpx.post(f"{live_server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["code"] == code


def test_unknown_fields_and_nulls_are_ignored(live_server: LiveServer) -> None:
    """Unknown fields and explicit nulls change nothing: the reply equals the one to the plain request."""
    plain = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, "seed": 9}
    noisy = {
        **plain,
        "stream": False,
        "temperature": None,
        "stream_options": None,
        "metadata": {"a": 1},
        "store": False,
        "whatever": [1, 2],
    }
    replies = [httpx.post(f"{live_server.url}/v1/chat/completions", json=body, timeout=30) for body in (plain, noisy)]
    assert [r.status_code for r in replies] == [200, 200], replies[1].text
    expected, got = (r.json() for r in replies)
    assert got["choices"] == expected["choices"] and got["usage"] == expected["usage"]
    assert got["choices"][0]["message"]["content"]


def test_unknown_model_is_served_by_the_chat_model(client: Any) -> None:
    # Issue 13: unlisted ids are served (404 model_not_found only with --strict-model-names; tests/test_first_hour.py).
    reply = client.chat.completions.create(model="gpt-nope", messages=MESSAGES, max_tokens=4)
    assert reply.model == "demo-gemma-2"


def test_stop_string_cuts_the_reply_before_it(client: Any) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, seed=12)
    text = whole.choices[0].message.content
    assert len(text) >= 8, text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, seed=12, stop=[stop, "§never§"])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=40, seed=12, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[: text.index(stop)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_a_reply_with_nothing_to_speak_still_completes(client: Any) -> None:
    """A stop string at the very start leaves nothing to speak: the audio id and an empty transcript, no audio,
    a normal finish, streamed and whole."""
    text = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, seed=13).choices[0].message
    assert text.content
    stop = text.content[:2]
    chunks = audio_stream(client, max_tokens=20, seed=13, stop=[stop])
    deltas = [c.choices[0].delta.audio for c in chunks if c.choices and c.choices[0].delta.audio]
    assert deltas[0].id.startswith("audio_") and deltas[0].transcript == ""
    assert not any(d.data for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens_details.audio_tokens == 0
    whole = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=20, seed=13, stop=[stop],
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
    )  # fmt: skip
    audio = whole.choices[0].message.audio
    assert audio.transcript == "" and whole.usage.completion_tokens_details.audio_tokens == 0
    assert wav_samples(base64.b64decode(audio.data), streamed=False) == 0


def test_disconnect_aborts_llm_and_tts(any_server: LiveServer) -> None:
    """A client that hangs up mid-reply: both engines' requests end, generation stops, the aborts are counted."""
    server = any_server
    engines = server.services.engines
    before = server.scrape()
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "modalities": ["text", "audio"],
        "audio": AUDIO,
        "stream": True,
        "max_tokens": 400,
        "temperature": 1.0,
        "seed": 11,
    }
    steps, started = server.generated_tokens(), time.monotonic()
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
        seen = 0
        busy = False
        for line in response.iter_lines():
            seen += '"data"' in line
            # Segments generate one at a time, so between two of them only the LLM may be busy.
            busy = engines.tts.active_requests() >= 1 and engines.llm.active_requests() >= 1
            if seen >= 2 and busy:
                break
        assert busy, "the reply ended before both engines were busy at once"
        speed = (server.generated_tokens() - steps) / (time.monotonic() - started)
    assert wait_until(server.idle, 10), "a request is still in flight after the disconnect"
    # Watch for 20 decode steps at the speed measured while streaming: a worker still generating would show.
    unchanged, first, last = steady(server.generated_tokens, window=min(max(20 / speed, 0.2), 5.0))
    assert unchanged, f"generation went on after the disconnect: {first} -> {last} steps"
    after = server.scrape()
    for engine in ("llm", "tts"):
        series = f'oai_engine_aborts_total{{engine="{engine}"}}'
        assert after[series] - before.get(series, 0.0) == 1, engine


def test_metrics_count_chat_first_token(live_server: LiveServer, client: Any) -> None:
    series = "oai_time_to_first_token_seconds_count"
    before = live_server.scrape().get(series, 0.0)
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, seed=4)
    assert reply.usage.completion_tokens > 0
    assert live_server.scrape()[series] == before + 1


# --- a server with a small context and one stream slot -------------------------------------------------------


TIGHT_CONTEXT = 256


@pytest.fixture(scope="module")
def tight_server(demo_cache: Path, demo_models: DemoModels) -> Iterator[LiveServer]:
    """A server whose prompts must fit 256 tokens (no system prompt) and that admits one stream, queueing none."""
    server = start_server(
        demo_settings(
            demo_cache, llm_max_model_len=TIGHT_CONTEXT, system_prompt="", max_concurrent_streams=1, max_queued=0
        )
    )
    yield server
    server.stop()


def test_history_is_trimmed_to_fit_the_context(tight_server: LiveServer, demo_models: DemoModels) -> None:
    tokenizer = load_tokenizer(demo_models.llm_dir)
    story = "The quick brown fox jumps over the lazy dog while the sun sets behind the quiet hills."
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"{i}: {story}"}, {"role": "assistant", "content": story}]
    messages = [*history, {"role": "user", "content": "And then?"}]
    turns = [Turn(m["role"], m["content"]) for m in messages]
    max_tokens = 16
    whole = build_chat_prompt(tokenizer, turns, "", max_prompt_tokens=10**6)
    fitted = build_chat_prompt(tokenizer, turns, "", max_prompt_tokens=TIGHT_CONTEXT - max_tokens)
    assert len(whole.token_ids) > TIGHT_CONTEXT and fitted.dropped_turns > 0  # the test needs a trim
    reply = sdk_client(tight_server).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, seed=1
    )
    assert reply.usage.prompt_tokens == len(fitted.token_ids)
    assert reply.usage.completion_tokens > 0


def test_a_last_message_beyond_the_context_is_a_400(tight_server: LiveServer) -> None:
    long = " ".join(["Remember to drink water and take a walk outside."] * 40)  # ~440 tokens
    with pytest.raises(openai.BadRequestError) as error:
        sdk_client(tight_server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long}], max_tokens=16
        )
    assert error.value.code == "context_length_exceeded" and error.value.param == "messages"
    assert "maximum context length is 240 tokens" in error.value.message


def test_admission_answers_429_with_retry_after_when_full(tight_server: LiveServer) -> None:
    """The one slot is taken by a running stream and nothing may queue: the next request gets a 429 envelope
    with `retry-after` (which the SDK honours), and once the stream ends the slot is free again."""
    # ~13 segments of speech: seconds of generation, against the milliseconds the requests below take.
    speech = {"model": "tts-1", "voice": "alloy", "input": "Hello there. " * 300, "response_format": "pcm", "seed": 1}
    with httpx.stream("POST", f"{tight_server.url}/v1/audio/speech", json=speech, timeout=60) as running:
        assert running.status_code == 200
        audio = running.iter_bytes()  # kept: dropping the iterator would close the response (a disconnect)
        assert next(audio)
        assert tight_server.services.admission.active == 1
        refused = httpx.post(f"{tight_server.url}/v1/audio/speech", json=speech, timeout=30)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1" and "x-should-retry" not in refused.headers
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        with pytest.raises(openai.RateLimitError):
            sdk_client(tight_server).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert wait_until(tight_server.idle, 10)
    again = httpx.post(f"{tight_server.url}/v1/audio/speech", json={**speech, "input": "Hi."}, timeout=60)
    assert again.status_code == 200 and again.content
