"""The HTTP lifecycle of a request that generates: admission, deadline, disconnect -> abort, errors.

Every generating route answers through `streamed` (a body sent as it is produced) or `whole`
(one JSON body). Both take an admission slot for the request's lifetime and hold it to the
request deadline; a failure after the 200 is rendered by the caller's `on_failure` (an SSE
error event) or, for raw bodies, cuts the transfer so the client sees a broken file instead of
one that silently stops. A client that goes away cancels the work at once: Starlette's
`StreamingResponse` (ASGI spec >= 2.4) only notices a disconnect when a later `send` fails,
which can be seconds away while an engine is still thinking, so `AbortingStreamingResponse`
watches `receive()` for `http.disconnect` and cancels the body iterator; the iterator's
`finally` blocks then abort every engine request of the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import APIError
from ..serving.admission import HeldBody, Ticket
from ..serving.lifecycle import StreamFailed, as_api_error, guarded
from .sse import with_keep_alive

if TYPE_CHECKING:
    from ..serving.services import Services

T = TypeVar("T")
E = TypeVar("E")

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
        """Race the body against `http.disconnect`; always close the body iterator.

        The watcher is a plain task that cancels this one: an anyio task group here cost ~50 µs a
        request against ~6 µs, paid on the event loop by every request of a burst.
        """
        streaming = asyncio.current_task()
        assert streaming is not None
        sent = False
        cut = False

        async def watch() -> None:
            nonlocal cut
            # A failing receive() leaves the client unobservable: the stream ends as if it had gone.
            with contextlib.suppress(Exception):
                await self.listen_for_disconnect(receive)
            if not sent:
                cut = True
                streaming.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            with contextlib.suppress(OSError):  # the client went away mid-send
                await self.stream_response(send)
        except asyncio.CancelledError:
            if not cut or streaming.uncancel() > 0:  # cancelled from outside too (server shutdown)
                raise
        else:
            if cut:  # the body swallowed the cancellation: take it back all the same
                streaming.uncancel()
        finally:
            sent = True
            watcher.cancel()
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


async def _rendered(
    items: AsyncIterator[E | StreamFailed],
    render: Callable[[AsyncIterator[E]], AsyncIterator[bytes]],
    on_failure: Callable[[APIError], Iterable[bytes]] | None,
) -> AsyncIterator[bytes]:
    """`render` over the items up to a failure, then `on_failure`'s bytes (or the error raised: a cut body)."""
    failure: list[APIError] = []

    async def until_failure() -> AsyncGenerator[E, None]:
        async for item in items:
            if isinstance(item, StreamFailed):
                failure.append(item.error)
                return
            yield item

    source: AsyncGenerator[E, None] = until_failure()
    body = render(source)
    try:
        async for data in body:
            yield data
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
        await source.aclose()
        close_items = getattr(items, "aclose", None)
        if close_items is not None:
            await close_items()
    if failure:
        if on_failure is None:
            raise failure[0]
        for data in on_failure(failure[0]):
            yield data


async def stream_response(
    svc: Services,
    events: AsyncIterator[E],
    render: Callable[[AsyncIterator[E]], AsyncIterator[bytes]],
    *,
    media_type: str,
    on_failure: Callable[[APIError], Iterable[bytes]] | None = None,
    speaks: bool = False,
) -> AbortingStreamingResponse:
    """Admit the request, then stream `render(events)` under the deadline (SSE bodies with keep-alives).

    A request that `speaks` (synthesizes audio) first needs real-time headroom (`serving/headroom.py`).
    """
    ticket = await admit(svc, speaks)
    body = _rendered(guarded(events, deadline_seconds=svc.settings.request_timeout_seconds), render, on_failure)
    if media_type == "text/event-stream":
        body = with_keep_alive(body)
    return AbortingStreamingResponse(HeldBody(body, ticket), media_type=media_type)


async def admit(svc: Services, speaks: bool) -> Ticket:
    """A slot for the request; one that speaks first waits for real-time headroom. Raises the 429 when
    there is none; the wait is in `oai_admission_wait_seconds` either way."""
    start = time.monotonic()
    try:
        if speaks and svc.headroom is not None:
            await svc.headroom.admit()
        return await svc.admission.acquire()
    finally:
        if svc.metrics is not None:
            svc.metrics.observe_admission_wait(speaks, time.monotonic() - start)


async def whole_response(
    svc: Services, request: Request, work: Callable[[], Awaitable[T]], *, speaks: bool = False
) -> T:
    """Admit the request, then await `work()` under the deadline, cancelled if the client goes away."""
    ticket = await admit(svc, speaks)
    try:
        timed = asyncio.wait_for(work(), svc.settings.request_timeout_seconds)
        return await cancel_on_disconnect(request, timed)
    except Exception as exc:
        raise as_api_error(exc) from exc
    finally:
        ticket.release()
