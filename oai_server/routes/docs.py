"""OpenAPI documentation of the responses: streamed bodies, SSE events, and the error envelope.

Each API route declares `responses=` built here, so the schema at `/openapi.json` says what
really leaves the server: the audio content types, the events of each SSE stream (as
`itemSchema`, whose `data` is JSON described by `contentSchema`), and `errors.ERROR_RESPONSES`.
`tests/test_schema_fuzz.py` holds the server to it.
"""

from __future__ import annotations

from typing import Any

from .errors import ERROR_RESPONSES

Responses = dict[int | str, dict[str, Any]]

ERROR_ENVELOPE: dict[str, Any] = {"$ref": "#/components/schemas/ErrorResponse"}
"""The envelope's schema (a component: every route documents it through `ERROR_RESPONSES`)."""

BINARY: dict[str, Any] = {"type": "string", "format": "binary"}


def _json_data(*payloads: dict[str, Any]) -> dict[str, Any]:
    """An SSE `data` field carrying JSON of one of `payloads`, or an error envelope after a failure."""
    return {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [*payloads, ERROR_ENVELOPE]},
    }


def _event(data: dict[str, Any], event: dict[str, Any] | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {"data": data}
    if event is not None:
        properties["event"] = event
    return {"type": "object", "required": ["data"], "properties": properties}


SPEECH_DELTA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "audio"],
    "properties": {"type": {"const": "speech.audio.delta"}, "audio": {"type": "string", "contentEncoding": "base64"}},
}
SPEECH_DONE: dict[str, Any] = {
    "type": "object",
    "required": ["type", "usage"],
    "properties": {
        "type": {"const": "speech.audio.done"},
        "usage": {
            "type": "object",
            "required": ["input_tokens", "output_tokens", "total_tokens"],
            "properties": {
                "input_tokens": {"type": "integer"},
                "output_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}
SPEECH_EVENT = _event(
    _json_data(SPEECH_DELTA, SPEECH_DONE), {"enum": ["speech.audio.delta", "speech.audio.done", "message"]}
)
"""One event of `/v1/audio/speech` with `stream_format: sse`; an error event has no `event:` line, so its
type is SSE's default, `message`."""

CHAT_COMPLETION: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {"object": {"const": "chat.completion"}, "choices": {"type": "array", "minItems": 1}},
}
CHAT_CHUNK: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {"object": {"const": "chat.completion.chunk"}, "choices": {"type": "array"}},
}
CHAT_EVENT = _event({"anyOf": [{"const": "[DONE]"}, _json_data(CHAT_CHUNK)]})
"""One event of a streamed chat completion: a chunk, an error envelope, or the final `[DONE]`."""


TRANSCRIPT_DELTA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "delta"],
    "properties": {"type": {"const": "transcript.text.delta"}, "delta": {"type": "string"}},
}
TRANSCRIPT_DONE: dict[str, Any] = {
    "type": "object",
    "required": ["type", "text", "usage"],
    "properties": {
        "type": {"const": "transcript.text.done"},
        "text": {"type": "string"},
        "usage": {
            "type": "object",
            "required": ["type", "input_tokens", "output_tokens", "total_tokens"],
            "properties": {
                "type": {"const": "tokens"},
                "input_tokens": {"type": "integer"},
                "output_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}
TRANSCRIPT_EVENT = _event(_json_data(TRANSCRIPT_DELTA, TRANSCRIPT_DONE))
"""One event of `/v1/audio/transcriptions` with `stream=true` (data-only events, no `[DONE]`)."""
TRANSCRIPTION: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string"},
        "language": {"type": "string"},
        "duration": {"type": "number"},
        "segments": {"type": "array", "items": {"type": "object", "required": ["id", "start", "end", "text"]}},
    },
}
"""A `json` or `verbose_json` transcription (or translation)."""


def multipart(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads a multipart form itself (the file as binary)."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def streamed(description: str, content: dict[str, dict[str, Any]]) -> Responses:
    """`responses=` of a route whose 200 is `content` (media type -> media type object), plus the errors."""
    return {200: {"description": description, "content": content}, **ERROR_RESPONSES}


def binary(*media_types: str) -> dict[str, dict[str, Any]]:
    """Content entries of raw (audio or text) bodies."""
    return {media_type: {"schema": BINARY} for media_type in media_types}


def sse(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The content entry of an SSE body whose events follow `item`."""
    return {"text/event-stream": {"itemSchema": item}}
