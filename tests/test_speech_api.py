"""`/v1/audio/speech` through the real openai SDK, on the tiny models, over loopback."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import pytest

from oai_server.codec.orpheus import SAMPLES_PER_FRAME, TOKENS_PER_FRAME, speech_prompt
from oai_server.engines.demo import DemoModels
from oai_server.engines.loading import load_tokenizer
from oai_server.pipeline.segmenter import split_text

from .helpers import LiveServer, decode_audio, expected_samples, sse_json

TEXT = "Hello world. This is a short test of the speech endpoint."
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


def speech_sse(client: Any, text: str, fmt: str = "pcm", **extra: Any) -> tuple[bytes, dict[str, Any]]:
    """Audio bytes and usage of an SSE speech request."""
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format=fmt, stream_format="sse", extra_body=extra
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_json(response.iter_lines())
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert events[-1]["type"] == "speech.audio.done"
    assert all(e["type"] == "speech.audio.delta" for e in events[:-1])
    for piece in deltas[:-1]:
        assert len(base64.b64decode(piece["audio"])) % 3 == 0  # concatenable base64
    audio = base64.b64decode("".join(e["audio"] for e in deltas))
    return audio, events[-1]["usage"]


@pytest.mark.parametrize("fmt", list(CONTENT_TYPES))
def test_every_format_streams_and_decodes(client: Any, fmt: str) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=fmt, extra_body={"seed": 4}
    ) as response:
        assert response.headers["content-type"] == CONTENT_TYPES[fmt]
        chunks = list(response.iter_bytes())
    data = b"".join(chunks)
    assert data
    if fmt == "pcm":
        assert len(data) % (2 * SAMPLES_PER_FRAME) == 0
        return
    decoded = decode_audio(data, fmt)
    assert decoded.channels == 1
    assert decoded.rate == (48000 if fmt == "opus" else 24000)
    assert decoded.count >= SAMPLES_PER_FRAME * (decoded.rate // 24000)


@pytest.mark.parametrize("fmt", ["pcm", "wav", "flac", "mp3"])
def test_sse_stream_format(client: Any, fmt: str) -> None:
    audio, usage = speech_sse(client, TEXT, fmt, seed=7)
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    samples = expected_samples(usage["output_tokens"], 1)
    if fmt == "pcm":
        assert len(audio) == 2 * samples
    elif fmt in ("wav", "flac"):  # lossless: exact sample count
        assert decode_audio(audio, fmt).count == samples
    else:
        assert decode_audio(audio, fmt).count >= samples


def test_pcm_sample_count_is_exact(client: Any) -> None:
    audio, usage = speech_sse(client, "One sentence only.", "pcm", seed=3)
    assert usage["output_tokens"] % TOKENS_PER_FRAME == 0
    assert len(audio) == 2 * usage["output_tokens"] // TOKENS_PER_FRAME * SAMPLES_PER_FRAME


def test_long_input_is_split_and_joined_with_crossfades(client: Any) -> None:
    text = " ".join(f"Sentence number {i} is here to make the input long enough." for i in range(30))
    pieces = split_text(text, 300)
    assert len(pieces) > 3
    audio, usage = speech_sse(client, text, "pcm", seed=5)
    assert len(audio) == 2 * expected_samples(usage["output_tokens"], len(pieces))


def test_speed_changes_duration(client: Any) -> None:
    normal, _ = speech_sse(client, TEXT, "pcm", seed=11)
    fast, _ = speech_sse(client, TEXT, "pcm", seed=11, speed=2.0)
    assert len(fast) == pytest.approx(len(normal) / 2, rel=0.08)


def quiet_pcm(server: LiveServer, voice: Any, seed: int = 5) -> bytes:
    """The pcm of one seeded request on the quiet server (a pure function of the request)."""
    response = httpx.post(
        f"{server.url}/v1/audio/speech",
        json={"model": "tts-1", "input": "Hi there.", "voice": voice, "response_format": "pcm", "seed": seed},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.content
    return response.content


def test_voice_object_alias_and_case_speak_the_voice_they_name(quiet_server: LiveServer) -> None:
    """`nova` is Orpheus's `mia`, `{"id": ...}` and any case name the voice: the same seeded audio, byte for
    byte; another voice speaks differently."""
    mia = quiet_pcm(quiet_server, "mia")
    assert quiet_pcm(quiet_server, "mia") == mia  # the comparison below is meaningful: the audio is reproducible
    assert quiet_pcm(quiet_server, "nova") == mia
    assert quiet_pcm(quiet_server, {"id": "mia"}) == mia
    assert quiet_pcm(quiet_server, "MIA") == mia
    assert quiet_pcm(quiet_server, "LEO") == quiet_pcm(quiet_server, "leo") == quiet_pcm(quiet_server, "onyx")
    assert quiet_pcm(quiet_server, "tara") != mia


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"voice": "nobody"}, 400, "voice", "invalid_value"),
        ({"input": ""}, 400, "input", "invalid_value"),
        ({"input": "   "}, 400, "input", "invalid_value"),
        ({"input": "x" * 4097}, 400, "input", "string_above_max_length"),
        ({"model": "demo-gemma-2"}, 400, "model", "unsupported_value"),  # a chat model
        ({"response_format": "ogg"}, 400, "response_format", "invalid_value"),
        ({"speed": 5}, 400, "speed", "invalid_value"),
        ({"speed": 0.1}, 400, "speed", "invalid_value"),
        ({"stream_format": "chunks"}, 400, "stream_format", "invalid_value"),
        ({"input": None}, 400, "input", "missing_required_parameter"),
    ],
)
def test_bad_input_gets_the_envelope(
    live_server: Any, body: dict[str, Any], status: int, param: str, code: str
) -> None:
    request = {"model": "tts-1", "input": "Hello.", "voice": "alloy", **body}
    response = httpx.post(f"{live_server.url}/v1/audio/speech", json=request, timeout=30)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert response.headers.get("x-should-retry") == "false"


def test_sdk_raises_typed_errors(client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.models.retrieve("nope")
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hi")
    assert bad.value.param == "voice"


def test_malformed_json_and_unknown_route(live_server: Any) -> None:
    response = httpx.post(
        f"{live_server.url}/v1/audio/speech",
        content=b"{not json",
        timeout=10,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    for path in ("/v1/audio/speech", "/v1/chat/completions"):  # no body at all: curl -X POST without -d
        empty = httpx.post(f"{live_server.url}{path}", timeout=10)
        assert empty.status_code == 400 and empty.json()["error"] == {
            "message": "We could not parse the JSON body of your request: it is empty.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_json",
        }
    missing = httpx.get(f"{live_server.url}/v1/nothing", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = httpx.get(f"{live_server.url}/v1/audio/speech", timeout=10)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_emotion_tags_reach_the_speech_model(client: Any, demo_models: DemoModels) -> None:
    """The tag is in Orpheus's prompt: the prompt is exactly `tara: <the text, tag included>`."""
    tagged, stripped = "That is funny <laugh> really.", "That is funny really."
    tokenizer = load_tokenizer(demo_models.tts_dir)
    audio, usage = speech_sse(client, tagged, "pcm", seed=1)
    assert usage["output_tokens"] > 0 and len(audio) == 2 * expected_samples(usage["output_tokens"], 1)
    assert usage["input_tokens"] == len(speech_prompt(tokenizer, "tara", tagged))
    assert usage["input_tokens"] > len(speech_prompt(tokenizer, "tara", stripped))


def test_models_list_and_retrieve(client: Any, live_server: Any) -> None:
    ids = [m.id for m in client.models.list()]
    assert "tts-1" in ids and "demo-orpheus" in ids and "demo-gemma-2" in ids
    assert client.models.retrieve("tts-1").id == "tts-1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("org/unknown-model")
    raw = httpx.get(f"{live_server.url}/v1/models/org%2Funknown", timeout=10)
    assert raw.status_code == 404 and raw.json()["error"]["code"] == "model_not_found"


def test_metrics_record_first_audio_frames_and_rtf(client: Any, live_server: LiveServer) -> None:
    before = live_server.scrape()
    _, usage = speech_sse(client, TEXT, "pcm", seed=2)
    after = live_server.scrape()

    def grew(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    # Other tests may share the server, but not this test's time: nothing else runs meanwhile.
    assert grew('oai_time_to_first_audio_seconds_count{endpoint="speech"}') == 1
    assert grew('oai_real_time_factor_count{endpoint="speech"}') == 1
    assert grew("oai_audio_frames_total") == usage["output_tokens"] // TOKENS_PER_FRAME
