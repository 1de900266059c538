"""G.711 μ-law (`audio/pcmu`) and A-law (`audio/pcma`) for telephony Realtime sessions.

The code tables are ITU-T G.711's, built with the reference algorithm (Sun's `g711.c`, the one
CPython's `audioop` and FFmpeg use): μ-law on the 14-bit magnitude with bias 0x84, A-law on the
13-bit magnitude with even bits inverted (0x55). Decoding is a 256-entry table; encoding is a
65 536-entry table indexed by the 16-bit sample, so both are one numpy gather.

`TelephonyDecoder` / `TelephonyEncoder` are the streaming session seams: G.711 bytes at 8 kHz in,
24 kHz pcm16 out (and back), with the resampler's state kept across chunks (`codec.resample`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from .resample import Downsampler, Int16Array, Upsampler

Law = Literal["pcmu", "pcma"]
"""`pcmu` = μ-law, `pcma` = A-law (the GA format names without `audio/`)."""

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # 14-bit magnitude limit before the bias
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _ulaw_encode_all() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag)  # first segment whose end is >= mag
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0xF))
    return (code ^ mask).astype(np.uint8)


def _ulaw_decode_all() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _alaw_encode_all() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, mag)
    quant = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | quant)
    return (code ^ mask).astype(np.uint8)


def _alaw_decode_all() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_ENCODE = _ulaw_encode_all()
"""μ-law code of every int16 sample, indexed by `sample + 32768`."""
ULAW_DECODE = _ulaw_decode_all()
"""Linear value of every μ-law code."""
ALAW_ENCODE = _alaw_encode_all()
"""A-law code of every int16 sample, indexed by `sample + 32768`."""
ALAW_DECODE = _alaw_decode_all()
"""Linear value of every A-law code."""

_ENCODE = {"pcmu": ULAW_ENCODE, "pcma": ALAW_ENCODE}
_DECODE = {"pcmu": ULAW_DECODE, "pcma": ALAW_DECODE}


def encode(samples: Int16Array, law: Law) -> bytes:
    """int16 samples → G.711 bytes (one per sample)."""
    index = np.asarray(samples, dtype=np.int16).astype(np.int32) + 32768
    return _ENCODE[law][index].tobytes()


def decode(data: bytes, law: Law) -> Int16Array:
    """G.711 bytes → int16 samples (one per byte)."""
    return _DECODE[law][np.frombuffer(data, dtype=np.uint8)]


class TelephonyDecoder:
    """A session's G.711 input: 8 kHz G.711 chunks in, 24 kHz int16 out (3 samples per byte)."""

    def __init__(self, law: Law) -> None:
        self.law: Law = law
        self._up = Upsampler()

    def process(self, data: bytes) -> Int16Array:
        """The 24 kHz samples for this chunk."""
        return self._up.process(decode(data, self.law))


class TelephonyEncoder:
    """A session's G.711 output: 24 kHz int16 chunks in, 8 kHz G.711 bytes out."""

    def __init__(self, law: Law) -> None:
        self.law: Law = law
        self._down = Downsampler()

    def process(self, samples: Int16Array) -> bytes:
        """The G.711 bytes this chunk completes (in total `ceil(N / 3)` for `N` samples in)."""
        return encode(self._down.process(samples), self.law)
