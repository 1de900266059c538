"""The server events we emit, GA names only, each with `type: Literal[...]` and an auto `event_id`.

Every field the GA SDK marks required is required here (a test validates each event with
`openai.types.realtime.RealtimeServerEvent`); `to_json()` is the frame to send. The ordering of a
response (`response.created` → `response.output_item.added` → `conversation.item.added` →
`response.content_part.added` → deltas → `.done`s → `response.done`) is the session's job.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, Union

from pydantic import Field, Tag, TypeAdapter

from oai_server.errors import APIError

from .base import ServerModel, discriminate, new_id, tag
from .items import ContentPart, ConversationItem
from .responses import Response
from .session import SessionConfig


class ServerEvent(ServerModel):
    """Base of every server event: an `event_id` (`event_` + 20 hex digits) unless given."""

    event_id: str = Field(default_factory=lambda: new_id("event"))

    def to_json(self) -> str:
        """The event as one WebSocket text frame."""
        return self.model_dump_json()


class SessionCreatedEvent(ServerEvent):
    """`session.created`: first event of every connection."""

    type: Literal["session.created"] = "session.created"
    session: SessionConfig


class SessionUpdatedEvent(ServerEvent):
    """`session.updated`: the whole session after a `session.update`."""

    type: Literal["session.updated"] = "session.updated"
    session: SessionConfig


class InputAudioBufferCommittedEvent(ServerEvent):
    """`input_audio_buffer.committed`: the buffer became user item `item_id`."""

    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None = None


class InputAudioBufferClearedEvent(ServerEvent):
    """`input_audio_buffer.cleared`."""

    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class InputAudioBufferSpeechStartedEvent(ServerEvent):
    """`input_audio_buffer.speech_started`: `audio_start_ms` into the buffer's audio since the session began."""

    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class InputAudioBufferSpeechStoppedEvent(ServerEvent):
    """`input_audio_buffer.speech_stopped`."""

    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class InputAudioBufferTimeoutTriggeredEvent(ServerEvent):
    """`input_audio_buffer.timeout_triggered`: `idle_timeout_ms` passed with no speech."""

    type: Literal["input_audio_buffer.timeout_triggered"] = "input_audio_buffer.timeout_triggered"
    audio_start_ms: int
    audio_end_ms: int
    item_id: str


class ConversationItemAddedEvent(ServerEvent):
    """`conversation.item.added`: an item entered the conversation (maybe still in progress)."""

    type: Literal["conversation.item.added"] = "conversation.item.added"
    previous_item_id: str | None = None
    item: ConversationItem


class ConversationItemDoneEvent(ServerEvent):
    """`conversation.item.done`: the item is final."""

    type: Literal["conversation.item.done"] = "conversation.item.done"
    previous_item_id: str | None = None
    item: ConversationItem


class ConversationItemRetrievedEvent(ServerEvent):
    """`conversation.item.retrieved`."""

    type: Literal["conversation.item.retrieved"] = "conversation.item.retrieved"
    item: ConversationItem


class ConversationItemTruncatedEvent(ServerEvent):
    """`conversation.item.truncated`: the item's audio and transcript now end at `audio_end_ms`."""

    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"
    item_id: str
    content_index: int
    audio_end_ms: int


class ConversationItemDeletedEvent(ServerEvent):
    """`conversation.item.deleted`."""

    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"
    item_id: str


class TranscriptionDeltaEvent(ServerEvent):
    """`conversation.item.input_audio_transcription.delta`."""

    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta"
    )
    item_id: str
    content_index: int = 0
    delta: str


class TranscriptionUsage(ServerModel):
    """`usage` of a completed transcription, as audio duration."""

    type: Literal["duration"] = "duration"
    seconds: float


class TranscriptionCompletedEvent(ServerEvent):
    """`conversation.item.input_audio_transcription.completed`."""

    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    item_id: str
    content_index: int = 0
    transcript: str
    usage: TranscriptionUsage


class ErrorDetail(ServerModel):
    """The `error` of an `error` event."""

    type: str = "invalid_request_error"
    code: str | None = None
    message: str
    param: str | None = None
    event_id: str | None = None

    @classmethod
    def of(cls, exc: APIError, event_id: str | None = None) -> ErrorDetail:
        """The detail of an `APIError`; `event_id` is the client event it answers."""
        return cls(
            type=exc.type,
            code=exc.code,
            message=exc.message,
            param=exc.param,
            event_id=event_id if event_id is not None else getattr(exc, "event_id", None),
        )


class TranscriptionError(ServerModel):
    """The `error` of a failed transcription (no `event_id`: no client event caused it)."""

    type: str = "server_error"
    code: str | None = None
    message: str
    param: str | None = None


class TranscriptionFailedEvent(ServerEvent):
    """`conversation.item.input_audio_transcription.failed`: the item stays, without a transcript."""

    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed"
    )
    item_id: str
    content_index: int = 0
    error: TranscriptionError


class ResponseCreatedEvent(ServerEvent):
    """`response.created`."""

    type: Literal["response.created"] = "response.created"
    response: Response


class ResponseDoneEvent(ServerEvent):
    """`response.done`: every response ends with one, cancelled ones too."""

    type: Literal["response.done"] = "response.done"
    response: Response


class ResponseOutputItemAddedEvent(ServerEvent):
    """`response.output_item.added`."""

    type: Literal["response.output_item.added"] = "response.output_item.added"
    response_id: str
    output_index: int
    item: ConversationItem


class ResponseOutputItemDoneEvent(ServerEvent):
    """`response.output_item.done`."""

    type: Literal["response.output_item.done"] = "response.output_item.done"
    response_id: str
    output_index: int
    item: ConversationItem


class _PartRef(ServerEvent):
    response_id: str
    item_id: str
    output_index: int
    content_index: int


class ResponseContentPartAddedEvent(_PartRef):
    """`response.content_part.added`."""

    type: Literal["response.content_part.added"] = "response.content_part.added"
    part: ContentPart


class ResponseContentPartDoneEvent(_PartRef):
    """`response.content_part.done`."""

    type: Literal["response.content_part.done"] = "response.content_part.done"
    part: ContentPart


class ResponseOutputAudioDeltaEvent(_PartRef):
    """`response.output_audio.delta`: base64 audio in the session's output format."""

    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"
    delta: str


class ResponseOutputAudioDoneEvent(_PartRef):
    """`response.output_audio.done`."""

    type: Literal["response.output_audio.done"] = "response.output_audio.done"


class ResponseOutputAudioTranscriptDeltaEvent(_PartRef):
    """`response.output_audio_transcript.delta`: the text of the audio being sent."""

    type: Literal["response.output_audio_transcript.delta"] = "response.output_audio_transcript.delta"
    delta: str


class ResponseOutputAudioTranscriptDoneEvent(_PartRef):
    """`response.output_audio_transcript.done`."""

    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"
    transcript: str


class ResponseOutputTextDeltaEvent(_PartRef):
    """`response.output_text.delta` (text-only responses)."""

    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str


class ResponseOutputTextDoneEvent(_PartRef):
    """`response.output_text.done`."""

    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str


class RateLimit(ServerModel):
    """One entry of `rate_limits.updated`."""

    name: Literal["requests", "tokens"]
    limit: int
    remaining: int
    reset_seconds: float


class RateLimitsUpdatedEvent(ServerEvent):
    """`rate_limits.updated`."""

    type: Literal["rate_limits.updated"] = "rate_limits.updated"
    rate_limits: list[RateLimit]


class ErrorEvent(ServerEvent):
    """`error`: the session goes on unless the server closes it."""

    type: Literal["error"] = "error"
    error: ErrorDetail

    @classmethod
    def of(cls, exc: APIError, event_id: str | None = None) -> ErrorEvent:
        """The `error` event for an `APIError` (a `ClientEventError` brings the client's `event_id`)."""
        return cls(error=ErrorDetail.of(exc, event_id))


_SERVER_EVENTS: tuple[type[ServerEvent], ...] = (
    SessionCreatedEvent, SessionUpdatedEvent,
    InputAudioBufferCommittedEvent, InputAudioBufferClearedEvent, InputAudioBufferSpeechStartedEvent,
    InputAudioBufferSpeechStoppedEvent, InputAudioBufferTimeoutTriggeredEvent,
    ConversationItemAddedEvent, ConversationItemDoneEvent, ConversationItemRetrievedEvent,
    ConversationItemTruncatedEvent, ConversationItemDeletedEvent,
    TranscriptionDeltaEvent, TranscriptionCompletedEvent, TranscriptionFailedEvent,
    ResponseCreatedEvent, ResponseDoneEvent, ResponseOutputItemAddedEvent, ResponseOutputItemDoneEvent,
    ResponseContentPartAddedEvent, ResponseContentPartDoneEvent,
    ResponseOutputAudioDeltaEvent, ResponseOutputAudioDoneEvent,
    ResponseOutputAudioTranscriptDeltaEvent, ResponseOutputAudioTranscriptDoneEvent,
    ResponseOutputTextDeltaEvent, ResponseOutputTextDoneEvent,
    RateLimitsUpdatedEvent, ErrorEvent,
)  # fmt: skip

SERVER_EVENT_TYPES: dict[str, type[ServerEvent]] = {cls.model_fields["type"].default: cls for cls in _SERVER_EVENTS}
"""Every server event type we emit, by its `type`."""


@cache
def server_event_adapter() -> TypeAdapter[ServerEvent]:
    """A TypeAdapter over all server events, discriminated on `type` (tests and tools validate with it)."""
    members = tuple(Annotated[cls, Tag(tag(name))] for name, cls in SERVER_EVENT_TYPES.items())
    union: Any = Annotated[Union[members], discriminate("type")]  # noqa: UP007 (built from a runtime tuple)
    return TypeAdapter(union)
