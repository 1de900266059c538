"""A session's input audio: formats, the input audio buffer, and server-VAD turn detection.

Audio arrives as base64 in the session's input format (`audio/pcm` 24 kHz, or G.711 μ-law /
A-law at 8 kHz, upsampled to 24 kHz) and is kept as 24 kHz int16, addressed by its absolute
sample offset since the session began, so `audio_start_ms` / `audio_end_ms` are "milliseconds of
all audio written to the buffer during the session", as OpenAI defines them.

With turn detection on, every append goes through the shared streaming VAD (`StreamingVad`,
batched across sessions, run off the event loop); a turn opens at `speech_started` and is cut
out of the buffer at `speech_stopped`. Outside a turn only the last `prefix_padding_ms` (plus
slack) is kept, so silence never piles up. `semantic_vad` is served by the same detector with a
silence by eagerness (`SEMANTIC_SILENCE_MS`), far below the spec's maximum waits (8 / 4 / 2 s).
The idle timeout (`idle_timeout_ms`) fires when, outside a turn and with no response running,
that much audio passed since the last activity.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ...codec.g711 import TelephonyDecoder
from ...codec.pcm import b64decode_audio, pcm16_from_b64
from ...engines.vad import VadParams
from ...engines.vad_stream import StreamingVad, VadStream
from ...errors import APIError, invalid
from ...protocol.realtime import AudioFormat, PCMAFormat, PCMFormat, PCMUFormat, ServerVAD, TurnDetection, new_id

RATE = 24000
PER_MS = RATE // 1000
MIN_COMMIT_MS = 100
"""OpenAI refuses to commit less audio than this."""
SEMANTIC_SILENCE_MS = {"high": 300, "medium": 600, "auto": 600, "low": 1200}
"""Silence that ends a `semantic_vad` turn, by eagerness."""
_KEEP_SLACK_MS = 250
_ARRIVALS_KEPT = 2048


class InputDecoder:
    """Base64 audio in one input format -> 24 kHz int16 samples (G.711 upsampled with state kept)."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._telephony: TelephonyDecoder | None = None
        if isinstance(fmt, PCMUFormat):
            self._telephony = TelephonyDecoder("pcmu")
        elif isinstance(fmt, PCMAFormat):
            self._telephony = TelephonyDecoder("pcma")

    def decode(self, data: str, param: str = "audio") -> np.ndarray:
        """The samples of one chunk; raises the `invalid_value` envelope for bad base64 or an odd pcm16 length."""
        if self._telephony is None:
            return pcm16_from_b64(data, param)
        return self._telephony.process(b64decode_audio(data, param))


def vad_params(detection: TurnDetection) -> VadParams:
    """The detector parameters of a session's `turn_detection`."""
    if isinstance(detection, ServerVAD):
        return VadParams(detection.threshold, detection.prefix_padding_ms, detection.silence_duration_ms)
    return VadParams(0.5, 300, SEMANTIC_SILENCE_MS[detection.eagerness])


@dataclass(frozen=True)
class TurnEvent:
    """What an append caused: speech started or stopped, or the idle timeout fired."""

    kind: Literal["started", "paused", "stopped", "timeout"]
    item_id: str
    audio_start_ms: int
    audio_end_ms: int = 0
    audio: np.ndarray | None = None
    """The turn's audio (stopped and timeout; paused: a copy of the turn so far, which stays buffered)."""
    decided_at: float = 0.0
    """`time.monotonic()` when the detector decided."""
    speech_end_at: float | None = None
    """When the last speech sample of a stopped turn arrived (`time.monotonic()`), if known."""


class InputAudioBuffer:
    """24 kHz int16 audio addressed by absolute sample offset; remembers when each chunk arrived."""

    def __init__(self) -> None:
        self.start = 0
        self._chunks: list[np.ndarray] = []
        self._length = 0
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque(maxlen=_ARRIVALS_KEPT)

    @property
    def end(self) -> int:
        """Absolute offset just past the last sample written."""
        return self.start + self._length

    @property
    def samples(self) -> int:
        """Samples buffered."""
        return self._length

    def append(self, samples: np.ndarray) -> None:
        """Add samples at the end."""
        if len(samples):
            self._chunks.append(samples)
            self._length += len(samples)
            self._arrivals.append((self.end, time.monotonic()))

    def arrival(self, offset: int) -> float | None:
        """When the sample at absolute `offset` arrived, if still remembered."""
        for end, at in self._arrivals:
            if end > offset:
                return at
        return None

    def _flat(self) -> np.ndarray:
        if len(self._chunks) != 1:
            self._chunks = [np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)]
        return self._chunks[0]

    def take(self, begin: int, end: int) -> np.ndarray:
        """The samples in `[begin, end)` (clipped to what is buffered); everything before `end` is dropped."""
        taken = self.copy(begin, end)
        self.drop_before(end)
        return taken

    def copy(self, begin: int, end: int) -> np.ndarray:
        """The samples in `[begin, end)` (clipped to what is buffered), left in the buffer."""
        data = self._flat()
        lo, hi = max(begin - self.start, 0), min(max(end - self.start, 0), len(data))
        return data[lo:hi].copy()

    def take_all(self) -> np.ndarray:
        """Every buffered sample; the buffer is empty after."""
        return self.take(self.start, self.end)

    def drop_before(self, offset: int) -> None:
        """Forget the samples before absolute `offset`."""
        cut = min(max(offset - self.start, 0), self._length)
        if cut:
            data = self._flat()
            self._chunks = [data[cut:]]
            self._length -= cut
            self.start += cut

    def clear(self) -> None:
        """Forget every buffered sample."""
        self.drop_before(self.end)


class InputAudio:
    """The input side of one session: decoding, the buffer, turn detection."""

    def __init__(self, vad: StreamingVad | None, max_seconds: float) -> None:
        self._vad = vad
        self.max_samples = int(max_seconds * RATE)
        self.buffer = InputAudioBuffer()
        self.decoder = InputDecoder(PCMFormat())
        self.detection: TurnDetection | None = None
        self._stream: VadStream | None = None
        self._origin_ms = 0
        self._turn: tuple[str, int] | None = None  # item id, absolute start sample
        self._activity_ms = 0

    @property
    def ms(self) -> int:
        """Milliseconds of audio written during the session."""
        return self.buffer.end // PER_MS

    @property
    def speaking(self) -> bool:
        """Whether a detected turn is open."""
        return self._turn is not None

    def configure(self, fmt: AudioFormat, detection: TurnDetection | None) -> None:
        """Apply the session's input format and turn detection (a change resets the decoder / detector)."""
        if fmt != self.decoder.format:
            self.decoder = InputDecoder(fmt)
        if detection != self.detection:
            self.detection = detection
            self._restart_detector()

    def _restart_detector(self) -> None:
        self._turn = None
        self._stream = None
        self._origin_ms = self.ms
        self._activity_ms = self.ms
        if self.detection is not None and self._vad is not None:
            self._stream = self._vad.stream(vad_params(self.detection), RATE)

    def mark_activity(self) -> None:
        """Something happened (a response finished): the idle timeout counts from now."""
        self._activity_ms = self.ms

    async def append(self, data: str, *, responding: bool) -> list[TurnEvent]:
        """Decode and add one chunk; returns the turn events it completes. Raises `APIError` for bad audio."""
        samples = self.decoder.decode(data)
        if self._stream is None and self.buffer.samples + len(samples) > self.max_samples:
            raise invalid(
                f"The input audio buffer is full ({self.max_samples // RATE} s); commit or clear it first.",
                "audio",
                "input_audio_buffer_full",
            )
        self.buffer.append(samples)
        if self._stream is None or self._vad is None:
            return []
        assert self._vad is not None
        events: list[TurnEvent] = []
        for vad_event in await self._vad.feed(self._stream, samples.astype("<i2").tobytes()):
            at_ms = self._origin_ms + vad_event.audio_ms
            if vad_event.type == "speech_started":
                start = at_ms * PER_MS
                self._turn = (new_id("item"), max(start, self.buffer.start))
                events.append(TurnEvent("started", self._turn[0], at_ms, decided_at=time.monotonic()))
            elif vad_event.type == "speech_paused" and self._turn is not None:
                item_id, start = self._turn
                audio = self.buffer.copy(start, at_ms * PER_MS)
                events.append(TurnEvent("paused", item_id, start // PER_MS, at_ms, audio, time.monotonic()))
            elif vad_event.type == "speech_stopped" and self._turn is not None:
                events.append(self._stop(at_ms))
        if self._turn is not None and self.buffer.end - self._turn[1] > self.max_samples:
            events.append(self._stop(self.ms, forced=True))
        if self._turn is None:
            self._trim()
            timeout = self._idle_timeout(responding)
            if timeout is not None:
                events.append(timeout)
        return events

    def _stop(self, at_ms: int, forced: bool = False) -> TurnEvent:
        assert self._turn is not None
        item_id, start = self._turn
        self._turn = None
        end = at_ms * PER_MS
        audio = self.buffer.take(start, end)
        speech_end_at = None
        if not forced and self.detection is not None:
            speech_end_at = self.buffer.arrival(end - vad_params(self.detection).silence_duration_ms * PER_MS)
        if forced:
            self._restart_detector()  # the detector still hears speech: start it afresh after the cut
        self._activity_ms = at_ms
        return TurnEvent(
            "stopped", item_id, start // PER_MS, at_ms, audio, decided_at=time.monotonic(), speech_end_at=speech_end_at
        )

    def _trim(self) -> None:
        assert self.detection is not None
        keep = vad_params(self.detection).prefix_padding_ms + _KEEP_SLACK_MS
        self.buffer.drop_before(self.buffer.end - keep * PER_MS)

    def _idle_timeout(self, responding: bool) -> TurnEvent | None:
        detection = self.detection
        if responding or not isinstance(detection, ServerVAD) or detection.idle_timeout_ms is None:
            if responding:
                self._activity_ms = self.ms
            return None
        if self.ms - self._activity_ms < detection.idle_timeout_ms:
            return None
        start_ms = self._activity_ms
        self._activity_ms = self.ms
        audio = self.buffer.take_all()
        return TurnEvent("timeout", new_id("item"), start_ms, self.ms, audio, decided_at=time.monotonic())

    def commit(self) -> np.ndarray:
        """The buffer as a turn (`input_audio_buffer.commit`); an open VAD turn ends here."""
        start = self._turn[1] if self._turn is not None else self.buffer.start
        if (self.buffer.end - start) < MIN_COMMIT_MS * PER_MS:
            have = (self.buffer.end - start) / PER_MS
            raise APIError(
                400,
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms of "
                f"audio, but buffer only has {have:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        audio = self.buffer.take(start, self.buffer.end)
        if self._turn is not None:
            self._restart_detector()
        self._activity_ms = self.ms
        return audio

    def clear(self) -> None:
        """Drop the buffered audio (`input_audio_buffer.clear`); an open VAD turn is abandoned."""
        self.buffer.clear()
        if self._turn is not None:
            self._restart_detector()
