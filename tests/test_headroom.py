"""Admission by real-time headroom: the per-request token rate against real time, on a fake clock."""

from __future__ import annotations

from oai_server.codec.orpheus import REAL_TIME_TOKENS_PER_SECOND
from oai_server.serving.headroom import HeadroomGate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


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
    run(gate, clock, 8, 100.0, 3.0)
    assert gate.has_headroom() and REAL_TIME_TOKENS_PER_SECOND * 1.1 <= 100.0


def test_rate_uses_the_mean_number_generating_over_the_window() -> None:
    clock = Clock()
    gate = HeadroomGate(min_streams=1, window_s=2.0, clock=clock)
    gate.started()
    run(gate, clock, 1, 100.0, 1.0)
    gate.started()  # the second request generated for only the last second
    run(gate, clock, 2, 100.0, 1.0)
    rate = gate.per_stream_rate()
    assert rate is not None and abs(rate - 100.0) < 8  # 300 tokens / 2 s / 1.5 mean streams
