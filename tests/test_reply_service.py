"""The conversation core without HTTP: `ReplyService` on the real demo engines, and around a faulty one.

Event order, sample accounting, the sample -> text map, usage, the audio-id bookkeeping, aborts
reaching the engines when the stream is closed, and failures turned into `StreamFailed` by the
lifecycle guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from oai_server.codec.orpheus import SAMPLES_PER_FRAME, TOKENS_PER_FRAME
from oai_server.engines.bundle import Engines
from oai_server.engines.demo import DemoModels
from oai_server.engines.factory import open_engines, resolve_models
from oai_server.pipeline.chat_prompt import Turn
from oai_server.pipeline.speech import CROSSFADE_SAMPLES
from oai_server.serving.lifecycle import StreamFailed, guarded
from oai_server.serving.reply import Conversation, ReplyService, TextSampling
from oai_server.serving.reply_events import (
    AudioChunk,
    ReplyEvent,
    ReplyFinished,
    ReplyStarted,
    SegmentStarted,
    SpokenTranscript,
    TextDelta,
)
from oai_server.serving.services import build_services

from .fault_engine import Fault, FaultyEngine
from .helpers import demo_settings
from .helpers import eventually as settled

TURNS = [Turn("user", "Tell me about the weather today.")]


@pytest.fixture(scope="module")
async def engines(demo_cache: Path, demo_models: DemoModels) -> AsyncIterator[Engines]:
    """The real demo engines (tiny Gemma, tiny Orpheus, SNAC), the LLM and TTS wrapped to watch them."""
    settings = resolve_models(demo_settings(demo_cache))
    async with open_engines(settings) as opened:
        yield replace(opened, llm=FaultyEngine(opened.llm), tts=FaultyEngine(opened.tts))


@pytest.fixture
def service(engines: Engines, demo_cache: Path) -> ReplyService:
    """A reply service on those engines (a fresh audio store each test)."""
    return build_services(resolve_models(demo_settings(demo_cache)), engines).replies


def spoken(seed: int = 7, max_tokens: int = 40, **extra: Any) -> Conversation:
    """A seeded conversation answered with a voice."""
    from oai_server.pipeline.speech import VoiceOptions

    voice = VoiceOptions("tara", 0.6, 0.8, 1.1, seed=seed)
    return Conversation(TURNS, TextSampling(max_tokens=max_tokens, seed=seed), voice, **extra)


async def collect(service: ReplyService, conversation: Conversation) -> list[ReplyEvent]:
    """Every event of one reply."""
    prepared = await service.prepare(conversation)
    return [event async for event in service.stream(prepared)]


async def test_text_reply_events_and_usage(service: ReplyService) -> None:
    prepared = await service.prepare(Conversation(TURNS, TextSampling(max_tokens=12, seed=3)))
    events = [event async for event in service.stream(prepared)]
    started, *middle, finished = events
    assert isinstance(started, ReplyStarted) and started.audio_id is None
    assert isinstance(finished, ReplyFinished) and finished.expires_at is None and finished.transcript == ""
    assert middle and all(isinstance(event, TextDelta) and event.text for event in middle)
    assert finished.usage.prompt_tokens == len(prepared.prompt_ids)
    assert finished.usage.audio_tokens == 0 and finished.usage.frames == 0
    assert 1 <= finished.usage.text_tokens <= 12
    assert finished.finish_reason == ("length" if finished.usage.text_tokens == 12 else "stop")


async def test_spoken_reply_order_sample_accounting_and_transcript(service: ReplyService) -> None:
    events = await collect(service, spoken())
    started, finished = events[0], events[-1]
    assert isinstance(started, ReplyStarted) and started.audio_id and started.audio_id.startswith("audio_")
    assert isinstance(finished, ReplyFinished)
    body = events[1:-1]
    assert isinstance(body[0], SegmentStarted)  # audio never comes before its segment
    assert not any(isinstance(event, TextDelta) for event in body)  # spoken replies carry transcripts only
    segments: list[SegmentStarted] = []
    samples = 0
    for event in body:
        if isinstance(event, SegmentStarted):
            assert event.index == len(segments) and event.sample_offset == samples
            segments.append(event)
        else:
            assert isinstance(event, AudioChunk)
            assert event.segment == len(segments) - 1 and event.sample_offset == samples
            assert event.samples > 0
            samples += event.samples
    usage = finished.usage
    assert usage.audio_tokens == usage.frames * TOKENS_PER_FRAME and usage.frames > 0
    assert samples == usage.frames * SAMPLES_PER_FRAME - CROSSFADE_SAMPLES * (len(segments) - 1)
    assert finished.transcript == " ".join(segment.text for segment in segments)
    for segment in segments:
        assert finished.transcript[segment.transcript_start :].startswith(segment.text)
    assert await service.audio_store.get(started.audio_id) == finished.transcript
    assert finished.expires_at is not None


async def test_replies_are_reproducible_with_a_seed(service: ReplyService) -> None:
    first = await collect(service, spoken(seed=11))
    second = await collect(service, spoken(seed=11))

    def audio(events: list[ReplyEvent]) -> bytes:
        return b"".join(event.pcm for event in events if isinstance(event, AudioChunk))

    assert [type(e) for e in first] == [type(e) for e in second]
    assert len(audio(first)) == len(audio(second))
    texts = [e.text for e in first if isinstance(e, SegmentStarted)]
    assert texts == [e.text for e in second if isinstance(e, SegmentStarted)]


async def test_remember_audio_off_keeps_no_audio_id(service: ReplyService) -> None:
    events = await collect(service, spoken(remember_audio=False))
    started = events[0]
    assert isinstance(started, ReplyStarted) and started.audio_id
    assert await service.audio_store.get(started.audio_id) is None


async def test_closing_the_stream_aborts_every_engine_request(service: ReplyService, engines: Engines) -> None:
    llm, tts = engines.llm, engines.tts
    assert isinstance(llm, FaultyEngine) and isinstance(tts, FaultyEngine)
    prepared = await service.prepare(spoken(max_tokens=120))
    stream = service.stream(prepared)
    async for event in stream:
        if isinstance(event, AudioChunk):
            break
    assert llm.live or tts.live  # something is still generating mid-reply
    await stream.aclose()
    assert not llm.live and not tts.live  # every generate() was closed before aclose() returned
    # the worker threads notice the abort at their next step
    assert await settled(lambda: llm.active_requests() == 0 and tts.active_requests() == 0)


async def test_engine_failure_becomes_stream_failed_and_nothing_is_left(
    service: ReplyService, engines: Engines
) -> None:
    tts = engines.tts
    assert isinstance(tts, FaultyEngine)
    tts.fault = Fault(after_tokens=TOKENS_PER_FRAME * 3)
    try:
        prepared = await service.prepare(spoken())
        items = [item async for item in guarded(service.stream(prepared), deadline_seconds=30)]
    finally:
        tts.fault = None
    failed = items[-1]
    assert isinstance(failed, StreamFailed)
    assert failed.error.status == 500 and failed.error.type == "server_error"
    assert "injected fault" in failed.error.message
    assert not any(isinstance(item, ReplyFinished) for item in items)
    assert not engines.llm.live and not tts.live  # type: ignore[attr-defined]


async def test_deadline_cancels_a_stalled_reply(service: ReplyService, engines: Engines) -> None:
    llm = engines.llm
    assert isinstance(llm, FaultyEngine)
    llm.fault = Fault(after_tokens=2, stall=True)
    cancelled = llm.cancelled
    try:
        prepared = await service.prepare(Conversation(TURNS, TextSampling(max_tokens=30, seed=2)))
        items = [item async for item in guarded(service.stream(prepared), deadline_seconds=1.0)]
    finally:
        llm.fault = None
    failed = items[-1]
    assert isinstance(failed, StreamFailed) and failed.error.status == 504 and failed.error.code == "timeout"
    assert llm.cancelled == cancelled + 1 and not llm.live


async def test_nothing_to_speak_still_finishes(service: ReplyService, engines: Engines) -> None:
    """A reply whose text cleans to nothing (markdown only) has no segments, no audio, and finishes normally."""
    scripted = ScriptedLLM(engines.llm_tokenizer.encode("*** --- ***", add_special_tokens=False))
    quiet = ReplyService(service.settings, scripted, service.tokenizer, (), service.synthesizer, service.audio_store)
    events = await collect(quiet, spoken())
    assert [type(event) for event in events] == [ReplyStarted, ReplyFinished]
    finished = events[-1]
    assert isinstance(finished, ReplyFinished)
    assert finished.transcript == "" and finished.usage.audio_tokens == 0 and finished.usage.text_tokens > 0


class ScriptedLLM:
    """An LLM that answers every prompt with the same token ids (a unit-test stand-in)."""

    def __init__(self, token_ids: list[int]) -> None:
        from oai_server.engines.base import EngineInfo

        self.token_ids = token_ids
        self.info = EngineInfo("scripted", "scripted", 4096)

    async def generate(self, prompt_token_ids: Any, params: Any, request_id: str) -> AsyncIterator[list[int]]:
        for token in self.token_ids:
            await asyncio.sleep(0)
            yield [token]

    async def abort(self, request_id: str) -> None:
        return None

    async def check_health(self) -> None:
        return None

    def active_requests(self) -> int:
        return 0

    async def close(self) -> None:
        return None


def test_heard_text_maps_samples_to_words() -> None:
    transcript = SpokenTranscript()
    transcript.start_segment("Hello there.")
    transcript.add_audio(b"\0\0" * 24000)  # 1 s
    transcript.start_segment("How are you doing today?")
    transcript.add_audio(b"\0\0" * 48000)  # 2 s
    assert transcript.text == "Hello there. How are you doing today?"
    assert transcript.duration_ms == 3000
    assert transcript.heard_text(0) == ""
    assert transcript.heard_text(500) == "Hello"  # half of a two-word segment
    assert transcript.heard_text(1000) == "Hello there."
    assert transcript.heard_text(2000) == "Hello there. How are"  # half of five words, cut to a word
    assert transcript.heard_text(3000) == transcript.text
    assert transcript.heard_text(10_000) == transcript.text  # past the end: everything
    assert transcript.heard_text(-5) == ""


async def test_short_prompt_renders_on_the_loop_and_a_long_one_in_a_worker(
    service: ReplyService, hops: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread hop costs more than rendering a short conversation while the loop is busy; a long history
    still leaves the loop. Both give the same prompt as rendering directly."""
    from oai_server.serving import reply

    render = "asyncio:ReplyService.prepare.<locals>.render"
    short = await service.prepare(Conversation(TURNS, TextSampling(max_tokens=12)))
    assert hops == []
    words = "word " * (reply.INLINE_PROMPT_CHARS // 5)
    history = [Turn("user", words), Turn("assistant", "ok"), *TURNS]
    long = await service.prepare(Conversation(history, TextSampling(max_tokens=12)))
    assert hops == [render]
    monkeypatch.setattr(reply, "INLINE_PROMPT_CHARS", 10**9)  # the same history rendered on the loop
    assert (await service.prepare(Conversation(history, TextSampling(max_tokens=12)))).prompt_ids == long.prompt_ids
    assert len(long.prompt_ids) > len(short.prompt_ids) and hops == [render]
