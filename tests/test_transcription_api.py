"""`/v1/audio/transcriptions` and `/translations` with real espeak-ng speech, over loopback.

Through the openai SDK (`client.audio.transcriptions.create`, `stream=True` too) and curl-like
httpx multipart forms, on the demo server (tiny random Whisper: its words are gibberish, so the
tests assert structure: where the speech is, what the VAD gates, formats, order, usage, errors).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from oai_server.codec.audio_input import DecodedAudio
from oai_server.engines.asr import TranscriptionParams, TranscriptPiece
from oai_server.engines.base import EngineError
from oai_server.serving.transcript_events import AudioPiece, TranscriptionJob, TranscriptTextDelta
from oai_server.serving.transcription import ENCODER_POSITIONS_PER_SECOND, TranscriptionService, translation_refusal
from oai_server.settings import Settings
from tests.speech_audio import ENCODINGS, Placed, compose, encode, to_pcm16

from .conftest import LiveServer, demo_settings, start_server

TOLERANCE_S = 0.15
RATE = 16000
SHORT: list[float | str] = [0.5, "Hello there, how are you today?", 0.6]
LONG_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back tomorrow morning after nine.",
    "Thank you very much for your kind help yesterday.",
    "The train to the city leaves at half past seven.",
    "We should plant more trees along the river bank.",
    "My sister bought a red bicycle last summer.",
    "Turn left at the bakery and walk two more blocks.",
    "The meeting was moved to Thursday afternoon.",
]
MAX_SECONDS = 20.0
"""`asr_max_audio_seconds` of the strict server."""


@pytest.fixture(scope="module")
def short() -> tuple[np.ndarray, list[Placed]]:
    return compose(SHORT)


@pytest.fixture(scope="module")
def short_wav(short: tuple[np.ndarray, list[Placed]]) -> bytes:
    return encode(short[0], RATE, "wav")


@pytest.fixture(scope="module")
def long_audio() -> tuple[np.ndarray, list[Placed]]:
    """Eight sentences with 1.5 s of silence between them: longer than one 30 s window."""
    layout: list[float | str] = [0.6]
    for sentence in LONG_SENTENCES:
        layout += [sentence, 1.5]
    audio, placed = compose(layout)
    assert len(audio) / RATE > 32
    return audio, placed


@pytest.fixture(scope="module")
def strict_server(demo_cache: Path, demo_models: Any) -> Iterator[LiveServer]:
    """A server with a short audio limit that refuses to translate."""
    server = start_server(demo_settings(demo_cache, asr_max_audio_seconds=MAX_SECONDS, asr_translation="no"))
    yield server
    server.stop()


def post(server: LiveServer, data: bytes | None, path: str = "transcriptions", **fields: Any) -> httpx.Response:
    """A curl-like multipart request (``-F file=@speech.wav -F model=whisper-1 ...``)."""
    form: dict[str, Any] = {"model": "whisper-1", **fields}
    files = {"file": ("speech.wav", data, "audio/wav")} if data is not None else None
    return httpx.post(f"{server.url}/v1/audio/{path}", data=form, files=files, timeout=120)


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON of each `data:` event."""
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    return [json.loads(b.removeprefix("data: ")) for b in blocks]


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def engine_batches(server: LiveServer) -> int:
    """Generate calls the demo Whisper has run so far."""
    return len(server.services.engines.asr.batch_sizes)  # type: ignore[union-attr]


def assert_near(value: float, expected: float) -> None:
    assert abs(value - expected) <= TOLERANCE_S, (value, expected)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", list(ENCODINGS))
def test_every_input_format_finds_the_speech(client: Any, short: tuple[np.ndarray, list[Placed]], fmt: str) -> None:
    audio, placed = short
    data = encode(audio, RATE, fmt)
    result = client.audio.transcriptions.create(
        model="whisper-1", file=(f"speech.{fmt}", data), language="en", response_format="verbose_json"
    )
    assert result.text.strip() and result.language == "english"
    assert abs(result.duration - len(audio) / RATE) < 0.1  # codec priming and padding stay small
    assert len(result.segments) == 1
    assert_near(result.segments[0].start, placed[0].start)
    assert_near(result.segments[0].end, placed[0].end)


def test_every_response_format_carries_the_same_transcript(client: Any, short_wav: bytes) -> None:
    file = ("speech.wav", short_wav)
    plain = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=file, language="en")
    text = plain.text
    assert text and text == text.strip()
    assert plain.usage.type == "tokens" and plain.usage.output_tokens > 0
    assert plain.usage.input_tokens == plain.usage.input_token_details.audio_tokens > 0
    assert plain.usage.total_tokens == plain.usage.input_tokens + plain.usage.output_tokens
    assert (
        client.audio.transcriptions.create(model="whisper-1", file=file, language="en", response_format="text") == text
    )
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=file, language="en", response_format="verbose_json", timestamp_granularities=["segment"]
    )
    assert verbose.text == text and [s.text.strip() for s in verbose.segments] == [text]
    segment = verbose.segments[0]
    assert segment.id == 0 and segment.temperature == 0.0 and 0.0 <= segment.no_speech_prob < 0.5
    assert segment.seek == (round(segment.start * RATE) - 4800) // 160  # prefix_padding_ms (300) before, in 10 ms
    assert verbose.usage.seconds == pytest.approx(verbose.duration)
    srt = client.audio.transcriptions.create(model="whisper-1", file=file, language="en", response_format="srt")
    number, timing, cue = srt.strip().split("\n")
    assert number == "1" and cue == text
    assert timing == f"{clock(segment.start, ',')} --> {clock(segment.end, ',')}"
    vtt = client.audio.transcriptions.create(model="whisper-1", file=file, language="en", response_format="vtt")
    assert vtt.split("\n") == ["WEBVTT", "", f"{clock(segment.start, '.')} --> {clock(segment.end, '.')}", text, ""]


def clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    return f"00:00:{millis // 1000:02d}{separator}{millis % 1000:03d}"


def test_streamed_deltas_add_up_to_the_done_text(client: Any, short_wav: bytes) -> None:
    whole = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", short_wav), language="en")
    events = list(
        client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("a.wav", short_wav), language="en", stream=True
        )
    )
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1) and len(events) > 2
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == done.text == whole.text
    assert done.usage.input_tokens == whole.usage.input_tokens
    assert done.usage.output_tokens == whole.usage.output_tokens


def test_curl_style_form_fields(live_server: LiveServer, short: tuple[np.ndarray, list[Placed]]) -> None:
    """Plain form fields as curl sends them: a JSON chunking strategy, SDK-style nested keys, a prompt."""
    audio, placed = short
    wav = encode(audio, RATE, "wav")
    as_json = post(
        live_server,
        wav,
        response_format="verbose_json",
        chunking_strategy=json.dumps({"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 100}),
        prompt="A friendly greeting.",
        temperature="0",
        **{"timestamp_granularities[]": "segment"},
    )
    assert as_json.status_code == 200, as_json.text
    body = as_json.json()
    first = body["segments"][0]
    assert body["task"] == "transcribe" and first["seek"] == (round(first["start"] * RATE) - 1600) // 160
    assert_near(first["start"], placed[0].start)
    nested = post(
        live_server,
        wav,
        response_format="verbose_json",
        **{"chunking_strategy[type]": "server_vad", "chunking_strategy[prefix_padding_ms]": "100"},
    )
    assert nested.status_code == 200 and nested.json()["segments"][0]["seek"] == body["segments"][0]["seek"]
    auto = post(live_server, wav, chunking_strategy="auto", stream="false")
    assert auto.status_code == 200 and auto.headers["content-type"] == "application/json"
    capped = post(live_server, wav, max_tokens="2").json()  # our extension: tokens per 30 s piece
    assert 1 <= capped["usage"]["output_tokens"] <= 2 < auto.json()["usage"]["output_tokens"]


# --------------------------------------------------------------------------- the VAD gate and long audio


@pytest.mark.parametrize("kind", ["zeros", "hiss"])
def test_silence_transcribes_to_nothing_without_the_model(live_server: LiveServer, kind: str) -> None:
    samples = np.zeros(3 * RATE, np.float32)
    if kind == "hiss":
        samples = np.random.default_rng(7).standard_normal(3 * RATE).astype(np.float32) * 0.005
    wav = encode(samples, RATE, "wav")
    before = engine_batches(live_server)
    plain = post(live_server, wav).json()
    assert plain["text"] == "" and plain["usage"]["output_tokens"] == 0 and plain["usage"]["input_tokens"] == 0
    verbose = post(live_server, wav, response_format="verbose_json").json()
    assert verbose["text"] == "" and verbose["segments"] == [] and verbose["duration"] == 3.0
    streamed = sse_events(post(live_server, wav, stream="true"))
    assert [e["type"] for e in streamed] == ["transcript.text.done"] and streamed[0]["text"] == ""
    assert post(live_server, wav, response_format="srt").text == ""
    assert engine_batches(live_server) == before  # Whisper never heard it


def test_long_audio_is_cut_at_silences_and_transcribed_in_order(
    live_server: LiveServer, long_audio: tuple[np.ndarray, list[Placed]]
) -> None:
    audio, placed = long_audio
    wav = encode(audio, RATE, "wav")
    verbose = post(live_server, wav, response_format="verbose_json", language="en").json()
    segments = verbose["segments"]
    assert [s["id"] for s in segments] == list(range(len(placed)))
    for segment, sentence in zip(segments, placed, strict=True):
        assert_near(segment["start"], sentence.start)
        assert_near(segment["end"], sentence.end)
    assert verbose["text"] == " ".join(s["text"].strip() for s in segments if s["text"].strip())

    # Packed: pieces of at most 30 s, cut only in silences, transcribed together; the text is the
    # pieces' transcripts in order, each exactly what the engine makes of that piece alone.
    plain = post(live_server, wav, language="en").json()
    services = live_server.services
    service = services.transcription

    async def plan() -> Any:
        return await service.prepare(await service.decode(wav), service.options(language="en"))

    job = asyncio.run_coroutine_threadsafe(plan(), live_server.loop).result(timeout=60)
    assert len(job.pieces) >= 2 and all(p.samples <= 30 * RATE for p in job.pieces)
    for piece in job.pieces:  # every cut lies in a silence between two sentences
        assert not any(s.start * RATE < piece.end < s.end * RATE for s in placed)

    async def alone(samples: np.ndarray, index: int) -> str:
        assert services.engines.asr is not None
        stream = services.engines.asr.transcribe(samples, TranscriptionParams(language="en"), f"alone-{index}")
        return "".join([p.text async for p in stream]).strip()

    pieces = [alone(job.audio.samples[p.start : p.end], p.index) for p in job.pieces]
    expected = [asyncio.run_coroutine_threadsafe(piece, live_server.loop).result(60) for piece in pieces]
    assert plain["text"] == " ".join(t for t in expected if t)
    audio_tokens = sum(math.ceil(p.samples * ENCODER_POSITIONS_PER_SECOND / RATE) for p in job.pieces)
    assert plain["usage"]["input_tokens"] == audio_tokens

    events = sse_events(post(live_server, wav, language="en", stream="true"))
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"] == plain["text"]


# --------------------------------------------------------------------------- translations


def test_translation_on_a_multilingual_model(client: Any, short_wav: bytes) -> None:
    translated = client.audio.translations.create(model="whisper-1", file=("speech.wav", short_wav))
    assert isinstance(translated.text, str) and translated.text
    verbose = client.audio.translations.create(
        model="whisper-1", file=("speech.wav", short_wav), response_format="verbose_json"
    )
    assert verbose.language == "english" and verbose.text == translated.text and len(verbose.segments) == 1
    assert (
        client.audio.translations.create(model="whisper-1", file=("speech.wav", short_wav), response_format="text")
        == translated.text
    )


def test_translation_refused_with_the_reason(strict_server: LiveServer, short_wav: bytes) -> None:
    error = error_of(post(strict_server, short_wav, "translations"))
    assert error["param"] == "model" and "without translation" in error["message"]


def test_turbo_and_english_only_models_cannot_translate() -> None:
    turbo = translation_refusal(Settings(asr_model_name="openai/whisper-large-v3-turbo"))
    assert turbo is not None and "large-v3-turbo" in turbo and "transcription data only" in turbo
    assert "English-only" in (translation_refusal(Settings(asr_model_name="openai/whisper-small.en")) or "")
    assert translation_refusal(Settings(asr_model_name="openai/whisper-large-v3")) is None
    assert translation_refusal(Settings(asr_model_name="/m/turbo-ft", asr_translation="yes")) is None


# --------------------------------------------------------------------------- errors


def test_bad_audio_is_a_400_naming_the_file(live_server: LiveServer, short: tuple[np.ndarray, list[Placed]]) -> None:
    undecodable = error_of(post(live_server, np.random.default_rng(1).bytes(4000)))
    assert (undecodable["param"], undecodable["code"]) == ("file", "invalid_audio")
    aiff = encode(short[0], RATE, "wav", muxer="aiff")
    assert error_of(post(live_server, aiff))["code"] == "unsupported_audio"
    assert error_of(post(live_server, b""))["code"] == "empty_audio"
    no_audio = error_of(post(live_server, b"not audio at all, just some text in a file\n" * 10))
    assert no_audio["param"] == "file" and no_audio["code"] in ("invalid_audio", "unsupported_audio")
    missing = error_of(post(live_server, None))
    assert (missing["param"], missing["code"]) == ("file", "missing_required_parameter")
    url = f"{live_server.url}/v1/audio/transcriptions"
    text_field = error_of(httpx.post(url, data={"model": "whisper-1", "file": "x"}))
    assert text_field["param"] == "file"


def test_size_and_duration_limits(strict_server: LiveServer, long_audio: tuple[np.ndarray, list[Placed]]) -> None:
    too_long = error_of(post(strict_server, encode(long_audio[0], RATE, "wav")))
    assert (too_long["param"], too_long["code"]) == ("file", "audio_too_long") and "20 seconds" in too_long["message"]
    big = b"RIFF" + bytes(25 * 1024 * 1024)  # over 25 MB but within the route's body limit
    too_large = error_of(post(strict_server, big))
    assert (too_large["param"], too_large["code"]) == ("file", "audio_too_large")
    huge = post(strict_server, bytes(27 * 1024 * 1024))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"language": "xx"}, "language", "unsupported_language"),
        ({"language": "klingon"}, "language", "unsupported_language"),
        ({"chunking_strategy": json.dumps({"type": "server_vad", "threshold": 2})}, "chunking_strategy", None),
        (
            {"chunking_strategy[type]": "server_vad", "chunking_strategy[silence_duration_ms]": "-5"},
            "chunking_strategy",
            None,
        ),
        ({"chunking_strategy": "semantic"}, "chunking_strategy", "invalid_value"),
        ({"chunking_strategy": "{not json"}, "chunking_strategy", "invalid_value"),
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities", "unsupported_value"),
        ({"include[]": "logprobs"}, "include", "unsupported_value"),
        ({"known_speaker_names[]": "agent"}, "known_speaker_names", "unsupported_value"),
        ({"response_format": "diarized_json"}, "response_format", "invalid_value"),
        ({"temperature": "2"}, "temperature", "invalid_value"),
        ({"temperature": "warm"}, "temperature", "invalid_value"),
        ({"stream": "maybe"}, "stream", "invalid_value"),
        ({"model": ""}, "model", "invalid_value"),
        ({"max_tokens": "0"}, "max_tokens", "invalid_value"),
    ],
)
def test_bad_fields_are_400s_naming_the_field(
    live_server: LiveServer, short_wav: bytes, fields: dict[str, str], param: str, code: str | None
) -> None:
    error = error_of(post(live_server, short_wav, **fields))
    assert error["param"] is not None and error["param"].startswith(param), error
    if code is not None:
        assert error["code"] == code, error
    if param == "timestamp_granularities":
        assert "cross-attention" in error["message"]


def test_unknown_model_is_404(live_server: LiveServer, short_wav: bytes, client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.audio.transcriptions.create(model="tts-1", file=("a.wav", short_wav))
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "model_not_found"
    no_model = httpx.post(
        f"{live_server.url}/v1/audio/transcriptions", files={"file": ("a.wav", short_wav)}, timeout=30
    )
    assert error_of(no_model)["code"] == "missing_required_parameter"
    models = {m.id for m in client.models.list()}
    assert {"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "demo-whisper"} <= models


def test_a_tiny_temperature_decodes_greedily(live_server: LiveServer, short_wav: bytes) -> None:
    """Found by the schema fuzzer: 4e-289 made Whisper's sampler divide by ~0 (a 500)."""
    greedy = post(live_server, short_wav, language="en").json()["text"]
    tiny = post(live_server, short_wav, language="en", temperature="4e-289")
    assert tiny.status_code == 200 and tiny.json()["text"] == greedy


def test_raw_pcm_of_a_realtime_buffer(live_server: LiveServer) -> None:
    """The seam a Realtime session uses: 24 kHz pcm16 in, a transcript of its one stretch of speech out."""
    audio, placed = compose(SHORT, rate=24000)
    service = live_server.services.transcription

    async def transcribe() -> Any:
        decoded = await service.decode_pcm16(to_pcm16(audio), 24000, param="audio")
        job = await service.prepare(decoded, service.options(language="en", timestamped=True))
        return decoded, await service.transcribe(job)

    decoded, done = asyncio.run_coroutine_threadsafe(transcribe(), live_server.loop).result(timeout=60)
    assert decoded.sample_rate == RATE and abs(decoded.duration - len(audio) / 24000) < 0.01
    assert done.text and done.language == "en" and len(done.segments) == 1
    assert_near(done.segments[0].start, placed[0].start)
    assert done.usage.output_tokens == done.segments[0].tokens > 0


class CancelledInside:
    """A recognizer whose request is cancelled inside the engine (e.g. aborted from elsewhere) mid-stream."""

    sample_rate = 16000
    languages = frozenset({"en"})

    async def transcribe(self, audio: np.ndarray, params: Any, request_id: str) -> AsyncIterator[TranscriptPiece]:
        yield TranscriptPiece(" Hello", 1, "en")
        raise asyncio.CancelledError()


async def test_a_piece_cancelled_inside_the_engine_fails_the_stream_instead_of_hanging() -> None:
    service = TranscriptionService(Settings(), CancelledInside())  # type: ignore[arg-type]
    audio = DecodedAudio(np.zeros(16000, np.float32), 16000, "pcm", "pcm_s16le")
    piece = AudioPiece(0, 0, 16000, 0, 16000, 1.0)
    job = TranscriptionJob(audio, service.options(language="en"), (piece,))
    texts: list[str] = []
    with pytest.raises(EngineError, match="cancelled"):
        async with asyncio.timeout(10):  # before the fix: the reader waited forever on the piece's queue
            async for event in service.stream(job):
                if isinstance(event, TranscriptTextDelta):
                    texts.append(event.text)
    assert texts == ["Hello"]


class BudgetRecorder:
    """A recognizer that records the token budget each piece got."""

    sample_rate = 16000
    languages = frozenset({"en"})

    def __init__(self) -> None:
        self.budgets: dict[str, int] = {}

    async def transcribe(self, audio: np.ndarray, params: Any, request_id: str) -> AsyncIterator[TranscriptPiece]:
        self.budgets[request_id.rsplit("-", 1)[1]] = params.max_tokens
        yield TranscriptPiece(" word", 1, "en")


@pytest.mark.parametrize(
    ("rate", "requested", "budgets"),
    [
        (20.0, None, {"0": 16 + 40, "1": 16 + 200, "2": 448}),  # 2 s, 10 s, 30 s pieces: 16 + 20 tokens a second
        (20.0, 30, {"0": 30, "1": 30, "2": 30}),  # a smaller max_tokens asked for wins
        (0.0, None, {"0": 448, "1": 448, "2": 448}),  # 0: only the model's context
    ],
)
async def test_each_piece_decodes_at_most_its_duration_worth_of_tokens(
    rate: float, requested: int | None, budgets: dict[str, int]
) -> None:
    """Whisper loops on noise until its 448-token context is full (random weights always do): each piece's
    budget follows its duration, so a 2 s turn cannot become a 448-token transcript."""
    recognizer = BudgetRecorder()
    service = TranscriptionService(Settings(asr_max_tokens_per_second=rate), recognizer)  # type: ignore[arg-type]
    audio = DecodedAudio(np.zeros(42 * 16000, np.float32), 16000, "pcm", "pcm_s16le")
    edges = [(0, 2 * 16000), (2 * 16000, 12 * 16000), (12 * 16000, 42 * 16000)]
    pieces = tuple(AudioPiece(i, a, b, a, b, 1.0) for i, (a, b) in enumerate(edges))
    job = TranscriptionJob(audio, service.options(language="en", max_tokens=requested), pieces)
    done = await service.transcribe(job)
    assert done.text == "word word word"
    assert recognizer.budgets == budgets
