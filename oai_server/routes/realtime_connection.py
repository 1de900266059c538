"""One Realtime WebSocket at the edge: the receive loop, hostile-input limits, ordered sending, cleanup.

`RealtimeConnection` is the session's `EventSink`. Frames come in on one loop: a binary frame,
a frame over `realtime_max_message_bytes` (counted in characters), events past
`realtime_max_events_per_second` (a token bucket holding two seconds' worth), bad JSON, an
unknown `type` or a wrong field each get an `error` event naming the problem, and the session
goes on; a valid event goes to `RealtimeSession.handle`. No client event for
`realtime_idle_timeout_seconds` sends an `error` and closes the socket.

Events go out through one writer task from a bounded queue, so they leave in the order the
session produced them, a slow reader holds the producers back, and cancelling a producer
never cuts a frame in half; a client that takes no frame for `SEND_TIMEOUT_S` is closed (1011).
Audio deltas of a cancelled response still queued can be dropped (`discard_audio`). When the
client leaves, `serve` closes the session, which cancels its response and transcriptions
(aborting their engine requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from fastapi import WebSocket

from ..errors import APIError
from ..protocol.realtime import ClientEventError, parse_client_event
from ..protocol.realtime.server_events import ResponseOutputAudioDeltaEvent, ServerEvent
from ..serving.realtime.session import RealtimeSession
from ..settings import Settings

logger = logging.getLogger(__name__)

OUTBOX_LIMIT = 64
"""Server events queued for a slow reader before producers wait."""
SEND_TIMEOUT_S = 30.0
"""A frame the client has not taken in this long (it stopped reading) ends the session."""
IDLE_CLOSE_CODE = 1000


class RateLimiter:
    """A token bucket: `rate` events per second, bursts of `2 * rate`."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = 2 * rate
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        """Take one token if there is one."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RealtimeConnection:
    """A session's WebSocket: implements `EventSink` and runs the receive loop."""

    def __init__(self, websocket: WebSocket, settings: Settings) -> None:
        self.ws = websocket
        self.settings = settings
        self.closed = False
        self.stalled = False
        self._outbox: deque[ServerEvent] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._limiter = RateLimiter(settings.realtime_max_events_per_second)
        self._rate_error_at = 0.0

    # --- EventSink -----------------------------------------------------------------------------------

    async def send(self, event: ServerEvent) -> None:
        """Queue an event (waits while the queue is full); dropped once the socket is closed."""
        while len(self._outbox) >= OUTBOX_LIMIT and not self.closed:
            self._room.clear()
            await self._room.wait()
        if self.closed:
            return
        self._outbox.append(event)
        self._empty.clear()
        self._ready.set()

    def discard_audio(self, response_id: str) -> None:
        """Drop queued audio deltas of `response_id`."""
        kept = [
            e
            for e in self._outbox
            if not (isinstance(e, ResponseOutputAudioDeltaEvent) and e.response_id == response_id)
        ]
        if len(kept) != len(self._outbox):
            self._outbox = deque(kept)
            self._signal()

    def _signal(self) -> None:
        if len(self._outbox) < OUTBOX_LIMIT:
            self._room.set()
        if not self._outbox:
            self._empty.set()

    async def _writer(self) -> None:
        try:
            while True:
                while not self._outbox:
                    self._ready.clear()
                    await self._ready.wait()
                    if self.closed:
                        return
                event = self._outbox.popleft()
                self._signal()
                await asyncio.wait_for(self.ws.send_text(event.to_json()), SEND_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self.stalled = True
            logger.warning("realtime: the client stopped reading for %.0f s; closing the session", SEND_TIMEOUT_S)
        except Exception as exc:  # the client went away mid-send
            logger.debug("realtime: send failed: %s", exc)
        finally:
            self._shut()

    def _shut(self) -> None:
        self.closed = True
        self._outbox.clear()
        self._room.set()
        self._ready.set()
        self._empty.set()

    # --- receive loop ---------------------------------------------------------------------------------

    async def serve(self, session: RealtimeSession) -> None:
        """Run the session until the client leaves, idles out or stops reading; then cancel everything it runs."""
        writer = asyncio.create_task(self._writer(), name="realtime-writer")
        receiver = asyncio.create_task(self._receive(session), name="realtime-receiver")
        try:
            await asyncio.wait({writer, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            await session.close()
            self._shut()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if self.stalled:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(1011, "the client stopped reading"), 1.0)

    async def _receive(self, session: RealtimeSession) -> None:
        s = self.settings
        await session.start()
        while not self.closed:
            try:
                message = await asyncio.wait_for(self.ws.receive(), s.realtime_idle_timeout_seconds)
            except TimeoutError:
                await self._idle_out(session)
                return
            if message["type"] == "websocket.disconnect":
                return
            if not self._limiter.allow():
                await self._rate_limited(session)
                continue
            text = message.get("text")
            if text is None:
                await session.error(
                    ClientEventError(
                        "Binary frames are not supported: send each event as a JSON text frame "
                        "(audio goes base64-encoded in input_audio_buffer.append).",
                        None,
                        "invalid_frame",
                    )
                )
                continue
            if len(text) > s.realtime_max_message_bytes:
                await session.error(
                    ClientEventError(
                        f"The event is too large: {len(text)} characters; the limit is "
                        f"{s.realtime_max_message_bytes}. Send audio in smaller appends.",
                        None,
                        "message_too_large",
                    )
                )
                continue
            try:
                event = parse_client_event(text)
            except ClientEventError as exc:
                await session.error(exc)
                continue
            await session.handle(event)

    async def _rate_limited(self, session: RealtimeSession) -> None:
        now = time.monotonic()
        if now - self._rate_error_at < 1.0:
            return  # one error a second is enough; the excess events are dropped
        self._rate_error_at = now
        rate = self.settings.realtime_max_events_per_second
        await session.error(
            APIError(
                429,
                f"Too many events: at most {rate:g} per second. Events over the limit were dropped.",
                code="rate_limit_exceeded",
            )
        )

    async def _idle_out(self, session: RealtimeSession) -> None:
        seconds = self.settings.realtime_idle_timeout_seconds
        await session.error(
            APIError(
                408, f"The session was idle for {seconds:g} s and is closed.", type="server_error", code="idle_timeout"
            )
        )
        await self._flush()
        try:
            await self.ws.close(IDLE_CLOSE_CODE, "idle timeout")
        except Exception as exc:
            logger.debug("realtime: close failed: %s", exc)

    async def _flush(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), timeout)
