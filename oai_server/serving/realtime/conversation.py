"""The conversation of a Realtime session: ordered items, their transcripts, and the turns a reply reads.

Items are kept as their wire models (`protocol.realtime.items`), plus what only the server
knows: the input audio of a user item and its transcription (a future: a response waits for
it), and for a spoken assistant item the sample -> text map (`SpokenTranscript`) that
`conversation.item.truncate` cuts with. `turns` turns items into the `Turn`s of a
`serving.reply.Conversation`: a truncated assistant item contributes only what the user heard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ...pipeline.chat_prompt import Turn
from ...protocol.realtime import (
    AssistantMessage,
    InputAudio,
    InputText,
    Item,
    OutputAudio,
    OutputText,
    SystemMessage,
    UserMessage,
)
from ..reply_events import SpokenTranscript

ROOT = "root"
"""`previous_item_id` value that inserts an item at the start of the conversation."""


@dataclass(eq=False)
class StoredItem:
    """One conversation item and what the server keeps beside its wire form."""

    item: Item
    audio: np.ndarray | None = None
    """A user item's input audio (24 kHz int16), kept until it is transcribed."""
    transcript: asyncio.Future[str] | None = None
    """A user audio item's transcription ("" if it failed)."""
    spoken: SpokenTranscript | None = None
    """A spoken assistant item's sample -> text map."""
    heard_ms: int | None = None
    """Set by a truncate: the milliseconds of the assistant's audio the user heard."""
    done: bool = True
    """False while a response is still producing this item."""
    response_id: str | None = None
    """The response that produced an assistant item."""
    speed: float = 1.0
    """The output speed a spoken assistant item was sent at (its audio is `1 / speed` as long as `spoken`'s)."""

    @property
    def id(self) -> str:
        """The item id."""
        assert self.item.id is not None
        return self.item.id

    @property
    def audio_ms(self) -> float:
        """Milliseconds of assistant audio the item has (after a truncate: what was kept)."""
        if self.heard_ms is not None:
            return float(self.heard_ms)
        return self.spoken.duration_ms / self.speed if self.spoken is not None else 0.0

    def set_transcript(self, text: str) -> None:
        """Record the transcription of a user audio item in its wire form."""
        if isinstance(self.item, UserMessage):
            content = [
                InputAudio(transcript=text) if isinstance(part, InputAudio) else part for part in self.item.content
            ]
            self.item = self.item.model_copy(update={"content": content})

    def truncate(self, audio_end_ms: int) -> str:
        """Keep only the first `audio_end_ms` of a spoken assistant item; returns the heard text."""
        assert self.spoken is not None
        heard = self.spoken.heard_text(audio_end_ms * self.speed)
        self.heard_ms = audio_end_ms
        if isinstance(self.item, AssistantMessage):
            content = [
                OutputAudio(transcript=heard) if isinstance(part, OutputAudio) else part for part in self.item.content
            ]
            self.item = self.item.model_copy(update={"content": content})
        return heard


@dataclass
class ConversationItems:
    """The ordered items of the default conversation, at most `max_items` (oldest dropped)."""

    max_items: int
    items: list[StoredItem] = field(default_factory=list)

    def get(self, item_id: str) -> StoredItem | None:
        """The item with this id, if it is in the conversation."""
        return next((stored for stored in self.items if stored.id == item_id), None)

    def previous_id(self, stored: StoredItem) -> str | None:
        """The id of the item before `stored` (None for the first)."""
        index = self.items.index(stored)
        return self.items[index - 1].id if index > 0 else None

    @property
    def last_id(self) -> str | None:
        """The id of the last item."""
        return self.items[-1].id if self.items else None

    def add(self, stored: StoredItem, after: str | None = None) -> list[StoredItem]:
        """Insert after item `after` (`ROOT`: first; None: last); returns the items dropped to stay in bounds.

        An unknown `after` raises `KeyError` (the caller checks it first with `get`).
        """
        if after is None:
            self.items.append(stored)
        elif after == ROOT:
            self.items.insert(0, stored)
        else:
            previous = self.get(after)
            if previous is None:
                raise KeyError(after)
            self.items.insert(self.items.index(previous) + 1, stored)
        dropped: list[StoredItem] = []
        while len(self.items) > self.max_items:
            dropped.append(self.items.pop(0))
        for old in dropped:
            release(old)
        return dropped

    def delete(self, item_id: str) -> StoredItem | None:
        """Remove an item; returns it, or None when there is none with that id."""
        stored = self.get(item_id)
        if stored is not None:
            self.items.remove(stored)
            release(stored)
        return stored

    def clear(self) -> None:
        """Drop every item (the session is closing)."""
        for stored in self.items:
            release(stored)
        self.items.clear()


def release(stored: StoredItem) -> None:
    """Forget an item's audio and stop waiting for its transcript."""
    stored.audio = None
    if stored.transcript is not None and not stored.transcript.done():
        stored.transcript.cancel()


async def item_turn(stored: StoredItem) -> Turn | None:
    """The item as a conversation turn (waiting for a pending transcription); None for items with no text."""
    item = stored.item
    texts: list[str] = []
    if isinstance(item, UserMessage):
        for part in item.content:
            if isinstance(part, InputText):
                texts.append(part.text)
            elif isinstance(part, InputAudio):
                texts.append(await transcript_of(stored, part))
        role = "user"
    elif isinstance(item, AssistantMessage):
        for out in item.content:
            if isinstance(out, OutputText):
                texts.append(out.text)
            elif isinstance(out, OutputAudio):
                texts.append(out.transcript or "")
        role = "assistant"
    elif isinstance(item, SystemMessage):
        texts = [part.text for part in item.content]
        role = "system"
    else:
        return None
    return Turn(role, " ".join(text.strip() for text in texts if text.strip()))


async def transcript_of(stored: StoredItem, part: InputAudio) -> str:
    """A user audio part's text: its transcription (awaited), or the transcript it came with."""
    future = stored.transcript
    if future is None:
        return part.transcript or ""
    if future.cancelled():
        return ""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled, not the transcription
        return ""


async def turns_of(items: Iterable[StoredItem]) -> list[Turn]:
    """The turns of a reply's context: every item with text, and a final user turn when there is none.

    Gemma needs the conversation to end with a user turn; a response asked for after an assistant
    item (or with no items, as LiveKit's `generate_reply(instructions=...)` does) gets an empty one.
    """
    turns = [turn for turn in [await item_turn(stored) for stored in items] if turn is not None]
    spoken = [turn for turn in turns if turn.role in ("user", "assistant")]
    if not spoken or spoken[-1].role != "user":
        turns.append(Turn("user", ""))
    return turns
