"""The Realtime session: its configuration (`SessionConfig`), partial updates, and how they merge.

`SessionConfig` is the server's state and its wire form at once (`session.created` /
`session.updated`); a transcription session renders only what the GA transcription type has.
`SessionUpdate` is what `session.update` carries: every field optional, explicit `null`
distinguished from absent (it turns transcription, noise reduction, turn detection, tracing
off). `SessionConfig.merge` applies one: nested objects merge field by field, and a partial
`turn_detection` keeps the current `type` (the merge bug other servers had: a partial update
must not reset the detector). Beta spellings (`modalities`, flat `input_audio_format`, `voice`,
`turn_detection`, `input_audio_transcription`, …) are read as their GA places.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    model_serializer,
    model_validator,
)

from .audio import (
    AudioConfig,
    AudioInput,
    AudioInputUpdate,
    AudioOutput,
    AudioOutputUpdate,
    AudioUpdate,
    SemanticVAD,
    ServerVAD,
    Transcription,
    TranscriptionUpdate,
    TurnDetection,
    TurnDetectionUpdate,
)
from .base import ClientEventError, ClientModel, by_kind, new_id, tag

SESSION_TTL_S = 30 * 60
"""`expires_at` is this long after creation (OpenAI's session lifetime)."""


def _one_modality(value: list[str]) -> list[str]:
    # GA answers in audio (with its transcript) or in text; beta ["text", "audio"] means audio
    if not value:
        raise ValueError("give ['audio'] or ['text']")
    return ["audio"] if "audio" in value else ["text"]


def audio_only() -> list[Literal["text", "audio"]]:
    """The default `output_modalities`."""
    return ["audio"]


Modalities = Annotated[list[Literal["text", "audio"]], AfterValidator(_one_modality)]
"""`output_modalities`: normalised to `["audio"]` or `["text"]`."""

MaxOutputTokens = Annotated[
    Annotated[int, Field(ge=1, le=4096), Tag(tag("integer"))] | Annotated[Literal["inf"], Tag(tag("string"))],
    by_kind("an integer or 'inf'"),
]
"""1–4096 tokens, or `"inf"` for the model's limit."""


class FunctionTool(ClientModel):
    """A function tool (accepted so the session can refuse it with a clear error: Gemma 2 has no tools)."""

    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolChoiceFunction(ClientModel):
    """`tool_choice` naming one function."""

    type: Literal["function"]
    name: str


ToolChoice = Annotated[
    Annotated[Literal["auto", "none", "required"], Tag(tag("string"))]
    | Annotated[ToolChoiceFunction, Tag(tag("object"))],
    by_kind("'auto', 'none', 'required' or an object"),
]


class TracingConfig(ClientModel):
    """`tracing` as an object (accepted and echoed; we trace nothing)."""

    workflow_name: str | None = None
    group_id: str | None = None
    metadata: dict[str, Any] | None = None


class RetentionRatio(ClientModel):
    """`truncation` as a retention ratio."""

    type: Literal["retention_ratio"]
    retention_ratio: Annotated[float, Field(ge=0.0, le=1.0)]


Truncation = Annotated[
    Annotated[Literal["auto", "disabled"], Tag(tag("string"))] | Annotated[RetentionRatio, Tag(tag("object"))],
    by_kind("'auto', 'disabled' or an object"),
]


class PromptRef(ClientModel):
    """`prompt`: a stored prompt reference (accepted and echoed)."""

    id: str
    version: str | None = None
    variables: dict[str, Any] | None = None


IncludeItem = Literal["item.input_audio_transcription.logprobs"]

Tracing = Annotated[
    Annotated[Literal["auto"], Tag(tag("string"))] | Annotated[TracingConfig, Tag(tag("object"))],
    by_kind("'auto' or an object"),
]


class SessionConfig(ClientModel):
    """A session's whole configuration, as the server holds and sends it."""

    type: Literal["realtime", "transcription"] = "realtime"
    id: str = Field(default_factory=lambda: new_id("sess"))
    model: str = "gpt-realtime"
    output_modalities: Modalities = Field(default_factory=audio_only)
    instructions: str = ""
    max_output_tokens: MaxOutputTokens = "inf"
    tools: list[FunctionTool] = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    tracing: Tracing | None = None
    truncation: Truncation = "auto"
    prompt: PromptRef | None = None
    include: list[IncludeItem] | None = None
    expires_at: int = Field(default_factory=lambda: int(time.time()) + SESSION_TTL_S)
    audio: AudioConfig = Field(default_factory=AudioConfig)

    @model_serializer(mode="wrap")
    def _wire(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.type == "transcription":
            head = {"type": "transcription", "object": "realtime.transcription_session", "id": self.id}
            return {
                **head,
                "audio": {"input": data["audio"]["input"]},
                "include": data["include"],
                "expires_at": data["expires_at"],
            }
        return {"type": "realtime", "object": "realtime.session", **{k: v for k, v in data.items() if k != "type"}}

    def merge(self, update: SessionUpdate) -> SessionConfig:
        """This config with `update` applied; raises `ClientEventError` for a value that does not fit."""
        given = update.model_fields_set
        changes: dict[str, Any] = {}
        for name in (
            "type",
            "model",
            "output_modalities",
            "instructions",
            "max_output_tokens",
            "tools",
            "tool_choice",
            "truncation",
        ):
            value = getattr(update, name)
            if name in given and value is not None:
                changes[name] = value
        for name in ("tracing", "prompt", "include"):  # explicit null clears these
            if name in given:
                changes[name] = getattr(update, name)
        if update.audio is not None:
            audio_in, audio_out = self.audio.input, self.audio.output
            if update.audio.input is not None:
                audio_in = _merge_input(audio_in, update.audio.input)
            if update.audio.output is not None:
                audio_out = _merge_output(audio_out, update.audio.output)
            changes["audio"] = AudioConfig(input=audio_in, output=audio_out)
        return self.model_copy(update=changes)


def _merge_input(current: AudioInput, update: AudioInputUpdate) -> AudioInput:
    given = update.model_fields_set
    changes: dict[str, Any] = {}
    if "format" in given and update.format is not None:
        changes["format"] = update.format
    if "noise_reduction" in given:
        changes["noise_reduction"] = update.noise_reduction
    if "transcription" in given:
        changes["transcription"] = (
            None if update.transcription is None else _merge_transcription(current.transcription, update.transcription)
        )
    if "turn_detection" in given:
        changes["turn_detection"] = (
            None
            if update.turn_detection is None
            else merge_turn_detection(current.turn_detection, update.turn_detection)
        )
    return current.model_copy(update=changes)


def _merge_output(current: AudioOutput, update: AudioOutputUpdate) -> AudioOutput:
    changes = {k: getattr(update, k) for k in update.model_fields_set if getattr(update, k) is not None}
    return current.model_copy(update=changes)


def _merge_transcription(current: Transcription | None, update: TranscriptionUpdate) -> Transcription:
    base = current.model_dump() if current is not None else {}
    given = {k: getattr(update, k) for k in update.model_fields_set}
    if given.get("model") is None:
        given.pop("model", None)
    return Transcription.model_validate({**base, **given})


_TD_PARAM = "session.audio.input.turn_detection"


def merge_turn_detection(current: TurnDetection | None, update: TurnDetectionUpdate) -> TurnDetection:
    """Apply a possibly partial `turn_detection`.

    Without `type` (or with the current one) the given fields change the current detector and
    the rest stay; a new `type` starts from that detector's defaults. With detection off and no
    `type`, the update starts a server VAD. A field the resulting type does not have (e.g.
    `eagerness` for `server_vad`) is an `unknown_parameter` error; a `null` field takes the default.
    """
    given = {k: getattr(update, k) for k in update.model_fields_set}
    kind = given.pop("type", None) or (current.type if current is not None else "server_vad")
    cls: type[ServerVAD] | type[SemanticVAD] = ServerVAD if kind == "server_vad" else SemanticVAD
    for key in given:
        if key not in cls.model_fields:
            raise ClientEventError(
                f"Unknown parameter: '{_TD_PARAM}.{key}' (not a parameter of '{kind}').",
                f"{_TD_PARAM}.{key}",
                "unknown_parameter",
            )
    base = current.model_dump() if current is not None and current.type == kind else {}
    values = {**base, **{k: v for k, v in given.items() if v is not None}}
    for key in (k for k, v in given.items() if v is None):
        values.pop(key, None)
    values["type"] = kind
    return cls.model_validate(values)


_BETA_SESSION_KEYS: dict[str, tuple[str, ...]] = {
    "modalities": ("output_modalities",),
    "max_response_output_tokens": ("max_output_tokens",),
    "input_audio_format": ("audio", "input", "format"),
    "input_audio_transcription": ("audio", "input", "transcription"),
    "input_audio_noise_reduction": ("audio", "input", "noise_reduction"),
    "turn_detection": ("audio", "input", "turn_detection"),
    "output_audio_format": ("audio", "output", "format"),
    "voice": ("audio", "output", "voice"),
    "speed": ("audio", "output", "speed"),
}


def _move_beta_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Copy of `data` with beta keys moved to their GA place (a GA key given as well wins)."""
    out = dict(data)
    for beta, path in _BETA_SESSION_KEYS.items():
        if beta not in out:
            continue
        value = out.pop(beta)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node.setdefault(path[-1], value)
    return out


class SessionUpdate(ClientModel):
    """The `session` of a `session.update`: any subset of `SessionConfig`'s fields."""

    type: Literal["realtime", "transcription"] | None = None
    model: str | None = None
    output_modalities: Modalities | None = Field(None, validation_alias=AliasChoices("output_modalities", "modalities"))
    instructions: str | None = None
    max_output_tokens: MaxOutputTokens | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    tracing: Tracing | None = None
    truncation: Truncation | None = None
    prompt: PromptRef | None = None
    include: list[IncludeItem] | None = None
    audio: AudioUpdate | None = None

    @model_validator(mode="before")
    @classmethod
    def _beta(cls, data: Any) -> Any:
        return _move_beta_keys(data) if isinstance(data, dict) else data
