"""Committed user audio to text, through the shared transcription service (`serving.transcription`).

A Realtime turn is 24 kHz pcm16: the service resamples it to 16 kHz, gates it with the VAD (a
turn without speech, e.g. one committed by the idle timeout, gives an empty transcript and never
reaches Whisper, which invents text on silence), cuts it at silences into model windows, and
streams the text deltas as the engine decodes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

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
