"""A bare Realtime WebSocket client for tests: every server event is checked against the GA SDK's models.

`RawClient.recv` validates each event with the openai SDK's `RealtimeServerEvent` union (as the
Agents SDK does) and with our own models, and checks `event_id`; a test therefore fails on any
event a strict client would reject. `until` collects events up to a given type.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterable
from typing import Annotated, Any

import numpy as np
import websockets
from openai.types.realtime import RealtimeServerEvent as SDKServerEvent
from pydantic import Field, TypeAdapter

from oai_server.protocol.realtime import server_event_adapter

SDK_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[SDKServerEvent, Field(discriminator="type")])


class RawClient:
    """One connection; `events` keeps everything received."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> RawClient:
        """Connect and read `session.created`."""
        ws = await websockets.connect(url, max_size=None, **kwargs)
        client = cls(ws)
        first = await client.recv()
        assert first["type"] == "session.created", first
        return client

    async def close(self) -> None:
        """Close the socket."""
        await self.ws.close()

    async def send(self, event: dict[str, Any] | str | bytes) -> None:
        """Send an event (a dict as JSON; str and bytes as they are)."""
        await self.ws.send(json.dumps(event) if isinstance(event, dict) else event)

    async def recv(self, timeout: float = 60) -> dict[str, Any]:
        """The next event, validated."""
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), "the server sent a binary frame"
        event = json.loads(raw)
        assert isinstance(event.get("event_id"), str) and event["event_id"], event
        SDK_EVENT.validate_python(event)
        server_event_adapter().validate_python(event)
        self.events.append(event)
        return event

    async def until(self, kind: str | Iterable[str], timeout: float = 60) -> list[dict[str, Any]]:
        """Events up to and including the next one of type `kind` (or any of several)."""
        kinds = {kind} if isinstance(kind, str) else set(kind)
        out = []
        while True:
            event = await self.recv(timeout)
            out.append(event)
            if event["type"] in kinds:
                return out

    async def update(self, **session: Any) -> dict[str, Any]:
        """`session.update`, answered by `session.updated` (returned)."""
        await self.send({"type": "session.update", "session": session})
        events = await self.until(("session.updated", "error"))
        assert events[-1]["type"] == "session.updated", events[-1]
        return events[-1]["session"]  # type: ignore[no-any-return]

    async def say(self, text: str) -> None:
        """Add a user text message."""
        await self.send(
            {"type": "conversation.item.create",
             "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}
        )  # fmt: skip
        await self.until("conversation.item.done")


def pcm_of(events: list[dict[str, Any]], kind: str = "response.output_audio.delta") -> bytes:
    """The audio bytes of every delta in `events`."""
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == kind)


def b64(samples: np.ndarray) -> str:
    """float32 samples (-1..1) as base64 pcm16."""
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def types(events: list[dict[str, Any]]) -> list[str]:
    """The event types, in order."""
    return [e["type"] for e in events]
