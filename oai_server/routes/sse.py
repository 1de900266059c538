"""Server-sent events framing, in exactly one place.

Chat streams are `data: <json>` events ending with `data: [DONE]`; speech streams are named
events (`event: speech.audio.delta`) with no `[DONE]`, as the OpenAI spec defines them. A
failure after the 200 went out becomes one more `data: {"error": ...}` event (the SDK raises
it as `APIError`). Base64 pieces are cut on 3-byte boundaries so concatenated pieces decode.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from ..errors import APIError

DONE = b"data: [DONE]\n\n"
KEEP_ALIVE = b": keep-alive\n\n"
KEEP_ALIVE_SECONDS = 15.0
"""A stream silent this long gets a comment line, so proxies and clients do not time it out."""


def _dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def data_event(payload: Any) -> bytes:
    """One `data:` event carrying a JSON object."""
    return f"data: {_dumps(payload)}\n\n".encode()


def named_event(name: str, payload: Any) -> bytes:
    """An event with an `event:` name line (used by speech SSE)."""
    return f"event: {name}\ndata: {_dumps(payload)}\n\n".encode()


def error_event(error: APIError) -> bytes:
    """The in-stream error event for a failure after the stream started."""
    return data_event(error.body())


def b64_pieces(data: bytes, carry: bytearray, *, final: bool, align: int = 6) -> list[str]:
    """Base64 of `carry + data`, cut so that every piece but the last is a multiple of `align` bytes.

    `carry` keeps the unaligned tail between calls (pcm16 uses 6 = 3 x 2 bytes, so a piece is
    whole samples and has no `=` padding). With `final`, the tail is flushed too.
    """
    carry.extend(data)
    usable = len(carry) if final else len(carry) - len(carry) % align
    if usable <= 0:
        return []
    piece = bytes(carry[:usable])
    del carry[:usable]
    return [base64.b64encode(piece).decode("ascii")]


async def with_keep_alive(body: AsyncIterator[bytes], interval: float = KEEP_ALIVE_SECONDS) -> AsyncIterator[bytes]:
    """`body`, plus a `KEEP_ALIVE` comment whenever it has been silent for `interval` seconds.

    One `anext` of the body is pending at a time; when the consumer stops (or is cancelled, the
    client went away) the pending step is cancelled and awaited before the body is closed, so the
    body never runs on in another task.
    """
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(body))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield KEEP_ALIVE
                continue
            step, pending = pending, None
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
