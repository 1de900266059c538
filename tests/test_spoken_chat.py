"""Spoken chat messages: `input_audio` content parts in `/v1/chat/completions`, end to end.

Real espeak-ng speech goes in as base64 wav/mp3 through the openai SDK and LangChain, on the
demo server. The demo models' words are gibberish, so the tests assert structure: the reply,
its contract, and that the prompt's audio tokens are exactly the chat model's tokens of the
transcript `/v1/audio/transcriptions` makes of the same audio.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.speech_audio import compose, encode

from .conftest import LiveServer, demo_settings, start_server

MODEL = "gpt-4o-audio-preview"
RATE = 16000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return compose([0.4, "What is the weather like in Paris today?", 0.5])[0]


@pytest.fixture(scope="module")
def wav(speech: np.ndarray) -> bytes:
    return encode(speech, RATE, "wav")


def audio_part(data: bytes, fmt: str = "wav") -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def spoken(data: bytes, fmt: str = "wav", text: str | None = "Please answer this:") -> list[dict[str, Any]]:
    """One user message: an optional text part, then the audio part."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts.append(audio_part(data, fmt))
    return [{"role": "user", "content": parts}]


def transcript_tokens(server: LiveServer, data: bytes, fmt: str = "wav") -> int:
    """Chat-model tokens of the transcript that /v1/audio/transcriptions makes of ``data``."""
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"file": (f"speech.{fmt}", data)},
        timeout=60,
    )
    text = response.json()["text"]
    assert text, "the demo Whisper transcribes speech to some words"
    tokenizer = server.services.engines.llm_tokenizer
    return len(tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_spoken_message_is_answered_with_audio_usage(
    client: Any, live_server: LiveServer, speech: np.ndarray, fmt: str
) -> None:
    data = encode(speech, RATE, fmt)
    reply = client.chat.completions.create(model=MODEL, messages=spoken(data, fmt), max_tokens=12, seed=3)
    assert isinstance(reply.choices[0].message.content, str)
    details = reply.usage.prompt_tokens_details
    assert details.audio_tokens == transcript_tokens(live_server, data, fmt) > 0
    assert details.text_tokens == reply.usage.prompt_tokens - details.audio_tokens > 0
    typed = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Please answer this:"}], max_tokens=12, seed=3
    )
    assert typed.usage.prompt_tokens_details.audio_tokens == 0


def test_spoken_message_streams_a_spoken_reply(client: Any, live_server: LiveServer, wav: bytes) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=spoken(wav, text=None),
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "pcm16"},
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=24,
            seed=1,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.audio for c in chunks if c.choices and c.choices[0].delta.audio]
    assert deltas[0].id.startswith("audio_") and any(d.data for d in deltas)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens_details.audio_tokens > 0
    assert usage.prompt_tokens_details.audio_tokens == transcript_tokens(live_server, wav) > 0


def test_spoken_message_text_stream_and_history(client: Any, wav: bytes) -> None:
    """Streamed text output; the audio stays in the history of the next turn (OpenAI's way)."""
    first = spoken(wav)
    stream = client.chat.completions.create(
        model=MODEL, messages=first, max_tokens=12, seed=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.prompt_tokens_details.audio_tokens > 0
    follow_up = [*first, {"role": "assistant", "content": text}, {"role": "user", "content": "And tomorrow?"}]
    second = client.chat.completions.create(model=MODEL, messages=follow_up, max_tokens=8, seed=5)
    assert second.usage.prompt_tokens_details.audio_tokens == chunks[-1].usage.prompt_tokens_details.audio_tokens


def test_silence_adds_no_audio_tokens(client: Any) -> None:
    silence = encode(np.zeros(2 * RATE, np.float32), RATE, "wav")
    reply = client.chat.completions.create(model=MODEL, messages=spoken(silence), max_tokens=6, seed=2)
    assert reply.usage.prompt_tokens_details.audio_tokens == 0


def test_langchain_spoken_message(live_server: LiveServer, wav: bytes) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=f"{live_server.url}/v1", api_key="sk-test", max_retries=0, max_tokens=10)
    message = HumanMessage(content=[{"type": "text", "text": "Listen:"}, audio_part(wav)])
    reply = llm.invoke([message], seed=4)
    assert isinstance(reply.content, str)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_token_details"]["audio"] == transcript_tokens(live_server, wav)
    streamed = list(llm.stream([message], seed=4, stream_usage=True))
    assert "".join(str(c.content) for c in streamed) == reply.content


# --------------------------------------------------------------------------- errors


def bad(client: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    body = raised.value.body
    assert isinstance(body, dict)
    return body


def test_bad_audio_parts_are_400s_pointing_at_the_part(client: Any, wav: bytes) -> None:
    garbage = bad(client, spoken(np.random.default_rng(2).bytes(3000)))
    assert (garbage["param"], garbage["code"]) == ("messages[0].content[1].input_audio.data", "invalid_audio")
    not_base64 = spoken(wav)
    not_base64[0]["content"][1]["input_audio"]["data"] = "@@not base64@@"
    assert bad(client, not_base64)["code"] == "invalid_base64"
    flac = spoken(wav, "flac")
    error = bad(client, flac)
    assert (error["param"], error["code"]) == ("messages[0].content[1].input_audio.format", "invalid_value")
    no_data = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"format": "wav"}}]}]
    assert bad(client, no_data)["param"] == "messages[0].content[0].input_audio.data"
    empty_part = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    empty = bad(client, [{"role": "user", "content": [empty_part]}])
    assert empty["code"] == "missing_required_parameter"
    assistant: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [audio_part(wav)]},
        {"role": "user", "content": "Well?"},
    ]
    assert bad(client, assistant)["param"] == "messages[1].content[0].type"
    # The second message's part is the bad one: the param says so.
    two: list[dict[str, Any]] = [*spoken(wav), {"role": "assistant", "content": "ok"}, *spoken(b"RIFF", text=None)]
    assert bad(client, two)["param"] == "messages[2].content[0].input_audio.data"


@pytest.fixture(scope="module")
def short_limit_server(demo_cache: Path, demo_models: Any) -> Iterator[LiveServer]:
    server = start_server(demo_settings(demo_cache, asr_max_audio_seconds=1.0))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def no_asr_server(demo_cache: Path, demo_models: Any) -> Iterator[LiveServer]:
    server = start_server(demo_settings(demo_cache, asr=False))
    yield server
    server.stop()


def test_oversize_audio_is_a_400_pointing_at_the_part(short_limit_server: LiveServer, wav: bytes) -> None:
    response = httpx.post(
        f"{short_limit_server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": spoken(wav), "max_tokens": 4},
        timeout=60,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages[0].content[1].input_audio.data", "audio_too_long")


def test_without_speech_recognition_audio_is_refused(no_asr_server: LiveServer, wav: bytes) -> None:
    response = httpx.post(
        f"{no_asr_server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": spoken(wav), "max_tokens": 4},
        timeout=60,
    )
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "messages[0].content[1]" and "--no-asr" in error["message"]
    models = httpx.get(f"{no_asr_server.url}/v1/models", timeout=10).json()["data"]
    assert "whisper-1" not in {m["id"] for m in models}
    upload = httpx.post(
        f"{no_asr_server.url}/v1/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"file": ("a.wav", wav)},
        timeout=60,
    )
    assert upload.status_code == 404 and "--no-asr" in upload.json()["error"]["message"]
