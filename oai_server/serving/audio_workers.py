"""A small bounded thread pool for the CPU work on input audio: decoding, resampling, the VAD.

Most of that work holds the GIL (PyAV's decoding and resampling, numpy), so more threads than a few only queue
for it, and each hand-over costs. On a 2-core machine, 32 decodes of a 5 s file took 286-361 ms in 32 threads,
against 84-101 ms in one and 105-151 ms in 4 (`bench/audio_cpu.py`, three runs). The VAD's onnxruntime call
releases the GIL, so decoding with the VAD gains less: 247-492 ms against 222-235 ms. asyncio's default
executor (cores + 4 threads, 36 on a 32-core GPU host) is the many-threads case. A pool of a few keeps this
work off the event loop without the convoy, and leaves the default executor to everything else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

THREAD_PREFIX = "oai-audio"


class AudioWorkers:
    """Runs blocking audio functions on at most ``workers`` threads (created on first use), off the event loop."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=THREAD_PREFIX)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a worker thread; a caller cancelled meanwhile leaves the call to finish."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop the threads once their current call returns; work not started yet is dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)
