"""A fault-injecting `TokenEngine` around a real one, for failure tests at every tier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from oai_server.engines.base import EngineError, EngineInfo, SamplingParams, TokenEngine


@dataclass(frozen=True)
class Fault:
    """What an armed `FaultyEngine` does once `after_tokens` tokens went out (or the reply ended first)."""

    after_tokens: int
    stall: bool = False
    """Stall forever (until cancelled) instead of raising."""


class FaultyEngine:
    """A `TokenEngine` around a real one: passes everything through, injects a `Fault` when armed."""

    def __init__(self, inner: TokenEngine) -> None:
        self.inner = inner
        self.info: EngineInfo = inner.info
        self.fault: Fault | None = None
        self.raised = 0
        """Faults raised."""
        self.stalled = 0
        """Requests that reached a stall."""
        self.cancelled = 0
        """Stalled requests that were cancelled (by the deadline or a disconnect)."""
        self.live: set[str] = set()
        """Requests whose `generate` has not finished (cleaned up) yet."""

    async def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        fault = self.fault
        deltas = self.inner.generate(prompt_token_ids, params, request_id)
        self.live.add(request_id)
        sent = 0
        try:
            async for delta in deltas:
                yield delta
                sent += len(delta)
                if fault is not None and sent >= fault.after_tokens:
                    await self._inject(fault, sent)
            if fault is not None:  # a reply shorter than `after_tokens` fails at its end instead
                await self._inject(fault, sent)
        finally:
            await deltas.aclose()  # aborts the real engine's request if it is still running
            self.live.discard(request_id)

    async def _inject(self, fault: Fault, sent: int) -> None:
        if fault.stall:
            self.stalled += 1
            try:
                await asyncio.Event().wait()  # nothing ever sets it
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        self.raised += 1
        raise EngineError(f"injected fault after {sent} tokens")

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    async def check_health(self) -> None:
        await self.inner.check_health()

    def active_requests(self) -> int:
        return self.inner.active_requests()

    async def close(self) -> None:
        await self.inner.close()
