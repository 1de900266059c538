"""`AbortingStreamingResponse` driven directly over ASGI: the disconnect watcher and its cancellation rules.

The body is an async generator that records how far it got and whether it was closed (its `finally`, where a
reply's engine requests are aborted). `receive` is scripted: the request, then a disconnect (or an error) when
the test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from oai_server.routes.responses import AbortingStreamingResponse

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "method": "GET"}


class Body:
    """Chunks `0`, `1`, ... every `interval` seconds, `count` of them; records what happened to it."""

    def __init__(self, count: int, interval: float = 0.01) -> None:
        self.count, self.interval = count, interval
        self.produced = 0
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            for i in range(self.count):
                await asyncio.sleep(self.interval)
                self.produced += 1
                yield str(i).encode()
        finally:
            self.closed = True


class Client:
    """`receive` gives the request, then waits for `leave()` (a disconnect) or `fail()` (receive raises)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._gone = asyncio.Event()
        self._error: Exception | None = None
        self._requested = False

    async def receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        if self._error is not None:
            raise self._error
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def leave(self) -> None:
        self._gone.set()

    def fail(self) -> None:
        self._error = RuntimeError("receive broke")
        self._gone.set()

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def serve(body: Body, client: Client) -> asyncio.Task[None]:
    response = AbortingStreamingResponse(body.chunks(), media_type="audio/pcm")
    return asyncio.create_task(response(SCOPE, client.receive, client.send))


async def test_a_whole_body_is_sent_then_closed() -> None:
    body, client = Body(5), Client()
    await (await serve(body, client))
    assert client.body() == b"01234" and body.closed
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_disconnect_cuts_the_body_and_is_not_an_error() -> None:
    body, client = Body(1000), Client()
    task = await serve(body, client)
    await asyncio.sleep(0.05)
    client.leave()
    await asyncio.wait_for(task, 2)  # returns normally: the cancellation it used is taken back
    assert body.closed and 0 < body.produced < 1000
    assert not task.cancelled() and task.exception() is None


async def test_the_response_task_is_left_uncancelled() -> None:
    """The watcher cancels the response's own task; once cut, that task must not stay 'cancelling' (a later
    `asyncio.timeout` in it would misfire)."""
    body, client = Body(1000), Client()
    response = AbortingStreamingResponse(body.chunks(), media_type="audio/pcm")

    async def respond_then_report() -> int:
        await response(SCOPE, client.receive, client.send)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    task = asyncio.create_task(respond_then_report())
    await asyncio.sleep(0.05)
    client.leave()
    assert await asyncio.wait_for(task, 2) == 0


@pytest.mark.parametrize("client_leaves_too", [False, True])
async def test_a_cancellation_from_outside_still_propagates(client_leaves_too: bool) -> None:
    """Server shutdown cancels the request's task: that must not be mistaken for the client's disconnect, even
    when the client leaves at the same moment."""
    body, client = Body(1000), Client()
    task = await serve(body, client)
    await asyncio.sleep(0.05)
    if client_leaves_too:
        client.leave()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert body.closed


async def test_a_failing_receive_ends_the_stream_as_a_disconnect() -> None:
    body, client = Body(1000), Client()
    task = await serve(body, client)
    await asyncio.sleep(0.05)
    client.fail()
    await asyncio.wait_for(task, 2)
    assert body.closed and body.produced < 1000
