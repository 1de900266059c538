"""The client events we accept, and `parse_client_event`, which turns one WebSocket text frame into one.

Parsing never lets an exception other than `ClientEventError` out: bad JSON (`invalid_json`), a
frame that is not an object, a missing or non-string `type`, an unknown `type`
(`UnknownEventType`, carrying it), and wrong or missing fields (`param` naming the path, e.g.
`session.audio.input.turn_detection.threshold`) all become one, with the client's `event_id`
when it gave a usable one, so the session sends an `error` event and goes on. Dispatch on
`type` is a table lookup, so the event type never appears in a `param`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, Tag, ValidationError

from .base import ClientEventError, ClientModel, UnknownEventType, client_error, discriminate, tag
from .items import ConversationItem
from .responses import ResponseCreateParams
from .session import SessionUpdate


class _ClientEvent(ClientModel):
    event_id: Annotated[str, Field(max_length=512)] | None = None


class SessionUpdateEvent(_ClientEvent):
    """`session.update`: change any part of the session."""

    type: Literal["session.update"] = "session.update"
    session: SessionUpdate


class InputAudioBufferAppendEvent(_ClientEvent):
    """`input_audio_buffer.append`: base64 audio in the session's input format."""

    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    audio: str


class InputAudioBufferCommitEvent(_ClientEvent):
    """`input_audio_buffer.commit`: the buffer becomes a user audio item."""

    type: Literal["input_audio_buffer.commit"] = "input_audio_buffer.commit"


class InputAudioBufferClearEvent(_ClientEvent):
    """`input_audio_buffer.clear`."""

    type: Literal["input_audio_buffer.clear"] = "input_audio_buffer.clear"


class ConversationItemCreateEvent(_ClientEvent):
    """`conversation.item.create`: add an item after `previous_item_id` (`root` = first; default: last)."""

    type: Literal["conversation.item.create"] = "conversation.item.create"
    previous_item_id: str | None = None
    item: ConversationItem


class ConversationItemRetrieveEvent(_ClientEvent):
    """`conversation.item.retrieve`: answered by `conversation.item.retrieved`."""

    type: Literal["conversation.item.retrieve"] = "conversation.item.retrieve"
    item_id: str


class ConversationItemTruncateEvent(_ClientEvent):
    """`conversation.item.truncate`: the user heard `audio_end_ms` of the assistant item's audio."""

    type: Literal["conversation.item.truncate"] = "conversation.item.truncate"
    item_id: str
    content_index: Annotated[int, Field(ge=0)] = 0
    audio_end_ms: Annotated[int, Field(ge=0)]


class ConversationItemDeleteEvent(_ClientEvent):
    """`conversation.item.delete`."""

    type: Literal["conversation.item.delete"] = "conversation.item.delete"
    item_id: str


class ResponseCreateEvent(_ClientEvent):
    """`response.create`, with optional per-response overrides."""

    type: Literal["response.create"] = "response.create"
    response: ResponseCreateParams | None = None


class ResponseCancelEvent(_ClientEvent):
    """`response.cancel`: the running response (or the one named) ends `cancelled`."""

    type: Literal["response.cancel"] = "response.cancel"
    response_id: str | None = None


class OutputAudioBufferClearEvent(_ClientEvent):
    """`output_audio_buffer.clear` (WebRTC/SIP in GA; over WebSocket a cancel of the audio in flight)."""

    type: Literal["output_audio_buffer.clear"] = "output_audio_buffer.clear"


CLIENT_EVENT_TYPES: dict[str, type[_ClientEvent]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        SessionUpdateEvent,
        InputAudioBufferAppendEvent,
        InputAudioBufferCommitEvent,
        InputAudioBufferClearEvent,
        ConversationItemCreateEvent,
        ConversationItemRetrieveEvent,
        ConversationItemTruncateEvent,
        ConversationItemDeleteEvent,
        ResponseCreateEvent,
        ResponseCancelEvent,
        OutputAudioBufferClearEvent,
    )
}
"""Every client event type we accept, by its `type`."""

ClientEvent = Annotated[
    Annotated[SessionUpdateEvent, Tag(tag("session.update"))]
    | Annotated[InputAudioBufferAppendEvent, Tag(tag("input_audio_buffer.append"))]
    | Annotated[InputAudioBufferCommitEvent, Tag(tag("input_audio_buffer.commit"))]
    | Annotated[InputAudioBufferClearEvent, Tag(tag("input_audio_buffer.clear"))]
    | Annotated[ConversationItemCreateEvent, Tag(tag("conversation.item.create"))]
    | Annotated[ConversationItemRetrieveEvent, Tag(tag("conversation.item.retrieve"))]
    | Annotated[ConversationItemTruncateEvent, Tag(tag("conversation.item.truncate"))]
    | Annotated[ConversationItemDeleteEvent, Tag(tag("conversation.item.delete"))]
    | Annotated[ResponseCreateEvent, Tag(tag("response.create"))]
    | Annotated[ResponseCancelEvent, Tag(tag("response.cancel"))]
    | Annotated[OutputAudioBufferClearEvent, Tag(tag("output_audio_buffer.clear"))],
    discriminate("type"),
]
"""Any client event, discriminated on `type` (for annotations and schemas; parse with `parse_client_event`)."""


def parse_client_event(frame: str | bytes) -> ClientEvent:
    """One client event from one text frame; raises `ClientEventError` (or `UnknownEventType`) otherwise."""
    try:
        data: Any = json.loads(frame)
    except (ValueError, RecursionError):
        raise ClientEventError("The event is not valid JSON.", None, "invalid_json") from None
    return client_event_from_dict(data)


def client_event_from_dict(data: Any) -> ClientEvent:
    """`parse_client_event` for an already decoded JSON value."""
    if not isinstance(data, dict):
        raise ClientEventError("The event must be a JSON object.", None, "invalid_json")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    kind = data.get("type")
    if kind is None:
        raise ClientEventError("Missing required parameter: 'type'.", "type", "missing_required_parameter", event_id)
    if not isinstance(kind, str):
        raise ClientEventError("Invalid type for 'type': expected a string.", "type", "invalid_type", event_id)
    cls = CLIENT_EVENT_TYPES.get(kind)
    if cls is None:
        raise UnknownEventType(kind, list(CLIENT_EVENT_TYPES), event_id)
    try:
        return cls.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        raise client_error(exc, event_id=event_id) from None
