"""SNAC streaming decode: frames in, 24 kHz s16le PCM out, each frame emitted exactly once.

Window policy (settings `snac_context_frames` C, `snac_lookahead_frames` L; defaults C=2, L=1):
frame f is emitted once frame f+L is known (or at the end of the stream), by decoding frames
``[f-C, f+L]`` (clipped to what exists) and keeping the 2048 samples that belong to f. So:

* every frame is emitted once, in order, as exactly 2048 samples: n frames -> 2048*n samples,
  with nothing trimmed at the start and the tail flushed at the end;
* the first audio needs L+1 frames = 14 tokens with L=1 (Canopy's reference needs 28 and never
  plays the first frame or the last two);
* each emitted frame costs one decode of C+1+L frames (4 with the defaults, like Canopy's
  28-token window); static shapes in steady state, so windows batch across streams.

Why L=1, C=2: SNAC 24 kHz is purely convolutional with a receptive radius of ~2.3 frames, so
more left context is cheap (it only widens a batched decode) while every frame of lookahead
adds 85 ms to the first audio. L=1 gives 2048 samples of right context; the seams it leaves
are below SNAC's own per-call noise (its NoiseBlocks add fresh noise on every decode). Set
L=2 for Canopy's right context at +85 ms latency.

Decoding happens in one worker thread per decoder that batches the windows of all live
streams (grouped by window length), converts to int16 on the device and copies to the host
once per group, so the event loop never runs SNAC.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .orpheus import SAMPLES_PER_FRAME, frames_to_levels

logger = logging.getLogger(__name__)

Frame = tuple[int, ...]


@dataclass(frozen=True)
class Window:
    """Frames to decode together, and which of them to emit."""

    frames: tuple[Frame, ...]
    emit: int
    """Index in `frames` of the frame whose samples are emitted."""


class WindowPlanner:
    """Decides which window to decode for each frame of one stream (pure; no I/O)."""

    def __init__(self, context_frames: int = 2, lookahead_frames: int = 1) -> None:
        self.context = context_frames
        self.lookahead = lookahead_frames
        self._frames: list[Frame] = []
        self._next_emit = 0

    def _window(self, frame_index: int) -> Window:
        start = max(0, frame_index - self.context)
        end = min(len(self._frames), frame_index + self.lookahead + 1)
        return Window(tuple(self._frames[start:end]), frame_index - start)

    def add(self, frames: Sequence[Frame]) -> list[Window]:
        """Add complete frames; return the windows whose frames can now be emitted."""
        self._frames.extend(frames)
        ready = []
        while self._next_emit + self.lookahead < len(self._frames):
            ready.append(self._window(self._next_emit))
            self._next_emit += 1
        self._trim()
        return ready

    def finish(self) -> list[Window]:
        """End of stream: the windows of the frames still waiting for lookahead."""
        ready = []
        while self._next_emit < len(self._frames):
            ready.append(self._window(self._next_emit))
            self._next_emit += 1
        return ready

    def _trim(self) -> None:
        # Keep only the frames later windows can still need, so memory stays O(C + L).
        drop = max(0, self._next_emit - self.context)
        if drop > 64:
            del self._frames[:drop]
            self._next_emit -= drop


def load_snac(name_or_path: str, device: str) -> torch.nn.Module:
    """Load a SNAC model from a local dir (config.json + pytorch_model.bin) or a Hub id."""
    from snac import SNAC

    from ..engines.loading import ModelLoadError

    try:
        if Path(name_or_path).is_dir():
            model = SNAC.from_pretrained(str(name_or_path))
        else:
            model = SNAC.from_pretrained(name_or_path)
    except Exception as exc:  # hub errors come in many types
        raise ModelLoadError(
            f"Could not load the SNAC decoder '{name_or_path}': {exc}. Check network access to the "
            "Hugging Face Hub (set HF_TOKEN if needed) or pass a local path, or run with --demo "
            "for the offline demo profile."
        ) from exc
    return model.to(device).eval()


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass
class _Job:
    window: Window
    future: asyncio.Future[bytes]
    loop: asyncio.AbstractEventLoop


class SnacDecoder:
    """Decodes windows for every live stream in batches, on one worker thread."""

    def __init__(self, model: Any, device: str, max_batch: int = 64) -> None:
        self.model = model
        self.device = device
        self.max_batch = max_batch
        self.windows_decoded = 0
        self.batches = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="snac-decoder", daemon=True)
        self._thread.start()

    async def decode(self, window: Window) -> bytes:
        """PCM (s16le, 2048 samples) of the window's emitted frame."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._jobs.put(_Job(window, future, loop))
        return await future

    def decode_sync(self, windows: Sequence[Window]) -> list[bytes]:
        """Decode windows of one length in one batch (the worker's unit of work)."""
        length = len(windows[0].frames)
        codes = [frames_to_levels(w.frames) for w in windows]
        tensors = [torch.tensor([c[level] for c in codes], dtype=torch.long, device=self.device) for level in range(3)]
        with torch.inference_mode():
            audio = self.model.decode(tensors)[:, 0, :]  # [B, 2048 * length]
            pcm = (audio.clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16)
            assert pcm.shape[-1] == SAMPLES_PER_FRAME * length
            starts = torch.tensor([w.emit * SAMPLES_PER_FRAME for w in windows], device=self.device)
            index = starts[:, None] + torch.arange(SAMPLES_PER_FRAME, device=self.device)[None, :]
            frames = torch.gather(pcm, 1, index).cpu().numpy()  # one device-to-host copy
        return [np.ascontiguousarray(row).astype("<i2", copy=False).tobytes() for row in frames]

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)
                    break
                jobs.append(more)
            self._decode_jobs(jobs)

    def _decode_jobs(self, jobs: list[_Job]) -> None:
        live = [job for job in jobs if not job.future.cancelled()]
        groups: dict[int, list[_Job]] = {}
        for job in live:
            groups.setdefault(len(job.window.frames), []).append(job)
        for group in groups.values():
            try:
                results = self.decode_sync([job.window for job in group])
            except Exception as exc:
                logger.exception("SNAC decode failed")
                for job in group:
                    job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
                continue
            self.windows_decoded += len(group)
            self.batches += 1
            for job, pcm in zip(group, results, strict=True):
                job.loop.call_soon_threadsafe(_set_result, job.future, pcm)

    def close(self) -> None:
        """Stop the worker thread after the queued work."""
        self._jobs.put(None)
        self._thread.join(timeout=5)


def _set_result(future: asyncio.Future[bytes], value: bytes) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[bytes], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
