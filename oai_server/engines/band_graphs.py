"""CUDA graphs of the slot processor's band work (`--tts-band-graphs`): the penalty and top-p of a step, one launch.

At 192 streams on an H200 the Orpheus engine core is host-bound: its main thread holds the GIL 73 % of the time,
and py-spy found it inside the slot processor's `apply` 20 % of the time, mostly in torch calls, each a kernel
launch that gives up the GIL and takes it back (`bench/results/h200_s17_random_weights/`). What `apply` does on
the band's 4 097 columns of every row, the repetition penalty and then top-p (about 15 kernels), has the same
shapes for as long as the batch has the same number of rows. So it is captured once per bucket of rows and
replayed: one launch. Gathering the columns into the graph's input, looking the seen table up and scattering the
result back stay outside the graph, on buffers it reads.

Only the common batch runs through a graph: every opted-in row filtered here and drawn by vLLM, none with a top-k,
with or without a penalty (`graph_for` says None otherwise and the processor runs eagerly). Rows are padded to the
bucket; padded rows compute values nobody reads. The graphs of every bucket up to the engine's largest batch are
captured together, the first time a batch takes this path (in the server's warm-up). Captured one at a time as a
bucket was first met, they most likely delayed a burst: in one H200 run the graphs gave 5 % more tokens/s at 128,
192 and 256 streams, but at 192 the first audio came ~100 ms later and every stream stalled once for ~5 ms
(`bench/results/h200_s19_random_weights/`). Each is captured on a side stream, with the capture confined to this
thread (the SNAC service's thread keeps launching on its own stream); buckets share one memory pool. On the CPU
there are no graphs: `BandGraph.run` calls the same work eagerly on the same buffers, which is how the tests check
the buffers, the padding and the refresh of the batch's parameters against the eager processor.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from oai_server.codec import orpheus
from oai_server.engines.band_penalty import BandPenalty, penalize_hits
from oai_server.engines.band_sampling import BandFilter, filter_band

logger = logging.getLogger(__name__)

BAND_GRAPHS_KEY = "oai_band_graphs"
"""Key in vLLM's ``additional_config``: true runs the slot processor's band work as CUDA graphs."""

BUCKETS = (8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
"""Row counts a graph is captured for; a batch pads up to the next one (beyond the last: eager)."""


def bucket_for(rows: int) -> int | None:
    """The smallest bucket that holds `rows` rows; None past the largest."""
    return next((bucket for bucket in BUCKETS if bucket >= rows), None)


class BandGraph:
    """Static buffers of one bucket, and the work on them (a CUDA graph's replay, or eager off CUDA)."""

    def __init__(self, rows: int, device: torch.device, dtype: torch.dtype, penalty: bool, pool: Any) -> None:
        self.values = torch.zeros((rows, orpheus.CODEBOOK_SIZE + 1), dtype=dtype, device=device)
        self.hit = torch.zeros((rows, orpheus.CODEBOOK_SIZE), dtype=torch.bool, device=device) if penalty else None
        self.factor = torch.ones((rows, 1), dtype=torch.float32, device=device)
        self.inverse = torch.ones((rows, 1), dtype=torch.float32, device=device)
        self.temperature = torch.ones((rows, 1), dtype=torch.float32, device=device)
        self.top_p = torch.full((rows, 1), float("inf"), dtype=torch.float32, device=device)
        self.loaded: object = None
        """The batch (its layout) whose parameters the buffers hold."""
        self.graph = _capture(self._work, device, pool) if device.type == "cuda" else None

    def _work(self) -> None:
        if self.hit is not None:
            penalize_hits(self.values, self.hit, self.factor, self.inverse)
        filter_band(self.values, BandFilter(self.temperature, None, self.top_p), draw=False)

    def load(self, batch: object, spec: BandFilter, penalty: BandPenalty | None, rows: int) -> None:
        """Copy the parameters of `batch` (`rows` rows) into the buffers, unless they hold them already."""
        if self.loaded is batch:
            return
        self.temperature[:rows].copy_(spec.temperature)
        self.top_p[:rows].copy_(spec.top_p)
        if penalty is not None:
            self.factor[:rows].copy_(penalty.factor)
            self.inverse[:rows].copy_(penalty.inverse)
        self.loaded = batch

    def run(self) -> None:
        """The penalty (when this bucket has one) and top-p on `values`, in place."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._work()


class BandGraphs:
    """One `BandGraph` per (bucket, penalty or not, dtype). The first batch of a (penalty, dtype) variant makes
    the graphs of every bucket up to `max_rows` for it at once (the server's warm-up meets it), so no stream
    waits on a capture later, when the batch grows or shrinks into a bucket not met before."""

    def __init__(self, device: torch.device, max_rows: int | None = None) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None
        self.graphs: dict[tuple[int, bool, torch.dtype], BandGraph] = {}
        last = (bucket_for(max_rows) or BUCKETS[-1]) if max_rows else 0
        self.buckets = tuple(bucket for bucket in BUCKETS if bucket <= last)
        """The buckets made together (none when `max_rows` is unknown: each bucket when first met)."""

    def graph_for(
        self, rows: int, dtype: torch.dtype, spec: BandFilter | None, draw: bool, penalty: BandPenalty | None
    ) -> BandGraph | None:
        """The graph for a batch of `rows` opted-in rows that all share one band filter `spec` (None: some rows
        have none or a group of their own), or None when that batch runs eagerly."""
        bucket = bucket_for(rows)
        if bucket is None or spec is None or draw or spec.beyond_k is not None:
            return None
        key = (bucket, penalty is not None, dtype)
        graph = self.graphs.get(key)
        if graph is None:
            self._make(bucket, penalty is not None, dtype)
            graph = self.graphs[key]
        return graph

    def _make(self, bucket: int, penalty: bool, dtype: torch.dtype) -> None:
        start = time.perf_counter()
        wanted = self.buckets if bucket in self.buckets else (bucket,)
        made = [rows for rows in wanted if (rows, penalty, dtype) not in self.graphs]
        for rows in made:
            self.graphs[(rows, penalty, dtype)] = BandGraph(rows, self.device, dtype, penalty, self.pool)
        logger.info(
            "band work graphs (penalty %s, %s) made for %d to %d rows in %.0f ms",
            penalty, dtype, made[0], made[-1], 1000 * (time.perf_counter() - start),
        )  # fmt: skip


def _capture(work: Any, device: torch.device, pool: Any) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        work()  # once outside the capture: what it allocates lazily (the sort's workspace) exists before
        graph = torch.cuda.CUDAGraph()
        # "thread_local": the SNAC service's thread may launch on its own stream while this one captures
        graph.capture_begin(pool=pool, capture_error_mode="thread_local")
        try:
            work()
        finally:
            graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(side)
    return graph
