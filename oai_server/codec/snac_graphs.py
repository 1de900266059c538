"""CUDA graphs for SNAC decodes of the window shapes streams use.

SNAC's decoder is a few hundred small convolution kernels. Launched one by one from Python, a
small batch costs ~5 ms of launch overhead on an H100 (0.6 ms as a graph; ../shared/gpu), and that
time also competes with the vLLM engines for the GPU (and holds the GIL the event loop needs).
Streams spend almost all their windows in one shape (`WindowPolicy.steady_shape`), their first
windows (the ramp, `WindowPolicy.stream_shapes`) decide the time to first audio, and every stream ends
with a window of its own (`WindowPolicy.finish_shapes`), so the decode of each of those shapes' lengths is
captured at a ladder of batch sizes (`WindowPolicy.decode_shapes`: windows of one length share a decode, each
cutting its span after); a batch replays the smallest graph that holds it,
padded, and larger batches (a burst's first windows) are queued as slices of the largest graph and waited for
once (`QUEUED_SLICES`). SNAC's NoiseBlocks draw fresh noise on every replay (CUDA
graphs advance the RNG offset), as in eager mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .snac_model import decode_pcm
from .snac_windows import WindowShape

logger = logging.getLogger(__name__)


EXACT_BATCHES = 8
"""Every batch size up to this one has a graph of its own (no padding)."""

QUEUED_SLICES = 4
"""A batch past the largest graph is queued as up to this many slices of it, each with host buffers of its own, and
waited for once: a burst's first windows (a round of up to this many times `max_batch`) in one wait, not one each."""


def batch_ladder(max_batch: int) -> list[int]:
    """Captured batch sizes: every size up to `EXACT_BATCHES`, then powers of two and one and a half times them,
    and `max_batch` itself (all no larger than `max_batch`).

    A batch replays the smallest graph that holds it, padded, and padded rows cost GPU time: on an H200 the
    compiled decoder's K=4 graphs take 0.67 / 1.26 / 1.49 / 2.21 / 3.85 / 13.1 ms at 1 / 4 / 5 / 8 / 16 / 64
    windows (bench/results/h200_s23_random_weights/snac_small/). At 128 streams a round holds ~5 windows (one
    every 28 steps a stream) and the step profile there had SNAC's stream busy 2.1 ms a step, about one padded
    8-window replay; with powers of two a round cost 1.72 ms on average, with this ladder 1.46 (-15 %; -16 % at
    ~7 windows a round, 192 streams)."""
    sizes = set(range(1, min(EXACT_BATCHES, max_batch) + 1))
    power = EXACT_BATCHES
    while power < max_batch:
        sizes.update(size for size in (power * 3 // 2, power * 2) if size < max_batch)
        power *= 2
    return sorted({*sizes, max_batch})


@dataclass
class _Staging:
    """Pinned host buffers of one queued replay: its inputs, read by the copy in, and its PCM, written by the copy
    out."""

    codes: list[torch.Tensor]  # host copies of the graph's static inputs, one per SNAC level
    pcm: torch.Tensor  # host copy of the graph's static output

    @classmethod
    def like(cls, codes: Sequence[torch.Tensor], pcm: torch.Tensor) -> _Staging:
        """Host buffers shaped as a graph's `codes` and `pcm`."""
        pinned = [torch.empty(code.shape, dtype=code.dtype, pin_memory=True) for code in codes]
        return cls(pinned, torch.empty(pcm.shape, dtype=pcm.dtype, pin_memory=True))


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    codes: list[torch.Tensor]  # static inputs, one per SNAC level
    pcm: torch.Tensor  # static output, int16 on the device
    stagings: list[_Staging]  # host buffers, one per replay queued at once (`slots`)

    @property
    def slots(self) -> int:
        """Replays of this graph that may be queued at once (each with its own host buffers)."""
        return len(self.stagings)

    def launch(self, levels: Sequence[np.ndarray], slot: int = 0) -> Callable[[], np.ndarray]:
        """Queue the copies in, the replay and the copy out on the current stream, without waiting for them, through
        the host buffers of `slot`; the returned function reads the PCM once the stream has been synchronized. Until
        then that slot may not be launched again. Replays queued one after another share the graph's device buffers
        in stream order: each copy in comes after the copy out before it."""
        n = levels[0].shape[0]
        staging = self.stagings[slot]
        for static, staged, level in zip(self.codes, staging.codes, levels, strict=True):
            staged[:n].numpy()[...] = level
            static[:n].copy_(staged[:n], non_blocking=True)
        self.graph.replay()
        staging.pcm[:n].copy_(self.pcm[:n], non_blocking=True)
        return lambda: staging.pcm[:n].numpy().copy()

    def run(self, levels: Sequence[np.ndarray]) -> np.ndarray:
        collect = self.launch(levels)
        torch.cuda.current_stream().synchronize()
        return collect()


class GraphSet:
    """Captured decodes of one window shape at several batch sizes."""

    def __init__(self, shape: WindowShape, graphs: dict[int, _Graph]) -> None:
        self.shape = shape
        self._graphs = graphs
        self._sizes = sorted(graphs)

    @classmethod
    def capture(cls, model: Any, shape: WindowShape, max_batch: int, device: str, pool: Any = None) -> GraphSet:
        """Capture `shape` at every size of `batch_ladder(max_batch)`, largest first, in one memory
        pool (`pool`, shared with other shapes' sets: graphs replay one after another on one stream, and
        each replay's output is copied to the host, in stream order, before the next replay starts)."""
        length = shape[0]
        pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        graphs: dict[int, _Graph] = {}
        for batch in sorted(batch_ladder(max_batch), reverse=True):
            codes = [torch.zeros((batch, length << level), dtype=torch.long, device=device) for level in range(3)]
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.inference_mode(), torch.cuda.stream(side):
                for _ in range(2):  # warm the kernels (cuDNN picks its algorithms) before capture
                    decode_pcm(model, codes, shape)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads' CUDA calls stay legal (SNAC may capture inside the engine's process)
            with torch.inference_mode(), torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                pcm = decode_pcm(model, codes, shape)
            slots = QUEUED_SLICES if batch == max_batch else 1  # slices past the largest queue on it
            graphs[batch] = _Graph(graph, codes, pcm, [_Staging.like(codes, pcm) for _ in range(slots)])
        logger.info("SNAC CUDA graphs captured for window shape %s at batch sizes %s", shape, sorted(graphs))
        return cls(shape, graphs)

    def run(self, levels: Sequence[np.ndarray]) -> np.ndarray:
        """int16 PCM [B, lead + 2048 * count] for a batch of windows of this shape (`decode_pcm`)."""
        n = levels[0].shape[0]
        largest = self._sizes[-1]
        if n > largest:
            parts = [self.run([level[i : i + largest] for level in levels]) for i in range(0, n, largest)]
            return np.concatenate(parts)
        return self._graph_for(n).run(levels)

    def launch(self, levels: Sequence[np.ndarray]) -> Callable[[], np.ndarray]:
        """`run` without waiting: the batch is queued on the current stream, and the returned function reads its PCM
        once the stream has been synchronized; a batch past the largest graph is queued in slices of it (and its
        remainder in the graph that holds it), each through host buffers of its own, or, past those
        (`QUEUED_SLICES`), run in slices waited for at once. Until then no other batch of this shape may be
        launched."""
        n = levels[0].shape[0]
        largest = self._sizes[-1]
        if n <= largest:
            return self._graph_for(n).launch(levels)
        sizes = self._slice_sizes(n)
        if not self._fits(sizes):
            pcm = self.run(levels)
            return lambda: pcm
        reads = [
            self._graphs[size].launch([level[start : start + largest] for level in levels], sizes[:index].count(size))
            for index, (size, start) in enumerate(zip(sizes, range(0, n, largest), strict=True))
        ]
        return lambda: np.concatenate([read() for read in reads])

    def queues(self, n: int) -> bool:
        """Whether `launch` queues a batch of `n` windows without waiting (its slices' graphs have host buffers for
        each of them)."""
        return self._fits(self._slice_sizes(n))

    def _slice_sizes(self, n: int) -> list[int]:
        """The graph (by batch size) each slice of `n` windows replays: the largest, and the remainder's own."""
        largest = self._sizes[-1]
        return [self._size_for(min(largest, n - start)) for start in range(0, n, largest)]

    def _fits(self, sizes: list[int]) -> bool:
        """Whether each graph of `sizes` has host buffers for every slice it replays."""
        return all(sizes.count(size) <= self._graphs[size].slots for size in sizes)

    def _graph_for(self, n: int) -> _Graph:
        """The smallest graph that holds `n` windows."""
        return self._graphs[self._size_for(n)]

    def _size_for(self, n: int) -> int:
        """The batch size of the smallest graph that holds `n` windows."""
        return next(s for s in self._sizes if s >= n)
