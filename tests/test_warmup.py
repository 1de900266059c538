"""The warm-up before readiness (`engines/warmup.py`): SNAC's graphs are captured for every shape a stream decodes,
its last windows included, and only once the engines have finished their own warm-up requests.

The order matters on a GPU: with SNAC in the Orpheus engine's process, a capture holds that process's CUDA random
generator in capture mode, and an engine step that samples meanwhile fails the engine ("Offset increment outside
graph capture", session 28). The engines here are scripted (they record when they generate); the decoder is the
real `SnacDecoder` on the CPU, where a capture is a no-op, with its requests recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

from oai_server.codec.snac_model import load_snac
from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import WindowShape, decode_shape
from oai_server.engines.base import SamplingParams
from oai_server.engines.demo import DemoModels
from oai_server.engines.warmup import warm_up


class _RecordingEngine:
    """Generates one token per request after a pause, logging when each request starts and ends."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def generate(
        self, prompt: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        self.log.append(f"{self.name} start")
        await asyncio.sleep(0.01)
        yield [1]
        self.log.append(f"{self.name} end")


class _RecordingDecoder(SnacDecoder):
    def __init__(self, model: Any, log: list[str]) -> None:
        super().__init__(model, "cpu", max_batch=8)
        self.log = log
        self.captured: list[WindowShape] = []

    async def capture_graphs(self, shapes: Sequence[WindowShape]) -> None:
        self.log.append("capture")
        self.captured = list(shapes)
        await super().capture_graphs(shapes)


async def test_warm_up_captures_every_shape_a_stream_decodes_after_the_engines_are_done(
    demo_models: DemoModels,
) -> None:
    log: list[str] = []
    decoder = _RecordingDecoder(load_snac(str(demo_models.snac_dir), "cpu"), log)
    tokenizer = SimpleNamespace(encode=lambda text, add_special_tokens=True: [1, 2, 3])
    engines = SimpleNamespace(
        llm=_RecordingEngine("llm", log), llm_tokenizer=tokenizer, llm_stop_token_ids=(0,),
        tts=_RecordingEngine("tts", log), tts_tokenizer=tokenizer, snac=decoder,
    )  # fmt: skip
    policy = WindowPolicy(frames_per_decode=4)
    try:
        await warm_up(engines, [1, 2], [1], policy, snac_graphs=True)  # type: ignore[arg-type]
    finally:
        decoder.close()
    assert log.count("capture") == 1
    before, after = log[: log.index("capture")], log[log.index("capture") + 1 :]
    assert before.count("tts start") == before.count("tts end") == 3 and before.count("llm end") == 1
    assert after == []  # nothing generates while the graphs are captured, or after
    assert decoder.captured == list(policy.decode_shapes)  # each length once, whatever its windows emit
    assert {decode_shape(shape) for shape in policy.graph_shapes} == set(decoder.captured)
    assert set(map(decode_shape, policy.finish_shapes)) <= set(decoder.captured) and (6, 0, 6, 0) in decoder.captured
    assert decoder.windows_decoded > 0 and decoder.eager_windows == decoder.windows_decoded  # CPU: all eager
