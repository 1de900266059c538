"""Tempo filter: exact passthrough at 1.0, right duration at other speeds, pitch kept, streams."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oai_server.pipeline.tempo import TempoFilter, atempo_chain

from .helpers import sine

SR = 24000
FRAME = 2048


def run(speed: float, pcm: bytes, chunk: int = FRAME * 2) -> tuple[list[bytes], bytes]:
    """Feed ``pcm`` through a TempoFilter in ``chunk``-byte pieces."""
    tempo = TempoFilter(speed)
    pieces = [tempo.process(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk)]
    return pieces, tempo.finish()


def dominant_hz(samples: np.ndarray) -> float:
    """Frequency of the strongest FFT bin."""
    x = samples.astype(np.float64) * np.hanning(len(samples))
    return float(np.argmax(np.abs(np.fft.rfft(x))) * SR / len(samples))


def test_speed_one_is_bit_identical_passthrough() -> None:
    pcm = (sine(1.0) + np.random.default_rng(1).integers(-500, 500, SR).astype(np.int16)).tobytes()
    tempo = TempoFilter(1.0)
    assert tempo.passthrough
    pieces = [tempo.process(pcm[i : i + 999]) for i in range(0, len(pcm), 999)]
    assert b"".join(pieces) + tempo.finish() == pcm
    # Passthrough is immediate: no buffering beyond a dangling odd byte.
    assert pieces[0] == pcm[:998]


@pytest.mark.parametrize(
    ("speed", "seconds", "expected"),
    [(2.0, 2.0, 1.0), (0.5, 2.0, 4.0), (0.25, 1.0, 4.0), (4.0, 2.0, 0.5), (1.3, 1.3, 1.0)],
)
def test_duration_scales_with_speed(speed: float, seconds: float, expected: float) -> None:
    pieces, tail = run(speed, sine(seconds).tobytes())
    out = np.frombuffer(b"".join(pieces) + tail, dtype="<i2")
    assert len(out) / SR == pytest.approx(expected, rel=0.05)
    assert not TempoFilter(speed).passthrough


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_pitch_is_preserved(speed: float) -> None:
    pieces, tail = run(speed, sine(2.0).tobytes())
    out = np.frombuffer(b"".join(pieces) + tail, dtype="<i2")
    middle = out[len(out) // 4 : 3 * len(out) // 4]
    assert dominant_hz(middle) == pytest.approx(440.0, rel=0.03)
    # Still a loud tone, not silence.
    assert np.abs(middle).max() > 5000


def test_streams_output_before_finish() -> None:
    pieces, tail = run(2.0, sine(2.0).tobytes())
    # Output starts within the first few frames and most of it comes before finish().
    assert any(pieces[:4])
    assert sum(map(len, pieces)) > 0.8 * (sum(map(len, pieces)) + len(tail))


def test_odd_chunks_and_empty_input() -> None:
    pcm = sine(1.0).tobytes()
    even_pieces, even_tail = run(2.0, pcm)
    odd_pieces, odd_tail = run(2.0, pcm, chunk=1001)
    even = np.frombuffer(b"".join(even_pieces) + even_tail, dtype="<i2")
    odd = np.frombuffer(b"".join(odd_pieces) + odd_tail, dtype="<i2")
    assert len(odd) == pytest.approx(len(even), rel=0.02)
    tempo = TempoFilter(2.0)
    assert tempo.process(b"") == b""
    assert tempo.finish() == b""
    assert tempo.finish() == b""
    with pytest.raises(RuntimeError):
        tempo.process(pcm)


def test_chain_and_range() -> None:
    assert atempo_chain(1.0) == []
    assert atempo_chain(0.25) == [0.5, 0.5]
    assert atempo_chain(4.0) == [2.0, 2.0]
    for speed in (0.25, 0.3, 0.5, 0.9, 1.7, 2.5, 4.0):
        chain = atempo_chain(speed)
        assert all(0.5 <= f <= 2.0 for f in chain)
        assert math.prod(chain) == pytest.approx(speed)
    for bad in (0.2, 4.5, 0.0, -1.0):
        with pytest.raises(ValueError):
            TempoFilter(bad)
