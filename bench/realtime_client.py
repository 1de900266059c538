"""The client side of one Realtime voice session for `realtime_load.py`: speech in, events out.

`Microphone` streams 24 kHz pcm16 to the server at real-time pace (silence between utterances), `Events` reads
every server event with its arrival time and waits for the ones a session needs (naming the wait and the last
events seen when it times out), and `espeak` speaks the benchmark's phrases (espeak-ng, or its recordings in
`bench/data/realtime_phrases` on a machine without it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RATE = 24000
CHUNK_MS = 20
CHUNK_BYTES = RATE * 2 * CHUNK_MS // 1000
PHRASES = ("Hello there, how are you today?", "What is the weather like tomorrow?", "Tell me a short story.")
INTERRUPTION = "Wait, stop please."


RECORDED = Path(__file__).resolve().parent / "data" / "realtime_phrases"


def recorded_path(text: str) -> Path:
    """Where espeak-ng's recording of `text` is kept (`bench/data/realtime_phrases`), for machines without it."""
    slug = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return RECORDED / f"{slug}.flac"


def espeak(text: str) -> bytes:
    """`text` spoken by espeak-ng (or its recording, on a machine without espeak-ng, such as the lent GPU),
    its own silences trimmed, as 24 kHz s16le."""
    from oai_server.codec.audio_input import decode_audio

    if shutil.which("espeak-ng") is None:
        samples = decode_audio(recorded_path(text).read_bytes(), sample_rate=RATE).samples
    else:
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            subprocess.run(
                ["espeak-ng", "-v", "en", "-s", "160", "-w", str(wav), text], check=True, capture_output=True
            )
            samples = decode_audio(wav.read_bytes(), sample_rate=RATE).samples
    loud = np.flatnonzero(np.abs(samples) > 0.01 * np.abs(samples).max())
    samples = samples[loud[0] : loud[-1] + 1]
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


class Microphone:
    """Streams 20 ms appends at real-time pace for the whole session: queued speech, else silence."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.queue: list[tuple[bytes, asyncio.Future[float]]] = []
        self.task = asyncio.create_task(self._run())

    def say(self, pcm: bytes) -> asyncio.Future[float]:
        """Queue an utterance; the future gets the time its last sample was sent."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.queue.append((pcm, done))
        return done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        current, offset, done = b"", 0, None
        silence = bytes(CHUNK_BYTES)
        while True:
            if offset >= len(current) and self.queue:
                current, done = self.queue.pop(0)
                offset = 0
            chunk = current[offset : offset + CHUNK_BYTES] if offset < len(current) else silence
            offset += CHUNK_BYTES
            chunk = chunk.ljust(CHUNK_BYTES, b"\0")
            await self.ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
            )
            if done is not None and offset >= len(current):
                done.set_result(time.monotonic())
                done = None
            sent += 1
            delay = start + sent * CHUNK_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class Events:
    """Every server event with its arrival time; `wait` for one matching a predicate."""

    def __init__(self, ws: Any, timeout: float = 60) -> None:
        self.ws = ws
        self.timeout = timeout
        self.log: list[tuple[float, dict[str, Any]]] = []
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._run())
        self.task.add_done_callback(_retrieve)

    async def _run(self) -> None:
        async for raw in self.ws:
            self.log.append((time.monotonic(), json.loads(raw)))
            self.arrived.set()

    async def wait(self, match: Callable[[dict[str, Any]], bool], start: int = 0, what: str | None = None) -> int:
        """The index of the first event at or after `start` that matches; `TimeoutError` naming `what` if none
        comes within the session's `timeout`."""
        what = what or getattr(match, "__name__", "an event")
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    for index in range(start, len(self.log)):
                        if match(self.log[index][1]):
                            return index
                    if self.task.done():
                        error = None if self.task.cancelled() else self.task.exception()
                        raise RuntimeError(f"the connection closed while waiting for {what}: {error!r}")
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise TimeoutError(f"no {what} within {self.timeout:g} s") from None

    def kind(self, *types: str) -> Callable[[dict[str, Any]], bool]:
        def match(event: dict[str, Any]) -> bool:
            return event["type"] in types

        match.__name__ = " or ".join(types)
        return match

    def last_types(self, count: int = 8) -> list[str]:
        """The types of the last `count` events received (what a failed session saw last)."""
        return [_describe(event) for _, event in self.log[-count:]]

    async def close(self) -> None:
        """Stop reading (the connection is closing)."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _describe(event: dict[str, Any]) -> str:
    """An event's type; an `error` event's code and message with it, a `response.done` its status (and error)."""
    kind = str(event.get("type"))
    if kind == "error":
        error = event.get("error") or {}
        return f"error({error.get('code')}: {str(error.get('message'))[:120]})"
    if kind == "response.done":
        response = event.get("response") or {}
        error = (response.get("status_details") or {}).get("error") or {}
        why = f": {error.get('type')} {error.get('code')}" if error else ""
        return f"response.done({response.get('status')}{why})"
    return kind


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Retrieve a finished task's exception, so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()
