"""`/v1/chat/completions` with the openai SDK, LangChain and curl, on the tiny models over loopback."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from typing import Any

import av
import httpx
import openai
import pytest

from oai_server.codec.orpheus import SAMPLES_PER_FRAME, TOKENS_PER_FRAME
from oai_server.pipeline.speech import CROSSFADE_SAMPLES

from .conftest import LiveServer, wait_until

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


def test_streamed_audio_follows_the_contract(client: Any) -> None:
    chunks = audio_stream(client)
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1
    # 1. role chunk
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None
    body = chunks[1:]
    # 7./6. usage chunk last (choices: []), expires_at chunk before it, finish chunk before that
    usage_chunk, expiry_chunk, finish_chunk = body[-1], body[-2], body[-3]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert finish_chunk.choices[0].finish_reason in ("stop", "length")
    assert finish_chunk.choices[0].delta.audio is None
    expiry = expiry_chunk.choices[0].delta.audio
    assert expiry.expires_at and expiry.id is None and expiry.data is None
    assert expiry_chunk.choices[0].finish_reason is None
    audio_chunks = body[:-3]
    deltas = [c.choices[0].delta.audio for c in audio_chunks]
    assert all(d is not None for d in deltas)
    # 2. the first audio delta carries the id and the first transcript; id appears once
    assert deltas[0].id and deltas[0].id.startswith("audio_") and deltas[0].transcript
    assert sum(1 for d in deltas if d.id) == 1
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.audio and c.choices[0].delta.audio.expires_at) == 1
    # 3. data pieces: each but the last is whole 6-byte groups; together they are the pcm
    pieces = [base64.b64decode(d.data) for d in deltas if d.data]
    assert pieces and all(len(p) % 6 == 0 for p in pieces[:-1])
    pcm = base64.b64decode("".join(d.data for d in deltas if d.data))
    transcripts = [d.transcript for d in deltas if d.transcript is not None]
    segments = len(transcripts)
    audio_tokens = usage_chunk.usage.completion_tokens_details.audio_tokens
    expected = audio_tokens // TOKENS_PER_FRAME * SAMPLES_PER_FRAME - CROSSFADE_SAMPLES * (segments - 1)
    assert len(pcm) == 2 * expected
    usage = usage_chunk.usage
    assert usage.completion_tokens == usage.completion_tokens_details.text_tokens + audio_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # each transcript piece comes before the audio it describes
    first_data = next(i for i, d in enumerate(deltas) if d.data)
    assert first_data > 0 and deltas[0].transcript


def test_streamed_audio_as_dicts_for_old_clients(client: Any) -> None:
    """Clients before SDK 3.25 see `delta.audio` only through `model_dump()` (dicts)."""
    chunks = audio_stream(client, seed=2)
    dumped = [c.model_dump() for c in chunks]
    audio = [c["choices"][0]["delta"].get("audio") for c in dumped if c["choices"]]
    assert isinstance(next(a for a in audio if a), dict)


def test_text_only_streaming_and_not(client: Any) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, seed=4)
    assert reply.object == "chat.completion"
    assert isinstance(reply.choices[0].message.content, str) and reply.choices[0].message.audio is None
    assert reply.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=20, seed=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content  # same seed, same reply
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "aac", "pcm16"])
def test_non_streaming_audio_in_every_format(client: Any, fmt: str) -> None:
    reply = client.chat.completions.create(
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
    assert audio.id.startswith("audio_") and audio.expires_at > 0 and isinstance(audio.transcript, str)
    data = base64.b64decode(audio.data)
    details = reply.usage.completion_tokens_details
    assert details.audio_tokens > 0 and details.text_tokens > 0
    if fmt == "pcm16":
        assert len(data) % 2 == 0 and len(data) > 0
        return
    container = av.open(io.BytesIO(data), format={"opus": "ogg", "aac": "aac"}.get(fmt))
    stream = container.streams.audio[0]
    assert stream.channels == 1 and sum(f.samples for f in container.decode(stream)) > 0


def test_follow_up_turn_with_audio_id(client: Any) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        max_tokens=20,
    )
    audio_id = first.choices[0].message.audio.id
    follow = [*MESSAGES, {"role": "assistant", "audio": {"id": audio_id}}, {"role": "user", "content": "More."}]
    second = client.chat.completions.create(model=MODEL, messages=follow, max_tokens=10)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    bad = [*MESSAGES, {"role": "assistant", "audio": {"id": "audio_unknown"}}, {"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=bad, max_tokens=10)
    assert error.value.param == "messages[1].audio"


def test_langchain_audio_and_follow_up(live_server: LiveServer) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{live_server.url}/v1",
        api_key="sk-test",
        max_retries=0,
        max_tokens=20,
        model_kwargs={"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
    )
    first = llm.invoke([HumanMessage("Hello there")])
    audio = first.additional_kwargs["audio"]
    assert audio["id"].startswith("audio_") and base64.b64decode(audio["data"])[:4] == b"RIFF"
    assert first.usage_metadata["output_token_details"]["audio"] > 0
    second = llm.invoke([HumanMessage("Hello there"), first, HumanMessage("And then?")])
    assert second.additional_kwargs["audio"]["id"] != audio["id"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_reads_sse(live_server: LiveServer) -> None:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "modalities": ["text", "audio"],
        "audio": AUDIO,
        "stream": True,
        "max_tokens": 20,
    }
    out = subprocess.run(
        [
            "curl",
            "-sN",
            f"{live_server.url}/v1/chat/completions",
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    events = [line for line in out.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert any("audio" in p["choices"][0]["delta"] for p in payloads if p["choices"])


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
    ],
)
def test_bad_chat_input(live_server: LiveServer, extra: dict[str, Any], param: str, code: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, **extra}
    response = httpx.post(f"{live_server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["code"] == code


def test_unknown_fields_and_nulls_are_ignored(live_server: LiveServer) -> None:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 5,
        "stream": False,
        "temperature": None,
        "stream_options": None,
        "metadata": {"a": 1},
        "store": False,
        "whatever": [1, 2],
    }
    response = httpx.post(f"{live_server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text


def test_unknown_model_is_served_by_the_chat_model(client: Any) -> None:
    # Issue 13: unlisted ids are served (404 model_not_found only with --strict-model-names; tests/test_first_hour.py).
    reply = client.chat.completions.create(model="gpt-nope", messages=MESSAGES, max_tokens=4)
    assert reply.model == "demo-gemma-2"


def test_disconnect_aborts_llm_and_tts(live_server: LiveServer) -> None:
    engines = live_server.services.engines
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
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", json=body, timeout=60) as response:
        seen = 0
        busy = False
        for line in response.iter_lines():
            seen += '"data"' in line
            # Segments generate one at a time, so between two of them only the LLM may be busy.
            busy = engines.tts.active_requests() >= 1 and engines.llm.active_requests() >= 1
            if seen >= 2 and busy:
                break
        assert busy, "the reply ended before both engines were busy at once"
    assert wait_until(lambda: engines.llm.active_requests() == 0 and engines.tts.active_requests() == 0, 5)
    generated = engines.tts.generated_tokens()  # type: ignore[attr-defined]
    assert wait_until(lambda: engines.tts.generated_tokens() == generated, 1.0)  # type: ignore[attr-defined]


def test_metrics_count_chat_first_token_and_aborts(live_server: LiveServer) -> None:
    text = httpx.get(f"{live_server.url}/metrics", timeout=10).text
    assert "oai_time_to_first_token_seconds_count" in text
    aborts = [line for line in text.splitlines() if line.startswith('oai_engine_aborts_total{engine="tts"}')]
    assert aborts and float(aborts[0].split()[-1]) >= 1  # from test_disconnect_aborts_llm_and_tts
