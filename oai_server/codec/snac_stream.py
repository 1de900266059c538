"""SNAC streaming decode: windows of every live stream decoded in batches on one worker thread.

Which frames go into a window, and why (C=2 frames of context, L=1 of lookahead, K=2 per decode), is
`snac_windows`'s business; the model and one batched decode are `snac_model`'s.

Decoding happens in one worker thread per decoder that batches the windows of all live
streams (grouped by the length they decode, `Window.decode_shape`), converts to int16 on the device and copies
to the host once per group, so the event loop never runs SNAC; each window then cuts its span of its row.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .orpheus import frames_to_levels
from .snac_fusion import SnacFusion, check_fusion, graph_model
from .snac_graphs import QUEUED_SLICES, GraphSet
from .snac_model import decode_pcm
from .snac_windows import Window, WindowShape

logger = logging.getLogger(__name__)


class SnacDecoding(Protocol):
    """What the speech pipeline needs of SNAC: one decoder, or one per Orpheus replica behind a router."""

    def for_stream(self, request_id: str) -> SnacDecoding:
        """The decoder for the windows of the Orpheus request `request_id` (asked once its tokens flow)."""
        ...

    async def decode(self, window: Window) -> bytes:
        """PCM (s16le) of the window's `lead` samples, then 2048 per emitted frame."""
        ...

    async def capture_graphs(self, shapes: Sequence[WindowShape]) -> None:
        """Capture CUDA graphs of `shapes` where the decoding runs on CUDA (else nothing)."""
        ...

    def window_counts(self) -> tuple[int, int]:
        """(windows decoded so far, of them without a CUDA graph)."""
        ...

    def work_seconds(self) -> tuple[float, float]:
        """(seconds the decoding worker spent in rounds, seconds windows waited for their round, summed) so far."""
        ...

    def close(self) -> None:
        """Stop decoding after the queued work (blocking)."""
        ...


@dataclass
class _Job:
    window: Window
    future: asyncio.Future[bytes]
    loop: asyncio.AbstractEventLoop
    queued_at: float


class SnacDecoder:
    """Decodes windows for every live stream in batches, on one worker thread.

    On CUDA, `capture_graphs` records window shapes (the ramp and the steady one) at a ladder of
    batch sizes; batches of those shapes then replay a graph (padded up to the next captured size)
    instead of launching SNAC's few hundred kernels one by one. A worker round decodes its earliest
    windows first (smallest emit index: the ramp of streams that have no audio yet).
    """

    def __init__(
        self,
        model: Any,
        device: str,
        max_batch: int = 64,
        fusion: SnacFusion = "off",
        round_slices: int = 1,
    ) -> None:
        self.model = model
        self.device = device
        self.max_batch = max_batch
        if not 1 <= round_slices <= QUEUED_SLICES:
            raise ValueError(f"round_slices must be 1 to {QUEUED_SLICES}, not {round_slices}")
        self.round_limit = max_batch * (round_slices if device.startswith("cuda") else 1)
        """Windows a worker round takes at most: on CUDA up to `round_slices` (at most `QUEUED_SLICES`) graph batches,
        a burst's first windows in one round, queued in slices and waited for once (`GraphSet.launch`); eager decodes
        still go `max_batch` at a time."""
        self.fusion = check_fusion(fusion)
        self.windows_decoded = 0
        self.eager_windows = 0
        """Windows decoded without a CUDA graph (every window on CPU; on CUDA, those of a shape not captured)."""
        self.frames_decoded = 0
        self.frames_emitted = 0
        self.batches = 0
        self.rounds = 0
        self.busy_s = 0.0
        """Seconds the worker spent decoding rounds: near the wall time, SNAC is what streams wait for."""
        self.queued_s = 0.0
        """Seconds windows waited in the queue before their round began, summed over the windows."""
        self.graphs: dict[WindowShape, GraphSet] = {}
        self._jobs: queue.SimpleQueue[_Job | Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="snac-decoder", daemon=True)
        self._thread.start()

    def for_stream(self, request_id: str) -> SnacDecoder:
        """This decoder: it batches the windows of every stream."""
        return self

    async def decode(self, window: Window) -> bytes:
        """PCM (s16le) of the window's `lead` samples, then 2048 per emitted frame."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._jobs.put(_Job(window, future, loop, time.perf_counter()))
        return await future

    async def capture_graphs(self, shapes: Sequence[WindowShape]) -> None:
        """On CUDA, capture CUDA graphs for windows of each of `shapes` (on the worker, between batches)."""
        if not self.device.startswith("cuda"):
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def capture() -> None:
            try:
                self.capture(shapes)
                loop.call_soon_threadsafe(_set_result, done, None)
            except Exception as exc:  # a failed capture leaves the eager path in place
                loop.call_soon_threadsafe(_set_exception, done, exc)

        self._jobs.put(capture)
        await done

    def capture(self, shapes: Sequence[WindowShape]) -> None:
        """Capture the graphs of `shapes` now, on this thread (`capture_graphs` runs it on the worker)."""
        self.graphs.update(capture_graph_sets(self.model, shapes, self.max_batch, self.device, self.fusion))

    def has_graph(self, shape: WindowShape) -> bool:
        """Whether windows of `shape` replay a captured graph."""
        return shape in self.graphs

    def window_counts(self) -> tuple[int, int]:
        """(windows decoded so far, of them without a CUDA graph)."""
        return self.windows_decoded, self.eager_windows

    def work_seconds(self) -> tuple[float, float]:
        """(seconds the worker spent in rounds, seconds windows waited for their round, summed) so far."""
        return self.busy_s, self.queued_s

    def decode_frames(self, frames: np.ndarray, shape: WindowShape) -> np.ndarray:
        """int16 PCM ``[B, lead + 2048 * emitted]`` of a batch of windows of one shape (``frames``: ``[B, F, 7]``)."""
        return decode_frames(self.model, self.device, self.graphs, frames, shape)

    def decode_sync(self, windows: Sequence[Window]) -> list[bytes]:
        """Decode windows of one length in one batch."""
        return self._pcm_of(windows, self.decode_frames(window_frames(windows), windows[0].decode_shape))

    def decode_groups(self, groups: Sequence[Sequence[Window]]) -> Iterator[list[bytes] | Exception]:
        """A worker round: each group's PCM (windows of one length each), or the exception that failed it, in order
        (`decode_frame_batches`: the groups' graphs are queued together and waited for once)."""
        results = self.decode_batches([(window_frames(windows), windows[0].decode_shape) for windows in groups])
        for windows, pcm in zip(groups, results, strict=True):
            yield pcm if isinstance(pcm, Exception) else self._pcm_of(windows, pcm)

    def decode_batches(self, batches: Sequence[tuple[np.ndarray, WindowShape]]) -> list[np.ndarray | Exception]:
        """A round's batches (``frames`` ``[B, F, 7]`` of one shape each): each one's PCM, or the exception that
        failed it (`decode_frame_batches`)."""
        return decode_frame_batches(self.model, self.device, self.graphs, batches)

    def _pcm_of(self, windows: Sequence[Window], pcm: np.ndarray) -> list[bytes]:
        """Count a decoded batch of one decode shape and cut each window's span (`Window.cut`) of its row of the PCM
        into one s16le string."""
        self.windows_decoded += len(windows)
        self.eager_windows += 0 if self.has_graph(windows[0].decode_shape) else len(windows)
        self.frames_decoded += len(windows[0].frames) * len(windows)
        self.frames_emitted += sum(window.count for window in windows)
        self.batches += 1
        return [
            np.ascontiguousarray(row[window.cut]).astype("<i2", copy=False).tobytes()
            for window, row in zip(windows, pcm, strict=True)
        ]

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not isinstance(job, _Job):
                job()
                continue
            jobs = [job]
            while len(jobs) < self.round_limit:
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
        """Decode a round's windows, grouped by the length they decode, count the round, then hand each window its
        PCM (or the error) on its loop: whoever holds a window's PCM finds its round counted."""
        began = time.perf_counter()
        by_shape: dict[WindowShape, list[_Job]] = {}
        for job in jobs:
            if not job.future.cancelled():
                by_shape.setdefault(job.window.decode_shape, []).append(job)
        groups = [batch for shape, group in by_shape.items() for batch in self._batches_of(shape, group)]
        ordered = sorted(groups, key=lambda group: min(job.window.emit for job in group))
        decoded: list[list[bytes] | Exception]
        try:
            decoded = list(self.decode_groups([[job.window for job in group] for group in ordered]))
        except Exception as exc:  # never leave a window waiting
            decoded = [exc] * len(ordered)
        self.rounds += 1
        self.busy_s += time.perf_counter() - began
        self.queued_s += sum(began - job.queued_at for job in jobs)
        for group, results in zip(ordered, decoded, strict=True):
            if isinstance(results, Exception):
                logger.error("SNAC decode failed", exc_info=results)
                for job in group:
                    job.loop.call_soon_threadsafe(_set_exception, job.future, results)
                continue
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bytes], bytes]]] = {}
            for job, pcm in zip(group, results, strict=True):
                by_loop.setdefault(job.loop, []).append((job.future, pcm))
            for loop, done in by_loop.items():  # one wake-up of each loop per batch, not one per window
                loop.call_soon_threadsafe(_set_results, done)

    def _batches_of(self, shape: WindowShape, jobs: list[_Job]) -> list[list[_Job]]:
        """A round's windows of one shape as the batches they decode in: one through its graphs (queued in slices
        past the largest), or, without a graph, `max_batch` at a time (eager decoding's memory grows with it)."""
        size = len(jobs) if self.has_graph(shape) else self.max_batch
        return [jobs[i : i + size] for i in range(0, len(jobs), size)]

    def close(self) -> None:
        """Stop the worker thread after the queued work."""
        self._jobs.put(None)
        self._thread.join(timeout=5)


def window_frames(windows: Sequence[Window]) -> np.ndarray:
    """The frames of windows of one length as one batch, int16 ``[B, F, 7]``."""
    return np.asarray([w.frames for w in windows], dtype=np.int16)


def capture_graph_sets(
    model: Any, shapes: Sequence[WindowShape], max_batch: int, device: str, fusion: SnacFusion = "off"
) -> dict[WindowShape, GraphSet]:
    """CUDA graphs of SNAC decodes for each of `shapes` at a ladder of batch sizes, in one memory pool,
    of the model or of its compiled decoder (`fusion`, `snac_fusion.py`). A shape whose capture fails is left out
    (logged; its windows decode eagerly) rather than taking every other shape's graphs with it."""
    pool = torch.cuda.graph_pool_handle()
    captured = graph_model(model, fusion)
    graphs: dict[WindowShape, GraphSet] = {}
    for shape in sorted(shapes, reverse=True):  # the largest first: one pool serves all
        try:
            graphs[shape] = GraphSet.capture(captured, shape, max_batch, device, pool)
        except Exception:
            logger.exception("SNAC CUDA graphs of window shape %s failed; its windows decode eagerly", shape)
    return graphs


def decode_frame_batches(
    model: Any,
    device: str,
    graphs: dict[WindowShape, GraphSet],
    batches: Sequence[tuple[np.ndarray, WindowShape]],
) -> list[np.ndarray | Exception]:
    """A round of batches (``frames`` ``[B, F, 7]`` of one shape each): each one's int16 PCM, or the exception that
    failed it, in order (`launch_frame_batches`, then waited for once)."""
    return launch_frame_batches(model, device, graphs, batches).collect()


@dataclass
class LaunchedRound:
    """A round's batches queued on a CUDA stream (`launch_frame_batches`): what each will read once the stream has
    done (or its PCM or error already), and an event recorded after them to ask whether it has."""

    results: list[np.ndarray | Exception | Callable[[], np.ndarray]]
    device: str
    done: Any = None
    """A CUDA event recorded after the round's work (`record`), or None."""

    def ready(self) -> bool:
        """Whether `collect` would not wait: the event has passed, or there is none to wait for."""
        return self.done is None or bool(self.done.query())

    def collect(self) -> list[np.ndarray | Exception]:
        """Each batch's PCM or error, in order: at once if the event has passed, else after waiting for the stream
        (this thread's current one, the round's). A step must not wait: a wait hands the GIL to whichever thread
        wants it, and the engine's thread may then wait for it back."""
        passed = self.done is not None and bool(self.done.query())
        return _collect(self.results, self.device, wait=not passed)


def launch_frame_batches(
    model: Any,
    device: str,
    graphs: dict[WindowShape, GraphSet],
    batches: Sequence[tuple[np.ndarray, WindowShape]],
    record: bool = False,
) -> LaunchedRound:
    """Queue a round of batches on the current stream without waiting for them, and with `record` an event after
    them (on CUDA, when any batch replays a graph): `LaunchedRound`.

    The batches with a graph are queued one after another, to be waited for once. In the engine's process SNAC's
    stream has the lowest priority, so a wait can last until the engine's kernels leave SMs free, and each wait hands
    the GIL back and forth with the engine's scheduler: a round of several shapes (streams starting and ending) that
    waited for each in turn could span several engine steps. A shape met twice is waited for before its second
    launch (its graph's buffers are in use); eager batches decode, and wait, as they go.
    """
    results: list[np.ndarray | Exception | Callable[[], np.ndarray]] = []
    pending: set[WindowShape] = set()
    for frames, shape in batches:
        try:
            graph_set = graphs.get(shape)
            if graph_set is None:
                results.append(decode_frames(model, device, graphs, frames, shape))
                continue
            if shape in pending:
                results[:] = _collect(results, device)
                pending.clear()
            results.append(graph_set.launch(frames_to_levels(frames.astype(np.int64, copy=False))))
            pending.add(shape)
        except Exception as exc:
            results.append(exc)
    done = None
    if record and pending and device.startswith("cuda"):
        done = torch.cuda.Event()
        done.record()
    return LaunchedRound(results, device, done)


def _collect(
    results: Sequence[np.ndarray | Exception | Callable[[], np.ndarray]], device: str, wait: bool = True
) -> list[np.ndarray | Exception]:
    """Wait for the stream once (unless told its work is done), then read every launched batch's PCM (each of them
    the device's error if it failed the queued work)."""
    if any(callable(result) for result in results):
        try:
            if wait and device.startswith("cuda"):
                torch.cuda.current_stream().synchronize()
        except Exception as exc:
            return [exc if callable(result) else result for result in results]
    return [result() if callable(result) else result for result in results]


def decode_frames(
    model: Any, device: str, graphs: dict[WindowShape, GraphSet], frames: np.ndarray, shape: WindowShape
) -> np.ndarray:
    """int16 PCM ``[B, lead + 2048 * emitted]`` of windows of one shape, through its graph set when there is one."""
    levels = frames_to_levels(frames.astype(np.int64, copy=False))
    graph_set = graphs.get(shape)
    if graph_set is not None:
        return graph_set.run(levels)
    codes = [torch.from_numpy(level).to(device) for level in levels]
    with torch.inference_mode():
        return decode_pcm(model, codes, shape).cpu().numpy()  # one device-to-host copy


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_results(done: list[tuple[asyncio.Future[bytes], bytes]]) -> None:
    for future, value in done:
        _set_result(future, value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
