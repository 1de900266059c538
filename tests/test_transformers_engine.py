"""TransformersEngine on the tiny demo models: streaming, Orpheus slots, concurrency, abort."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from oai_server.codec import orpheus
from oai_server.engines.base import EngineError, SamplingParams, TokenEngine
from oai_server.engines.demo import DemoModels
from oai_server.engines.loading import load_causal_lm, load_tokenizer
from oai_server.engines.transformers_engine import TransformersEngine

from .helpers import asteady, eventually

ORPHEUS_PARAMS = SamplingParams(
    max_tokens=7 * 12,
    temperature=0.6,
    top_p=0.8,
    repetition_penalty=1.1,
    stop_token_ids=orpheus.STOP_TOKEN_IDS,
    orpheus_audio_slots=True,
)


@pytest.fixture(scope="session")
def demo(demo_models: DemoModels) -> DemoModels:
    """The session's demo models (built once by `conftest.demo_models`)."""
    return demo_models


@pytest.fixture(scope="module")
def tts_model(demo: DemoModels) -> Any:
    return load_causal_lm(demo.tts_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def chat_model(demo: DemoModels) -> Any:
    return load_causal_lm(demo.llm_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tts_prompt() -> list[int]:
    # BOS + low text ids: the 156 940-id tokenizer itself is covered by test_demo_models.
    return orpheus.build_prompt_ids([128000, *range(60, 80)])


@pytest.fixture(scope="module")
def chat_prompt(demo: DemoModels) -> list[int]:
    tokenizer = load_tokenizer(demo.llm_dir)
    messages = [{"role": "user", "content": "Tell me something nice."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _engine(model: Any, **kwargs: Any) -> TransformersEngine:
    return TransformersEngine(model, kind="transformers-test", torch_threads=1, **kwargs)


async def _collect(stream: AsyncIterator[list[int]]) -> list[int]:
    tokens: list[int] = []
    async for delta in stream:
        assert delta, "deltas are never empty"
        tokens.extend(delta)
    return tokens


async def _wait_until(predicate: Any, within: float = 5.0) -> None:
    assert await eventually(predicate, within), "condition not reached in time"


async def test_chat_streams_and_stops_on_end_of_turn(chat_model: Any, chat_prompt: list[int]) -> None:
    engine = _engine(chat_model, max_concurrency=1)
    assert isinstance(engine, TokenEngine)
    end_of_turn = chat_model.config.eos_token_id[1]
    params = SamplingParams(max_tokens=200, temperature=1.0, stop_token_ids=(end_of_turn,), seed=4)
    ends = []
    for seed in range(4):
        tokens = await _collect(engine.generate(chat_prompt, replace(params, seed=seed), f"c{seed}"))
        assert end_of_turn not in tokens
        assert 1 <= len(tokens) <= 200
        ends.append(len(tokens) < 200)
    assert any(ends), "the demo chat model ends some turns on <end_of_turn>"
    capped = await _collect(engine.generate(chat_prompt, SamplingParams(max_tokens=5, seed=1), "cap"))
    assert len(capped) == 5
    assert engine.active_requests() == 0
    await engine.close()


async def test_orpheus_slots_produce_only_audio_and_stop_on_frame_boundaries(
    tts_model: Any, tts_prompt: list[int]
) -> None:
    engine = _engine(tts_model, max_concurrency=2)
    stopped_early = 0
    for seed in range(6):
        params = replace(ORPHEUS_PARAMS, seed=seed)
        tokens = await _collect(engine.generate(tts_prompt, params, f"tts-{seed}"))
        parser = orpheus.AudioTokenParser()
        frames = parser.feed(tokens)
        assert parser.ignored == 0
        assert orpheus.END_OF_SPEECH not in tokens
        if len(tokens) < params.max_tokens:
            stopped_early += 1
            assert len(tokens) % 7 == 0 and parser.partial_codes == 0
            assert len(frames) == len(tokens) // 7
    assert stopped_early, "the demo TTS model ends some utterances with END_OF_SPEECH"
    await engine.close()


async def test_same_seed_same_tokens(tts_model: Any, tts_prompt: list[int]) -> None:
    engine = _engine(tts_model, max_concurrency=2)
    params = replace(ORPHEUS_PARAMS, seed=11, stop_token_ids=())
    first, second = await asyncio.gather(
        _collect(engine.generate(tts_prompt, params, "a")), _collect(engine.generate(tts_prompt, params, "b"))
    )
    assert first == second and len(first) == params.max_tokens
    other = replace(params, seed=12)
    assert await _collect(engine.generate(tts_prompt, other, "c")) != first
    await engine.close()


async def test_more_requests_than_slots_all_complete(chat_model: Any, chat_prompt: list[int]) -> None:
    engine = _engine(chat_model, max_concurrency=2)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, engine.running_requests())
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    params = SamplingParams(max_tokens=30, seed=3)
    results = await asyncio.gather(*(_collect(engine.generate(chat_prompt, params, f"r{i}")) for i in range(5)))
    watcher.cancel()
    assert [len(r) for r in results] == [30] * 5
    assert len({tuple(r) for r in results}) == 1  # same seed, same output, whatever the interleaving
    assert 1 <= peak <= 2
    assert engine.active_requests() == 0
    await engine.close()


async def test_cancelling_the_consumer_stops_the_worker(tts_model: Any, tts_prompt: list[int]) -> None:
    engine = _engine(tts_model, max_concurrency=1)
    params = replace(ORPHEUS_PARAMS, max_tokens=5000, stop_token_ids=(), seed=1)
    received = 0

    async def consume() -> None:
        nonlocal received
        async for delta in engine.generate(tts_prompt, params, "long"):
            received += len(delta)

    task = asyncio.create_task(consume())
    started = time.monotonic()
    await _wait_until(lambda: received >= 10)
    speed = engine.generated_tokens() / (time.monotonic() - started)
    assert engine.active_requests() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_until(lambda: engine.active_requests() == 0, within=5.0)
    # Watch for 20 steps at the measured speed: a worker still generating would show.
    unchanged, steps, last = await asteady(engine.generated_tokens, window=min(max(20 / speed, 0.1), 5.0))
    assert unchanged, f"the worker kept generating after cancel: {steps} -> {last}"
    assert steps < 1000
    await engine.close()


async def test_aclose_and_abort_by_id_free_slots(tts_model: Any, tts_prompt: list[int]) -> None:
    engine = _engine(tts_model, max_concurrency=1)
    params = replace(ORPHEUS_PARAMS, max_tokens=5000, stop_token_ids=())
    stream = engine.generate(tts_prompt, params, "closed")
    assert await stream.__anext__()
    await stream.aclose()  # type: ignore[attr-defined]
    await _wait_until(lambda: engine.active_requests() == 0, within=2.0)

    running = engine.generate(tts_prompt, params, "running")
    assert await running.__anext__()
    waiting = engine.generate(tts_prompt, params, "waiting")
    waiting_task = asyncio.create_task(_collect(waiting))
    await _wait_until(lambda: engine.active_requests() == 2)
    await engine.abort("waiting")  # still queued: dropped at once
    assert engine.active_requests() == 1
    with pytest.raises(EngineError, match="aborted"):
        await waiting_task
    await engine.abort("running")
    with pytest.raises(EngineError, match="aborted"):
        await _collect(running)
    assert engine.active_requests() == 0
    await engine.abort("unknown-id")
    await engine.close()


async def test_prompt_limits_and_close(chat_model: Any, chat_prompt: list[int]) -> None:
    engine = _engine(chat_model, max_model_len=len(chat_prompt) + 3)
    assert engine.info.max_model_len == len(chat_prompt) + 3
    tokens = await _collect(engine.generate(chat_prompt, SamplingParams(max_tokens=100, seed=0), "clamp"))
    assert len(tokens) == 3  # clamped to the remaining context
    too_long = chat_prompt + [chat_prompt[-1]] * 3
    with pytest.raises(EngineError, match="at most"):
        await _collect(engine.generate(too_long, SamplingParams(max_tokens=1), "long"))
    with pytest.raises(EngineError, match="empty"):
        await _collect(engine.generate([], SamplingParams(max_tokens=1), "empty"))
    await engine.check_health()
    await engine.close()
    with pytest.raises(EngineError):
        await engine.check_health()
    with pytest.raises(EngineError, match="closed"):
        await _collect(engine.generate(chat_prompt, SamplingParams(max_tokens=1), "after"))


def test_missing_model_fails_fast_with_actionable_error(tmp_path: Any) -> None:
    code = (
        "from oai_server.engines.loading import load_causal_lm, ModelLoadError\n"
        "try:\n    load_causal_lm('no-such-org/no-such-model-123', device='cpu')\n"
        "except ModelLoadError as exc:\n    print('ERR', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=os.getcwd()
    )
    out = done.stdout
    assert "ERR" in out, done.stderr[-2000:]
    for needle in ("no-such-org/no-such-model-123", "HF_TOKEN", "--demo", "license"):
        assert needle in out
