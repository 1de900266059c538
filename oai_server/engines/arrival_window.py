"""New requests let into a busy engine in groups, so that their prompts share engine steps.

vLLM runs a step that holds a prompt differently from a step of decodes alone: the decodes replay one full CUDA
graph, while a step with a prompt in it runs piecewise graphs with the attention launched from Python layer by
layer, and the scheduler and input batch do per-request work for every arrival. Arrivals that come within a few
milliseconds of each other can share one such step: the window holds the first arrival for ``window_s`` and lets
it in with every request that came meanwhile. On an H200 at 128 Orpheus streams coming and going ~35 a second
(random weights, `bench/results/h200_s30_random_weights/`, `bench/profile_engine.py --churn`), a 30 ms window
(~2.4 arrivals a group) cut the engine time each new stream cost from 5.0 to 2.4 ms for raw vLLM and from 12.5 to
1.7 ms for our pipeline: with it, streams coming and going cost our pipeline 6 % of its steady tokens a second
in place of 30 %.

An idle or lightly loaded engine lets every request in at once (under ``busy_from`` requests in flight), so the
time to first audio of a lone stream is unchanged; past it a request waits at most ``window_s``.
"""

from __future__ import annotations

import asyncio

BUSY_FROM = 16
"""Requests in flight from which arrivals wait for their group: below it the steps are short and the wait would
be most of a request's time to first audio."""


class ArrivalWindow:
    """Groups the arrivals of one engine: `enter` returns at once, or when the group it joined is let in."""

    def __init__(self, window_s: float, busy_from: int = BUSY_FROM) -> None:
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s!r}")
        self.window_s = window_s
        self.busy_from = busy_from
        self._group: asyncio.Future[None] | None = None
        self.groups = 0
        """Groups let in after a wait (each opened by its first arrival)."""
        self.held = 0
        """Requests that waited for their group."""

    async def enter(self, in_flight: int) -> int:
        """Wait until this arrival's group is let in, or return at once: no window, or fewer than `busy_from`
        requests in flight. Returns the group's number (1, 2, ...), or 0 for an arrival let in at once. Cancelling
        a waiter leaves the group to the others."""
        if self.window_s <= 0 or in_flight < self.busy_from:
            return 0
        group = self._group
        if group is None:
            loop = asyncio.get_running_loop()
            group = self._group = loop.create_future()
            loop.call_later(self.window_s, self._let_in, group)
            self.groups += 1
        number = self.groups
        self.held += 1
        await asyncio.shield(group)
        return number

    def _let_in(self, group: asyncio.Future[None]) -> None:
        self._group = None  # one group is open at a time, and only its own timer closes it
        group.set_result(None)  # shielded: no waiter's cancellation reaches it
