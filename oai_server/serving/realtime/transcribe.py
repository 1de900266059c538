"""Committed user audio to text, through the shared transcription service (`serving.transcription`).

A Realtime turn is 24 kHz pcm16: the service resamples it to 16 kHz, gates it with the VAD (a
turn without speech, e.g. one committed by the idle timeout, gives an empty transcript and never
reaches Whisper, which invents text on silence), cuts it at silences into model windows, and
streams the text deltas as the engine decodes them.

Early transcription (`EarlyTranscriber`): server VAD decides a turn has ended only after
``silence_duration_ms`` (500 ms by default) of silence, and the reply cannot start before the user's words
are known. So a turn is transcribed once its silence has lasted 160 ms (the detector's pause; the gaps between
words are shorter), while the VAD waits out the rest; when the turn stops at that pause the transcript is ready
or under way, and when speech resumes the early one is dropped (a later pause starts another). The transcript
then covers the turn up to its pause, without the trailing silence the committed item also holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..transcript_events import TranscriptionOptions, TranscriptTextDelta
from ..transcription import TranscriptionService

INPUT_RATE = 24000


async def transcribe_pcm24(
    service: TranscriptionService, samples: np.ndarray, options: TranscriptionOptions
) -> AsyncIterator[str]:
    """Text deltas of 24 kHz int16 `samples`; raises `APIError` when speech recognition is off."""
    audio = await service.decode_pcm16(np.asarray(samples, dtype="<i2").tobytes(), INPUT_RATE, param="audio")
    job = await service.prepare(audio, options)
    events = service.stream(job)
    async with aclosing(events):
        async for event in events:
            if isinstance(event, TranscriptTextDelta) and event.text:
                yield event.text


async def turn_deltas(
    service: TranscriptionService,
    samples: np.ndarray,
    options: TranscriptionOptions,
    early: asyncio.Task[str | None] | None = None,
) -> AsyncIterator[str]:
    """The turn's text: the early transcript when it succeeded (one delta), else `transcribe_pcm24`'s deltas."""
    if early is not None:
        text = await early
        if text is not None:
            if text:
                yield text
            return
    deltas = transcribe_pcm24(service, samples, options)
    async with aclosing(deltas):  # type: ignore[type-var]
        async for delta in deltas:
            yield delta


@dataclass
class _Early:
    item_id: str
    pause_ms: int
    task: asyncio.Task[str | None]


Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class EarlyTranscriber:
    """At most one early transcription per session: of the open turn, from its latest pause."""

    def __init__(self, service: TranscriptionService, spawn: Spawn) -> None:
        self._service = service
        self._spawn = spawn
        self._current: _Early | None = None

    def paused(self, item_id: str, pause_ms: int, audio: np.ndarray, options: TranscriptionOptions) -> None:
        """Silence began in turn `item_id` at `pause_ms`: transcribe its `audio` so far (dropping an earlier one)."""
        self.cancel()
        task = self._spawn(self._text(audio, options), f"realtime-early-transcript-{item_id}")
        self._current = _Early(item_id, pause_ms, task)

    def take(self, item_id: str, pause_ms: int) -> asyncio.Task[str | None] | None:
        """The early transcription of the turn that stopped at `pause_ms`, if that is the one running; any other
        is cancelled. Its result is the text, or None if it failed (transcribe the turn again then)."""
        current, self._current = self._current, None
        if current is not None and (current.item_id, current.pause_ms) == (item_id, pause_ms):
            return current.task
        if current is not None:
            current.task.cancel()
        return None

    def cancel(self) -> None:
        """Drop the early transcription under way (speech started again, or the turn was cut another way)."""
        if self._current is not None:
            self._current.task.cancel()
            self._current = None

    async def _text(self, audio: np.ndarray, options: TranscriptionOptions) -> str | None:
        text = ""
        try:
            async for delta in transcribe_pcm24(self._service, audio, options):
                text += delta
        except Exception:  # the turn is transcribed again when it is committed, and that one reports errors
            return None
        return text
