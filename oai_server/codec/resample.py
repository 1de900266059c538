"""Streaming 24 kHz ↔ 8 kHz resampling of 16-bit mono audio (telephony sessions), by a polyphase FIR.

One linear-phase low-pass (a Kaiser-windowed sinc, `TAPS` taps at 24 kHz, cut-off 3.7 kHz: flat to
3.4 kHz, ≥ 60 dB down from 4 kHz) serves both directions:

- down (24 → 8 kHz): filter, keep every third sample (only the kept ones are computed);
- up (8 → 24 kHz): zero-stuff ×3 and filter, computed as three 48-tap phases, gain 3.

Both are causal and keep the last input samples between calls, so feeding a signal in chunks of
any size gives the same samples as feeding it whole (no clicks at chunk boundaries) and the
sample counts are exact: `n` samples in at 8 kHz give `3n` out; in total `N` samples in at
24 kHz give `ceil(N / 3)` out. The price is a fixed delay of `DELAY_24K` samples at 24 kHz
((TAPS − 1) / 2 ≈ 3 ms) in each direction.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

FACTOR = 3
TAPS = 144
DELAY_24K = (TAPS - 1) / 2
"""Group delay of the filter, in samples at 24 kHz."""

_RATE = 24_000
_CUTOFF_HZ = 3_700.0
_KAISER_BETA = 5.65  # ~60 dB stop-band (Kaiser's formula for A = 60 dB)

Int16Array = npt.NDArray[np.int16]


def _lowpass() -> npt.NDArray[np.float64]:
    n = np.arange(TAPS) - (TAPS - 1) / 2
    h = np.sinc(2 * _CUTOFF_HZ / _RATE * n) * np.kaiser(TAPS, _KAISER_BETA)
    return h / h.sum()  # unit gain at DC


LOWPASS = _lowpass()
"""The FIR at 24 kHz (unit DC gain)."""


def _to_int16(y: npt.NDArray[np.float64]) -> Int16Array:
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


class Downsampler:
    """24 kHz → 8 kHz, streaming: `process` each chunk in order; state carries across calls."""

    def __init__(self) -> None:
        self._history = np.zeros(TAPS - 1, dtype=np.float64)
        self._kernel = LOWPASS[::-1].copy()
        self._phase = 0  # index, in the next chunk, of the next input sample that yields an output

    def process(self, samples: Int16Array) -> Int16Array:
        """The 8 kHz samples this chunk completes (`len` is exact: see the module docstring)."""
        x = np.asarray(samples, dtype=np.float64)
        if not len(x):
            return np.zeros(0, dtype=np.int16)
        buf = np.concatenate([self._history, x])
        keep = np.arange(self._phase, len(x), FACTOR)
        y = sliding_window_view(buf, TAPS)[keep] @ self._kernel
        self._phase = (self._phase - len(x)) % FACTOR
        self._history = buf[len(buf) - (TAPS - 1) :]
        return _to_int16(y)


class Upsampler:
    """8 kHz → 24 kHz, streaming: three output samples per input sample."""

    def __init__(self) -> None:
        per_phase = TAPS // FACTOR
        self._history = np.zeros(per_phase - 1, dtype=np.float64)
        # phase p of the zero-stuffed filter uses taps p, p+3, …; gain 3 restores the level
        self._kernels = np.stack([LOWPASS[p::FACTOR][::-1] for p in range(FACTOR)], axis=1) * FACTOR
        self._width = per_phase

    def process(self, samples: Int16Array) -> Int16Array:
        """The 24 kHz samples for this chunk: exactly three per input sample."""
        x = np.asarray(samples, dtype=np.float64)
        if not len(x):
            return np.zeros(0, dtype=np.int16)
        buf = np.concatenate([self._history, x])
        y = sliding_window_view(buf, self._width) @ self._kernels  # (len(x), 3): row m = outputs 3m, 3m+1, 3m+2
        self._history = buf[len(buf) - (self._width - 1) :]
        return _to_int16(y.reshape(-1))


def downsample(samples: Int16Array) -> Int16Array:
    """Whole-signal 24 → 8 kHz (same samples as streaming it through a fresh `Downsampler`)."""
    return Downsampler().process(samples)


def upsample(samples: Int16Array) -> Int16Array:
    """Whole-signal 8 → 24 kHz (same samples as streaming it through a fresh `Upsampler`)."""
    return Upsampler().process(samples)
