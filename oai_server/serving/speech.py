"""`/v1/audio/speech` (and the seed's `/tts`): validated request -> encoded audio stream.

Long input is split into pieces Orpheus handles well (`split_text`), spoken in order as one
continuous stream with short crossfades, tempo-adjusted for `speed`, encoded as it is
produced, and sent raw or as `speech.audio.delta` / `speech.audio.done` events. Encoding and
tempo run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import check_length, invalid, model_not_found
from ..models import SpeechRequest, voice_name
from ..pipeline.encode import AudioEncoder, content_type_for, make_encoder
from ..pipeline.segmenter import split_text
from ..pipeline.speech import SpeechStats, SpeechSynthesizer, VoiceOptions, synthesize_segments
from ..pipeline.tempo import TempoFilter
from ..settings import Settings
from ..sse import b64_pieces, named_event
from ..voices import resolve_voice
from .streams import StreamMeter

if TYPE_CHECKING:
    from ..metrics import Metrics

SPEECH_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")


@dataclass(frozen=True)
class SpeechJob:
    """A validated speech request."""

    pieces: list[str]
    options: VoiceOptions
    response_format: str
    speed: float
    sse: bool

    @property
    def media_type(self) -> str:
        """Content type of the response body."""
        return "text/event-stream" if self.sse else content_type_for(self.response_format)


async def iterate(items: Iterable[str]) -> AsyncIterator[str]:
    """An async iterator over a list (the segment source of a speech request)."""
    for item in items:
        yield item


class SpeechServing:
    """Speech requests on one `SpeechSynthesizer`."""

    def __init__(self, settings: Settings, synthesizer: SpeechSynthesizer, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.synthesizer = synthesizer
        self.metrics = metrics

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Model ids accepted for speech."""
        return (self.settings.speech_model_id, *SPEECH_MODEL_ALIASES)

    def voice_options(
        self,
        voice: str | None,
        *,
        param: str = "voice",
        temperature: float | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
    ) -> VoiceOptions:
        """Sampling options for a voice, with server defaults for what was not given."""
        s = self.settings
        return VoiceOptions(
            voice=resolve_voice(voice, s.voices, s.default_voice, param),
            temperature=s.tts_temperature if temperature is None else temperature,
            top_p=s.tts_top_p if top_p is None else top_p,
            repetition_penalty=s.tts_repetition_penalty if repetition_penalty is None else repetition_penalty,
            seed=seed,
            max_tokens=max_tokens,
        )

    def prepare(self, request: SpeechRequest) -> SpeechJob:
        """Validate a request (raises `APIError`) before any audio is produced."""
        if request.model not in self.model_ids:
            raise model_not_found(request.model)
        text = " ".join(request.input.split())
        if not text:
            raise invalid("The input must not be empty.", "input", "invalid_value")
        check_length(request.input, self.settings.max_input_chars, "input")
        options = self.voice_options(
            voice_name(request.voice),
            temperature=request.temperature,
            top_p=request.top_p,
            repetition_penalty=request.repetition_penalty,
            seed=request.seed,
        )
        pieces = split_text(text, self.settings.tts_segment_chars)
        return SpeechJob(pieces, options, request.response_format, request.speed, request.stream_format == "sse")

    async def pcm(self, job: SpeechJob, stats: SpeechStats) -> AsyncGenerator[bytes, None]:
        """Raw 24 kHz s16le PCM of the job, tempo-adjusted, as it is produced."""
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

    async def encoded(self, job: SpeechJob, stats: SpeechStats) -> AsyncGenerator[bytes, None]:
        """The job's audio in its response format, as it is produced."""
        encoder: AudioEncoder = make_encoder(job.response_format, streaming=True)
        lossless = job.response_format in ("pcm", "wav")
        source = self.pcm(job, stats)
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

    async def body(self, job: SpeechJob) -> AsyncIterator[bytes]:
        """The HTTP body: raw audio bytes, or SSE events ending with `speech.audio.done`."""
        stats = SpeechStats()
        meter = StreamMeter(self.metrics, "speech")
        audio = self.encoded(job, stats)
        try:
            if not job.sse:
                async for data in audio:
                    meter.first_audio()
                    yield data
                meter.finish(stats.frames)
                return
            carry = bytearray()
            async for data in audio:
                meter.first_audio()
                for piece in b64_pieces(data, carry, final=False, align=3):
                    yield named_event("speech.audio.delta", {"type": "speech.audio.delta", "audio": piece})
            for piece in b64_pieces(b"", carry, final=True, align=3):
                yield named_event("speech.audio.delta", {"type": "speech.audio.delta", "audio": piece})
            usage = {
                "input_tokens": stats.prompt_tokens,
                "output_tokens": stats.audio_tokens,
                "total_tokens": stats.prompt_tokens + stats.audio_tokens,
            }
            meter.finish(stats.frames)
            yield named_event("speech.audio.done", {"type": "speech.audio.done", "usage": usage})
        finally:
            meter.close(("tts",))
            await audio.aclose()
