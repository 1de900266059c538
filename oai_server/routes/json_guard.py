"""Bodies with too many JSON values are refused before the framework parses them on the event loop.

FastAPI parses a JSON body and validates it on the event loop, and both cost time per value, not per
byte: a 4 MB body of two million numbers (or 150,000 content parts) held the loop for about a second,
while a 1 MB chat of long messages costs a few milliseconds. `JsonValueLimitMiddleware` counts the
values of a large body (over `SCAN_FROM_BYTES`) in a worker thread, with a tokenizer that stops at
`max_values` and lets the loop run between tokens, and answers 400 past the limit; the app then
receives the same body as before. Bodies that are not JSON, or not valid JSON, pass through untouched
(the framework reports them as before).
"""

from __future__ import annotations

import asyncio
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import APIError, invalid
from .errors import error_response

SCAN_FROM_BYTES = 16 * 1024
"""Smaller bodies cannot hold enough values to matter (at most ~8,000) and are not scanned."""

_TOKEN = re.compile(
    rb'[ \t\r\n]*(?:(")[^"\\]*(?:\\.[^"\\]*)*"|([\[{])|([\]},:])|(true|false|null)|(-?[0-9][0-9.eE+-]*))', re.S
)


def count_json_values(body: bytes, limit: int) -> int | None:
    """How many values (strings, numbers, literals, arrays, objects; keys count) `body` holds, up to `limit + 1`.

    None when `body` is not JSON this tokenizer understands (the framework then says what is wrong).
    Each token is one regex match, so a thread running this yields the GIL between tokens.
    """
    count = 0
    position = 0
    end = len(body.rstrip())
    while position < end:
        match = _TOKEN.match(body, position)
        if match is None:
            return None
        position = match.end()
        if match.group(3) is None:  # punctuation is not a value
            count += 1
            if count > limit:
                return count
    return count


def too_many_values(limit: int) -> APIError:
    """The 400 for a body over the value limit."""
    return invalid(f"The request body has too many JSON values: the limit is {limit}.", None, "request_too_complex")


class JsonValueLimitMiddleware:
    """400 for a JSON body with more than `max_values` values (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_values: int) -> None:
        self.app = app
        self.max_values = max_values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Buffer a large JSON body, count its values off the loop, then refuse it or replay it to the app."""
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        content_type = Headers(scope=scope).get("content-type", "").lower()
        if content_type and "json" not in content_type:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        message: Message = {"type": "http.request", "body": b"", "more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":
                break  # a disconnect: the app sees it next
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
        if message["type"] == "http.request" and size > SCAN_FROM_BYTES:
            body = b"".join(chunks)
            count = await asyncio.to_thread(count_json_values, body, self.max_values)
            if count is not None and count > self.max_values:
                await error_response(too_many_values(self.max_values))(scope, receive, send)
                return
            chunks = [body]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            if message["type"] != "http.request":
                return message
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)
