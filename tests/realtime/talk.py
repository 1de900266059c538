"""Speech for the client tests: espeak-ng utterances as 24 kHz pcm16, streamed at a chosen pace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..speech_audio import compose, to_pcm16

RATE = 24000
BYTES_PER_MS = RATE * 2 // 1000


def utterance(text: str = "Hello there, how are you today?", lead: float = 0.3, tail: float = 1.2) -> bytes:
    """Silence, `text` spoken, silence: 24 kHz s16le mono."""
    samples, _ = compose([lead, text, tail], rate=RATE)
    return to_pcm16(samples)


async def paced(pcm: bytes, chunk_ms: int = 20, speed: float = 1.0) -> AsyncIterator[bytes]:
    """`pcm` in `chunk_ms` chunks, released at `speed` times real time (the clock, not the sleeps, sets the pace)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    step = chunk_ms * BYTES_PER_MS
    for index, offset in enumerate(range(0, len(pcm), step)):
        due = start + index * chunk_ms / 1000 / speed
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield pcm[offset : offset + step]
