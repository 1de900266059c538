"""OpenAPI documentation of the responses: body models, streamed events, audio content types, errors.

Every JSON body and every SSE event is a pydantic model in `protocol/` that both builds the
response and documents it, so `/openapi.json` cannot drift from what leaves the server. Each
API route declares `responses=` built here: JSON bodies by their model, raw audio by content
type, SSE streams as `itemSchema` (one event; its `data` is JSON of the event models, described
by `contentSchema`, or the error envelope after a failure), and `errors.ERROR_RESPONSES`. Models
that only appear inside SSE events are invisible to FastAPI's schema generation, so
`install_openapi` adds them to the components. `tests/test_schema_fuzz.py` holds the server to
the schema; `tests/test_openapi_conformance.py` holds it to OpenAI's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ..protocol.chat_responses import ChatCompletion, ChatCompletionChunk
from ..protocol.errors import ErrorResponse
from ..protocol.speech import SpeechAudioDelta, SpeechAudioDone
from ..protocol.transcription_responses import (
    Transcription,
    TranscriptionVerbose,
    TranscriptTextDelta,
    TranscriptTextDone,
)
from .errors import ERROR_RESPONSES

if TYPE_CHECKING:
    from fastapi import FastAPI

Responses = dict[int | str, dict[str, Any]]

REF_TEMPLATE = "#/components/schemas/{model}"
STREAMED_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionChunk,
    SpeechAudioDelta,
    SpeechAudioDone,
    TranscriptTextDelta,
    TranscriptTextDone,
    Transcription,
    TranscriptionVerbose,
    ErrorResponse,
)
"""Models that appear inside SSE events or in hand-read multipart routes' bodies (added to the components by
`install_openapi`)."""

BINARY: dict[str, Any] = {"type": "string", "format": "binary"}


def ref(model: type[BaseModel]) -> dict[str, Any]:
    """A reference to a model's component schema."""
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _json_data(*models: type[BaseModel]) -> dict[str, Any]:
    """An SSE `data` field carrying JSON of one of `models`, or an error envelope after a failure."""
    return {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [*(ref(model) for model in models), ref(ErrorResponse)]},
    }


def _event(data: dict[str, Any], event: dict[str, Any] | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {"data": data}
    if event is not None:
        properties["event"] = event
    return {"type": "object", "required": ["data"], "properties": properties}


SPEECH_EVENT = _event(
    _json_data(SpeechAudioDelta, SpeechAudioDone), {"enum": ["speech.audio.delta", "speech.audio.done", "message"]}
)
"""One event of `/v1/audio/speech` with `stream_format: sse`; an error event has no `event:` line, so its
type is SSE's default, `message`."""

CHAT_EVENT = _event({"anyOf": [{"const": "[DONE]"}, _json_data(ChatCompletionChunk)]})
"""One event of a streamed chat completion: a chunk, an error envelope, or the final `[DONE]`."""


TRANSCRIPT_EVENT = _event(_json_data(TranscriptTextDelta, TranscriptTextDone))
"""One event of `/v1/audio/transcriptions` with `stream=true` (data-only events, no `[DONE]`)."""
TRANSCRIPTION: dict[str, Any] = {"anyOf": [ref(Transcription), ref(TranscriptionVerbose)]}
"""A `json` or `verbose_json` transcription (or translation)."""


def multipart(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads a multipart form itself (the file as binary)."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def streamed(description: str, content: dict[str, dict[str, Any]], model: type[BaseModel] | None = None) -> Responses:
    """`responses=` of a route whose 200 is `content` (media type -> media type object), plus the errors.

    With `model`, the 200 also has an `application/json` body of that model.
    """
    ok: dict[str, Any] = {"description": description, "content": content}
    if model is not None:
        ok["model"] = model
    return {200: ok, **ERROR_RESPONSES}


def binary(*media_types: str) -> dict[str, dict[str, Any]]:
    """Content entries of raw (audio or text) bodies."""
    return {media_type: {"schema": BINARY} for media_type in media_types}


def sse(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The content entry of an SSE body whose events follow `item`."""
    return {"text/event-stream": {"itemSchema": item}}


def chat_responses() -> Responses:
    """`responses=` of `/v1/chat/completions`."""
    return streamed(
        "A `chat.completion`, or `chat.completion.chunk` events ending with `[DONE]` when streamed.",
        sse(CHAT_EVENT),
        ChatCompletion,
    )


def install_openapi(app: FastAPI) -> None:
    """Add the component schemas of the models seen only inside SSE events to `app.openapi()`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = build()  # cached by FastAPI in app.openapi_schema: the edit below is done once
        if fresh:
            _, definitions = models_json_schema(
                [(model, "serialization") for model in STREAMED_MODELS], ref_template=REF_TEMPLATE
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in definitions.get("$defs", {}).items():
                components.setdefault(name, definition)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
