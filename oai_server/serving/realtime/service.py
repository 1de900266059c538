"""`RealtimeServing`: the server's Realtime entry point: admits sessions and builds them.

A session holds one admission slot for its whole life (and each of its responses takes one
more while it runs), and at most `realtime_max_sessions` are open at once. A refused session
gets the OpenAI envelope (429 at capacity, 503 while draining) at the handshake.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import rate_limited
from ..admission import Ticket
from .session import RealtimeSession, SessionDeps
from .sink import EventSink


@dataclass
class SessionLease:
    """An admitted session's hold on the server; `release` is idempotent."""

    serving: RealtimeServing
    ticket: Ticket
    released: bool = False

    def release(self) -> None:
        """Give the session's slot back."""
        if not self.released:
            self.released = True
            self.ticket.release()
            self.serving.open -= 1
            if self.serving.deps.metrics is not None:
                self.serving.deps.metrics.realtime_session(False)


class RealtimeServing:
    """Admits and builds Realtime sessions."""

    def __init__(self, deps: SessionDeps) -> None:
        self.deps = deps
        self.open = 0

    async def admit(self) -> SessionLease:
        """Take a session slot and an admission slot; raises the 429 / 503 `APIError` when full or draining."""
        if self.open >= self.deps.settings.realtime_max_sessions:
            raise rate_limited(
                f"Too many Realtime sessions: at most {self.deps.settings.realtime_max_sessions} at once.", 1
            )
        ticket = await self.deps.admission.acquire()
        self.open += 1
        if self.deps.metrics is not None:
            self.deps.metrics.realtime_session(True)
        return SessionLease(self, ticket)

    def session(self, sink: EventSink, *, kind: str = "realtime", model: str | None = None) -> RealtimeSession:
        """A new session sending its events to `sink` (call `start` on it)."""
        return RealtimeSession(self.deps, sink, kind=kind, model=model)
