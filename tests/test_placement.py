"""GPU placement flags of the vLLM engines (issue: two GPUs), tested without GPUs; the layout they feed is
tested in test_layout.py."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from oai_server.engines.placement import (
    Placement,
    make_placement,
    make_replicas,
    parse_gpus,
    placements,
    visible_devices,
)
from oai_server.engines.vllm_args import EngineSpec
from oai_server.engines.vllm_engine import VLLMEngine
from oai_server.settings import Settings


def test_defaults_keep_one_gpu_behaviour() -> None:
    placed = placements(Settings())
    assert placed == {"llm": (Placement(None),), "tts": (Placement(None),), "asr": (Placement(None),)}
    assert placed["tts"][0].engine_kwargs() == {} and placed["tts"][0].cards() == (0,)


@pytest.mark.parametrize(
    ("gpus", "expected"), [("0", (0,)), ("1, 2", (1, 2)), ("", None), (None, None), ([3, 4], (3, 4))]
)
def test_parse_gpus(gpus: Any, expected: Any) -> None:
    assert parse_gpus(gpus) == expected


@pytest.mark.parametrize("bad", ["-1", "0,0", "x"])
def test_parse_gpus_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_gpus(bad)


def test_split_and_parallel_layouts() -> None:
    two = placements(Settings(llm_gpus="0", tts_gpus="1", asr_gpus="0"))
    assert two["llm"] == (Placement((0,)),) and two["tts"] == (Placement((1,)),) and two["asr"] == (Placement((0,)),)
    many = placements(Settings(tts_gpus="1,2,3,4", tts_tensor_parallel_size=2, tts_data_parallel_size=2))
    (engine,) = many["tts"]
    assert engine.engine_kwargs() == {"tensor_parallel_size": 2, "data_parallel_size": 2}
    assert engine.cards() == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="needs 4"):
        placements(Settings(tts_gpus="1,2", tts_tensor_parallel_size=2, tts_data_parallel_size=2))
    with pytest.raises(ValueError, match="asr: 2 GPU"):
        placements(Settings(asr_gpus="0,1"))


def test_more_cards_than_one_engine_takes_are_replicas() -> None:
    assert make_replicas("tts", "0,1", 1, 1) == (Placement((0,)), Placement((1,)))
    assert make_replicas("llm", "0,1,2,3", 2, 1) == (Placement((0, 1), 2), Placement((2, 3), 2))
    assert make_replicas("tts", "0,1", 1, 2) == (Placement((0, 1), 1, 2),)  # vLLM's data parallelism
    assert make_replicas("tts", None, 2, 1) == (Placement(None, 2),)
    with pytest.raises(ValueError, match="needs 2"):
        make_replicas("tts", "0,1,2", 2, 1)  # not a whole number of tensor-parallel groups
    with pytest.raises(ValueError, match="needs 1"):
        make_replicas("asr", "0,1", 1, 1, replicas=False)


def test_visible_devices_is_scoped_and_relative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with visible_devices((1,)):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    with visible_devices((0, 2)):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6"


def test_engine_starts_with_its_cards_and_parallel_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    seen: dict[str, Any] = {}

    class FakeAsyncLLM:
        def shutdown(self) -> None:
            pass

    def factory(kwargs: dict[str, Any]) -> FakeAsyncLLM:
        seen["env"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen["kwargs"] = kwargs
        return FakeAsyncLLM()

    placement = make_placement("tts", "2,3", 2, 1)
    engine = asyncio.run(
        VLLMEngine.create(
            EngineSpec(
                "m",
                tokenizer="m",
                max_model_len=64,
                gpu_memory_utilization=0.5,
            ),
            placement=placement,
            engine_factory=factory,
        )
    )
    assert seen["env"] == "2,3" and seen["kwargs"]["tensor_parallel_size"] == 2
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert engine.info.details["gpus"] == (2, 3)
