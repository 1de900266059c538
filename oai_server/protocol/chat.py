"""Request bodies of the OpenAI API surface we serve (responses: `chat_responses`, `speech`, `catalog`).

Requests accept and ignore unknown fields and explicit nulls (LangChain sends `"stream": false`,
others send `null` for unset options). Field order follows the OpenAI API reference
(https://platform.openai.com/docs/api-reference). Fields we refuse rather than silently
ignore (`n > 1`, `tools`, `logprobs`, `response_format: json_schema`) are checked in
`ChatCompletionRequest.check_supported`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from ..errors import APIError, invalid
from ..pipeline.encode import STREAMED_CHAT_FORMATS, ChatAudioFormat, SpeechFormat
from .content_parts import InputAudioPart, part_kind

Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
"""Seeds are 64-bit integers (what torch and vLLM generators take); others are a 400, not a failed stream."""


class OpenAIModel(BaseModel):
    """Base of every request body: extra keys are ignored, nulls mean "not set"."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class VoiceId(OpenAIModel):
    """A voice given as an object, `{"id": "..."}`."""

    id: str


def voice_name(voice: str | VoiceId | None) -> str | None:
    """The voice's name whichever way it was given."""
    return voice.id if isinstance(voice, VoiceId) else voice


# --------------------------------------------------------------------------- speech


class SpeechRequest(OpenAIModel):
    """`POST /v1/audio/speech` (CreateSpeechRequest)."""

    model: str = Field(min_length=1)
    input: str
    voice: str | VoiceId
    instructions: str | None = Field(None, max_length=4096)
    """Accepted for compatibility; Orpheus has no instruction channel (use emotion tags)."""
    response_format: SpeechFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    # Not in OpenAI's spec: per-request Orpheus sampling overrides.
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, ge=1, le=2)
    seed: Seed | None = None


# --------------------------------------------------------------------------- chat


class TextPart(OpenAIModel):
    """A `{"type": "text", "text": ...}` content part."""

    type: str
    text: str = ""


ContentPart = Annotated[
    Annotated[InputAudioPart, Tag("input_audio")] | Annotated[TextPart, Tag("other")], Discriminator(part_kind)
]
"""A content part: ``input_audio``, or text (any other type is refused by `ChatMessage.text`)."""


class AudioRef(OpenAIModel):
    """`audio: {"id": ...}` on an assistant history message (extra keys allowed)."""

    id: str


class ChatMessage(OpenAIModel):
    """One message of `messages`."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    audio: AudioRef | None = None

    def text(self, index: int, transcripts: Mapping[int, str] | None = None) -> str:
        """The message's text; ``transcripts`` stand for the audio parts (by index); other parts are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        transcripts = transcripts or {}
        pieces = []
        for part_index, part in enumerate(self.content):
            if part_index in transcripts:
                pieces.append(transcripts[part_index])
                continue
            if not isinstance(part, TextPart) or part.type != "text":
                raise invalid(
                    f"Content part type '{part.type}' is not supported; only text parts are.",
                    f"messages[{index}].content[{part_index}].type",
                    "unsupported_value",
                )
            pieces.append(part.text)
        if transcripts:  # spoken and typed parts are separate utterances: one space between them
            return " ".join(piece.strip() for piece in pieces if piece.strip())
        return "".join(pieces)


class AudioOutput(OpenAIModel):
    """`audio: {voice, format}` of a chat request."""

    voice: str | VoiceId = "alloy"
    format: ChatAudioFormat = "pcm16"


class StreamOptions(OpenAIModel):
    """`stream_options`."""

    include_usage: bool = False


class ChatCompletionRequest(OpenAIModel):
    """`POST /v1/chat/completions`."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    logprobs: bool = False
    top_logprobs: int | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=128)
    response_format: dict[str, Any] | None = None
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    tools: list[Any] | None = None
    tool_choice: Any = None
    user: str | None = None

    @property
    def wants_audio(self) -> bool:
        """True when `modalities` asks for audio."""
        return bool(self.modalities) and "audio" in (self.modalities or [])

    @property
    def stop_list(self) -> list[str]:
        """`stop` as a list of non-empty strings."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]

    def check_supported(self) -> None:
        """Refuse options we do not implement, instead of silently ignoring them."""
        if self.n != 1:
            raise invalid("Only n=1 is supported.", "n", "unsupported_value")
        if self.tools:
            raise invalid("Tools are not supported by this server.", "tools", "unsupported_value")
        if self.logprobs or self.top_logprobs:
            raise invalid("logprobs are not supported by this server.", "logprobs", "unsupported_value")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise invalid(
                f"response_format type '{self.response_format.get('type')}' is not supported.",
                "response_format",
                "unsupported_value",
            )
        if len(self.stop_list) > 4:
            raise invalid("At most 4 stop sequences are allowed.", "stop", "invalid_value")
        if self.wants_audio:
            if self.audio is None:
                raise invalid(
                    "The 'audio' parameter is required when 'audio' is in modalities.",
                    "audio",
                    "missing_required_parameter",
                )
            if self.stream and self.audio.format not in STREAMED_CHAT_FORMATS:
                supported = ", ".join(f"'{name}'" for name in STREAMED_CHAT_FORMATS)
                raise APIError(
                    400,
                    f"Unsupported value: 'audio.format' does not support '{self.audio.format}' when "
                    f"stream=true. Supported values are: {supported}.",
                    param="audio.format",
                    code="unsupported_value",
                )
