"""Reply audio in a session's output format: 24 kHz pcm16, or G.711 μ-law / A-law at 8 kHz, at its speed.

One `OutputEncoder` per response keeps the streaming state (the 24 -> 8 kHz resampler, the
tempo filter) across chunks. `speed` changes tempo, not pitch (`pipeline.tempo`); the
response's sample -> text map stays in the synthesizer's time, so a client's `audio_end_ms`
is scaled by the speed before it is looked up there.
"""

from __future__ import annotations

import base64

import numpy as np

from ...codec.g711 import TelephonyEncoder
from ...pipeline.tempo import TempoFilter
from ...protocol.realtime import AudioFormat, PCMAFormat, PCMUFormat


class OutputEncoder:
    """24 kHz s16le chunks of one reply -> base64 deltas in the output format."""

    def __init__(self, fmt: AudioFormat, speed: float = 1.0) -> None:
        self._tempo = TempoFilter(speed) if speed != 1.0 else None
        self._telephony: TelephonyEncoder | None = None
        if isinstance(fmt, PCMUFormat):
            self._telephony = TelephonyEncoder("pcmu")
        elif isinstance(fmt, PCMAFormat):
            self._telephony = TelephonyEncoder("pcma")

    def _encode(self, pcm: bytes) -> str | None:
        if self._telephony is not None and pcm:
            pcm = self._telephony.process(np.frombuffer(pcm, dtype="<i2"))
        return base64.b64encode(pcm).decode("ascii") if pcm else None

    def encode(self, pcm: bytes) -> str | None:
        """The delta for one chunk (None when the tempo filter holds it all back for now)."""
        if self._tempo is not None:
            pcm = self._tempo.process(pcm)
        return self._encode(pcm)

    def flush(self) -> str | None:
        """What the tempo filter still holds at the end of the reply."""
        return self._encode(self._tempo.finish()) if self._tempo is not None else None
