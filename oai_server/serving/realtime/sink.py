"""Where a session's server events go: the transport implements `EventSink`."""

from __future__ import annotations

from typing import Protocol

from ...protocol.realtime.server_events import ServerEvent


class EventSink(Protocol):
    """The transport side of a session: sends events in order, can drop audio not yet sent."""

    async def send(self, event: ServerEvent) -> None:
        """Queue one event for the client (waits while the transport's queue is full; never raises
        because the client left: the session is closed by the transport then)."""
        ...

    def discard_audio(self, response_id: str) -> None:
        """Drop `response.output_audio.delta` events of `response_id` that are queued but not yet sent
        (barge-in: the interrupted reply's audio is never sent after `speech_started`)."""
        ...
