"""Admission control: a bound on requests served at once, a bounded queue with a timeout.

A request takes a slot before its 200 is sent and keeps it until its body is finished or
abandoned. Past `max_queued` waiting requests, or after `queue_timeout_seconds` in the queue,
the answer is 429 with `retry-after`, never a hang. While draining for shutdown every new
request gets 503.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from ..errors import APIError, rate_limited


class Ticket:
    """A held slot; `release` is idempotent."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    def release(self) -> None:
        """Give the slot back."""
        if not self._released:
            self._released = True
            self._admission._release()


class HeldBody:
    """Wraps a streamed body so the slot is released when it ends, fails or is closed unstarted."""

    def __init__(self, body: AsyncIterator[bytes], ticket: Ticket) -> None:
        self._body = body
        self._ticket = ticket

    def __aiter__(self) -> HeldBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._body)
        except BaseException:
            self._ticket.release()
            raise

    async def aclose(self) -> None:
        """Close the body and release the slot."""
        try:
            close = getattr(self._body, "aclose", None)
            if close is not None:
                await close()
        finally:
            self._ticket.release()


class Admission:
    """Counts active and queued requests against the configured limits."""

    def __init__(self, max_active: int, max_queued: int, queue_timeout: float) -> None:
        self.max_active = max_active
        self.max_queued = max_queued
        self.queue_timeout = queue_timeout
        self.active = 0
        self.draining = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiters)

    async def acquire(self) -> Ticket:
        """Take a slot, waiting in the queue if needed; 429 when the queue is full or too slow."""
        if self.draining:
            raise APIError(
                503,
                "The server is shutting down.",
                type="server_error",
                code="shutting_down",
                headers={"retry-after": "1"},
            )
        if self.active < self.max_active and not self._waiters:
            self.active += 1
            self._idle.clear()
            return Ticket(self)
        if len(self._waiters) >= self.max_queued:
            raise rate_limited("The server is at capacity; please retry shortly.", 1)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as we gave up: pass it on
            else:
                waiter.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise rate_limited("The request waited too long in the queue; please retry.", 1) from None
            raise
        return Ticket(self)  # the releasing request handed its slot over

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    def drain(self) -> None:
        """Stop admitting: from now on every new request gets 503 (in-flight ones go on)."""
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Stop admitting and wait for in-flight requests; True if all finished in time."""
        self.drain()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
