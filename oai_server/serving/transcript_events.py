"""The data of a transcription: its options and plan (pieces of audio), and the events it yields.

    (TranscriptTextDelta* TranscriptSegment)*  TranscriptDone

Times are seconds of the decoded input; see `transcription.TranscriptionService` for how they are made.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..codec.audio_input import DecodedAudio
from ..engines.asr import MAX_DECODER_POSITIONS, Task
from ..engines.vad import FRAME_SAMPLES, SAMPLE_RATE, SpeechRegion, VadParams

SEEK_SAMPLES = 160
"""Whisper's ``seek`` unit: one mel frame, 10 ms at 16 kHz."""


@dataclass(frozen=True)
class TranscriptionOptions:
    """What to do with the audio (validated by `TranscriptionService.options`)."""

    language: str | None = None
    """ISO-639-1 code of the spoken language; None: detected (per piece; the first one is reported)."""
    prompt: str | None = None
    temperature: float = 0.0
    task: Task = "transcribe"
    vad: VadParams | None = None
    """Voice activity parameters (``chunking_strategy: server_vad``); None: the server's settings."""
    timestamped: bool = False
    """One piece, and so one segment, per stretch of speech instead of pieces packed up to 30 s."""
    max_tokens: int = MAX_DECODER_POSITIONS
    """Transcript tokens per piece at most (the decoder's context bounds it too)."""


@dataclass(frozen=True)
class AudioPiece:
    """One model window of the input: samples ``[start, end)`` at 16 kHz, and where its speech is."""

    index: int
    start: int
    end: int
    speech_start: int
    speech_end: int
    speech_probability: float
    """Mean VAD speech probability over the piece's speech frames."""

    @property
    def samples(self) -> int:
        """Samples sent to the model."""
        return self.end - self.start


@dataclass(frozen=True)
class TranscriptionJob:
    """Decoded audio with its pieces planned: ready to stream."""

    audio: DecodedAudio
    options: TranscriptionOptions
    pieces: tuple[AudioPiece, ...]
    job_id: str = field(default_factory=lambda: f"asr-{uuid.uuid4().hex}")

    @property
    def duration(self) -> float:
        """Seconds of input audio."""
        return self.audio.duration


@dataclass(frozen=True)
class TranscriptTextDelta:
    """New transcript text (the deltas concatenate to `TranscriptDone.text`)."""

    text: str
    segment: int


@dataclass(frozen=True)
class TranscriptSegment:
    """A finished piece: its text and where its speech lies in the input (seconds)."""

    id: int
    start: float
    end: float
    seek: int
    """Offset of the piece in the input, in 10 ms mel frames (Whisper's ``seek``)."""
    text: str
    tokens: int
    temperature: float
    no_speech_prob: float
    """1 - the mean VAD speech probability of the segment's speech (Silero's, not Whisper's ``<|nospeech|>``)."""

    @property
    def compression_ratio(self) -> float:
        """Whisper's repetition check: UTF-8 length / zlib-compressed length of the text."""
        data = self.text.encode()
        return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass(frozen=True)
class TranscriptionUsage:
    """What a transcription used."""

    seconds: float
    """Duration of the input audio."""
    audio_tokens: int
    """Encoder positions of the audio sent to the model (50 per second; silence cut by the VAD is not sent)."""
    output_tokens: int
    """Transcript tokens generated."""


@dataclass(frozen=True)
class TranscriptDone:
    """The whole transcript."""

    text: str
    language: str | None
    """The language given, or the one the model detected first; None when nothing was transcribed."""
    duration: float
    segments: tuple[TranscriptSegment, ...]
    usage: TranscriptionUsage


TranscriptionEvent = TranscriptTextDelta | TranscriptSegment | TranscriptDone


def make_piece(index: int, cut: SpeechRegion, regions: list[SpeechRegion], probs: np.ndarray) -> AudioPiece:
    inside = [r for r in regions if r.end > cut.start and r.start < cut.end]
    start = max(min(r.start for r in inside), cut.start)
    end = min(max(r.end for r in inside), cut.end)
    frames = probs[start // FRAME_SAMPLES : -(-end // FRAME_SAMPLES)]
    probability = float(frames.mean()) if len(frames) else 0.0
    return AudioPiece(index, cut.start, cut.end, start, end, probability)


def make_segment(piece: AudioPiece, text: str, tokens: int, temperature: float) -> TranscriptSegment:
    return TranscriptSegment(
        id=piece.index,
        start=round(piece.speech_start / SAMPLE_RATE, 3),
        end=round(piece.speech_end / SAMPLE_RATE, 3),
        seek=piece.start // SEEK_SAMPLES,
        text=text,
        tokens=tokens,
        temperature=temperature,
        no_speech_prob=round(1.0 - piece.speech_probability, 4),
    )


class DeltaJoiner:
    """Concatenates the pieces' deltas into one transcript: no leading space, one space between pieces."""

    def __init__(self) -> None:
        self.text = ""
        self._boundary = False

    def new_segment(self) -> None:
        """The next delta starts a new piece."""
        self._boundary = bool(self.text)

    def push(self, delta: str) -> str:
        """Add a delta; return what the transcript grew by."""
        if not self.text or self.text[-1].isspace():
            delta = delta.lstrip()
        if not delta:
            return ""
        if self._boundary and not delta[0].isspace():
            delta = " " + delta
        self._boundary = False
        self.text += delta
        return delta
