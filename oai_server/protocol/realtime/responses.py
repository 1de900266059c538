"""Responses: what `response.create` asks for, and the `response` object of `response.created` / `.done`.

`ResponseCreateParams` overrides the session for one response (`instructions`,
`output_modalities`, voice and format, `max_output_tokens`, `conversation` `auto` | `none`,
`input`, `metadata`; beta `modalities` and `voice` read at their GA places). `Response` is
what we send; its `metadata` echoes the request's (LiveKit's `generate_reply` waits for its
`client_event_id` there) and its `usage` always carries both token-detail objects (pipecat
reads them unguarded). `status_details.reason` is one of GA's four.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, Field, model_validator

from .audio import AudioFormat, PCMFormat, Voice
from .base import ClientModel, ServerModel, new_id
from .items import ConversationItem, ResponseInputItem
from .session import FunctionTool, MaxOutputTokens, Modalities, ToolChoice, audio_only

METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > METADATA_MAX_PAIRS:
        raise ValueError(f"at most {METADATA_MAX_PAIRS} pairs")
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY:
            raise ValueError(f"keys are at most {METADATA_MAX_KEY} characters")
        if len(item) > METADATA_MAX_VALUE:
            raise ValueError(f"values are at most {METADATA_MAX_VALUE} characters")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_check_metadata)]
"""Up to 16 string pairs, keys ≤ 64 and values ≤ 512 characters."""


class ResponseAudioOutputParams(ClientModel):
    """`response.audio.output`: this response's format and voice."""

    format: AudioFormat | None = None
    voice: Voice | None = None


class ResponseAudioParams(ClientModel):
    """`response.audio`."""

    output: ResponseAudioOutputParams | None = None


_BETA_RESPONSE_KEYS = frozenset({"voice", "output_audio_format", "max_response_output_tokens"})


class ResponseCreateParams(ClientModel):
    """The `response` of a `response.create`; unset fields follow the session."""

    conversation: Literal["auto", "none"] | None = None
    input: list[ResponseInputItem] | None = None
    instructions: str | None = None
    output_modalities: Modalities | None = Field(None, validation_alias=AliasChoices("output_modalities", "modalities"))
    max_output_tokens: MaxOutputTokens | None = None
    metadata: Metadata | None = None
    audio: ResponseAudioParams | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None

    @model_validator(mode="before")
    @classmethod
    def _beta(cls, data: Any) -> Any:
        # beta: a flat `voice` / `output_audio_format`, `max_response_output_tokens`
        if not isinstance(data, dict) or not (_BETA_RESPONSE_KEYS & data.keys()):
            return data
        out = dict(data)
        audio = dict(out.get("audio") or {})
        output = dict(audio.get("output") or {})
        if "voice" in out:
            output.setdefault("voice", out.pop("voice"))
        if "output_audio_format" in out:
            output.setdefault("format", out.pop("output_audio_format"))
        if "max_response_output_tokens" in out:
            out.setdefault("max_output_tokens", out.pop("max_response_output_tokens"))
        if output:
            audio["output"] = output
            out["audio"] = audio
        return out


class ResponseAudioOutput(ServerModel):
    """`response.audio.output` as sent: the format used and the voice, by name."""

    format: AudioFormat = Field(default_factory=PCMFormat)
    voice: str


class ResponseAudio(ServerModel):
    """`response.audio`."""

    output: ResponseAudioOutput


class StatusError(ServerModel):
    """`status_details.error` of a failed response."""

    type: str
    code: str | None = None


class StatusDetails(ServerModel):
    """Why a response is not `completed`."""

    type: Literal["completed", "cancelled", "incomplete", "failed"]
    reason: Literal["turn_detected", "client_cancelled", "max_output_tokens", "content_filter"] | None = None
    error: StatusError | None = None


class CachedTokensDetails(ServerModel):
    """`input_token_details.cached_tokens_details`."""

    text_tokens: int = 0
    audio_tokens: int = 0
    image_tokens: int = 0


class InputTokenDetails(ServerModel):
    """`usage.input_token_details`."""

    text_tokens: int = 0
    audio_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0
    cached_tokens_details: CachedTokensDetails = Field(default_factory=CachedTokensDetails)


class OutputTokenDetails(ServerModel):
    """`usage.output_token_details`."""

    text_tokens: int = 0
    audio_tokens: int = 0


class Usage(ServerModel):
    """Token counts of a response (text tokens of Gemma; audio tokens of Orpheus)."""

    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: InputTokenDetails = Field(default_factory=InputTokenDetails)
    output_token_details: OutputTokenDetails = Field(default_factory=OutputTokenDetails)

    @classmethod
    def of(cls, *, input_text: int = 0, input_audio: int = 0, output_text: int = 0, output_audio: int = 0) -> Usage:
        """Usage from the four counts, totals filled in."""
        inputs, outputs = input_text + input_audio, output_text + output_audio
        return cls(
            total_tokens=inputs + outputs,
            input_tokens=inputs,
            output_tokens=outputs,
            input_token_details=InputTokenDetails(text_tokens=input_text, audio_tokens=input_audio),
            output_token_details=OutputTokenDetails(text_tokens=output_text, audio_tokens=output_audio),
        )


ResponseStatus = Literal["in_progress", "completed", "cancelled", "incomplete", "failed"]


class Response(ServerModel):
    """The `response` object of `response.created` (in progress, empty) and `response.done` (final)."""

    id: str = Field(default_factory=lambda: new_id("resp"))
    object: Literal["realtime.response"] = "realtime.response"
    status: ResponseStatus = "in_progress"
    status_details: StatusDetails | None = None
    output: list[ConversationItem] = Field(default_factory=list)
    conversation_id: str | None = None
    output_modalities: list[Literal["text", "audio"]] = Field(default_factory=audio_only)
    max_output_tokens: int | Literal["inf"] = "inf"
    audio: ResponseAudio | None = None
    usage: Usage | None = None
    metadata: dict[str, str] | None = None
