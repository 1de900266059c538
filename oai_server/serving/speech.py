"""Speech requests (`/v1/audio/speech` and the seed's `/tts`): text -> encoded audio, as typed outputs.

Long input is split into pieces Orpheus handles well (`split_text`), spoken in order as one
continuous stream with short crossfades, tempo-adjusted for `speed`, and encoded as it is
produced. `SpeechServing.stream` yields `EncodedAudio` pieces and a final `SpeechDone` with the
usage; the edge sends them raw or as `speech.audio.*` events. Encoding and tempo run in worker
threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import check_length, invalid
from ..pipeline.encode import INLINE_FORMATS, AudioEncoder, make_encoder
from ..pipeline.segmenter import split_text
from ..pipeline.speech import SpeechStats, SpeechSynthesizer, VoiceOptions, synthesize_segments
from ..pipeline.tempo import TempoFilter
from ..pipeline.voices import VoiceCatalog
from ..protocol.chat import SpeechRequest, voice_name
from ..settings import Settings
from .meter import StreamMeter
from .model_names import ModelNames

if TYPE_CHECKING:
    from ..metrics import Metrics


@dataclass(frozen=True)
class SpeechJob:
    """A validated speech request."""

    pieces: list[str]
    options: VoiceOptions
    response_format: str
    speed: float


@dataclass(frozen=True)
class EncodedAudio:
    """The next bytes of the encoded audio."""

    data: bytes


@dataclass(frozen=True)
class SpeechDone:
    """All audio was sent: the token usage."""

    input_tokens: int
    output_tokens: int


SpeechOutput = EncodedAudio | SpeechDone


async def iterate(items: Iterable[str]) -> AsyncIterator[str]:
    """An async iterator over a list (the segment source of a speech request)."""
    for item in items:
        yield item


class SpeechServing:
    """Speech requests on one `SpeechSynthesizer`."""

    def __init__(
        self,
        settings: Settings,
        synthesizer: SpeechSynthesizer,
        voices: VoiceCatalog,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.synthesizer = synthesizer
        self.voices = voices
        self.metrics = metrics
        self.names = ModelNames.from_settings(settings)

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Model ids listed for speech (others are served too, unless `strict_model_names`)."""
        return self.names.speech

    def job(self, text: str, options: VoiceOptions, response_format: str, speed: float, param: str) -> SpeechJob:
        """A job for `text` (raises the 400 for empty or too long text, naming `param`)."""
        check_length(text, self.settings.max_input_chars, param)
        words = " ".join(text.split())
        if not words:
            raise invalid(f"The {param} must not be empty.", param, "invalid_value")
        return SpeechJob(split_text(words, self.settings.tts_segment_chars), options, response_format, speed)

    def prepare(self, request: SpeechRequest) -> SpeechJob:
        """Validate a `/v1/audio/speech` request (raises `APIError`) before any audio is produced."""
        self.names.resolve(request.model, "speech")
        options = self.voices.options(
            voice_name(request.voice),
            temperature=request.temperature,
            top_p=request.top_p,
            repetition_penalty=request.repetition_penalty,
            seed=request.seed,
        )
        return self.job(request.input, options, request.response_format, request.speed, "input")

    async def _pcm(self, job: SpeechJob, stats: SpeechStats) -> AsyncGenerator[bytes, None]:
        tempo = TempoFilter(job.speed)
        events = synthesize_segments(
            self.synthesizer,
            iterate(job.pieces),
            job.options,
            depth=self.settings.tts_pipeline_depth,
            stats=stats,
        )
        try:
            async for event in events:
                if event.pcm:
                    out = event.pcm if tempo.passthrough else await asyncio.to_thread(tempo.process, event.pcm)
                    if out:
                        yield out
            tail = tempo.finish()
            if tail:
                yield tail
        finally:
            await events.aclose()

    async def _encoded(self, job: SpeechJob, stats: SpeechStats) -> AsyncGenerator[bytes, None]:
        encoder: AudioEncoder = make_encoder(job.response_format, streaming=True)
        lossless = job.response_format in INLINE_FORMATS
        source = self._pcm(job, stats)
        try:
            async for pcm in source:
                data = encoder.encode(pcm) if lossless else await asyncio.to_thread(encoder.encode, pcm)
                if data:
                    yield data
            tail = encoder.finish() if lossless else await asyncio.to_thread(encoder.finish)
            if tail:
                yield tail
        finally:
            await source.aclose()

    async def stream(self, job: SpeechJob) -> AsyncGenerator[SpeechOutput, None]:
        """The job's audio in its format as it is produced, then the usage."""
        stats = SpeechStats()
        meter = StreamMeter(self.metrics, "speech")
        audio = self._encoded(job, stats)
        try:
            async for data in audio:
                meter.first_audio(stats)
                yield EncodedAudio(data)
            meter.finish(stats.frames)
        finally:
            meter.close(("tts",))
            await audio.aclose()
        yield SpeechDone(stats.prompt_tokens, stats.audio_tokens)
