"""Admission by real-time headroom: the per-request token rate against real time (on a fake clock), the
reservation that keeps a burst out, and the 429 a speaking request gets over HTTP when there is none."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from oai_server.codec.orpheus import REAL_TIME_TOKENS_PER_SECOND, slot_band
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.engines.base import EngineError
from oai_server.errors import APIError
from oai_server.pipeline.speech import SpeechStats, SpeechSynthesizer, VoiceOptions
from oai_server.serving.headroom import HeadroomGate

from .helpers import LiveServer, demo_settings, start_server


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def brute_force_rate(
    changes: list[tuple[float, int]], records: list[tuple[float, int]], now: float, window: float
) -> float | None:
    """The per-stream rate straight from its definition: the window's tokens over its mean generating count."""
    start = now - window
    counts = [(t, c) for t, c in changes if t <= now]
    area, previous_time, previous_count = 0.0, start, 0
    for t, c in counts:
        if t <= start:
            previous_count = c
            continue
        area += previous_count * (t - previous_time)
        previous_time, previous_count = t, c
    area += previous_count * (now - previous_time)
    tokens = sum(n for t, n in records if start <= t <= now)
    mean = area / window
    return None if mean <= 0 or not tokens else tokens / window / mean


def test_running_totals_match_the_rate_by_its_definition() -> None:
    """The gate keeps the window's tokens and generating-seconds as running totals (every admission reads them);
    at any moment they give the same rate as summing the window from scratch."""
    import random

    rng = random.Random(7)
    clock = Clock()
    gate = HeadroomGate(clock=clock, window_s=2.0)
    changes: list[tuple[float, int]] = []
    records: list[tuple[float, int]] = []
    generating = 0
    for _ in range(3000):
        clock.now += rng.choice((0.0, 0.001, 0.01, 0.05, 0.3))
        action = rng.random()
        if action < 0.2:
            gate.started()
            generating += 1
            changes.append((clock.now, generating))
        elif action < 0.35 and generating:
            gate.finished()
            generating -= 1
            changes.append((clock.now, generating))
        else:
            tokens = rng.choice((1, 7, 14))
            gate.record(tokens)
            records.append((clock.now, tokens))
        if rng.random() < 0.1:
            expected = brute_force_rate(changes, records, clock.now, 2.0)
            got = gate.per_stream_rate()
            assert (got is None) == (expected is None)
            if got is not None and expected is not None:
                assert got == pytest.approx(expected, rel=1e-9)


def run(gate: HeadroomGate, clock: Clock, streams: int, rate_per_stream: float, seconds: float) -> None:
    """`streams` requests generating at `rate_per_stream` tokens/s for `seconds` (7-token deltas)."""
    step = 7 / rate_per_stream
    end = clock.now + seconds
    while clock.now < end:
        clock.now += step
        for _ in range(streams):
            gate.record(7)


def test_few_streams_never_refuse() -> None:
    clock = Clock()
    gate = HeadroomGate(min_streams=4, clock=clock)
    for _ in range(3):
        gate.started()
    run(gate, clock, 3, 20.0, 3.0)  # far below real time, but only 3 streams
    assert gate.has_headroom()


def test_rate_below_real_time_closes_the_gate_and_reopens() -> None:
    clock = Clock()
    gate = HeadroomGate(min_streams=4, margin=1.1, window_s=2.0, clock=clock)
    for _ in range(8):
        gate.started()
    run(gate, clock, 8, 120.0, 3.0)
    rate = gate.per_stream_rate()
    assert rate is not None and abs(rate - 120.0) < 5
    assert gate.has_headroom()
    run(gate, clock, 8, 85.0, 3.0)  # real time, but under the 10 % margin
    assert not gate.has_headroom()
    for _ in range(4):
        gate.finished()
    run(gate, clock, 4, 150.0, 3.0)  # fewer streams run faster again
    assert gate.generating == 4 and gate.has_headroom()  # and under min_streams anyway
    gate.started()
    gate.started()
    gate.started()
    gate.started()
    run(gate, clock, 8, 100.0, 3.0)  # 100 each now, but a ninth stream would leave 8 x 100 / 9 = 89 < 90.2
    assert not gate.has_headroom()
    run(gate, clock, 8, 110.0, 3.0)  # 110 each: a ninth leaves 97.8, above 1.1 x real time
    assert gate.has_headroom() and REAL_TIME_TOKENS_PER_SECOND * 1.1 <= 110.0 * 8 / 9


def test_rate_uses_the_mean_number_generating_over_the_window() -> None:
    clock = Clock()
    gate = HeadroomGate(min_streams=1, window_s=2.0, clock=clock)
    gate.started()
    run(gate, clock, 1, 100.0, 1.0)
    gate.started()  # the second request generated for only the last second
    run(gate, clock, 2, 100.0, 1.0)
    rate = gate.per_stream_rate()
    assert rate is not None and abs(rate - 100.0) < 8  # 300 tokens / 2 s / 1.5 mean streams


async def test_admit_reserves_so_a_burst_is_not_all_let_in() -> None:
    clock = Clock()
    gate = HeadroomGate(min_streams=1, margin=1.0, wait_s=0.0, clock=clock)
    for _ in range(4):
        gate.started()
    run(gate, clock, 4, 120.0, 3.0)  # 4 streams at 120 tok/s: one more leaves 96 each, two more 80
    await gate.admit()
    with pytest.raises(APIError) as refused:
        await gate.admit()  # the first one's reservation counts: 480 / 6 = 80 < 82
    assert refused.value.status == 429 and refused.value.headers["retry-after"] == "1"
    assert refused.value.code == "rate_limit_exceeded" and gate.refused == 1
    gate.started()  # the admitted stream starts generating: its reservation is spent
    clock.now += 4.0  # and the window moves on
    run(gate, clock, 5, 120.0, 3.0)
    await gate.admit()  # five streams at 120 each: one more leaves 100


def _settled(gate: HeadroomGate, clock: Clock, streams: int, rate: float) -> None:
    """`streams` generating at `rate` for 3 s, nothing pending: a settled measurement (`has_headroom` reads it)."""
    for _ in range(streams - gate.generating):
        gate.started()
    run(gate, clock, streams, rate, 3.0)
    gate.has_headroom()


def _mid_burst(gate: HeadroomGate, clock: Clock, running: int, pending: int, rate: float) -> None:
    """A burst in its prefills: `running` streams generating (slowly, beside the prefills), `pending` admitted."""
    for _ in range(gate.generating):
        gate.finished()
    clock.now += 10.0  # the earlier load has left the window
    for _ in range(running):
        gate.started()
    run(gate, clock, running, rate, 0.3)
    gate._pending.extend([clock.now] * pending)


def test_a_burst_inside_the_measured_capacity_is_let_in_while_its_prefills_run() -> None:
    """20 of a burst generate, at 60 tokens/s beside 80 prefills: projected over all 101, that reads as 12 a
    stream and shut the gate (H200: streams 97-112 of 112 waited 0.5 s). The settled measurement before said
    133 streams keep real time, so the burst goes on."""
    clock = Clock()
    gate = HeadroomGate(min_streams=16, margin=1.1, clock=clock)
    _settled(gate, clock, 100, 120.0)
    assert abs(gate.safe_streams - 100 * 120.0 / (REAL_TIME_TOKENS_PER_SECOND * 1.1)) < 3  # 133
    _mid_burst(gate, clock, running=20, pending=80, rate=60.0)
    assert gate.required > 60.0 * 20 / 101  # what the settled-state projection would have said
    assert gate.has_headroom()
    gate._pending.extend([clock.now] * (gate.safe_streams - 100))  # the next one is past the measured capacity
    assert not gate.has_headroom()


def test_the_measured_capacity_follows_a_slower_engine() -> None:
    clock = Clock()
    gate = HeadroomGate(min_streams=16, margin=1.1, clock=clock)
    _settled(gate, clock, 100, 120.0)
    _settled(gate, clock, 100, 80.0)  # e.g. chat now shares the GPU
    assert abs(gate.safe_streams - 100 * 80.0 / gate.required) < 3  # 88
    _mid_burst(gate, clock, running=20, pending=80, rate=60.0)
    assert not gate.has_headroom()  # 101 > 88: this burst waits for its measurement


def test_a_fresh_gate_lets_a_burst_in_before_any_measurement() -> None:
    clock = Clock()
    gate = HeadroomGate(min_streams=16, clock=clock)
    gate._pending.extend([clock.now] * 200)
    assert gate.safe_streams == 0 and gate.has_headroom()  # nothing measured yet: admitted blind, as before


class _Told:
    """A `GenerationObserver` that records what the synthesizer told it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def started(self) -> None:
        self.calls.append("started")

    def finished(self) -> None:
        self.calls.append("finished")

    def record(self, tokens: int) -> None:
        self.calls.append(f"record {tokens}")


class _QueuedEngine:
    """Holds every request in its 'prefill' until `go` is set, then sends two frames (7-token deltas)."""

    def __init__(self, fail_before_tokens: bool = False) -> None:
        self.go = asyncio.Event()
        self.fail_before_tokens = fail_before_tokens

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[list[int]]:
        await self.go.wait()
        if self.fail_before_tokens:
            raise EngineError("the engine failed before any token")
        for _ in range(2):
            yield [slot_band(k).start for k in range(7)]


class _Decoder:
    def for_stream(self, request_id: str) -> Any:
        return self

    async def decode(self, window: Any) -> bytes:
        return b"\0\0" * (window.lead + 2048 * window.count)  # the seam before its chunk, then the chunk


def _synthesizer(engine: Any, told: _Told) -> SpeechSynthesizer:
    tokenizer = SimpleNamespace(encode=lambda text, add_special_tokens=False: [1, 2, 3])
    return SpeechSynthesizer(
        engine, tokenizer, _Decoder(), windows=WindowPolicy(), tokens_per_char=8.0,  # type: ignore[arg-type]
        max_tokens=1024, max_model_len=2048, observer=told,
    )  # fmt: skip


async def test_a_stream_counts_as_generating_from_its_first_tokens_not_while_queued() -> None:
    """A burst's requests wait for their prefill: counted as generating then, they would read as slow streams
    (no tokens yet) and shut the gate on the rest of the burst."""
    told, engine = _Told(), _QueuedEngine()
    options = VoiceOptions("tara", 0.6, 0.8, 1.1)
    speech = _synthesizer(engine, told).synthesize("Hello there.", options, SpeechStats())
    reading = asyncio.ensure_future(_collect(speech))
    await asyncio.sleep(0.05)
    assert told.calls == []  # queued: neither generating nor slow
    engine.go.set()
    assert await reading
    assert told.calls == ["started", "record 7", "record 7", "finished"]


async def test_a_request_that_fails_before_its_first_tokens_was_never_generating() -> None:
    told, engine = _Told(), _QueuedEngine(fail_before_tokens=True)
    engine.go.set()
    options = VoiceOptions("tara", 0.6, 0.8, 1.1)
    with pytest.raises(EngineError):
        await _collect(_synthesizer(engine, told).synthesize("Hello there.", options, SpeechStats()))
    assert told.calls == []


async def _collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


@pytest.fixture(scope="module")
def gated_server(demo_cache: Path, demo_models: Any) -> Iterator[LiveServer]:
    """A demo server whose headroom gate refuses after 0.3 s once one speech stream generates."""
    server = start_server(demo_settings(demo_cache, headroom_min_streams=1, headroom_wait_seconds=0.3))
    yield server
    server.stop()


def test_speech_past_the_real_time_capacity_gets_429_and_text_chat_does_not(gated_server: LiveServer) -> None:
    gate = gated_server.services.headroom
    assert gate is not None
    url = gated_server.url
    speech = {"model": "tts-1", "voice": "tara", "input": "Hello there, how are you?", "response_format": "pcm"}
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "seed": 1}
    first = httpx.post(f"{url}/v1/audio/speech", json={**speech, "seed": 1}, timeout=60)
    assert first.status_code == 200 and first.content
    # the synthesizer reported the request to the gate: its tokens arrived, and its generation ended
    assert gate.generating == 0 and gate.per_stream_rate() is not None
    real_time = gate.required
    gate.started()  # one stream generating, far slower than the rate now required
    gate.record(7)
    gate.required = 1e12
    try:
        refused = httpx.post(f"{url}/v1/audio/speech", json={**speech, "seed": 2}, timeout=30)
        spoken_chat = httpx.post(
            f"{url}/v1/chat/completions",
            json={**chat, "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
            timeout=30,
        )
        text_chat = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30)
    finally:
        gate.finished()
        gate.required = real_time
    for response in (refused, spoken_chat):
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert text_chat.status_code == 200  # a text reply does not speak: not gated
    assert gate.refused == 2
    # the refusals tightened the gate to the settings' overload margin for its hold, and /metrics says so
    assert gate.overload_required == pytest.approx(REAL_TIME_TOKENS_PER_SECOND * 1.25) and gate.overload_hold_s == 5.0
    assert "oai_headroom_overloaded 1.0" in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    again = httpx.post(f"{url}/v1/audio/speech", json={**speech, "seed": 3}, timeout=60)
    assert again.status_code == 200 and again.content


def _engine_rate(streams: int) -> float:
    """Tokens/s per stream of an engine whose step costs 4 ms plus 0.038 ms per stream (an H200 near 200 streams:
    15.9 k tokens/s at 160 streams, 18.3 k at 240)."""
    return 1.0 / (0.004 + 0.000038 * streams)


def _tail_of_a_burst(gate: HeadroomGate, clock: Clock, start: int, end: int, step: int) -> None:
    """Streams finishing one group at a time, from `start` down to `end`, each level settled for 3 s."""
    for streams in range(start, end - 1, -step):
        while gate.generating < streams:
            gate.started()
        while gate.generating > streams:
            gate.finished()
        run(gate, clock, streams, _engine_rate(streams), 3.0)
        gate.has_headroom()


def test_the_gate_learns_how_the_step_grows_and_admits_to_the_real_time_limit() -> None:
    """Projected as a constant aggregate rate, 150 streams at 103 tokens/s each say 171 keep 1.1x real time; the
    step's fixed part lets 186 do so. Once the gate has seen the concurrencies of a burst's tail it admits to 186."""
    clock = Clock()
    gate = HeadroomGate(min_streams=16, margin=1.1, clock=clock)
    limit = (1.0 / gate.required - 0.004) / 0.000038  # 186.6
    _settled(gate, clock, 150, _engine_rate(150))
    assert gate.steps.fitted_slope() is None  # one concurrency seen: no line yet, the constant-aggregate projection
    measured = gate.per_stream_rate()
    assert measured is not None and abs(measured - _engine_rate(150)) < 3
    assert abs(gate.safe_streams - 150 * measured / gate.required) < 1  # 171-174
    _tail_of_a_burst(gate, clock, 200, 150, 10)
    slope = gate.steps.fitted_slope()
    assert slope is not None and slope == pytest.approx(0.000038, rel=0.05)
    assert abs(gate.safe_streams - limit) < 0.03 * limit  # the test's token clock reads ~1 % fast
    gate._pending.extend([clock.now] * (gate.safe_streams - 151))  # admitted, up to the limit
    assert gate.has_headroom()
    gate._pending.append(clock.now)
    assert not gate.has_headroom()


def test_a_flat_or_noisy_fit_cannot_admit_past_a_fixed_cost_of_half_the_step() -> None:
    """An engine whose measured step did not grow with the streams (noise, or another load leaving the GPU) would
    project unlimited headroom: the slope is held at half of the constant-aggregate one at least."""
    clock = Clock()
    gate = HeadroomGate(min_streams=16, margin=1.0, clock=clock)
    for streams in (200, 180, 160, 140, 120):
        for _ in range(gate.generating - streams):
            gate.finished()
        while gate.generating < streams:
            gate.started()
        run(gate, clock, streams, 100.0, 3.0)  # the same rate at every concurrency
        gate.has_headroom()
    slope = gate.steps.fitted_slope()
    measured = gate.per_stream_rate()
    assert slope is not None and abs(slope) < 1e-6 and measured is not None
    step = 1 / measured
    assert gate.steps.slope(120, step) == pytest.approx(0.5 * step / 120)
    # 120 streams at ~100 tokens/s: half the step fixed lets 120 + (1/82 - 1/100) / (half of 1/100/120) = 172 in
    assert abs(gate.safe_streams - (120 + (1 / REAL_TIME_TOKENS_PER_SECOND - step) / (0.5 * step / 120))) < 1


def test_what_the_gate_learned_ages_out() -> None:
    clock = Clock()
    gate = HeadroomGate(min_streams=16, clock=clock)
    _tail_of_a_burst(gate, clock, 200, 150, 10)
    assert gate.steps.fitted_slope() is not None
    clock.now += gate.steps.max_age_s + 1
    gate.steps.observe(150, 0.01)  # one fresh measurement: a new concurrency span is needed before a new line
    assert gate.steps.fitted_slope() is None
    assert gate.steps.slope(150, 0.01) == pytest.approx(0.01 / 150)


def test_a_ramping_burst_is_projected_from_the_streams_running_now() -> None:
    """170 streams of a burst started 0.3 s ago beside 20 that ran before: the window's mean count is ~45, yet
    the step measured is what 190 streams get now. Projected from the mean (190 / 45 of the step), the gate shut
    on a burst of 192 that an H200 carried; from the 190 running it admits one more at 100 tokens/s each."""
    clock = Clock()
    gate = HeadroomGate(min_streams=16, margin=1.1, clock=clock)
    _settled(gate, clock, 20, 150.0)
    for _ in range(170):
        gate.started()
    run(gate, clock, 190, 100.0, 0.3)
    assert gate.generating == 190 and gate._mean_generating(clock.now) < 50
    assert gate.has_headroom()  # 100 x 190 / 191 = 99.5 >= 90.2
    assert gate.steps.fitted_slope() is None  # and a ramp is no measurement of a concurrency


async def test_a_refusal_tightens_the_gate_to_its_overload_margin_for_the_hold() -> None:
    """100 streams at 120 tokens/s: ~133 keep 1.1x real time, ~117 keep 1.25x. Before any 429 the gate admits to
    the first; after one it admits only to the second while the hold lasts, and to the first once it has passed."""
    clock = Clock()
    gate = HeadroomGate(min_streams=16, margin=1.1, overload_margin=1.25, overload_hold_s=5.0, wait_s=0.0, clock=clock)
    _settled(gate, clock, 100, 120.0)
    margin_limit, overload_limit = gate.safe_streams, gate._overload_safe_streams
    assert abs(margin_limit - 100 * 120.0 / gate.required) < 3  # 133 (the test's token clock reads ~1 % fast)
    assert abs(overload_limit - 100 * 120.0 / gate.overload_required) < 3  # 117
    assert not gate.overloaded
    gate._pending.extend([clock.now] * (overload_limit - 101))  # the next one brings it to the overload limit
    await gate.admit()
    await gate.admit()  # one past the overload limit: not overloaded, the margin alone counts
    gate._pending.extend([clock.now] * (margin_limit - overload_limit - 1))  # the next one is past the margin
    with pytest.raises(APIError) as refused:
        await gate.admit()
    assert refused.value.status == 429 and gate.overloaded
    while gate.generating + len(gate._pending) >= overload_limit + 1:
        gate._pending.pop()  # admitted streams started elsewhere: the next one is one past the overload limit
    assert not gate.has_headroom()  # within the margin, but the gate admits to the overload limit while overloaded
    gate._pending.pop()
    assert gate.has_headroom()  # at the overload limit
    gate._pending.append(clock.now)
    clock.now += 5.0
    assert not gate.overloaded and gate.has_headroom()  # the hold has passed: the margin again


def test_the_burst_rule_uses_the_overload_limit_while_overloaded() -> None:
    """A wave of admissions after streams ended puts the gate in its burst rule (most of the admitted still in
    their prefills); while it is overloaded, the wave stops at the overload margin's concurrency, not the margin's."""
    clock = Clock()
    gate = HeadroomGate(min_streams=16, margin=1.1, overload_margin=1.25, clock=clock)
    _settled(gate, clock, 100, 120.0)  # 133 at 1.1x, 117 at 1.25x
    _mid_burst(gate, clock, running=40, pending=80, rate=60.0)  # 121 with the next one
    assert gate.has_headroom()
    gate._refused_at = clock.now  # a 429 a moment ago
    assert gate.overloaded and not gate.has_headroom()


def test_without_an_overload_margin_a_refusal_changes_nothing() -> None:
    clock = Clock()
    gate = HeadroomGate(min_streams=16, margin=1.1, clock=clock)
    _settled(gate, clock, 100, 120.0)
    assert gate.overload_required == gate.required and gate._overload_safe_streams == gate.safe_streams
    gate._refused_at = clock.now
    gate._pending.extend([clock.now] * (gate.safe_streams - 101))
    assert gate.overloaded and gate.has_headroom()  # up to the margin's 133, as before


def test_the_overload_margin_is_never_looser_than_the_margin() -> None:
    gate = HeadroomGate(margin=1.3, overload_margin=1.1)
    assert gate.overload_required == gate.required == REAL_TIME_TOKENS_PER_SECOND * 1.3
