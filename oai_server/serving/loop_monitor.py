"""Event-loop lag: how late the loop runs a timer, sampled for the server's whole life.

Every request, stream and health check shares one event loop; anything CPU-bound that runs on
it (instead of in a worker thread) delays all of them by as long as it runs. `LoopLagMonitor`
sleeps `interval` seconds at a time and records how much later than asked it woke up; the
samples go to `oai_event_loop_lag_seconds` and the largest recent one is kept for tests and the
bench (`max_since`). Each sample also notes how much CPU the loop's own thread used meanwhile:
lag with the loop thread busy is work done on the loop (what must never happen for long); lag
with it idle is waiting for the CPU or for the GIL held by another thread (`max_busy_since`).

`freeze_startup_heap` moves everything allocated while starting (models, tokenizers, imported
modules: ~500,000 objects) out of the garbage collector's reach: a full collection walked them all
and held the GIL, and so the loop, for 200-450 ms each time. It also raises the youngest generation's
threshold (`--gc-young-threshold`): the collector runs far less often while a burst comes in.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable

DEFAULT_INTERVAL = 0.025
"""Seconds between samples: fine enough to see a 50 ms stall, cheap (40 wake-ups a second)."""


def freeze_startup_heap(young_threshold: int = 0) -> int:
    """`gc.freeze()` once startup is complete (collect first, so no garbage is frozen); the objects frozen.

    A `young_threshold` above 0 also sets the youngest generation's threshold (Python's is 700 allocations). Under
    hundreds of streams, a collection every 700 allocations ran ~15 times per request of a burst, and each one
    promoted the objects of every stream in flight toward the older generations, whose collections cost more.
    """
    gc.collect()
    gc.freeze()
    if young_threshold > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)
    return gc.get_freeze_count()


class LoopLagMonitor:
    """Samples the running loop's lag; `observe` (e.g. `Metrics.observe_loop_lag`) gets each sample."""

    def __init__(self, observe: Callable[[float], None] | None = None, interval: float = DEFAULT_INTERVAL) -> None:
        self.observe = observe
        self.interval = interval
        self.samples = 0
        self.worst = 0.0
        """The largest lag seen since the monitor started, in seconds."""
        self._task: asyncio.Task[None] | None = None
        self._marks: list[tuple[float, float, float]] = []  # (when, lag, busy) of samples over 1 ms

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            asked = time.monotonic() + self.interval
            cpu = time.thread_time()
            await asyncio.sleep(self.interval)
            self.record(time.monotonic() - asked, time.thread_time() - cpu)

    def record(self, lag: float, loop_cpu: float = 0.0) -> None:
        """Take one sample: the lag, and the CPU the loop thread used during the interval (also usable by a test)."""
        lag = max(0.0, lag)
        self.samples += 1
        self.worst = max(self.worst, lag)
        if lag > 0.001:
            self._marks.append((time.monotonic(), lag, min(lag, max(0.0, loop_cpu))))
            if len(self._marks) > 4096:
                del self._marks[:2048]
        if self.observe is not None:
            self.observe(lag)

    def max_since(self, since: float) -> float:
        """The largest lag sampled after `since` (a `time.monotonic()` value); 0.0 when none over 1 ms."""
        return max((lag for when, lag, _ in self._marks if when >= since), default=0.0)

    def max_busy_since(self, since: float) -> float:
        """The largest part of a lag sampled after `since` that the loop thread spent computing (see above)."""
        return max((busy for when, _, busy in self._marks if when >= since), default=0.0)

    def start(self) -> None:
        """Start sampling on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        """Stop sampling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
