"""Admission control: slots, the bounded queue, timeouts, FIFO hand-over, HeldBody, draining."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from oai_server.errors import APIError
from oai_server.serving.admission import Admission, HeldBody, Ticket

from .helpers import settle


async def test_slots_bound_concurrency() -> None:
    adm = Admission(2, 4, 5.0)
    first, second = await adm.acquire(), await adm.acquire()
    third = asyncio.create_task(adm.acquire())
    await settle()
    assert not third.done()
    assert (adm.active, adm.queued) == (2, 1)
    first.release()
    ticket = await asyncio.wait_for(third, 1)
    assert (adm.active, adm.queued) == (2, 0)  # the slot was handed over, not freed
    first.release()  # idempotent: a second release frees nothing
    assert adm.active == 2
    second.release()
    ticket.release()
    assert adm.active == 0


async def test_full_queue_is_429_with_retry_after() -> None:
    adm = Admission(1, 2, 5.0)
    held = await adm.acquire()
    waiting = [asyncio.create_task(adm.acquire()) for _ in range(2)]
    await settle()
    assert adm.queued == 2
    with pytest.raises(APIError) as caught:
        await adm.acquire()
    error = caught.value
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    assert error.headers["retry-after"] == "1"
    assert error.response_headers()["retry-after"] == "1"
    for task in waiting:
        held.release()
        held = await asyncio.wait_for(task, 1)
    held.release()
    await settle()
    assert (adm.active, adm.queued) == (0, 0)


async def test_no_queue_means_immediate_429() -> None:
    adm = Admission(1, 0, 5.0)
    held = await adm.acquire()
    with pytest.raises(APIError) as caught:
        await adm.acquire()
    assert caught.value.status == 429
    held.release()


async def test_queue_timeout_is_429() -> None:
    adm = Admission(1, 3, 0.05)
    held = await adm.acquire()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(APIError) as caught:
        await adm.acquire()
    assert loop.time() - started >= 0.04
    assert caught.value.status == 429 and "retry-after" in caught.value.headers
    assert (adm.active, adm.queued) == (1, 0)
    held.release()
    assert adm.active == 0
    (await adm.acquire()).release()  # the queue still works afterwards


async def test_released_slot_goes_to_waiters_in_fifo_order() -> None:
    adm = Admission(1, 10, 5.0)
    held = await adm.acquire()
    order: list[int] = []

    async def wait(n: int) -> Ticket:
        ticket = await adm.acquire()
        order.append(n)
        return ticket

    tasks = []
    for n in range(4):
        tasks.append(asyncio.create_task(wait(n)))
        await settle()  # enqueue in a known order
    for n in range(4):
        held.release()
        held = await asyncio.wait_for(tasks[n], 1)
        assert order == list(range(n + 1))
        assert adm.active == 1
    held.release()
    assert adm.active == 0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    adm = Admission(1, 10, 5.0)
    held = await adm.acquire()
    gone = asyncio.create_task(adm.acquire())
    stays = asyncio.create_task(adm.acquire())
    await settle()
    gone.cancel()
    await settle()
    assert adm.queued == 1
    held.release()
    (await asyncio.wait_for(stays, 1)).release()
    assert (adm.active, adm.queued) == (0, 0)


async def numbers(n: int, fail_at: int | None = None) -> AsyncIterator[bytes]:
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("stream broke")
        yield bytes([i])


async def test_held_body_releases_on_normal_end() -> None:
    adm = Admission(1, 0, 1.0)
    body = HeldBody(numbers(3), await adm.acquire())
    assert [chunk async for chunk in body] == [b"\x00", b"\x01", b"\x02"]
    assert adm.active == 0
    await body.aclose()  # closing after the end releases nothing twice
    assert adm.active == 0


async def test_held_body_releases_on_error() -> None:
    adm = Admission(1, 0, 1.0)
    body = HeldBody(numbers(3, fail_at=1), await adm.acquire())
    assert await anext(body) == b"\x00"
    assert adm.active == 1
    with pytest.raises(RuntimeError):
        await anext(body)
    assert adm.active == 0


async def test_held_body_releases_on_aclose_without_iteration() -> None:
    adm = Admission(1, 0, 1.0)
    closed: list[bool] = []

    async def body_gen() -> AsyncIterator[bytes]:
        try:
            yield b"never"
        finally:
            closed.append(True)

    gen = body_gen()
    body = HeldBody(gen, await adm.acquire())
    await body.aclose()
    assert adm.active == 0
    with pytest.raises(StopAsyncIteration):
        await anext(gen)  # the underlying body was closed


async def test_held_body_release_hands_slot_to_waiter() -> None:
    adm = Admission(1, 1, 1.0)
    body = HeldBody(numbers(1), await adm.acquire())
    waiter = asyncio.create_task(adm.acquire())
    await settle()
    await body.aclose()
    (await asyncio.wait_for(waiter, 1)).release()
    assert adm.active == 0


async def test_draining_refuses_with_503() -> None:
    adm = Admission(4, 4, 1.0)
    assert await adm.wait_idle(0.1) is True
    with pytest.raises(APIError) as caught:
        await adm.acquire()
    error = caught.value
    assert error.status == 503 and error.type == "server_error" and error.code == "shutting_down"
    assert error.headers["retry-after"] == "1"


async def test_wait_idle_waits_for_in_flight_requests() -> None:
    adm = Admission(2, 2, 1.0)
    a, b = await adm.acquire(), await adm.acquire()
    idle = asyncio.create_task(adm.wait_idle(2.0))
    await settle()
    assert not idle.done() and adm.draining
    a.release()
    await settle()
    assert not idle.done()
    b.release()
    assert await asyncio.wait_for(idle, 1) is True


async def test_wait_idle_times_out_when_requests_stay() -> None:
    adm = Admission(1, 0, 1.0)
    held = await adm.acquire()
    assert await adm.wait_idle(0.05) is False
    held.release()
    assert await adm.wait_idle(0.05) is True
