"""Orpheus data parallel behind one server (`engines/balanced.py`): streams spread by live count and weight,
aborts reach the replica that holds the request, a replica failing its health check leaves the rotation.

Real tiny transformers engines (the demo Orpheus) for distribution and abort routing; scripted engines
where a test must make a replica fail or must see exactly which replica got a request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import pytest

from oai_server.codec import orpheus
from oai_server.engines.balanced import BalancedEngine
from oai_server.engines.base import EngineError, EngineInfo, SamplingParams, TokenEngine
from oai_server.engines.demo import DemoModels
from oai_server.engines.factory import start_replicas
from oai_server.engines.layout_shares import EnginePlan
from oai_server.engines.loading import load_causal_lm
from oai_server.engines.placement import Placement
from oai_server.engines.transformers_engine import TransformersEngine

LONG = SamplingParams(
    max_tokens=5000, temperature=0.6, top_p=0.8, repetition_penalty=1.1, orpheus_audio_slots=True, seed=7
)
SHORT = replace(LONG, max_tokens=14)


class ScriptedEngine:
    """A `TokenEngine` whose streams yield [0] at once, then what the test puts in their queue (None ends one)."""

    def __init__(self, name: str) -> None:
        self.info = EngineInfo(kind="scripted", model="m", max_model_len=100, details={"name": name})
        self.healthy = True
        self.closed = False
        self.started: list[str] = []
        self.aborted: list[str] = []
        self.queues: dict[str, asyncio.Queue[list[int] | Exception | None]] = {}

    async def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        queue: asyncio.Queue[list[int] | Exception | None] = asyncio.Queue()
        self.queues[request_id] = queue
        self.started.append(request_id)
        try:
            yield [0]
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            del self.queues[request_id]

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        if request_id in self.queues:
            self.queues[request_id].put_nowait(EngineError("aborted"))

    async def check_health(self) -> None:
        if not self.healthy:
            raise EngineError("engine core died")

    def active_requests(self) -> int:
        return len(self.queues)

    async def close(self) -> None:
        self.closed = True


async def _wait_until(predicate: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _drain(stream: AsyncIterator[list[int]]) -> list[int]:
    return [token async for delta in stream for token in delta]


async def _open(engine: TokenEngine, request_id: str) -> AsyncIterator[list[int]]:
    """A started stream over scripted replicas (its first delta read): its request is on a replica."""
    stream = engine.generate([1, 2, 3], SHORT, request_id)
    assert await stream.__anext__() == [0]
    return stream


# ------------------------------------------------------------------ real tiny engines


@pytest.fixture(scope="module")
def tts_model(demo_models: DemoModels) -> Any:
    return load_causal_lm(demo_models.tts_dir, device="cpu", dtype="float32")


def _replica(model: Any) -> TransformersEngine:
    return TransformersEngine(model, kind="transformers-orpheus", torch_threads=1, max_concurrency=2)


async def test_real_replicas_share_live_streams_and_route_aborts(tts_model: Any) -> None:
    replicas = [_replica(tts_model), _replica(tts_model)]
    engine = BalancedEngine(replicas)
    prompt = orpheus.build_prompt_ids([128000, *range(60, 80)])
    streams = [engine.generate(prompt, LONG, f"s{i}") for i in range(4)]
    for stream in streams:
        assert await stream.__anext__()  # each generates: s0, s2 on replica 0; s1, s3 on replica 1
    assert engine.live_streams() == [2, 2]
    assert [r.active_requests() for r in replicas] == [2, 2] and engine.active_requests() == 4

    await engine.abort("s2")  # reaches replica 0, which holds it; replica 1 is untouched
    with pytest.raises(EngineError, match="aborted"):
        await _drain(streams[2])
    assert [r.active_requests() for r in replicas] == [1, 2] and engine.live_streams() == [1, 2]
    assert await streams[1].__anext__()  # the other replica's streams go on
    assert await streams[0].__anext__()

    await streams[3].aclose()  # type: ignore[attr-defined]  # a consumer hanging up aborts its request on its own replica
    await _wait_until(lambda: replicas[1].active_requests() == 1)
    assert engine.live_streams() == [1, 1] and replicas[0].active_requests() == 1

    short = [engine.generate(prompt, SHORT, f"short{i}") for i in range(2)]
    firsts = [await stream.__anext__() for stream in short]  # live counts tie at 1-1: one new stream each
    assert [r.active_requests() for r in replicas] == [2, 2] and engine.live_streams() == [2, 2]
    assert [len(first) + len(await _drain(stream)) for first, stream in zip(firsts, short, strict=True)] == [14, 14]

    for stream in (streams[0], streams[1]):
        await stream.aclose()  # type: ignore[attr-defined]
    await _wait_until(lambda: engine.active_requests() == 0)
    assert engine.live_streams() == [0, 0]
    await engine.close()
    assert all(r.active_requests() == 0 for r in replicas)
    with pytest.raises(EngineError, match="closed"):
        await _drain(engine.generate(prompt, SHORT, "after-close"))


# ------------------------------------------------------------------ scripted engines


async def test_ties_go_round_robin_and_weights_scale_the_share() -> None:
    a, b, c = ScriptedEngine("a"), ScriptedEngine("b"), ScriptedEngine("c")
    engine = BalancedEngine([a, b, c])
    for i in range(6):  # one at a time: every choice is a tie
        stream = await _open(engine, f"seq{i}")
        for replica in (a, b, c):
            for queue in replica.queues.values():
                queue.put_nowait(None)
        assert await _drain(stream) == []
    assert (a.started, b.started, c.started) == (["seq0", "seq3"], ["seq1", "seq4"], ["seq2", "seq5"])

    x, y = ScriptedEngine("x"), ScriptedEngine("y")
    weighted = BalancedEngine([x, y], [0.5, 1.0])
    streams = [await _open(weighted, f"w{i}") for i in range(6)]
    assert weighted.live_streams() == [2, 4] and (x.active_requests(), y.active_requests()) == (2, 4)
    for stream in streams:
        await stream.aclose()  # type: ignore[attr-defined]
    assert weighted.live_streams() == [0, 0] and x.active_requests() == y.active_requests() == 0


async def test_a_stream_stays_on_its_replica_and_abort_goes_there() -> None:
    a, b = ScriptedEngine("a"), ScriptedEngine("b")
    engine = BalancedEngine([a, b])
    first, second = await _open(engine, "one"), await _open(engine, "two")
    a.queues["one"].put_nowait([1, 2])
    b.queues["two"].put_nowait([3])
    assert await first.__anext__() == [1, 2] and await second.__anext__() == [3]
    await engine.abort("two")
    await engine.abort("unknown")
    assert (a.aborted, b.aborted) == ([], ["two"])
    with pytest.raises(EngineError, match="aborted"):
        await _drain(second)
    a.queues["one"].put_nowait([4])
    a.queues["one"].put_nowait(None)
    assert await _drain(first) == [4]
    dup = await _open(engine, "dup")
    with pytest.raises(EngineError, match="already in flight"):
        await _drain(engine.generate([1], SHORT, "dup"))
    await dup.aclose()  # type: ignore[attr-defined]
    assert engine.live_streams() == [0, 0]


async def test_a_replica_failing_its_health_check_leaves_the_rotation_and_comes_back() -> None:
    a, b = ScriptedEngine("a"), ScriptedEngine("b")
    engine = BalancedEngine([a, b])
    a.healthy = False
    await engine.check_health()  # one replica left: still ready
    assert list(engine.down()) == [0] and "engine core died" in engine.down()[0]
    streams = [await _open(engine, f"r{i}") for i in range(3)]
    assert (a.started, b.started) == ([], ["r0", "r1", "r2"])
    for stream in streams:
        await stream.aclose()  # type: ignore[attr-defined]

    a.healthy = True
    await engine.check_health()
    assert engine.down() == {}
    await _open(engine, "back")
    assert a.started == ["back"]

    a.healthy = b.healthy = False
    with pytest.raises(EngineError, match="every replica failed"):
        await engine.check_health()
    with pytest.raises(EngineError, match="every replica failed"):
        await _drain(engine.generate([1], SHORT, "nowhere"))


async def test_a_request_failing_on_a_dead_replica_takes_it_out_at_once() -> None:
    a, b = ScriptedEngine("a"), ScriptedEngine("b")
    engine = BalancedEngine([a, b])
    stream = await _open(engine, "doomed")
    a.healthy = False
    a.queues["doomed"].put_nowait(EngineError("EngineDeadError"))
    with pytest.raises(EngineError, match="EngineDeadError"):  # the request's own error, not the check's
        await _drain(stream)
    assert list(engine.down()) == [0] and engine.live_streams() == [0, 0]
    await _open(engine, "next")
    assert b.started == ["next"]


async def test_close_closes_every_replica() -> None:
    a, b = ScriptedEngine("a"), ScriptedEngine("b")
    engine = BalancedEngine([a, b], [1.0, 2.0])
    assert engine.info.details["weights"] == [1.0, 2.0]
    assert engine.info.details["replicas"] == [{"name": "a"}, {"name": "b"}]
    await engine.close()
    await engine.close()
    assert a.closed and b.closed
    with pytest.raises(EngineError, match="closed"):
        await engine.check_health()
    with pytest.raises(ValueError, match="positive weight"):
        BalancedEngine([a, b], [1.0, 0.0])


async def test_start_replicas_wraps_several_and_closes_them_when_one_fails() -> None:
    built: list[ScriptedEngine] = []

    async def start(plan: EnginePlan) -> TokenEngine:
        if plan.placement.gpus == (9,):
            raise RuntimeError("CUDA out of memory")
        built.append(ScriptedEngine(str(plan.placement.gpus)))
        return built[-1]

    one = await start_replicas([EnginePlan("tts", Placement((1,)), 0.9)], start)
    assert one is built[0]
    plans = [EnginePlan("tts", Placement((0,)), 0.43, 0.5), EnginePlan("tts", Placement((1,)), 0.9)]
    several = await start_replicas(plans, start)
    assert isinstance(several, BalancedEngine) and several.info.details["weights"] == [0.5, 1.0]
    assert several.replicas == (built[1], built[2])
    with pytest.raises(RuntimeError, match="out of memory"):
        await start_replicas([EnginePlan("tts", Placement((2,)), 0.9), EnginePlan("tts", Placement((9,)), 0.9)], start)
    assert built[3].closed
