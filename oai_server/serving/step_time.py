"""How the engine's step time grows with the streams it generates: the headroom gate's projection.

Every generating stream gets one token per engine step, so a stream's token rate is one over the step
time. A decode step costs a fixed part (weights read once, launches, the scheduler) plus a part per
stream (its attention, its share of sampling), so the step time at n streams is about ``a + b n``. The
gate used to assume a = 0 (the aggregate rate constant: k more streams leave each of n running ones
``n / (n + k)`` of today's rate), which is the most cautious line through today's point. On an H200 the
aggregate still grows past the real-time limit (15.9 k tokens/s at 160 streams, 18.3 k at 240: b is
about 0.6 of ``step / n``), so that projection shut the gate ~40 streams early.

`StepTimeModel` learns b from the gate's own settled measurements at the concurrencies it meets (a burst's
tail, arrivals coming and going): each measurement of (mean streams generating, step time) updates the
running mean of its bucket of `bucket_streams` streams; buckets older than `max_age_s` are forgotten, since
the GPU's other work changes (chat sharing the card). The slope is the least-squares line through the
buckets, once they span at least `min_span` streams, and is always held between ``floor x step / n`` and
``step / n``: a noisy fit can then admit at most the streams that a fixed cost of ``(1 - floor)`` of the
step would allow, and without a fit the projection is the old, cautious one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    streams: float
    step_s: float
    updated: float


class StepTimeModel:
    """Seconds per step against streams generating, from measurements; the slope the gate projects with."""

    def __init__(
        self,
        *,
        bucket_streams: int = 8,
        min_span: float = 16.0,
        floor: float = 0.5,
        max_age_s: float = 120.0,
        smoothing: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket_streams = bucket_streams
        self.min_span = min_span
        self.floor = floor
        self.max_age_s = max_age_s
        self.smoothing = smoothing
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}
        self._fitted: float | None = None
        self._stale = False

    def observe(self, streams: float, step_s: float) -> None:
        """A settled measurement: `streams` generating on average, each getting a token every `step_s` seconds."""
        if streams <= 0 or step_s <= 0:
            return
        now = self._clock()
        key = int(streams // self.bucket_streams)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.updated < now - self.max_age_s:
            self._buckets[key] = _Bucket(streams, step_s, now)
        else:
            bucket.streams += self.smoothing * (streams - bucket.streams)
            bucket.step_s += self.smoothing * (step_s - bucket.step_s)
            bucket.updated = now
        self._stale = True

    def fitted_slope(self) -> float | None:
        """The least-squares slope (seconds per step per stream) through the fresh buckets, or None without a span."""
        if self._stale:
            self._fitted = self._fit()
            self._stale = False
        return self._fitted

    def slope(self, streams: float, step_s: float) -> float:
        """What one more stream adds to the step at `streams` generating with step `step_s`, held to the bounds."""
        ceiling = step_s / max(streams, 1.0)
        fitted = self.fitted_slope()
        if fitted is None:
            return ceiling
        return min(ceiling, max(self.floor * ceiling, fitted))

    def streams_within(self, streams: float, step_s: float, max_step_s: float) -> int:
        """The most streams whose step, projected from today's `step_s` at `streams` along the slope, stays within
        `max_step_s`."""
        return int(streams + (max_step_s - step_s) / self.slope(streams, step_s))

    def _fit(self) -> float | None:
        oldest = self._clock() - self.max_age_s
        for key in [key for key, bucket in self._buckets.items() if bucket.updated < oldest]:
            del self._buckets[key]
        points = [(bucket.streams, bucket.step_s) for bucket in self._buckets.values()]
        if len(points) < 2:
            return None
        xs = [x for x, _ in points]
        if max(xs) - min(xs) < self.min_span:
            return None
        mean_x = sum(xs) / len(xs)
        mean_y = sum(y for _, y in points) / len(points)
        variance = sum((x - mean_x) ** 2 for x in xs)
        return sum((x - mean_x) * (y - mean_y) for x, y in points) / variance
