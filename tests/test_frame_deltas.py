"""Orpheus deltas on frame boundaries (`oai_server.engines.frame_deltas`).

`OutputProcessor` and `RequestState` below are doubles of vLLM 0.26.0's (``v1/engine/output_processor.py``):
``add_request`` files a state under the request's id, ``process`` appends a step's tokens to the state's
detokenizer and asks ``make_request_output`` for a delta, which follows vLLM's rule for ``stream_interval`` > 1
in DELTA mode line for line (send when finished, at the first token, or once ``stream_interval`` tokens are
unsent; the delta is every unsent token). The GPU test at the end runs the hook on vLLM itself.
"""

from __future__ import annotations

import asyncio
import shutil
import types
from pathlib import Path
from typing import Any

import pytest

from oai_server.engines.frame_deltas import deliver_on_frame_boundaries, frames_per_delta


class Detokenizer:
    def __init__(self) -> None:
        self.output_token_ids: list[int] = []

    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)


class RequestState:
    def __init__(self, stream_interval: int) -> None:
        self.stream_interval = stream_interval
        self.sent_tokens_offset = 0
        self.detokenizer = Detokenizer()

    def make_request_output(
        self, new_token_ids: list[int], pooling_output: Any, finish_reason: str | None, stop_reason: Any = None
    ) -> tuple[list[int], bool] | None:
        finished = finish_reason is not None
        if self.stream_interval > 1:
            if not (
                finished
                or self.sent_tokens_offset == 0
                or self.detokenizer.num_output_tokens() - self.sent_tokens_offset >= self.stream_interval
            ):
                return None
            new_token_ids = self.detokenizer.output_token_ids[self.sent_tokens_offset :]
            self.sent_tokens_offset = self.detokenizer.num_output_tokens()
        return new_token_ids, finished


class OutputProcessor:
    def __init__(self, stream_interval: int) -> None:
        self.stream_interval = stream_interval
        self.request_states: dict[str, RequestState] = {}

    def add_request(self, request: Any, prompt: str | None, parent_req: Any = None, request_index: int = 0) -> None:
        self.request_states[request.request_id] = RequestState(self.stream_interval)

    def process(self, request_id: str, new_token_ids: list[int], finish_reason: str | None = None) -> Any:
        state = self.request_states[request_id]
        state.detokenizer.output_token_ids.extend(new_token_ids)
        return state.make_request_output(new_token_ids, None, finish_reason, None)


def engine(stream_interval: int, hooked: bool = True) -> OutputProcessor:
    processor = OutputProcessor(stream_interval)
    if hooked:
        deliver_on_frame_boundaries(types.SimpleNamespace(output_processor=processor))
    processor.add_request(types.SimpleNamespace(request_id="r"), None)
    return processor


def run(processor: OutputProcessor, steps: list[list[int]], finish: str | None = "length") -> list[list[int]]:
    """The deltas a request gets when its steps sample `steps` and the last one ends it with `finish`."""
    deltas = []
    for i, tokens in enumerate(steps):
        output = processor.process("r", tokens, finish if i == len(steps) - 1 else None)
        if output is not None:
            deltas.append(output[0])
    return deltas


ONE_A_STEP = [[t] for t in range(30)]


def test_vllms_own_rule_sends_every_frame_one_step_late() -> None:
    deltas = run(engine(7, hooked=False), ONE_A_STEP)
    assert [len(d) for d in deltas] == [1, 7, 7, 7, 7, 1]


def test_deltas_land_on_frame_boundaries() -> None:
    deltas = run(engine(7), ONE_A_STEP)
    assert [len(d) for d in deltas] == [7, 7, 7, 7, 2]
    assert [t for d in deltas for t in d] == list(range(30))


def test_two_frames_a_delta_stay_aligned() -> None:
    deltas = run(engine(14), ONE_A_STEP)
    assert [len(d) for d in deltas] == [14, 14, 2]


@pytest.mark.parametrize("finish", ["stop", "length", "abort"])
def test_a_request_that_ends_before_a_frame_gets_its_tokens_at_once(finish: str) -> None:
    assert run(engine(7), [[1], [2], [3]], finish) == [[1, 2, 3]]


def test_an_abort_after_a_held_token_delivers_it() -> None:
    processor = engine(7)
    assert processor.process("r", [5]) is None
    assert processor.process("r", [], "abort") == ([5], True)


def test_several_tokens_a_step_still_reach_the_first_delta() -> None:
    deltas = run(engine(7), [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]])
    assert deltas == [[1, 2, 3, 4, 5, 6, 7, 8, 9], [10]]


@pytest.mark.parametrize("interval", [1, 3, 8])
def test_intervals_that_are_not_whole_frames_keep_vllms_rule(interval: int) -> None:
    assert not frames_per_delta(interval)
    processor = OutputProcessor(interval)
    original = processor.add_request
    deliver_on_frame_boundaries(types.SimpleNamespace(output_processor=processor))
    assert processor.add_request == original


def test_whole_frames_are_multiples_of_seven() -> None:
    assert [frames_per_delta(n) for n in (1, 6, 7, 14, 15, 21)] == [False, False, True, True, False, True]


def test_other_requests_are_left_alone() -> None:
    processor = engine(7)
    processor.request_states["other"] = RequestState(7)  # e.g. filed before the hook
    assert processor.process("other", [1]) == ([1], False)


@pytest.mark.gpu
def test_vllm_delivers_an_orpheus_stream_in_whole_frames(demo_models: Any, tmp_path: Path) -> None:
    """On vLLM itself: every delta of a tiny Orpheus stream but the last is one whole frame (the first too)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from oai_server.engines.base import SamplingParams
    from oai_server.engines.vllm_args import EngineSpec
    from oai_server.engines.vllm_engine import VLLMEngine

    # the demo Orpheus with heads of 64 (its 16 are below what vLLM's GPU attention backends take)
    tts_dir = tmp_path / "orpheus"
    shutil.copytree(demo_models.tts_dir, tts_dir)
    config = LlamaConfig.from_pretrained(tts_dir)
    config.update({"hidden_size": 128, "intermediate_size": 256, "head_dim": 64})
    LlamaForCausalLM(config).save_pretrained(tts_dir)

    async def deltas() -> list[list[int]]:
        engine = await VLLMEngine.create(
            EngineSpec(
                str(tts_dir),
                tokenizer=str(tts_dir),
                max_model_len=256,
                gpu_memory_utilization=0.1,
                enforce_eager=True,
                max_num_seqs=4,
                stream_interval=7,
                orpheus_slots=True,
            ),
        )
        try:
            assert engine.info.details["frame_deltas"] is True
            params = SamplingParams(max_tokens=31, min_tokens=31, orpheus_audio_slots=True, seed=1)
            prompt = [128259, 1, 2, 3, 128009, 128260, 128261, 128257]
            return [delta async for delta in engine.generate(prompt, params, "g")]
        finally:
            await engine.close()

    # a plain function: the GPU machine's pytest has no asyncio plugin
    assert [len(d) for d in asyncio.run(deltas())] == [7, 7, 7, 7, 3]
