"""Admission by real-time headroom: a new speech stream starts only while the running ones stay real time.

A fixed `--max-concurrent-streams` is either too low for a small model or lets so many streams in
that all of them underrun together. Instead, the speech synthesizer reports every audio token it
receives (`record`) and how many speech requests are generating (`started` at a request's first
tokens, `finished`; a request waiting for its prefill would read as a slow stream). The
per-request rate is the tokens of the last `window_s` seconds over the mean number of requests
generating in that window. While at least `min_streams` requests generate and that rate is below
real time (82 tokens/s) times `margin` once projected over the streams admitted since, `has_headroom()` is
false: a new speech stream waits up to `wait_s` in `admit` for headroom and then gets 429 with
`retry-after`, so every admitted stream keeps its real-time margin. The projection is the step time's
(one token per stream per engine step): today's step plus what each stream admitted but not yet generating
(they expire after `pending_s`) and the new one add, by the slope `StepTimeModel` learns from these same
measurements (between a fixed cost of half the step and none, i.e. a constant aggregate rate, which is
also the projection until the measurements span enough concurrencies). Below `min_streams` streams the gate
never refuses (the rate of a few streams says nothing about the engine's ceiling).

A burst is the exception: while most of what was admitted is still waiting for its prefill (more than a
quarter of the running count), the few streams already generating share the GPU with those prefills and
their rate says little, and projecting it over the whole burst shut the gate on bursts well inside the
capacity (on an H200, streams 97-112 of a burst of 112 waited ~0.5 s, where 128 without the gate kept
real time). Then the gate admits up to the concurrency its last settled measurement said keeps real time
(`safe_streams`, by the same projection), so a burst inside it starts at once and one past it still waits
for the measurement and its 429. Before any measurement (a fresh server) a burst is admitted blind.

Overload tightens the gate: for `overload_hold_s` after a 429 the projection must keep `overload_margin` (at least
`margin`) instead. Under a sustained overload the gate refuses all the time, so it admits at the stricter margin
throughout; a burst of a server that refused nobody lately, and Poisson arrivals below capacity, see `margin` alone.
At 1.1x real time a new stream's lead on its listener grows ~8 ms a frame, too little for its first chunks when the
engine hiccups: an H200 at 1.5x its capacity of 240 let a wave of waiting streams in as many others ended, and 124 of
the 127 admitted in those 1.3 s stalled 37-74 ms in their first second of audio, after two seconds of refusals
(session 38). A stricter margin costs admissions only while the server is already refusing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from ..codec.orpheus import REAL_TIME_TOKENS_PER_SECOND
from ..errors import rate_limited
from .step_time import StepTimeModel


class HeadroomGate:
    """Tracks the audio-token rate per generating speech request against real time."""

    def __init__(
        self,
        *,
        margin: float = 1.1,
        overload_margin: float | None = None,
        overload_hold_s: float = 5.0,
        min_streams: int = 16,
        window_s: float = 2.0,
        wait_s: float = 1.5,
        pending_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.required = REAL_TIME_TOKENS_PER_SECOND * margin
        self.overload_required = REAL_TIME_TOKENS_PER_SECOND * max(margin, overload_margin or margin)
        """The per-stream rate a new stream must leave the running ones for `overload_hold_s` after a refusal."""
        self.overload_hold_s = overload_hold_s
        self._refused_at = float("-inf")
        self.min_streams = min_streams
        self.window_s = window_s
        self.wait_s = wait_s
        self.pending_s = pending_s
        self.refused = 0
        """Streams turned away for lack of headroom (a metric)."""
        self._clock = clock
        self._pending: deque[float] = deque()
        """Admission times of streams admitted but not yet generating."""
        self._events: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0
        """The sum of `_events`' counts, kept as they come and go: every admission reads it."""
        self._generating = 0
        self._samples: deque[tuple[float, int, float]] = deque([(clock(), 0, 0.0)])
        """(time, generating count from then on, generating-seconds before then) per change: the last one before
        the window and every one inside it. The running integral makes the window's mean O(1) per admission."""
        self.safe_streams = 0
        """Concurrent streams the last settled measurement said keep real time (0: never measured)."""
        self._overload_safe_streams = 0
        """The same at `overload_margin`: the limit while the gate is tightened by a recent refusal."""
        self.steps = StepTimeModel(clock=clock)
        """How the step time grows with the streams generating, learned from the settled measurements."""
        self._observed_at = float("-inf")

    @property
    def generating(self) -> int:
        """Speech requests generating right now."""
        return self._generating

    def started(self) -> None:
        """A speech request's first tokens arrived (it no longer counts as pending)."""
        if self._pending:
            self._pending.popleft()
        self._change(+1)

    def finished(self) -> None:
        """A speech request stopped generating (done, failed or aborted)."""
        self._change(-1)

    def record(self, tokens: int) -> None:
        """`tokens` audio tokens arrived for some request."""
        now = self._clock()
        self._events.append((now, tokens))
        self._tokens_in_window += tokens
        self._trim(now)

    @property
    def overloaded(self) -> bool:
        """Whether the gate refused a stream within `overload_hold_s` (it admits at `overload_margin` then)."""
        return self._clock() - self._refused_at < self.overload_hold_s

    def step_slope(self) -> float | None:
        """Seconds one more generating stream adds to the engine's step, once learned (None before)."""
        return self.steps.fitted_slope()

    def per_stream_rate(self) -> float | None:
        """Tokens/s per generating request over the window, or None without enough history."""
        return self._measure(self._clock())[1]

    def has_headroom(self) -> bool:
        """Whether one more speech stream can start without pushing the running ones below real time."""
        now = self._clock()
        while self._pending and self._pending[0] < now - self.pending_s:
            self._pending.popleft()
        running, pending = self._generating, len(self._pending)
        if running + pending < self.min_streams:
            return True
        measured_streams, rate = self._measure(now)
        if rate is not None and running > 0 and 4 * pending <= running:  # settled: the rate speaks for the engine
            step_s = 1.0 / rate
            steady = abs(running - measured_streams) <= 0.05 * running  # the window saw this concurrency
            if steady and now - self._observed_at >= self.window_s / 8:
                self.steps.observe(measured_streams, step_s)
                self._observed_at = now
            # Projected from the streams running now, not the window's mean: while a burst ramps up the mean lags
            # far behind (50 of 192), and projecting from it shut the gate on bursts the GPU carried (an H200, 192).
            self.safe_streams = self.steps.streams_within(running, step_s, 1.0 / self.required)
            self._overload_safe_streams = self.steps.streams_within(running, step_s, 1.0 / self.overload_required)
            return running + pending + 1 <= self._limit()
        # no rate yet, or a burst still in its prefills: up to the concurrency last measured to keep real time
        return self.safe_streams == 0 or running + pending + 1 <= self._limit()

    async def admit(self) -> None:
        """Wait up to `wait_s` for headroom, then reserve it; 429 with `retry-after` if none came."""
        deadline = self._clock() + self.wait_s
        while not self.has_headroom():
            if self._clock() >= deadline:
                self.refused += 1
                self._refused_at = self._clock()
                raise rate_limited("The server is at its real-time capacity; please retry shortly.", 1)
            await asyncio.sleep(0.05)
        self._pending.append(self._clock())

    def _limit(self) -> int:
        """The concurrency a new stream may bring the running and pending ones to: stricter while overloaded."""
        return self._overload_safe_streams if self.overloaded else self.safe_streams

    def _measure(self, now: float) -> tuple[float, float | None]:
        """(mean generating over the window, tokens/s per generating request or None without enough history)."""
        self._trim(now)
        mean_generating = self._mean_generating(now)
        if mean_generating <= 0 or not self._events:
            return mean_generating, None
        return mean_generating, self._tokens_in_window / self.window_s / mean_generating

    def _change(self, delta: int) -> None:
        now = self._clock()
        self._generating = max(0, self._generating + delta)
        self._samples.append((now, self._generating, self._area_until(now)))
        self._trim(now)

    def _area_until(self, moment: float) -> float:
        """Generating-seconds from the first sample to `moment` (at or after the last change)."""
        at, count, area = self._samples[-1]
        return area + count * (moment - at)

    def _mean_generating(self, now: float) -> float:
        start = now - self.window_s
        first_at, first_count, first_area = self._samples[0]  # the last change at or before the window's start
        area_at_start = first_area + first_count * max(0.0, start - first_at)
        return (self._area_until(now) - area_at_start) / self.window_s

    def _trim(self, now: float) -> None:
        start = now - self.window_s
        while self._events and self._events[0][0] < start:
            self._tokens_in_window -= self._events.popleft()[1]
        # keep the last change before the window: it is the count at the window's start
        while len(self._samples) > 1 and self._samples[1][0] <= start:
            self._samples.popleft()
