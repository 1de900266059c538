"""Pitch-preserving tempo change for the OpenAI speech ``speed`` parameter (0.25-4.0).

Uses ffmpeg's ``atempo`` filter through a PyAV filter graph. ``atempo`` accepts 0.5-100 per instance
(older ffmpeg: 0.5-2.0), so the factor is split into a chain of instances each within 0.5-2.0.

Thread-safety: a ``TempoFilter`` holds per-stream filter state; use one per stream and do not call it
from two threads at once. Separate instances share nothing.
"""

from __future__ import annotations

from fractions import Fraction

import av
import av.filter
import numpy as np

MIN_SPEED = 0.25
MAX_SPEED = 4.0
# Per-instance range that every ffmpeg version's atempo accepts.
_ATEMPO_MIN = 0.5
_ATEMPO_MAX = 2.0


def atempo_chain(speed: float) -> list[float]:
    """Split ``speed`` into factors each within 0.5-2.0 whose product is ``speed`` (``[]`` for 1.0)."""
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed!r}")
    factors: list[float] = []
    remaining = float(speed)
    while remaining < _ATEMPO_MIN:
        factors.append(_ATEMPO_MIN)
        remaining /= _ATEMPO_MIN
    while remaining > _ATEMPO_MAX:
        factors.append(_ATEMPO_MAX)
        remaining /= _ATEMPO_MAX
    if remaining != 1.0:
        factors.append(remaining)
    return factors


class TempoFilter:
    """Streaming tempo change of s16le mono PCM; output is s16le mono at the same sample rate.

    ``speed == 1.0`` is an exact passthrough (no filter, bit-identical output). Otherwise ``process``
    returns whatever the filter has produced so far (``atempo`` holds back a window of tens of ms, more
    when chained) and ``finish()`` flushes the rest. Odd byte counts are handled by holding the
    dangling byte until the next call; one left at ``finish()`` is dropped.
    """

    def __init__(self, speed: float, sample_rate: int = 24000) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be within {MIN_SPEED}-{MAX_SPEED}, got {speed!r}")
        self.speed = float(speed)
        self.sample_rate = sample_rate
        self._pending = b""
        self._pts = 0
        self._finished = False
        self._time_base = Fraction(1, sample_rate)
        self._graph: av.filter.Graph | None = None
        if self.speed != 1.0:
            self._graph = self._build_graph()

    @property
    def passthrough(self) -> bool:
        """True when no filtering happens (speed 1.0)."""
        return self._graph is None

    def _build_graph(self) -> av.filter.Graph:
        graph = av.filter.Graph()
        source = graph.add_abuffer(sample_rate=self.sample_rate, format="s16", layout="mono", time_base=self._time_base)
        tempos = [graph.add("atempo", repr(factor)) for factor in atempo_chain(self.speed)]
        # Pin the output format so callers always get packed s16 mono at the input rate.
        out_format = graph.add("aformat", f"sample_fmts=s16:channel_layouts=mono:sample_rates={self.sample_rate}")
        sink = graph.add("abuffersink")
        graph.link_nodes(source, *tempos, out_format, sink).configure()
        return graph

    def _align(self, pcm: bytes) -> bytes:
        data = self._pending + bytes(pcm) if self._pending else bytes(pcm)
        if len(data) % 2:
            self._pending = data[-1:]
            return data[:-1]
        self._pending = b""
        return data

    def _drain(self, graph: av.filter.Graph) -> bytes:
        out = bytearray()
        while True:
            try:
                frame = graph.pull()
            except (BlockingIOError, EOFError):
                return bytes(out)
            out += frame.to_ndarray().astype("<i2", copy=False).tobytes()

    def process(self, pcm: bytes) -> bytes:
        """Feed s16le mono PCM; return the tempo-changed PCM ready now (maybe ``b""``)."""
        if self._finished:
            raise RuntimeError("tempo filter already finished")
        data = self._align(pcm)
        if self._graph is None:
            return data
        if not data:
            return b""
        samples = np.frombuffer(data, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.time_base = self._time_base
        frame.pts = self._pts
        self._pts += samples.shape[1]
        self._graph.push(frame)
        return self._drain(self._graph)

    def finish(self) -> bytes:
        """Flush the filter and return the remaining PCM; idempotent (later calls return ``b""``)."""
        if self._finished:
            return b""
        self._finished = True
        self._pending = b""
        if self._graph is None:
            return b""
        self._graph.push(None)
        return self._drain(self._graph)
