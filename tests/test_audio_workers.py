"""The bounded pool for input-audio CPU work, and that transcription's decoding, resampling and VAD run on it
(not on asyncio's default executor, whose many threads queue for the GIL: bench/audio_cpu.py)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oai_server.engines.asr import TranscriptPiece
from oai_server.serving.audio_workers import THREAD_PREFIX, AudioWorkers
from oai_server.serving.transcription import TranscriptionService
from oai_server.settings import Settings

UTTERANCE = Path(__file__).resolve().parents[1] / "bench" / "data" / "utterance_5s.flac"


async def test_at_most_workers_calls_run_at_once_each_on_a_named_worker_thread() -> None:
    workers = AudioWorkers(3)
    lock = threading.Lock()
    running, peak, names = 0, 0, set[str]()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            names.add(threading.current_thread().name)
        time.sleep(0.03)
        with lock:
            running -= 1

    try:
        await asyncio.gather(*(workers.run(work) for _ in range(12)))
    finally:
        workers.close()
    assert peak == 3 and len(names) == 3
    assert all(name.startswith(THREAD_PREFIX) for name in names)


async def test_a_closed_pool_takes_no_more_work() -> None:
    workers = AudioWorkers(1)
    assert await workers.run(sum, [1, 2]) == 3
    workers.close()
    with pytest.raises(RuntimeError):
        await workers.run(sum, [1, 2])


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError):
        AudioWorkers(0)


class RecordingWorkers(AudioWorkers):
    """The real pool, noting the name of every function it runs."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.ran: list[str] = []

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.ran.append(getattr(fn, "__name__", type(fn).__name__))
        return await super().run(fn, *args, **kwargs)


class EightKilohertz:
    """A recognizer at 8 kHz, so each piece is resampled before it is sent."""

    sample_rate = 8000
    languages = frozenset({"en"})

    async def transcribe(self, audio: np.ndarray, params: Any, request_id: str) -> AsyncIterator[TranscriptPiece]:
        yield TranscriptPiece(f" {len(audio)}", 1, "en")


async def test_transcription_decodes_resamples_and_runs_the_vad_on_its_audio_workers() -> None:
    workers = RecordingWorkers(2)
    service = TranscriptionService(Settings(), EightKilohertz(), workers=workers)  # type: ignore[arg-type]
    try:
        options = service.options(language="en")
        done = await service.transcribe(await service.prepare(await service.decode(UTTERANCE.read_bytes()), options))
        pcm = (np.sin(np.arange(24000) / 10) * 8000).astype("<i2").tobytes()
        await service.decode_pcm16(pcm, 24000, param="audio")
        await service.decode_base64(base64.b64encode(UTTERANCE.read_bytes()).decode(), param="input_audio")
    finally:
        service.close()
    assert done.text and int(done.text) > 0  # the 8 kHz recognizer got resampled samples
    assert workers.ran == ["decode_audio", "_plan", "resample", "decode_pcm16", "work"]
    with pytest.raises(RuntimeError):
        await service.decode(UTTERANCE.read_bytes())  # closed with the service
