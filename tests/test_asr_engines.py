"""Speech recognizers on the tiny demo Whisper: the transformers backend, and the remote backend
against a real upstream (`tests.asr_upstream`) serving that same model over loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from oai_server.codec.audio_input import decode_audio
from oai_server.engines.asr import SpeechRecognizer, TranscriptionParams, TranscriptPiece
from oai_server.engines.asr_remote import RemoteTranscriber, RemoteTranscriberConfig, wav_bytes
from oai_server.engines.asr_transformers import TransformersWhisper
from oai_server.engines.base import EngineError
from oai_server.engines.demo_whisper import build_demo_whisper
from tests.asr_upstream import AsrFaults, create_asr_upstream
from tests.speech_audio import speak
from tests.upstream_server import serve_in_thread

EN = TranscriptionParams(language="en")


@pytest.fixture(scope="module")
def whisper_dir(demo_cache: Path) -> Path:
    return build_demo_whisper(demo_cache)


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return speak("The quick brown fox jumps over the lazy dog.")


@pytest.fixture(scope="module")
async def whisper(whisper_dir: Path) -> AsyncIterator[TransformersWhisper]:
    engine = TransformersWhisper(whisper_dir, device="cpu", max_batch=4, batch_window_ms=5)
    yield engine
    await engine.close()


@pytest.fixture(scope="module")
async def endless(whisper_dir: Path) -> AsyncIterator[TransformersWhisper]:
    """The demo Whisper with <|endoftext|> made unreachable: it decodes until max_tokens (a slow request)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    processor = WhisperProcessor.from_pretrained(whisper_dir)
    with torch.no_grad():
        model.get_decoder().embed_tokens.weight[processor.tokenizer.eos_token_id] = -10.0
    engine = TransformersWhisper(model, processor=processor, max_batch=1, max_concurrency=1)
    yield engine
    await engine.close()


async def collect(stream: AsyncIterator[TranscriptPiece]) -> list[TranscriptPiece]:
    return [piece async for piece in stream]


async def until(condition: Any, timeout: float = 10.0) -> None:
    """Wait on the event loop (not blocking it) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def text(pieces: list[TranscriptPiece]) -> str:
    return "".join(p.text for p in pieces)


# --------------------------------------------------------------------------- demo model


def test_demo_whisper_rebuilds_byte_identical(whisper_dir: Path, tmp_path: Path) -> None:
    rebuilt = build_demo_whisper(tmp_path)

    def digest(root: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}

    assert digest(rebuilt) == digest(whisper_dir)
    assert {"model.safetensors", "tokenizer.json", "generation_config.json", "processor_config.json"} <= set(
        digest(rebuilt)
    )


def test_demo_whisper_has_whispers_special_token_layout(whisper_dir: Path) -> None:
    from transformers import WhisperProcessor

    tokenizer = WhisperProcessor.from_pretrained(whisper_dir).tokenizer
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    order = ["<|startoftranscript|>", "<|en|>", "<|zh|>"]
    assert [tokenizer.convert_tokens_to_ids(t) for t in order] == [eot + 1, eot + 2, eot + 3]
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|translate|>", "<|transcribe|>", "<|notimestamps|>")]
    assert ids == sorted(ids) and tokenizer.convert_tokens_to_ids("<|0.00|>") == ids[-1] + 1
    assert tokenizer.convert_tokens_to_ids("<|30.00|>") == len(tokenizer) - 1
    tokenizer.set_prefix_tokens(language="de", task="transcribe")
    assert tokenizer.convert_ids_to_tokens(tokenizer.prefix_tokens) == [
        "<|startoftranscript|>",
        "<|de|>",
        "<|transcribe|>",
        "<|notimestamps|>",
    ]


# --------------------------------------------------------------------------- transformers


async def test_deltas_stream_while_the_request_decodes(endless: TransformersWhisper, voice: np.ndarray) -> None:
    stream = endless.transcribe(voice, TranscriptionParams(language="en", max_tokens=12), "deltas")
    first = await anext(stream)
    assert endless.active_requests() == 1  # the first delta came before the request finished
    rest = await collect(stream)
    pieces = [first, *rest]
    assert first.language == "en" and all(p.language is None for p in rest)
    assert sum(p.tokens for p in pieces) == 12
    assert all(p.tokens >= 1 for p in pieces)
    assert text(pieces).strip()
    assert endless.active_requests() == 0


async def test_language_detection_prompt_and_max_tokens(whisper: TransformersWhisper, voice: np.ndarray) -> None:
    detected = await collect(whisper.transcribe(voice, TranscriptionParams(), "detect"))
    assert detected[0].language in whisper.languages
    german = await collect(whisper.transcribe(voice, TranscriptionParams(language="de", max_tokens=3), "de"))
    assert german[0].language == "de"
    assert sum(p.tokens for p in german) <= 3
    long_prompt = " ".join(["quick brown fox"] * 300)  # ~900 tokens: only its last 223 are kept
    prompted = await collect(whisper.transcribe(voice, TranscriptionParams(language="en", prompt=long_prompt), "p"))
    assert prompted[0].language == "en"
    sampled = await collect(whisper.transcribe(voice, TranscriptionParams(language="en", temperature=0.8), "t"))
    assert sum(p.tokens for p in sampled) >= 1


async def test_concurrent_requests_are_decoded_in_one_batch(whisper: TransformersWhisper, whisper_dir: Path) -> None:
    sentences = ["The quick brown fox.", "Please call me back tomorrow.", "Thank you very much.", "Seven eight nine."]
    audios = [speak(s) for s in sentences]
    alone = [text(await collect(whisper.transcribe(a, EN, f"alone-{i}"))) for i, a in enumerate(audios)]
    # A wide window: the worker waits until all four are queued (and leaves as soon as the batch is full).
    engine = TransformersWhisper(whisper_dir, device="cpu", max_batch=4, batch_window_ms=60_000)
    try:
        together = await asyncio.gather(*(collect(engine.transcribe(a, EN, f"b-{i}")) for i, a in enumerate(audios)))
        assert engine.batch_sizes == [4]
        assert [text(p) for p in together] == alone
        languages = ["en", "de", "fr", "en"]
        mixed = await asyncio.gather(
            *(
                collect(engine.transcribe(a, TranscriptionParams(language=lang), f"m-{i}"))
                for i, (a, lang) in enumerate(zip(audios, languages, strict=True))
            )
        )
        assert engine.batch_sizes == [4, 4]
        assert [p[0].language for p in mixed if p] == [lang for lang, p in zip(languages, mixed, strict=True) if p]
        assert engine.active_requests() == 0
    finally:
        await engine.close()


async def test_closing_the_iterator_aborts_and_frees_the_slot(endless: TransformersWhisper, voice: np.ndarray) -> None:
    before = endless.generated_tokens()
    stream = endless.transcribe(voice, TranscriptionParams(language="en", max_tokens=440), "long")
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    # The one worker is free again: a short request completes (it would wait ~440 steps otherwise).
    short = await collect(endless.transcribe(voice, TranscriptionParams(language="en", max_tokens=4), "short"))
    assert sum(p.tokens for p in short) == 4
    assert endless.generated_tokens() - before < 100
    assert endless.active_requests() == 0


async def test_abort_by_id_and_a_waiting_request(endless: TransformersWhisper, voice: np.ndarray) -> None:
    running = endless.transcribe(voice, TranscriptionParams(language="en", max_tokens=440), "run")
    await anext(running)
    waiting = endless.transcribe(voice, TranscriptionParams(language="en", max_tokens=440), "wait")
    waiter = asyncio.create_task(collect(waiting))
    await until(lambda: endless.active_requests() == 2)
    await endless.abort("wait")  # still queued behind "run": dropped without decoding
    with pytest.raises(EngineError, match="aborted"):
        await waiter
    await endless.abort("run")
    with pytest.raises(EngineError, match="aborted"):
        await collect(running)
    assert endless.active_requests() == 0


async def test_close_aborts_in_flight_requests(whisper_dir: Path, voice: np.ndarray) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    processor = WhisperProcessor.from_pretrained(whisper_dir)
    with torch.no_grad():
        model.get_decoder().embed_tokens.weight[processor.tokenizer.eos_token_id] = -10.0
    engine = TransformersWhisper(model, processor=processor)
    stream = engine.transcribe(voice, TranscriptionParams(language="en", max_tokens=440), "closing")
    await anext(stream)
    await engine.close()
    with pytest.raises(EngineError, match="aborted"):
        await collect(stream)
    assert engine.active_requests() == 0
    with pytest.raises(EngineError, match="closed"):
        await collect(engine.transcribe(voice, EN, "after-close"))
    with pytest.raises(EngineError, match="closed"):
        await engine.check_health()


async def test_bad_requests_raise_engine_errors(whisper: TransformersWhisper, voice: np.ndarray) -> None:
    assert isinstance(whisper, SpeechRecognizer)
    await whisper.check_health()
    bad: list[tuple[np.ndarray, TranscriptionParams, str]] = [
        (np.zeros(0, np.float32), EN, "1 sample to 30 s"),
        (np.zeros(31 * 16000, np.float32), EN, "1 sample to 30 s"),
        (voice, TranscriptionParams(language="xx"), "not supported"),
        (voice, TranscriptionParams(language="en", max_tokens=0), "max_tokens"),
    ]
    for audio, params, message in bad:
        with pytest.raises(EngineError, match=message):
            await collect(whisper.transcribe(audio, params, "bad"))
    assert whisper.active_requests() == 0


# --------------------------------------------------------------------------- remote


@pytest.fixture(scope="module")
def upstream(whisper: TransformersWhisper) -> Iterator[tuple[str, Any]]:
    app = create_asr_upstream(whisper)
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture
def faults(upstream: tuple[str, Any]) -> Iterator[AsrFaults]:
    app = upstream[1]
    app.state.faults = AsrFaults()
    app.state.received.clear()
    yield app.state.faults
    app.state.faults = AsrFaults()


def remote(url: str, **overrides: Any) -> RemoteTranscriber:
    config: dict[str, Any] = {"base_url": url, "model": "whisper-test", "read_timeout": 10.0, "backoff_seconds": 0.01}
    config.update(overrides)
    return RemoteTranscriber(RemoteTranscriberConfig(**config))


@pytest.mark.parametrize("shape", ["openai", "vllm", "json"])
async def test_remote_matches_the_upstream_model(
    whisper: TransformersWhisper, upstream: tuple[str, Any], faults: AsrFaults, voice: np.ndarray, shape: str
) -> None:
    # What the upstream hears: the window as the 16-bit wav the client uploads.
    uploaded = decode_audio(wav_bytes(voice)).samples
    local = await collect(whisper.transcribe(uploaded, EN, "local"))
    faults.vllm_shape = shape == "vllm"
    client = remote(upstream[0], stream=shape != "json")
    try:
        await client.check_health()
        pieces = await collect(client.transcribe(voice, EN, f"remote-{shape}"))
    finally:
        await client.close()
    assert text(pieces) == text(local)
    assert sum(p.tokens for p in pieces) == sum(p.tokens for p in local)
    assert pieces[0].language == "en"
    if shape != "json":
        assert len(pieces) > 1
    form = upstream[1].state.received[-1]
    assert form["language"] == "en" and form["model"] == "whisper-test"
    assert form.get("stream") == (None if shape == "json" else "true")


async def test_remote_drops_stream_for_an_upstream_that_refuses_it(
    upstream: tuple[str, Any], faults: AsrFaults, voice: np.ndarray
) -> None:
    faults.rejects_stream = True
    client = remote(upstream[0])
    try:
        first = await collect(client.transcribe(voice, EN, "a"))
        second = await collect(client.transcribe(voice, EN, "b"))
    finally:
        await client.close()
    assert text(first) == text(second)
    assert [form.get("stream") for form in upstream[1].state.received] == ["true", None, None]


async def test_remote_retries_before_the_first_byte(
    upstream: tuple[str, Any], faults: AsrFaults, voice: np.ndarray
) -> None:
    faults.statuses_before_stream = [503, 502]
    client = remote(upstream[0])
    try:
        pieces = await collect(client.transcribe(voice, EN, "retried"))
        assert text(pieces)
        assert len(upstream[1].state.received) == 3
        faults.statuses_before_stream = [500]
        with pytest.raises(EngineError, match="upstream 500"):
            await collect(client.transcribe(voice, EN, "not-retried"))
        assert len(upstream[1].state.received) == 4
    finally:
        await client.close()


@pytest.mark.parametrize("stream", [True, False])
async def test_remote_stall_is_a_read_timeout(
    upstream: tuple[str, Any], faults: AsrFaults, voice: np.ndarray, stream: bool
) -> None:
    faults.stall_after_events = 1
    faults.stall_before_body = True
    client = remote(upstream[0], read_timeout=0.5, stream=stream)
    try:
        with pytest.raises(EngineError, match="stalled"):
            await collect(client.transcribe(voice, EN, "stall"))
        assert client.active_requests() == 0
    finally:
        await client.close()


async def test_remote_close_of_the_stream_aborts_upstream(endless: TransformersWhisper, voice: np.ndarray) -> None:
    # The upstream decodes until max_tokens (~440 steps) unless the client's leaving aborts it there.
    with serve_in_thread(create_asr_upstream(endless)) as url:
        client = remote(url)
        before = endless.generated_tokens()
        try:
            stream = client.transcribe(voice, TranscriptionParams(language="en", max_tokens=440), "leave")
            await anext(stream)
            assert client.active_requests() == 1
            await stream.aclose()  # type: ignore[attr-defined]
            assert client.active_requests() == 0
            await until(lambda: endless.active_requests() == 0, timeout=20)
            assert endless.generated_tokens() - before < 400
        finally:
            await client.close()


async def test_remote_translation_uses_the_translations_route(
    upstream: tuple[str, Any], faults: AsrFaults, voice: np.ndarray
) -> None:
    client = remote(upstream[0])
    try:
        pieces = await collect(client.transcribe(voice, TranscriptionParams(language="de", task="translate"), "tr"))
    finally:
        await client.close()
    assert sum(p.tokens for p in pieces) >= 1
    form = upstream[1].state.received[-1]
    assert form["path"] == "/v1/audio/translations" and "language" not in form
