"""Committed user audio to text, through the speech-recognition engine (`Engines.asr`).

A Realtime turn is 24 kHz pcm16; Whisper takes 16 kHz float32 windows of at most 30 s, so the
audio is resampled and, when longer than one window, cut at silences (`engines.vad`). Text
deltas stream out as the engine decodes them. This is the session's own small seam; it should
move onto the shared transcription service (`serving/transcription.py`) once that lands.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from ...codec.audio_input import resample
from ...engines.asr import SpeechRecognizer, TranscriptionParams, window_samples
from ...engines.vad import SAMPLE_RATE as VAD_RATE
from ...engines.vad import speech_regions, split_for_asr
from ...errors import APIError

INPUT_RATE = 24000


def _prepare(samples: np.ndarray, rate: int) -> list[np.ndarray]:
    audio = resample(np.asarray(samples, dtype=np.float32) / 32768.0, INPUT_RATE, rate)
    if len(audio) <= window_samples(rate):
        return [audio]
    speech = resample(audio, rate, VAD_RATE) if rate != VAD_RATE else audio
    scale = rate / VAD_RATE
    pieces = split_for_asr(speech_regions(speech), total_samples=len(speech))
    return [audio[round(p.start * scale) : round(p.end * scale)] for p in pieces]


async def transcribe_pcm24(
    asr: SpeechRecognizer | None, samples: np.ndarray, params: TranscriptionParams, request_id: str
) -> AsyncIterator[str]:
    """Text deltas of 24 kHz int16 `samples`; raises `APIError` when there is no recognizer."""
    if asr is None:
        raise APIError(503, "Speech recognition is disabled on this server.", type="server_error", code="asr_disabled")
    pieces = await asyncio.to_thread(_prepare, samples, asr.sample_rate)
    for index, piece in enumerate(pieces):
        if not len(piece):
            continue
        async for delta in asr.transcribe(piece, params, f"{request_id}-{index}"):
            if delta.text:
                yield delta.text
