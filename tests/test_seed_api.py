"""The seed system's own endpoints (`/tts`, `/models`, `/chat`, `/health`) keep working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from oai_server.codec.orpheus import SAMPLES_PER_FRAME
from oai_server.engines.demo import DemoModels

from .conftest import LiveServer, demo_settings, start_server


def read_streamed_wav(data: bytes) -> tuple[int, int, int, bytes]:
    """(rate, channels, sample width, pcm) of a streamed WAV whose sizes are 0xFFFFFFFF."""
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert int.from_bytes(data[40:44], "little") == 0xFFFFFFFF  # size unknown while streaming
    channels = int.from_bytes(data[22:24], "little")
    rate = int.from_bytes(data[24:28], "little")
    width = int.from_bytes(data[34:36], "little") // 8
    assert data[36:40] == b"data"
    return rate, channels, width, data[44:]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_tts_returns_streaming_wav(live_server: LiveServer, method: str) -> None:
    params: dict[str, Any] = {"prompt": "Hello world", "voice": "zoe", "max_tokens": 140}
    if method == "GET":
        response = httpx.get(f"{live_server.url}/tts", params=params, timeout=60)
    else:
        response = httpx.post(f"{live_server.url}/tts", json=params, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    rate, channels, width, pcm = read_streamed_wav(response.content)
    assert (rate, channels, width) == (24000, 1, 2)
    assert 0 < len(pcm) <= 2 * SAMPLES_PER_FRAME * 140 // 7
    assert len(pcm) % (2 * SAMPLES_PER_FRAME) == 0  # one segment: whole frames


def test_tts_bad_input(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/tts", params={"prompt": "Hi", "voice": "nobody"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "voice"
    missing = httpx.get(f"{live_server.url}/tts", timeout=30)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_required_parameter"


def test_seed_input_limit_is_the_max_input_chars_setting(demo_cache: Path, demo_models: DemoModels) -> None:
    server = start_server(demo_settings(demo_cache, max_input_chars=20))
    try:
        for path, body in (("/tts", {"prompt": "x" * 21}), ("/chat", {"message": "y" * 21})):
            response = httpx.post(f"{server.url}{path}", json=body, timeout=30)
            param = next(iter(body))
            assert response.status_code == 400, response.text
            assert response.json()["error"] == {
                "message": f"The {param} is 21 characters; the maximum is 20.",
                "type": "invalid_request_error",
                "param": param,
                "code": "string_above_max_length",
            }
        ok = httpx.post(f"{server.url}/tts", json={"prompt": "z" * 20, "max_tokens": 14}, timeout=60)
        assert ok.status_code == 200 and ok.content[:4] == b"RIFF"
    finally:
        server.stop()


def test_seed_models_shape(live_server: LiveServer) -> None:
    body = httpx.get(f"{live_server.url}/models", timeout=10).json()
    assert body["llm"]["license"] and body["llm"]["loaded"] is True
    assert body["tts"]["license"].startswith("Apache 2.0") and body["demo"] is True  # honest demo facts (issue 13)
    assert {"tara", "zoe", "zac", "jess", "leo", "mia", "julia", "leah"} <= set(body["tts"]["voices"])


def test_seed_health_shape(live_server: LiveServer) -> None:
    body = httpx.get(f"{live_server.url}/health", timeout=10).json()
    assert body["status"] == "healthy"
    assert body["models"] == {"tts": True, "llm": True}
    assert body["features"]["text_to_speech"] and body["features"]["conversational_ai"]
    ready = httpx.get(f"{live_server.url}/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_seed_chat_returns_wav_and_text_stream(live_server: LiveServer) -> None:
    body = {
        "message": "Tell me a joke",
        "voice": "zoe",
        "history": [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello!"}],
        "max_tokens": 30,
    }
    audio = httpx.post(f"{live_server.url}/chat", json=body, timeout=60)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    rate, channels, width, pcm = read_streamed_wav(audio.content)
    assert (rate, channels, width) == (24000, 1, 2) and len(pcm) > 0
    text = httpx.post(f"{live_server.url}/chat", json={**body, "stream_text": True}, timeout=60)
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert text.text.strip()
