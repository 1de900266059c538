"""SNAC streaming decode: windows of every live stream decoded in batches on one worker thread.

Which frames go into a window is `snac_windows`'s business (summarised here); the model is `snac_model`'s.

Window policy (settings `snac_context_frames` C, `snac_lookahead_frames` L, `snac_frames_per_decode` K;
defaults C=2, L=1, K=2): frames are emitted in chunks. A chunk of k frames starting at frame f is
emitted once frame f+k-1+L is known (or at the end of the stream), by decoding frames
``[f-C, f+k-1+L]`` (clipped to what exists) and keeping the 2048*k samples that belong to the chunk.
Chunk sizes ramp up 1, 2, 4, ... to K, so:

* every frame is emitted once, in order, as exactly 2048 samples: n frames -> 2048*n samples,
  with nothing trimmed at the start and the tail flushed at the end;
* the first audio needs L+1 frames = 14 tokens with L=1 (Canopy's reference needs 28 and never
  plays the first frame or the last two);
* in steady state each decode covers C+K+L frames for K emitted ones: 2.5 decoded frames per
  emitted frame with the defaults, against 4 for Canopy's (and K=1's) one-frame-per-window scheme.
  Larger K saves more SNAC work but delivers audio in K-frame (K*85 ms) steps, which a client
  pre-buffer must cover when generation runs just at real time. Steady windows have one static
  shape, so they batch across streams and run as CUDA graphs on a GPU (`snac_graphs.py`).

Why L=1, C=2: SNAC 24 kHz is purely convolutional with a receptive radius of ~2.3 frames, so
more left context is cheap (it only widens a batched decode) while every frame of lookahead
adds 85 ms to the first audio. L=1 gives 2048 samples of right context; the seams it leaves
are below SNAC's own per-call noise (its NoiseBlocks add fresh noise on every decode). Set
L=2 for Canopy's right context at +85 ms latency.

Decoding happens in one worker thread per decoder that batches the windows of all live
streams (grouped by window shape), converts to int16 on the device and copies to the host
once per group, so the event loop never runs SNAC.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .orpheus import frames_to_levels
from .snac_graphs import GraphSet
from .snac_model import decode_pcm
from .snac_windows import Window, WindowShape

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    window: Window
    future: asyncio.Future[bytes]
    loop: asyncio.AbstractEventLoop


class SnacDecoder:
    """Decodes windows for every live stream in batches, on one worker thread.

    On CUDA, `capture_graphs` records the steady window shape at a ladder of batch sizes; batches
    of that shape then replay a graph (padded up to the next captured size) instead of launching
    SNAC's few hundred kernels one by one.
    """

    def __init__(self, model: Any, device: str, max_batch: int = 64) -> None:
        self.model = model
        self.device = device
        self.max_batch = max_batch
        self.windows_decoded = 0
        self.frames_decoded = 0
        self.frames_emitted = 0
        self.batches = 0
        self.graphs: GraphSet | None = None
        self._jobs: queue.SimpleQueue[_Job | Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="snac-decoder", daemon=True)
        self._thread.start()

    async def decode(self, window: Window) -> bytes:
        """PCM (s16le, 2048 samples per emitted frame) of the window's emitted frames."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._jobs.put(_Job(window, future, loop))
        return await future

    async def capture_graphs(self, shape: WindowShape) -> None:
        """On CUDA, capture CUDA graphs for windows of `shape` (on the worker, between batches)."""
        if not self.device.startswith("cuda"):
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def capture() -> None:
            try:
                self.graphs = GraphSet.capture(self.model, shape, self.max_batch, self.device)
                loop.call_soon_threadsafe(_set_result, done, None)
            except Exception as exc:  # a failed capture leaves the eager path in place
                loop.call_soon_threadsafe(_set_exception, done, exc)

        self._jobs.put(capture)
        await done

    def decode_sync(self, windows: Sequence[Window]) -> list[bytes]:
        """Decode windows of one shape in one batch (the worker's unit of work)."""
        shape = windows[0].shape
        levels = frames_to_levels(np.asarray([w.frames for w in windows], dtype=np.int64))
        if self.graphs is not None and self.graphs.shape == shape:
            pcm = self.graphs.run(levels)
        else:
            codes = [torch.from_numpy(level).to(self.device) for level in levels]
            with torch.inference_mode():
                pcm = decode_pcm(self.model, codes, shape).cpu().numpy()  # one device-to-host copy
        self.windows_decoded += len(windows)
        self.frames_decoded += shape[0] * len(windows)
        self.frames_emitted += shape[2] * len(windows)
        self.batches += 1
        return [np.ascontiguousarray(row).astype("<i2", copy=False).tobytes() for row in pcm]

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not isinstance(job, _Job):
                job()
                continue
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(more, _Job):
                    self._jobs.put(more)  # control jobs wait for this batch
                    break
                jobs.append(more)
            self._decode_jobs(jobs)

    def _decode_jobs(self, jobs: list[_Job]) -> None:
        groups: dict[WindowShape, list[_Job]] = {}
        for job in jobs:
            if not job.future.cancelled():
                groups.setdefault(job.window.shape, []).append(job)
        for group in groups.values():
            try:
                results = self.decode_sync([job.window for job in group])
            except Exception as exc:
                logger.exception("SNAC decode failed")
                for job in group:
                    job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
                continue
            for job, pcm in zip(group, results, strict=True):
                job.loop.call_soon_threadsafe(_set_result, job.future, pcm)

    def close(self) -> None:
        """Stop the worker thread after the queued work."""
        self._jobs.put(None)
        self._thread.join(timeout=5)


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
