"""Conversation items and their content parts (`realtime_conversation_item_*.py` in the GA SDK).

One set of models serves both directions: `conversation.item.create` parses a client's item,
`conversation.item.added` / `.done` / `.retrieved` and `response.output_item.*` send ours.
Items are chosen by `type`, messages by `role`; content parts by `type`, where the beta
spellings `text` / `audio` are read as `input_text` / `input_audio` in user and system messages
and `output_text` / `output_audio` in assistant messages. `ContentPart` is the different shape
of `response.content_part.added` / `.done` (GA keeps `text` / `audio` there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Tag

from .base import ClientModel, ServerModel, discriminate, tag

ItemStatus = Literal["completed", "incomplete", "in_progress"]


def _rename_type(mapping: dict[str, str]) -> Callable[[Any], Any]:
    def rename(value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if isinstance(kind, str) and kind in mapping:  # other JSON values (a list: unhashable) are pydantic's to refuse
            return {**value, "type": mapping[kind]}
        return value

    return rename


class InputText(ClientModel):
    """Text from the user or the system."""

    type: Literal["input_text"] = "input_text"
    text: str


class InputAudio(ClientModel):
    """User audio: base64 in the session's input format when created, `transcript` once transcribed."""

    type: Literal["input_audio"] = "input_audio"
    audio: str | None = None
    transcript: str | None = None


class InputImage(ClientModel):
    """An image (accepted so the session can refuse it: Gemma 2 here has no vision)."""

    type: Literal["input_image"] = "input_image"
    image_url: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class OutputText(ClientModel):
    """Assistant text."""

    type: Literal["output_text"] = "output_text"
    text: str


class OutputAudio(ClientModel):
    """Assistant audio; `transcript` is what it says (cut to what was heard after a truncate)."""

    type: Literal["output_audio"] = "output_audio"
    audio: str | None = None
    transcript: str | None = None


_INPUT_BETA = {"text": "input_text", "audio": "input_audio"}
_OUTPUT_BETA = {"text": "output_text", "audio": "output_audio"}

UserContent = Annotated[
    Annotated[InputText, Tag(tag("input_text"))]
    | Annotated[InputAudio, Tag(tag("input_audio"))]
    | Annotated[InputImage, Tag(tag("input_image"))],
    discriminate("type"),
    BeforeValidator(_rename_type(_INPUT_BETA)),
]
SystemContent = Annotated[
    Annotated[InputText, Tag(tag("input_text"))],
    discriminate("type"),
    BeforeValidator(_rename_type(_INPUT_BETA)),
]
AssistantContent = Annotated[
    Annotated[OutputText, Tag(tag("output_text"))] | Annotated[OutputAudio, Tag(tag("output_audio"))],
    discriminate("type"),
    BeforeValidator(_rename_type(_OUTPUT_BETA)),
]


class _Item(ClientModel):
    id: str | None = None
    object: Literal["realtime.item"] = "realtime.item"
    status: ItemStatus | None = None


class UserMessage(_Item):
    """A user message: text and/or audio."""

    type: Literal["message"] = "message"
    role: Literal["user"] = "user"
    content: list[UserContent]


class AssistantMessage(_Item):
    """An assistant message: text, or audio with its transcript."""

    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[AssistantContent]


class SystemMessage(_Item):
    """A system message (text only)."""

    type: Literal["message"] = "message"
    role: Literal["system"] = "system"
    content: list[SystemContent]


class FunctionCall(_Item):
    """A function call by the model (parsed so the session can refuse it: no tools here)."""

    type: Literal["function_call"] = "function_call"
    call_id: str | None = None
    name: str
    arguments: str


class FunctionCallOutput(_Item):
    """A function's result sent by the client."""

    type: Literal["function_call_output"] = "function_call_output"
    call_id: str
    output: str


class ItemReference(ClientModel):
    """`{"type": "item_reference", "id": …}` in `response.create`'s `input`: an existing item."""

    type: Literal["item_reference"] = "item_reference"
    id: str


Message = Annotated[
    Annotated[UserMessage, Tag(tag("user"))]
    | Annotated[AssistantMessage, Tag(tag("assistant"))]
    | Annotated[SystemMessage, Tag(tag("system"))],
    discriminate("role"),
]
"""A message, chosen by `role`."""

ConversationItem = Annotated[
    Annotated[Message, Tag(tag("message"))]
    | Annotated[FunctionCall, Tag(tag("function_call"))]
    | Annotated[FunctionCallOutput, Tag(tag("function_call_output"))],
    discriminate("type"),
]
"""Any conversation item, chosen by `type` (then `role`)."""

ResponseInputItem = Annotated[
    Annotated[Message, Tag(tag("message"))]
    | Annotated[FunctionCall, Tag(tag("function_call"))]
    | Annotated[FunctionCallOutput, Tag(tag("function_call_output"))]
    | Annotated[ItemReference, Tag(tag("item_reference"))],
    discriminate("type"),
]
"""An item of `response.create`'s `input`: a new item or a reference to one."""

Item = UserMessage | AssistantMessage | SystemMessage | FunctionCall | FunctionCallOutput
"""The item classes, for annotations of already-parsed items."""


class ContentPart(ServerModel):
    """The part of `response.content_part.added` / `.done`: `audio` (with transcript) or `text`."""

    type: Literal["text", "audio"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
