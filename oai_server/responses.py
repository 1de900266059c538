"""A streaming response that aborts its producer the moment the client goes away.

Starlette's `StreamingResponse` (ASGI spec >= 2.4) only notices a disconnect when a later
`send` fails, which can be seconds away while an engine is still thinking. This response
always watches `receive()` for `http.disconnect` and cancels the body iterator at once; the
iterator's `finally` blocks then abort every engine request of the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class AbortingStreamingResponse(StreamingResponse):
    """Streams an async iterator; a client disconnect cancels and closes the iterator."""

    body_iterator: AsyncIterator[bytes]

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        media_type: str,
        headers: dict[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        # `status_code` is also what FastAPI reads to document a route's success status.
        base = dict(SSE_HEADERS) if media_type == "text/event-stream" else {"Cache-Control": "no-cache"}
        super().__init__(content, status_code=status_code, media_type=media_type, headers={**base, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Race the body against `http.disconnect`; always close the body iterator."""

        async def watch(cancel: anyio.CancelScope) -> None:
            await self.listen_for_disconnect(receive)
            cancel.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch, group.cancel_scope)
                with contextlib.suppress(OSError):  # the client went away mid-send
                    await self.stream_response(send)
                group.cancel_scope.cancel()
        finally:
            aclose: Any = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (non-streaming replies)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()
