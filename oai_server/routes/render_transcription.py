"""Transcripts on the wire: json, text, srt, vtt, verbose_json bodies, or `transcript.text.*` SSE events.

- ``json``: ``{"text", "usage"}`` with token usage (``audio_tokens``: Whisper's 50 encoder
  positions per second of audio the model heard); a translation is ``{"text"}`` as OpenAI's.
- ``verbose_json``: ``task``, ``language`` (Whisper's English name, ``"english"``), ``duration``,
  ``text``, ``segments`` (one per stretch of speech: ``start``/``end`` in seconds, ``seek``,
  ``temperature``, ``compression_ratio``, ``no_speech_prob`` from the VAD; ``tokens`` is empty and
  ``avg_logprob`` null: the engines do not report token ids or log probabilities) and duration usage.
- ``text``: the transcript; ``srt`` / ``vtt``: one cue per segment.
- ``stream=true``: ``data:`` events ``transcript.text.delta`` {delta} ... ``transcript.text.done``
  {text, usage}, no ``[DONE]``; a failure after the start is one error event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..engines.asr import language_name
from ..errors import APIError
from ..protocol.transcription_responses import (
    DurationUsage,
    TokenUsage,
    Transcription,
    TranscriptionSegment,
    TranscriptionVerbose,
)
from ..protocol.transcription_responses import TranscriptTextDelta as TextDeltaEvent
from ..protocol.transcription_responses import TranscriptTextDone as TextDoneEvent
from ..serving.transcript_events import (
    TranscriptDone,
    TranscriptionEvent,
    TranscriptionUsage,
    TranscriptSegment,
    TranscriptTextDelta,
)
from .sse import data_event, error_event

MEDIA_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}


def token_usage(usage: TranscriptionUsage) -> TokenUsage:
    """Usage billed by tokens (``json`` bodies and the ``transcript.text.done`` event)."""
    return TokenUsage.of(usage.audio_tokens, usage.output_tokens)


def _segment(segment: TranscriptSegment) -> TranscriptionSegment:
    return TranscriptionSegment(
        id=segment.id,
        seek=segment.seek,
        start=segment.start,
        end=segment.end,
        text=segment.text,
        tokens=[],
        temperature=segment.temperature,
        avg_logprob=None,
        compression_ratio=round(segment.compression_ratio, 4),
        no_speech_prob=segment.no_speech_prob,
    )


def verbose(done: TranscriptDone, task: str) -> TranscriptionVerbose:
    """The ``verbose_json`` body."""
    language = "english" if task == "translate" else language_name(done.language) or ""
    return TranscriptionVerbose(
        task=task,
        language=language,
        duration=round(done.duration, 3),
        text=done.text,
        segments=[_segment(segment) for segment in done.segments],
        usage=DurationUsage(seconds=round(done.usage.seconds, 3)),
    )


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def subtitles(segments: tuple[TranscriptSegment, ...], fmt: str) -> str:
    """SubRip (``srt``) or WebVTT (``vtt``) cues, one per segment with text."""
    separator = "," if fmt == "srt" else "."
    cues = []
    for number, segment in enumerate((s for s in segments if s.text.strip()), start=1):
        timing = f"{_clock(segment.start, separator)} --> {_clock(segment.end, separator)}"
        head = f"{number}\n" if fmt == "srt" else ""
        cues.append(f"{head}{timing}\n{segment.text.strip()}\n")
    body = "\n".join(cues)
    return f"WEBVTT\n\n{body}" if fmt == "vtt" else body


def transcription_response(done: TranscriptDone, response_format: str, task: str) -> Response:
    """The whole transcript in ``response_format``."""
    if response_format == "verbose_json":
        return JSONResponse(verbose(done, task).wire())
    if response_format == "json":
        if task == "transcribe":
            return JSONResponse(Transcription(text=done.text, usage=token_usage(done.usage)).wire())
        return JSONResponse(Transcription(text=done.text).wire())
    text = done.text if response_format == "text" else subtitles(done.segments, response_format)
    return PlainTextResponse(text, media_type=MEDIA_TYPES[response_format])


async def transcription_sse(events: AsyncIterator[TranscriptionEvent]) -> AsyncIterator[bytes]:
    """``transcript.text.delta`` events, then ``transcript.text.done`` with the text and usage."""
    async for event in events:
        if isinstance(event, TranscriptTextDelta):
            yield data_event(TextDeltaEvent(delta=event.text).wire())
        elif isinstance(event, TranscriptDone):
            yield data_event(TextDoneEvent(text=event.text, usage=token_usage(event.usage)).wire())


def transcription_failure(error: APIError) -> list[bytes]:
    """How a transcription stream ends after a failure: one error event."""
    return [error_event(error)]
