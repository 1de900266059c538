"""Wire types of `/v1/audio/transcriptions` and `/v1/audio/translations` (multipart forms).

The form's text fields are read into one dict the way the openai SDK writes them: arrays as
repeated ``name[]`` keys (``timestamp_granularities[]=segment``), objects as ``name[key]``
(``chunking_strategy[type]=server_vad``). Plain repeated keys and an object sent as one JSON
string (``-F 'chunking_strategy={"type": "server_vad"}'``) are accepted too. The dict is
validated by `TranscriptionForm` / `TranslationForm` (pydantic: bad values are 400s naming
the field). Fields we refuse rather than silently ignore (word timestamps, logprobs,
diarization) are checked in `TranscriptionForm.check_supported`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from ..errors import invalid
from .chat import OpenAIModel

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "verbose_json", "vtt")
LIST_FIELDS = frozenset({"timestamp_granularities", "include", "known_speaker_names", "known_speaker_references"})
"""Fields that are arrays (also when their key is sent without ``[]``)."""
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[([A-Za-z0-9_]*)\])?$")

WORD_TIMESTAMPS_REFUSAL = (
    "Word timestamps are not available: they need Whisper's cross-attention alignment over the decoded "
    "tokens, which this server's engines (vLLM, batched transformers) do not expose, and word times "
    "guessed from the text would be wrong. Use timestamp_granularities=['segment']: each segment is a "
    "stretch of speech found by voice activity detection, with its start and end."
)


class ServerVadChunking(OpenAIModel):
    """``chunking_strategy: {"type": "server_vad", ...}``; unset fields take the server's VAD settings."""

    type: Literal["server_vad"]
    threshold: float | None = Field(None, ge=0, le=1)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10000)
    silence_duration_ms: int | None = Field(None, ge=0, le=10000)


class TranslationForm(OpenAIModel):
    """The text fields of `POST /v1/audio/translations` (``file`` is read apart)."""

    model: str = Field(min_length=1)
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0, le=1)
    # Not in OpenAI's spec: a cap on the transcript tokens of each 30 s piece (cost control, benchmarks).
    max_tokens: int | None = Field(None, ge=1, le=448)

    @property
    def timestamped(self) -> bool:
        """Whether the output carries segment times (one segment per stretch of speech)."""
        return self.response_format in ("srt", "vtt", "verbose_json")


class TranscriptionForm(TranslationForm):
    """The text fields of `POST /v1/audio/transcriptions` (``file`` is read apart)."""

    language: str | None = None
    timestamp_granularities: list[Literal["word", "segment"]] = Field(default_factory=list)
    chunking_strategy: Literal["auto"] | ServerVadChunking | None = None
    include: list[str] = Field(default_factory=list)
    known_speaker_names: list[str] = Field(default_factory=list)
    known_speaker_references: list[str] = Field(default_factory=list)
    stream: bool = False

    @field_validator("chunking_strategy", mode="before")
    @classmethod
    def _chunking(cls, value: Any) -> Any:
        """``"auto"`` or a server_vad object (also as a JSON string); errors name the inner field in the message."""
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("not valid JSON") from None
        if value is None or value == "auto":
            return value
        if not isinstance(value, dict):
            raise ValueError("must be 'auto' or a server_vad object")
        try:
            return ServerVadChunking.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{where}: {first['msg']}") from None

    def check_supported(self) -> None:
        """Refuse options we cannot honour, instead of silently ignoring them."""
        if "word" in self.timestamp_granularities:
            raise invalid(WORD_TIMESTAMPS_REFUSAL, "timestamp_granularities", "unsupported_value")
        unknown = [item for item in self.include if item != "logprobs"]
        if unknown:
            raise invalid(f"Unsupported value for include: '{unknown[0]}'.", "include", "unsupported_value")
        if self.include:
            raise invalid(
                "include=['logprobs'] is not supported: the speech engines do not report token log probabilities.",
                "include",
                "unsupported_value",
            )
        if self.known_speaker_names or self.known_speaker_references:
            raise invalid(
                "Speaker diarization (known_speaker_names) is not supported by this server.",
                "known_speaker_names",
                "unsupported_value",
            )


def form_fields(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The text fields of a multipart form as one dict (SDK-style ``name[]`` arrays and ``name[key]`` objects)."""
    out: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(value, str):
            continue  # files are read apart
        match = _KEY.match(key)
        if match is None:
            continue  # not a field of ours (unknown fields are ignored, as in JSON bodies)
        name, sub = match.group(1), match.group(2)
        if sub is None and name not in LIST_FIELDS:
            out[name] = value
        elif sub == "" or (sub is None and name in LIST_FIELDS):
            previous = out.get(name)
            out[name] = [*previous, value] if isinstance(previous, list) else [value]
        else:
            target = out.get(name)
            if not isinstance(target, dict):
                target = out[name] = {}
            target[sub] = value
    return out
