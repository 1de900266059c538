"""`VLLMEngine` and the Orpheus slot logits processor, without vLLM (CI never has it).

`FakeAsyncLLM` mirrors vLLM 0.26.0's `AsyncLLM` as read in `vllm/v1/engine/async_llm.py`
(`generate`, `abort`, `check_health`, `shutdown`) and `vllm/v1/engine/output_processor.py`
(`RequestOutputCollector.put/get`, `OutputProcessor.abort_requests`):

* request ids get an internal ``-xxxxxxxx`` suffix (`InputProcessor.assign_request_id`);
* DELTA outputs are merged when the consumer lags (`RequestOutputCollector.put`);
* `generate` aborts its own request (internal id, ``internal=True``) on `CancelledError`,
  `GeneratorExit` and unexpected errors, the last re-raised as an empty `EngineGenerateError`;
* `abort(external_id)` ends a live request with a ``finish_reason="abort"`` output; unknown or
  already finished ids abort nothing (they are still recorded as calls);
* a "stop" finish keeps the stop token as the last id (`v1/core/sched/utils.py:check_stop`).

The slot mask is tested with real torch on CPU.
"""

from __future__ import annotations

import asyncio
import random
import sys
import types
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import pytest
import torch

from oai_server.codec import orpheus
from oai_server.engines.band_sampling import TEMPERATURE_KEY, TOP_K_KEY, TOP_P_KEY
from oai_server.engines.base import EngineError, SamplingParams, TokenEngine, new_request_id
from oai_server.engines.slot_rows import HELD_STOP_ROW
from oai_server.engines.slot_tables import PositionTables, apply_slot_mask, build_slot_table
from oai_server.engines.vllm_args import EngineSpec, sampling_kwargs
from oai_server.engines.vllm_engine import VLLMEngine
from oai_server.engines.vllm_orpheus_logits import (
    EXTRA_ARGS_KEY,
    MIN_TOKENS_KEY,
    PENALTY_KEY,
    OrpheusSlotLogitsProcessor,
)

from .helpers import settle

# ---------------------------------------------------------------- the AsyncLLM double


class EngineGenerateError(Exception):
    """Mirror of vllm.v1.engine.exceptions.EngineGenerateError (raised empty, cause chained)."""


class EngineDeadError(Exception):
    """Mirror of vllm.v1.engine.exceptions.EngineDeadError."""


@dataclass
class Completion:
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class Output:
    """Shaped like vllm.outputs.RequestOutput (only what the engine reads)."""

    request_id: str
    outputs: list[Completion]
    finished: bool


def out(ids: list[int], reason: str | None = None, stop: int | str | None = None) -> Completion:
    return Completion(list(ids), reason, stop)


@dataclass
class _Live:
    internal_id: str
    slot: Output | Exception | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, item: Completion | Exception, external_id: str) -> None:
        if isinstance(item, Exception) or self.slot is None or isinstance(self.slot, Exception):
            self.slot = item if isinstance(item, Exception) else self._wrap(item, external_id)
        else:  # DELTA aggregation, as RequestOutputCollector.put -> RequestOutput.add(aggregate=True)
            self.slot.outputs[0].token_ids.extend(item.token_ids)
            self.slot.outputs[0].finish_reason = item.finish_reason
            self.slot.outputs[0].stop_reason = item.stop_reason
            self.slot.finished = item.finish_reason is not None
        self.ready.set()

    @staticmethod
    def _wrap(item: Completion, external_id: str) -> Output:
        return Output(
            external_id,
            [Completion(list(item.token_ids), item.finish_reason, item.stop_reason)],
            item.finish_reason is not None,
        )

    async def get(self) -> Output:
        while self.slot is None:
            await self.ready.wait()
        item, self.slot = self.slot, None
        self.ready.clear()
        if isinstance(item, Exception):
            raise item
        return item


class FakeAsyncLLM:
    """Test double of vLLM 0.26.0 `AsyncLLM` (see module docstring)."""

    def __init__(self, scripts: dict[str, list[list[Completion | Exception]]] | None = None) -> None:
        # request id -> batches; each batch is put (merged) before the next get().
        self.scripts = scripts or {}
        self.generate_calls: list[tuple[Any, Any, str]] = []
        self.abort_calls: list[tuple[str, bool]] = []
        self.aborted: list[str] = []  # external ids whose live request an abort actually ended
        self.live: dict[str, _Live] = {}
        self.dead = False
        self.shutdown_calls = 0
        # where `frame_deltas` hooks in (tests/test_frame_deltas.py has a double that follows vLLM's rule)
        self.output_processor = types.SimpleNamespace(stream_interval=1, add_request=None, request_states={})

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> AsyncIterator[Output]:
        self.generate_calls.append((prompt, sampling_params, request_id))
        q: _Live | None = None
        try:
            if self.dead:
                raise EngineDeadError()
            q = _Live(f"{request_id}-{uuid.uuid4().hex[:8]}")
            self.live[request_id] = q
            await asyncio.sleep(0)  # add_request_async sends to the engine core
            batches = list(self.scripts.get(request_id, []))
            finished = False
            while not finished:
                if batches:
                    for item in batches.pop(0):
                        q.put(item, request_id)
                output = await q.get()
                finished = output.finished
                if finished:
                    self.live.pop(request_id, None)
                yield output
        except (asyncio.CancelledError, GeneratorExit):
            if q is not None:
                await self.abort(q.internal_id, internal=True)
            raise
        except EngineDeadError:
            raise
        except Exception as exc:
            if q is not None:
                await self.abort(q.internal_id, internal=True)
            raise EngineGenerateError() from exc

    async def abort(self, request_id: str, internal: bool = False) -> None:
        self.abort_calls.append((request_id, internal))
        for external_id, live in list(self.live.items()):
            if (live.internal_id if internal else external_id) == request_id:
                del self.live[external_id]
                self.aborted.append(external_id)
                live.put(Completion([], "abort"), external_id)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("EngineCore encountered an issue.")

    def shutdown(self) -> None:
        self.shutdown_calls += 1


def identity_params(kwargs: dict[str, Any]) -> dict[str, Any]:
    return kwargs


async def make_engine(double: FakeAsyncLLM, *, orpheus_slots: bool = False) -> VLLMEngine:
    return await VLLMEngine.create(
        EngineSpec(
            "m",
            tokenizer=None,
            max_model_len=4096,
            gpu_memory_utilization=0.3,
            orpheus_slots=orpheus_slots,
        ),
        engine_factory=lambda kwargs: double,
        sampling_params_factory=identity_params,
    )


PARAMS = SamplingParams(max_tokens=32, stop_token_ids=(9,))


async def collect(gen: AsyncIterator[list[int]]) -> list[list[int]]:
    return [delta async for delta in gen]


# ---------------------------------------------------------------- mapping and creation


def test_sampling_kwargs_maps_every_field() -> None:
    params = SamplingParams(
        max_tokens=77,
        temperature=0.6,
        top_p=0.8,
        top_k=40,
        repetition_penalty=1.1,
        presence_penalty=0.3,
        frequency_penalty=0.2,
        seed=123,
        stop_token_ids=(128258, 5),
        min_tokens=21,
        orpheus_audio_slots=True,
    )
    assert sampling_kwargs(params) == {
        "n": 1,
        "max_tokens": 77,
        "temperature": 0.6,  # seeded: vLLM's generator draws; the filter and the penalty run over the band
        "top_p": 1.0,
        "top_k": 0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.2,
        "seed": 123,
        "stop_token_ids": [128258, 5],
        "min_tokens": 0,  # held back by the slot processor instead (MIN_TOKENS_KEY)
        "detokenize": False,
        "skip_special_tokens": False,
        "extra_args": {EXTRA_ARGS_KEY: True, PENALTY_KEY: 1.1, MIN_TOKENS_KEY: 21, TOP_P_KEY: 0.8, TOP_K_KEY: 40},
    }
    unseeded = sampling_kwargs(replace(params, seed=None))  # the draw stays vLLM's unless asked for in the band
    assert unseeded["temperature"] == 0.6 and TEMPERATURE_KEY not in unseeded["extra_args"]
    drawn = sampling_kwargs(replace(params, seed=None, orpheus_band_draw=True))
    assert drawn["temperature"] == 0.0 and drawn["extra_args"][TEMPERATURE_KEY] == 0.6
    assert drawn | {"temperature": 0.6, "seed": 123, "extra_args": {}} == sampling_kwargs(params) | {
        "extra_args": {},
    }
    plain = sampling_kwargs(SamplingParams(max_tokens=5, repetition_penalty=1.2, min_tokens=2))
    assert plain["repetition_penalty"] == 1.2 and plain["top_k"] == 0
    assert plain["seed"] is None and plain["stop_token_ids"] == [] and plain["min_tokens"] == 2
    assert "extra_args" not in plain


def test_default_factory_builds_delta_vllm_params(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the constructor is stubbed: vLLM is absent in CI.
    class Kind(Enum):
        CUMULATIVE = 0
        DELTA = 1

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = lambda **kw: kw  # type: ignore[attr-defined]
    sub = types.ModuleType("vllm.sampling_params")
    sub.RequestOutputKind = Kind  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sub)
    from oai_server.engines.vllm_args import vllm_sampling_params

    built = vllm_sampling_params(sampling_kwargs(PARAMS))
    assert built["output_kind"] is Kind.DELTA and built["max_tokens"] == 32
    assert built["skip_clone"] is True  # a fresh object per request: vLLM need not deep-copy it


def test_engines_are_built_with_the_api_servers_batching_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """`from_engine_args` alone assumes an embedded engine (2048 batched tokens on any GPU); ours is an API
    server, so vLLM picks `vllm serve`'s defaults (8192 on a 70 GB+ GPU). Only the vLLM names are stubbed."""

    class Usage(Enum):
        ENGINE_CONTEXT = "ENGINE_CONTEXT"
        OPENAI_API_SERVER = "OPENAI_API_SERVER"

    calls: list[tuple[Any, Any]] = []

    class AsyncLLM:
        @staticmethod
        def from_engine_args(args: Any, usage_context: Any = Usage.ENGINE_CONTEXT) -> str:
            calls.append((args, usage_context))
            return "engine"

    modules = {
        "vllm.engine.arg_utils": {"AsyncEngineArgs": lambda **kw: kw},
        "vllm.usage.usage_lib": {"UsageContext": Usage},
        "vllm.v1.engine.async_llm": {"AsyncLLM": AsyncLLM},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        for key, value in attributes.items():
            setattr(module, key, value)
        monkeypatch.setitem(sys.modules, name, module)
    from oai_server.engines import asr_vllm, vllm_engine

    assert vllm_engine.build_async_llm({"model": "m"}) == "engine"
    assert calls == [({"model": "m"}, Usage.OPENAI_API_SERVER)]
    assert asr_vllm.build_async_llm is vllm_engine.build_async_llm  # Whisper's engine is built the same way


async def test_create_passes_engine_args_and_info() -> None:
    seen: dict[str, Any] = {}
    double = FakeAsyncLLM()
    double.output_processor.stream_interval = 7

    async def factory(kwargs: dict[str, Any]) -> FakeAsyncLLM:
        seen.update(kwargs)
        return double

    engine = await VLLMEngine.create(
        EngineSpec(
            "orpheus",
            tokenizer="tok",
            max_model_len=2048,
            gpu_memory_utilization=0.35,
            dtype="bfloat16",
            enforce_eager=True,
            max_num_seqs=64,
            stream_interval=7,
            kv_cache_dtype="fp8",
            quantization="fp8",
            enable_prefix_caching=False,
            orpheus_slots=True,
        ),
        kind="vllm-tts",
        engine_factory=factory,
    )
    assert seen == {
        "model": "orpheus",
        "tokenizer": "tok",
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.35,
        "enforce_eager": True,
        "kv_cache_dtype": "fp8",
        "quantization": "fp8",
        "enable_prefix_caching": False,
        "disable_log_stats": True,  # no per-token statistics on the event loop unless asked
        "max_num_seqs": 64,
        "stream_interval": 7,
        "logits_processors": [OrpheusSlotLogitsProcessor],
    }
    assert engine.info.details["stream_interval"] == 7
    assert engine.info.details["frame_deltas"] is True
    assert callable(double.output_processor.add_request)  # wrapped: the first delta waits for a whole frame
    assert isinstance(engine, TokenEngine)
    assert (engine.info.kind, engine.info.model, engine.info.max_model_len) == ("vllm-tts", "orpheus", 2048)
    plain = await make_engine(FakeAsyncLLM())
    with pytest.raises(EngineError, match="slot"):
        await collect(plain.generate([1], SamplingParams(max_tokens=3, orpheus_audio_slots=True), "x"))


# ---------------------------------------------------------------- streaming


async def test_deltas_prompt_ids_and_stop_token_dropped() -> None:
    double = FakeAsyncLLM({"r1": [[out([1, 2])], [out([])], [out([3]), out([4, 5])], [out([6, 9], "stop", 9)]]})
    engine = await make_engine(double)
    deltas = await collect(engine.generate((11, 12, 13), PARAMS, "r1"))
    assert deltas == [[1, 2], [3, 4, 5], [6]]  # lagging deltas merged, empty skipped, stop id dropped
    prompt, params, request_id = double.generate_calls[0]
    assert prompt == {"prompt_token_ids": [11, 12, 13]} and request_id == "r1"
    assert params == sampling_kwargs(PARAMS)
    assert double.abort_calls == [] and engine.active_requests() == 0


async def test_length_finish_keeps_last_id_and_eos_stop_drops_it() -> None:
    double = FakeAsyncLLM({"a": [[out([4, 5], "length")]], "b": [[out([7, 1], "stop", None)]]})
    engine = await make_engine(double)
    assert await collect(engine.generate([1], PARAMS, "a")) == [[4, 5]]
    assert await collect(engine.generate([1], PARAMS, "b")) == [[7]]
    assert double.abort_calls == []


async def test_request_ids_are_passed_through_and_duplicates_rejected() -> None:
    ids = [new_request_id("tts") for _ in range(3)]
    assert len(set(ids)) == 3
    double = FakeAsyncLLM({rid: [[out([1], "length")]] for rid in ids})
    engine = await make_engine(double)
    for rid in ids:
        assert await collect(engine.generate([1], PARAMS, rid)) == [[1]]
    assert [call[2] for call in double.generate_calls] == ids

    double.scripts["dup"] = [[out([1])]]
    first = engine.generate([1], PARAMS, "dup")
    assert await anext(first) == [1]
    with pytest.raises(EngineError, match="already in flight"):
        await collect(engine.generate([1], PARAMS, "dup"))
    assert engine.active_requests() == 1
    await first.aclose()


# ---------------------------------------------------------------- abort / cancel / close


async def test_aclose_aborts_exactly_once() -> None:
    double = FakeAsyncLLM({"r": [[out([1, 2])]]})
    engine = await make_engine(double)
    gen = engine.generate([1], PARAMS, "r")
    assert await anext(gen) == [1, 2]
    assert engine.active_requests() == 1
    await gen.aclose()
    assert len(double.abort_calls) == 1 and double.aborted == ["r"]
    assert double.live == {} and engine.active_requests() == 0


@pytest.mark.parametrize("before_first_token", [True, False])
async def test_consumer_cancel_aborts_exactly_once(before_first_token: bool) -> None:
    double = FakeAsyncLLM({} if before_first_token else {"r": [[out([1])]]})
    engine = await make_engine(double)
    got: list[list[int]] = []

    async def consume() -> None:
        async for delta in engine.generate([1], PARAMS, "r"):
            got.append(delta)

    task = asyncio.create_task(consume())
    await settle()
    assert engine.active_requests() == 1 and got == ([] if before_first_token else [[1]])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(double.abort_calls) == 1 and double.aborted == ["r"]
    assert double.live == {} and engine.active_requests() == 0


async def test_close_after_last_delta_aborts_nothing() -> None:
    double = FakeAsyncLLM({"r": [[out([1])], [out([2, 9], "stop", 9)]]})
    engine = await make_engine(double)
    gen = engine.generate([1], PARAMS, "r")
    assert await anext(gen) == [1]
    assert await anext(gen) == [2]
    await gen.aclose()
    assert double.abort_calls == [] and engine.active_requests() == 0


async def test_abort_by_id_ends_stream_and_ignores_unknown() -> None:
    double = FakeAsyncLLM({"r": [[out([3])]]})
    engine = await make_engine(double)
    task = asyncio.create_task(collect(engine.generate([1], PARAMS, "r")))
    await settle()
    await engine.abort("nope")
    assert double.abort_calls == []
    await engine.abort("r")
    assert await task == [[3]]
    assert double.abort_calls == [("r", False)] and engine.active_requests() == 0


async def test_errors_become_engine_error() -> None:
    double = FakeAsyncLLM({"r": [[out([1])], [RuntimeError("CUDA out of memory")]]})
    engine = await make_engine(double)
    got: list[list[int]] = []
    with pytest.raises(EngineError, match="CUDA out of memory"):
        async for delta in engine.generate([1], PARAMS, "r"):
            got.append(delta)
    assert got == [[1]] and engine.active_requests() == 0
    assert len(double.abort_calls) == 1  # vLLM's own abort on an unexpected error

    double.scripts["e"] = [[out([], "error")]]
    with pytest.raises(EngineError, match="error"):
        await collect(engine.generate([1], PARAMS, "e"))

    double.dead = True
    with pytest.raises(EngineError, match="EngineDeadError"):
        await collect(engine.generate([1], PARAMS, "d"))
    with pytest.raises(EngineError, match="EngineCore"):
        await engine.check_health()
    assert engine.active_requests() == 0


async def test_close_aborts_in_flight_and_shuts_down() -> None:
    double = FakeAsyncLLM({"a": [[out([1])]], "b": [[out([2])]]})
    engine = await make_engine(double)
    await engine.check_health()
    tasks = [asyncio.create_task(collect(engine.generate([1], PARAMS, rid))) for rid in ("a", "b")]
    await settle()
    assert engine.active_requests() == 2
    await engine.close()
    assert await asyncio.gather(*tasks) == [[[1]], [[2]]]
    assert sorted(double.abort_calls) == [("a", False), ("b", False)]
    assert double.shutdown_calls == 1 and engine.active_requests() == 0
    await engine.close()
    assert double.shutdown_calls == 1
    with pytest.raises(EngineError, match="closed"):
        await collect(engine.generate([1], PARAMS, "c"))
    with pytest.raises(EngineError, match="closed"):
        await engine.check_health()


# ---------------------------------------------------------------- slot logits processor

V = orpheus.ORPHEUS_VOCAB_SIZE


def allowed_ids(row: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(row)).flatten().tolist())


def band_of(k: int) -> set[int]:
    ids = set(orpheus.slot_band(k))
    return ids | {orpheus.END_OF_SPEECH} if orpheus.stop_allowed(k) else ids


def test_slot_mask_allows_only_each_rows_band() -> None:
    table = build_slot_table(V)
    assert table.shape == (7, V) and table.sum().item() == 7 * orpheus.CODEBOOK_SIZE + 1
    logits = torch.randn(5, V)
    untouched = logits[2].clone()
    rows = [0, 1, 3, 4]
    positions = [0, 6, 7, 13]
    apply_slot_mask(logits, table, torch.tensor(rows), torch.tensor(positions))
    for row, k in zip(rows, positions, strict=True):
        assert allowed_ids(logits[row]) == band_of(k)
        base = orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * (k % 7)
        assert torch.isfinite(logits[row, [base, base + 4095]]).all()  # codes 0 and 4095
        assert not torch.isfinite(logits[row, base + 4096])
    assert (orpheus.END_OF_SPEECH in allowed_ids(logits[0])) and (orpheus.END_OF_SPEECH in allowed_ids(logits[3]))
    assert orpheus.END_OF_SPEECH not in allowed_ids(logits[1]) | allowed_ids(logits[4])
    assert torch.equal(logits[2], untouched)
    with pytest.raises(ValueError):
        build_slot_table(1000)


def test_slot_mask_of_every_row_in_order_matches_the_row_gather() -> None:
    table = build_slot_table(V)
    logits = torch.randn(4, V)
    positions = torch.tensor([0, 5, 6, 700])
    by_rows = apply_slot_mask(logits.clone(), table, torch.arange(4), positions)
    every = apply_slot_mask(logits.clone(), table, None, positions)
    assert torch.equal(every, by_rows)
    assert [allowed_ids(row) for row in every] == [band_of(int(k)) for k in positions]


def test_position_tables_hold_each_slots_band_and_a_held_stop_row() -> None:
    tables = PositionTables.build(V, torch.device("cpu"))
    assert (
        tables.blocked.shape == (8, V) and tables.columns.shape == (8, 4097) and tables.seen_offsets.shape == (8, 4096)
    )
    for slot in range(7):
        allowed = set(torch.nonzero(~tables.blocked[slot]).flatten().tolist())
        assert allowed == band_of(slot)
        assert set(tables.columns[slot].tolist()) == set(orpheus.slot_band(slot)) | {orpheus.END_OF_SPEECH}
        band = orpheus.slot_band(slot)
        assert tables.seen_offsets[slot].tolist() == list(
            range(band.start - orpheus.AUDIO_TOKEN_BASE, band.stop - orpheus.AUDIO_TOKEN_BASE)
        )
    # the held row: slot 0's band with END_OF_SPEECH blocked (a frame boundary before a request's min_tokens)
    assert set(torch.nonzero(~tables.blocked[HELD_STOP_ROW]).flatten().tolist()) == set(orpheus.slot_band(0))
    assert torch.equal(tables.columns[HELD_STOP_ROW], tables.columns[0])


class Direction(Enum):
    UNIDIRECTIONAL = 1
    SWAP = 2


def batch(removed=(), added=(), moved=()) -> types.SimpleNamespace:  # type: ignore[no-untyped-def]
    return types.SimpleNamespace(batch_size=0, removed=list(removed), added=list(added), moved=list(moved))


def opted(flag: Any = True) -> types.SimpleNamespace:
    return types.SimpleNamespace(extra_args={EXTRA_ARGS_KEY: flag})


def test_processor_tracks_batch_and_positions() -> None:
    proc = OrpheusSlotLogitsProcessor(None, torch.device("cpu"), False)
    assert proc.is_argmax_invariant() is False
    out_a: list[int] = []
    out_b = [1, 2, 3]
    proc.update_state(
        batch(
            added=[
                (0, opted(), [1], out_a),
                (1, types.SimpleNamespace(extra_args=None), [1], []),
                (2, opted(1), [1], out_b),
            ]
        )
    )
    logits = torch.zeros(3, V)
    proc.apply(logits)
    assert allowed_ids(logits[0]) == band_of(0)
    assert bool(torch.isfinite(logits[1]).all())  # not opted in: untouched
    assert allowed_ids(logits[2]) == band_of(3)

    out_a.extend([5] * 8)  # vLLM appends to the live list; the position follows it
    proc.update_state(None)
    logits = torch.zeros(3, V)
    proc.apply(logits)
    assert allowed_ids(logits[0]) == band_of(8)

    proc.update_state(batch(moved=[(0, 2, Direction.SWAP)]))  # a swaps with b
    logits = torch.zeros(3, V)
    proc.apply(logits)
    assert allowed_ids(logits[0]) == band_of(3) and allowed_ids(logits[2]) == band_of(8)

    proc.update_state(batch(moved=[(2, 1, Direction.UNIDIRECTIONAL)], removed=[0]))
    logits = torch.zeros(3, V)
    proc.apply(logits)
    assert bool(torch.isfinite(logits[0]).all()) and bool(torch.isfinite(logits[2]).all())
    assert allowed_ids(logits[1]) == band_of(8)

    OrpheusSlotLogitsProcessor.validate_params(opted(True))
    with pytest.raises(ValueError):
        OrpheusSlotLogitsProcessor.validate_params(opted("yes"))
    for bad in ("1.1", True, 0, -1.0, 11):
        with pytest.raises(ValueError):
            OrpheusSlotLogitsProcessor.validate_params(
                types.SimpleNamespace(extra_args={EXTRA_ARGS_KEY: True, PENALTY_KEY: bad})
            )


def penalised(penalty: float) -> types.SimpleNamespace:
    return types.SimpleNamespace(extra_args={EXTRA_ARGS_KEY: True, PENALTY_KEY: penalty})


def vllm_reference(logits: torch.Tensor, histories: dict[int, tuple[list[int], float]]) -> torch.Tensor:
    """vLLM's repetition penalty (apply_penalties: every seen token, whole vocab) then the band mask."""
    out = logits.clone()
    for row, (ids, penalty) in histories.items():
        seen = torch.zeros(V, dtype=torch.bool)
        seen[[t for t in ids if t >= 0]] = True
        penalties = torch.where(seen, torch.tensor(penalty), torch.tensor(1.0))
        out[row] *= torch.where(out[row] > 0, 1.0 / penalties, penalties)
        band = torch.zeros(V, dtype=torch.bool)
        band[list(band_of(len(ids)))] = True
        out[row] = out[row].masked_fill(~band, float("-inf"))
    return out


def audio_history(n: int, generator: torch.Generator) -> list[int]:
    codes = torch.randint(0, 40, (n,), generator=generator).tolist()  # few codes: many repeats
    return [orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * (k % 7) + c for k, c in enumerate(codes)]


def test_processor_repetition_penalty_equals_vllms_and_follows_the_batch() -> None:
    g = torch.Generator().manual_seed(0)
    proc = OrpheusSlotLogitsProcessor(None, torch.device("cpu"), False)
    a, c = audio_history(30, g), audio_history(12, g)
    a.append(-1)  # async scheduling: the last token is still a placeholder
    proc.update_state(
        batch(added=[(0, penalised(1.3), [1], a), (1, opted(False), [1], []), (2, penalised(1.1), [1], c)])
    )

    def check(histories: dict[int, tuple[list[int], float]], untouched: tuple[int, ...] = ()) -> None:
        logits = torch.randn(3, V, generator=g) * 3
        expected = vllm_reference(logits, histories)
        got = proc.apply(logits.clone())
        for row in histories:
            assert torch.equal(torch.isinf(got[row]), torch.isinf(expected[row]))
            assert torch.allclose(got[row], expected[row], rtol=1e-6, atol=0)
        for row in untouched:
            assert torch.equal(got[row], logits[row])

    check({0: (a, 1.3), 2: (c, 1.1)}, untouched=(1,))
    a[-1] = audio_history(31, g)[-1]  # the placeholder resolves; more tokens arrive
    a.extend(audio_history(40, g)[31:])
    c.extend(audio_history(14, g)[12:])
    check({0: (a, 1.3), 2: (c, 1.1)}, untouched=(1,))

    proc.update_state(batch(moved=[(0, 2, Direction.SWAP)]))
    check({0: (c, 1.1), 2: (a, 1.3)}, untouched=(1,))

    fresh: list[int] = [orpheus.AUDIO_TOKEN_BASE + 5]  # a new request in a reused slot sees nothing old
    proc.update_state(batch(removed=[2], added=[(2, penalised(2.0), [1], fresh)]))
    check({0: (c, 1.1), 2: (fresh, 2.0)}, untouched=(1,))

    many = [(i, penalised(1.2), [1], audio_history(9, g)) for i in range(3, 20)]
    proc.update_state(batch(added=many))  # the seen table grows past its first 8 slots
    logits = torch.randn(20, V, generator=g)
    expected = vllm_reference(logits, {i: (ids, 1.2) for i, _, _, ids in many} | {0: (c, 1.1), 2: (fresh, 2.0)})
    got = proc.apply(logits.clone())
    assert torch.allclose(got[3:], expected[3:], rtol=1e-6, atol=0) and torch.equal(got[1], logits[1])


def test_processor_state_stays_bounded_while_streams_come_and_go() -> None:
    """Hundreds of streams through a batch of at most 16 rows (vLLM's removed -> added -> moved, condensing as it
    does): every seen-table line is held by a live row or free, never lost, and the table never outgrows the batch;
    so a long churn costs each step what a short one does."""
    proc = OrpheusSlotLogitsProcessor(None, torch.device("cpu"), False)
    rng = random.Random(7)
    live: dict[int, list[int]] = {}  # batch index -> output list
    for step in range(400):
        removed = [i for i in live if rng.random() < 0.1]
        for i in removed:
            del live[i]
        added = []
        for i in range(16):
            if i not in live and rng.random() < 0.3:
                live[i] = [orpheus.AUDIO_TOKEN_BASE + 5] * rng.randrange(3)
                added.append((i, opted(), [1], live[i]))
        moved = []
        holes = [i for i in range(16) if i not in live]
        if holes and live and max(live) > holes[0]:  # condense: the last row into the first hole
            last = max(live)
            live[holes[0]] = live.pop(last)
            moved.append((last, holes[0], Direction.UNIDIRECTIONAL))
        proc.update_state(batch(removed=removed, added=added, moved=moved))
        for out in live.values():
            out.append(orpheus.AUDIO_TOKEN_BASE + step % 7 * orpheus.CODEBOOK_SIZE)
        proc.apply(torch.zeros(max(live, default=0) + 1, V))
        held = sorted(row.slot for row in proc._rows.values())
        assert sorted(held + proc._free) == list(range(proc._slots)), step  # every line held once or free
        assert sorted(proc._rows) == sorted(live)
    assert proc._slots <= 16 and proc._seen is not None and proc._seen.shape[0] <= 16
