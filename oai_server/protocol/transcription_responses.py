"""Response bodies and stream events of `/v1/audio/transcriptions` and `/v1/audio/translations`."""

from __future__ import annotations

from typing import Literal

from pydantic import MISSING

from .wire import WireModel


class InputTokenDetails(WireModel):
    """The input's tokens by kind (all audio here)."""

    audio_tokens: int
    text_tokens: int = 0


class TokenUsage(WireModel):
    """Usage billed by tokens (`json` bodies and `transcript.text.done`)."""

    type: Literal["tokens"] = "tokens"
    input_tokens: int
    input_token_details: InputTokenDetails
    output_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, audio_tokens: int, output_tokens: int) -> TokenUsage:
        """Usage of a transcript: the audio's encoder positions in, the transcript's tokens out."""
        return cls(
            input_tokens=audio_tokens,
            input_token_details=InputTokenDetails(audio_tokens=audio_tokens),
            output_tokens=output_tokens,
            total_tokens=audio_tokens + output_tokens,
        )


class DurationUsage(WireModel):
    """Usage billed by audio duration (`verbose_json`, as OpenAI bills whisper-1)."""

    type: Literal["duration"] = "duration"
    seconds: float


class Transcription(WireModel):
    """A `json` transcript (a translation carries no usage)."""

    text: str
    usage: TokenUsage | MISSING = MISSING


class TranscriptionSegment(WireModel):
    """One stretch of speech of a `verbose_json` transcript (times in seconds)."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    """Empty: the engines do not report token ids."""
    temperature: float
    avg_logprob: float | None
    """Null: the engines do not report log probabilities."""
    compression_ratio: float
    no_speech_prob: float
    """From the voice activity detector, not from Whisper."""


class TranscriptionVerbose(WireModel):
    """A `verbose_json` transcript."""

    task: str
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    usage: DurationUsage


class TranscriptTextDelta(WireModel):
    """`transcript.text.delta` (stream=true): the next text."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptTextDone(WireModel):
    """`transcript.text.done` (stream=true): the whole text and the usage."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    usage: TokenUsage


STREAMED_TRANSCRIPTION_MODELS: tuple[type[WireModel], ...] = (TranscriptTextDelta, TranscriptTextDone)
