"""`ArrivalWindow`: arrivals into a busy engine let in together, alone into an idle one; and through `VLLMEngine`
(vLLM's `AsyncLLM` as the test double of tests/test_vllm_engine.py): no request reaches vLLM before its group is
let in, and one cancelled while it waits never reaches it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from oai_server.engines.arrival_window import BUSY_FROM, ArrivalWindow
from oai_server.engines.vllm_args import EngineSpec
from oai_server.engines.vllm_engine import VLLMEngine

from .helpers import settle
from .test_vllm_engine import PARAMS, FakeAsyncLLM, collect, identity_params, out

WINDOW_S = 0.05


async def test_no_window_or_an_idle_engine_lets_every_arrival_in_at_once() -> None:
    off, idle = ArrivalWindow(0.0), ArrivalWindow(10.0)
    for in_flight in (0, BUSY_FROM, 10 * BUSY_FROM):
        assert await asyncio.wait_for(off.enter(in_flight), 1) == 0  # would wait 10 s if it held anything
    for in_flight in range(BUSY_FROM):
        assert await asyncio.wait_for(idle.enter(in_flight), 1) == 0
    assert (off.groups, off.held, idle.groups, idle.held) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="window_s"):
        ArrivalWindow(-1.0)


async def test_arrivals_into_a_busy_engine_are_let_in_together_after_the_window() -> None:
    window = ArrivalWindow(WINDOW_S)
    loop = asyncio.get_running_loop()
    let_in: list[tuple[str, float]] = []

    async def arrive(name: str) -> None:
        assert await window.enter(BUSY_FROM) == 1
        let_in.append((name, loop.time()))

    opened = loop.time()
    first = asyncio.create_task(arrive("first"))
    await settle()
    assert not first.done() and window.groups == 1
    await asyncio.sleep(WINDOW_S / 2)
    later = [asyncio.create_task(arrive(f"later{i}")) for i in range(3)]
    await settle()
    assert let_in == []  # nobody before the window ends
    await asyncio.wait_for(asyncio.gather(first, *later), 2)
    assert [name for name, _ in let_in] == ["first", "later0", "later1", "later2"]  # in the order they came
    times = [t for _, t in let_in]
    assert min(times) >= opened + WINDOW_S
    assert max(times) - min(times) < WINDOW_S / 5  # the later ones with the first, not a window after their own
    assert (window.groups, window.held) == (1, 4)
    assert await asyncio.wait_for(window.enter(BUSY_FROM), 2) == 2  # the next arrival opens a group of its own
    assert (window.groups, window.held) == (2, 5)


async def test_a_cancelled_waiter_leaves_its_group_to_the_others() -> None:
    window = ArrivalWindow(WINDOW_S)
    leaving = asyncio.create_task(window.enter(BUSY_FROM))
    staying = asyncio.create_task(window.enter(BUSY_FROM))
    await settle()
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await asyncio.wait_for(staying, 2)
    assert window.groups == 1


async def _busy_engine(double: FakeAsyncLLM) -> VLLMEngine:
    engine = await VLLMEngine.create(
        EngineSpec(
            "m",
            tokenizer=None,
            max_model_len=4096,
            gpu_memory_utilization=0.3,
        ),
        arrival_window_ms=WINDOW_S * 1000,
        engine_factory=lambda kwargs: double,
        sampling_params_factory=identity_params,
    )
    engine.arrivals.busy_from = 1  # one stream in flight makes this engine busy
    assert engine.info.details["arrival_window_ms"] == WINDOW_S * 1000
    return engine


async def test_vllm_engine_sends_a_busy_engines_arrivals_to_vllm_as_one_group() -> None:
    double = FakeAsyncLLM({"a": [[out([1])]], "b": [[out([2])], [out([3, 9], "stop", 9)]]})
    double.scripts["c"] = [[out([4, 9], "stop", 9)]]
    engine = await _busy_engine(double)
    running = engine.generate([1], PARAMS, "a")
    assert await running.__anext__() == [1]  # alone in an idle engine: in at once
    late = [asyncio.create_task(collect(engine.generate([1], PARAMS, rid))) for rid in ("b", "c")]
    await settle()
    assert [call[2] for call in double.generate_calls] == ["a"]  # b and c wait for their group
    assert engine.active_requests() == 3
    assert await asyncio.wait_for(asyncio.gather(*late), 2) == [[[2], [3]], [[4]]]
    assert [call[2] for call in double.generate_calls] == ["a", "b", "c"]
    assert (engine.arrivals.groups, engine.arrivals.held) == (1, 2)
    await running.aclose()
    await engine.close()


async def _one_running_one_waiting() -> tuple[FakeAsyncLLM, VLLMEngine, Any, asyncio.Task[Any]]:
    """A busy engine with request "a" streaming and "w" waiting for its group."""
    double = FakeAsyncLLM({"a": [[out([1])]]})
    engine = await _busy_engine(double)
    running = engine.generate([1], PARAMS, "a")
    assert await anext(running) == [1]
    waiting = asyncio.create_task(collect(engine.generate([1], PARAMS, "w")))
    await settle()
    assert engine.active_requests() == 2 and [call[2] for call in double.generate_calls] == ["a"]
    return double, engine, running, waiting


async def test_vllm_engine_request_cancelled_in_its_group_never_reaches_vllm() -> None:
    double, engine, running, waiting = await _one_running_one_waiting()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(2 * WINDOW_S)
    assert [call[2] for call in double.generate_calls] == ["a"] and engine.active_requests() == 1
    await running.aclose()
    await engine.close()


async def test_vllm_engine_closed_while_a_group_waits_refuses_it() -> None:
    double, engine, running, waiting = await _one_running_one_waiting()
    await engine.close()
    with pytest.raises(Exception, match="engine is closed"):
        await asyncio.wait_for(waiting, 2)
    await running.aclose()
    assert [call[2] for call in double.generate_calls] == ["a"] and engine.active_requests() == 0


async def test_vllm_engine_request_aborted_by_id_in_its_group_ends_empty_without_reaching_vllm() -> None:
    double, engine, running, waiting = await _one_running_one_waiting()
    await engine.abort("w")
    assert await asyncio.wait_for(waiting, 2) == []  # as an aborted vLLM request ends: no delta
    assert [call[2] for call in double.generate_calls] == ["a"] and double.abort_calls == []
    assert engine.active_requests() == 1
    await running.aclose()
    await engine.close()
