"""Streaming turn detection: many audio streams stepped through Silero's streaming model in one batch.

`VadStream` holds one stream's detector state (OpenAI ``server_vad`` semantics, see `engines.vad`);
`StreamingVad` owns the model and steps every stream fed meanwhile as one batch in its own worker
thread. The only work on the event loop is framing the new samples (`VadStream.push`: a copy, and
a resample when the stream is not 16 kHz).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import Literal

import av
import numpy as np

from .vad import (
    CONTEXT_SAMPLES,
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    STATE_SHAPE,
    SileroVad,
    TurnDetector,
    VadParams,
    default_vad,
    frame_windows,
)

VadEventType = Literal["speech_started", "speech_paused", "speech_stopped"]
PAUSE_MS = 160
"""Silence inside a turn that makes a ``speech_paused`` (reported with the time the silence began)."""


@dataclass(frozen=True)
class VadEvent:
    """``speech_started`` (``audio_ms`` = OpenAI's audio_start_ms), ``speech_paused`` (silence inside a turn has
    lasted `PAUSE_MS` since ``audio_ms``: the turn stops there unless speech resumes within ``silence_duration_ms``) or
    ``speech_stopped`` (audio_end_ms = the last pause + ``silence_duration_ms``)."""

    type: VadEventType
    audio_ms: int


@dataclass(eq=False)
class VadStream:
    """One audio stream's detector state; the model is shared (`StreamingVad`).

    Audio goes in at ``sample_rate`` (pcm16 bytes or float32 samples) and is resampled to 16 kHz
    when needed; times are milliseconds of audio since the stream began.
    """

    params: VadParams = field(default_factory=VadParams)
    sample_rate: int = SAMPLE_RATE
    state: np.ndarray = field(default_factory=lambda: np.zeros(STATE_SHAPE, np.float32))
    frames_done: int = 0
    _pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    _context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT_SAMPLES, np.float32))
    _resampler: av.AudioResampler | None = None
    _detector: TurnDetector | None = None
    _inflight: asyncio.Future[list[VadEvent]] | None = None
    _turn_end_ms: int = 0
    _pause_frames: int = 0

    def __post_init__(self) -> None:
        self._detector = TurnDetector(self.params)
        # A pause is reported once its silence has lasted PAUSE_MS (the gaps between words rarely do), or never
        # when the turn ends sooner than that.
        self._pause_frames = min(-(-PAUSE_MS // FRAME_MS), -(-self.params.silence_duration_ms // FRAME_MS) - 1)
        if self.sample_rate != SAMPLE_RATE:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    @property
    def speaking(self) -> bool:
        """Whether a turn is open (speech started and not yet stopped)."""
        return self._detector is not None and self._detector.start is not None

    def push(self, audio: bytes | np.ndarray) -> np.ndarray:
        """Append audio; return the model windows (n, 576) of the whole frames now complete. Cheap."""
        samples = _as_float(audio)
        if self._resampler is not None and len(samples):
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            resampled = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
            samples = np.concatenate(resampled) if resampled else samples[:0]
        data = np.concatenate([self._pending, samples])
        whole = len(data) // FRAME_SAMPLES * FRAME_SAMPLES
        self._pending = data[whole:]
        windows, self._context = frame_windows(data[:whole], self._context)
        return windows

    def advance(self, probs: np.ndarray) -> list[VadEvent]:
        """Run the turn state machine over the next frames' probabilities; return its events."""
        assert self._detector is not None
        events: list[VadEvent] = []
        for prob in probs:
            index = self.frames_done
            opened = self._detector.start is None
            turn = self._detector.advance(index, float(prob))
            if opened and self._detector.start is not None:
                # The prefix never reaches back into the previous turn (its audio was committed with it).
                start_ms = max(index * FRAME_MS - self.params.prefix_padding_ms, self._turn_end_ms)
                events.append(VadEvent("speech_started", start_ms))
            silent_since = self._detector.silent_since
            if turn is None and silent_since is not None and index + 1 - silent_since == self._pause_frames:
                events.append(VadEvent("speech_paused", silent_since * FRAME_MS))
            if turn is not None:
                self._turn_end_ms = turn[1] * FRAME_MS + self.params.silence_duration_ms
                events.append(VadEvent("speech_stopped", self._turn_end_ms))
            self.frames_done += 1
        return events


def _as_float(audio: bytes | np.ndarray) -> np.ndarray:
    if isinstance(audio, (bytes, bytearray, memoryview)):
        if len(audio) % 2:
            raise ValueError("pcm16 audio must be a whole number of 2-byte samples")
        return np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
    return np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)


@dataclass
class _Job:
    stream: VadStream
    windows: np.ndarray
    future: asyncio.Future[list[VadEvent]]


class StreamingVad:
    """Turn detection for many streams at once: one model, one worker thread, batched steps.

    Each `feed` frames its audio on the loop and queues the frames; a drain task hands everything
    queued to the worker thread, which steps all those streams together (one ONNX call per frame
    position, B streams per call; 64 streams cost ~4 ms per 32 ms frame on one core) and runs
    each stream's state machine. Feeds of one stream are applied in order.
    """

    def __init__(self, model: SileroVad | None = None, *, max_batch: int = 256) -> None:
        self._model = model or default_vad()
        self._max_batch = max_batch
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        self._queue: list[_Job] = []
        self._drainer: asyncio.Task[None] | None = None

    def stream(self, params: VadParams = VadParams(), sample_rate: int = SAMPLE_RATE) -> VadStream:
        """A new stream's state (cheap: two small arrays)."""
        return VadStream(params, sample_rate)

    def feed_sync(self, stream: VadStream, audio: bytes | np.ndarray) -> list[VadEvent]:
        """Feed one stream on this thread (no batching). Blocking."""
        return self._run([(stream, stream.push(audio))])[0]

    async def feed(self, stream: VadStream, audio: bytes | np.ndarray) -> list[VadEvent]:
        """Feed audio; return the events it completes. The model runs in the worker thread."""
        previous = stream._inflight
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # a cancelled earlier feed still lands first
        windows = stream.push(audio)
        if not len(windows):
            return []
        future: asyncio.Future[list[VadEvent]] = asyncio.get_running_loop().create_future()
        stream._inflight = future
        self._queue.append(_Job(stream, windows, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Finish queued work and stop the worker thread."""
        if self._drainer is not None:
            await asyncio.wait([self._drainer])
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            jobs, self._queue = self._queue, []
            try:
                results = await loop.run_in_executor(self._executor, self._run, [(j.stream, j.windows) for j in jobs])
            except Exception as exc:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, events in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(events)

    def _run(self, work: list[tuple[VadStream, np.ndarray]]) -> list[list[VadEvent]]:
        """Step every stream through its windows, B streams per model call; then run the state machines."""
        probs = [np.zeros(len(windows), np.float32) for _, windows in work]
        depth = max((len(windows) for _, windows in work), default=0)
        for t in range(depth):
            rows = [i for i, (_, windows) in enumerate(work) if len(windows) > t]
            for start in range(0, len(rows), self._max_batch):
                batch = rows[start : start + self._max_batch]
                windows = np.stack([work[i][1][t] for i in batch])
                state = np.concatenate([work[i][0].state for i in batch], axis=1)
                out, new_state = self._model.step(windows, state)
                for k, i in enumerate(batch):
                    probs[i][t] = out[k]
                    work[i][0].state = new_state[:, k : k + 1]
        return [stream.advance(p) for (stream, _), p in zip(work, probs, strict=True)]
