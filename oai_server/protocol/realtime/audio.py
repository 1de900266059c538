"""Audio settings of a Realtime session: formats, turn detection, input transcription, voice.

Shapes follow the GA types (`realtime_audio_formats.py`, `realtime_audio_input_turn_detection.py`,
`audio_transcription.py`, `realtime_audio_config_output.py` in openai-python). Defaults are the
spec's: server VAD 0.5 / 300 ms / 500 ms, responses created and interrupted by VAD; semantic
VAD's eagerness low / medium / high waits at most 8 / 4 / 2 s, `auto` meaning medium.
Beta format strings (`pcm16`, `g711_ulaw`, `g711_alaw`) are read as their GA objects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, Tag

from .base import ClientModel, by_kind, discriminate, tag


class PCMFormat(ClientModel):
    """`audio/pcm`: 16-bit little-endian mono at 24 kHz (the only rate GA allows)."""

    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000


class PCMUFormat(ClientModel):
    """`audio/pcmu`: G.711 μ-law, 8 kHz (telephony)."""

    type: Literal["audio/pcmu"] = "audio/pcmu"


class PCMAFormat(ClientModel):
    """`audio/pcma`: G.711 A-law, 8 kHz (telephony)."""

    type: Literal["audio/pcma"] = "audio/pcma"


_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}


def _format_from_beta(value: Any) -> Any:
    if isinstance(value, str) and value in _BETA_FORMATS:
        return {"type": _BETA_FORMATS[value]}
    return value


AudioFormat = Annotated[
    Annotated[PCMFormat, Tag(tag("audio/pcm"))]
    | Annotated[PCMUFormat, Tag(tag("audio/pcmu"))]
    | Annotated[PCMAFormat, Tag(tag("audio/pcma"))],
    discriminate("type"),
    BeforeValidator(_format_from_beta),
]
"""One of the three GA audio formats, chosen by `type`."""

SEMANTIC_MAX_WAIT_MS = {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}
"""Semantic VAD: the longest wait for the end of a turn, per eagerness (openapi.yaml)."""


class ServerVAD(ClientModel):
    """VAD that ends a turn after `silence_duration_ms` of silence.

    The spec bounds only `threshold` (0–1) and `idle_timeout_ms` (5–30 s); the 10 s caps on the
    two durations are ours, so a client cannot make the server buffer unbounded audio.
    """

    type: Literal["server_vad"] = "server_vad"
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    prefix_padding_ms: Annotated[int, Field(ge=0, le=10_000)] = 300
    silence_duration_ms: Annotated[int, Field(ge=0, le=10_000)] = 500
    idle_timeout_ms: Annotated[int, Field(ge=5000, le=30_000)] | None = None
    create_response: bool = True
    interrupt_response: bool = True


class SemanticVAD(ClientModel):
    """Turn detection that waits for the utterance to sound finished, at most `max_wait_ms`."""

    type: Literal["semantic_vad"] = "semantic_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool = True
    interrupt_response: bool = True

    @property
    def max_wait_ms(self) -> int:
        """The spec's maximum wait for this eagerness."""
        return SEMANTIC_MAX_WAIT_MS[self.eagerness]


TurnDetection = Annotated[
    Annotated[ServerVAD, Tag(tag("server_vad"))] | Annotated[SemanticVAD, Tag(tag("semantic_vad"))],
    discriminate("type"),
]
"""Server or semantic VAD, chosen by `type` (`null` in a session means client-committed turns)."""


class TurnDetectionUpdate(ClientModel):
    """A possibly partial `turn_detection` from `session.update`; `merge_turn_detection` applies it."""

    type: Literal["server_vad", "semantic_vad"] | None = None
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    prefix_padding_ms: Annotated[int, Field(ge=0, le=10_000)] | None = None
    silence_duration_ms: Annotated[int, Field(ge=0, le=10_000)] | None = None
    idle_timeout_ms: Annotated[int, Field(ge=5000, le=30_000)] | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


class Transcription(ClientModel):
    """Transcription of the user's audio items (`audio.input.transcription`)."""

    model: str = "gpt-4o-mini-transcribe"
    language: str | None = None
    prompt: str | None = None


class TranscriptionUpdate(ClientModel):
    """A possibly partial `transcription`: given fields replace the current ones."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class NoiseReduction(ClientModel):
    """`audio.input.noise_reduction` (accepted and echoed)."""

    type: Literal["near_field", "far_field"] | None = None


class VoiceId(ClientModel):
    """A custom voice given by id (`{"id": "voice_…"}`)."""

    id: str


Voice = Annotated[
    Annotated[str, Tag(tag("string"))] | Annotated[VoiceId, Tag(tag("object"))],
    by_kind("a voice name or an object with an id"),
]
"""A built-in voice name (ours, or OpenAI's: alloy … marin, cedar) or a custom `{id}`."""


def voice_name(voice: Voice) -> str:
    """The voice as a plain name (response objects carry a string)."""
    return voice.id if isinstance(voice, VoiceId) else voice


class AudioInput(ClientModel):
    """`audio.input` of a session."""

    format: AudioFormat = Field(default_factory=PCMFormat)
    transcription: Transcription | None = None
    noise_reduction: NoiseReduction | None = None
    turn_detection: TurnDetection | None = Field(default_factory=ServerVAD)


class AudioOutput(ClientModel):
    """`audio.output` of a session."""

    format: AudioFormat = Field(default_factory=PCMFormat)
    voice: Voice = "marin"
    speed: Annotated[float, Field(ge=0.25, le=1.5)] = 1.0


class AudioConfig(ClientModel):
    """`audio` of a session."""

    input: AudioInput = Field(default_factory=AudioInput)
    output: AudioOutput = Field(default_factory=AudioOutput)


class AudioInputUpdate(ClientModel):
    """A partial `audio.input`: `null` turns transcription / noise reduction / turn detection off."""

    format: AudioFormat | None = None
    transcription: TranscriptionUpdate | None = None
    noise_reduction: NoiseReduction | None = None
    turn_detection: TurnDetectionUpdate | None = None


class AudioOutputUpdate(ClientModel):
    """A partial `audio.output`."""

    format: AudioFormat | None = None
    voice: Voice | None = None
    speed: Annotated[float, Field(ge=0.25, le=1.5)] | None = None


class AudioUpdate(ClientModel):
    """A partial `audio`."""

    input: AudioInputUpdate | None = None
    output: AudioOutputUpdate | None = None
