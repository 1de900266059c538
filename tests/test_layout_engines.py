"""The factory starts the engines a GPU layout describes: each vLLM engine (an AsyncLLM double here, no GPU)
on its cards with its memory share, Orpheus replicas behind the balancer, Whisper where the layout puts it."""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

import pytest

from oai_server.codec.snac_service import LOW_PRIORITY_KEY, SERVICE_KEY, SWITCH_INTERVAL_KEY
from oai_server.engines import asr_vllm, vllm_engine
from oai_server.engines.asr_factory import build_asr
from oai_server.engines.balanced import BalancedEngine
from oai_server.engines.band_graphs import BAND_GRAPHS_KEY
from oai_server.engines.demo_whisper import build_demo_whisper
from oai_server.engines.factory import _build, snac_hosts_of, snac_service_name
from oai_server.engines.layout import LayoutRequest, plan_layout
from oai_server.settings import Settings


class AsyncLLMDouble:
    """What the factory needs of vLLM's AsyncLLM: it was built, with which args, on which cards."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.shut = False
        # where `frame_deltas` hooks in (tests/test_frame_deltas.py follows vLLM's rule)
        self.add_request = lambda request, *args: None
        self.output_processor = types.SimpleNamespace(
            stream_interval=kwargs.get("stream_interval", 1), add_request=self.add_request, request_states={}
        )

    async def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        self.shut = True


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[AsyncLLMDouble]:
    engines: list[AsyncLLMDouble] = []

    def build(kwargs: dict[str, Any]) -> AsyncLLMDouble:
        engines.append(AsyncLLMDouble(kwargs))
        return engines[-1]

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(vllm_engine, "build_async_llm", build)
    monkeypatch.setattr(asr_vllm, "build_async_llm", build)
    return engines


async def test_speech_layout_on_two_cards_starts_two_orpheus_replicas(
    built: list[AsyncLLMDouble], demo_cache: Path
) -> None:
    settings = Settings(placement="speech", asr_model_name=str(build_demo_whisper(demo_cache)), llm_stream_interval=4)
    layout = plan_layout(2, 139.8, LayoutRequest.from_settings(settings))
    llm, tts = await _build(settings, "vllm", layout)
    asr = await build_asr(settings, "vllm", layout)
    assert asr is not None
    orpheus, gemma, whisper = [e for e in built if "logits_processors" in e.kwargs], built[2], built[3]
    # card 1: 0.9 less the reserve of the SNAC its Orpheus hosts
    assert [(e.visible, e.kwargs["gpu_memory_utilization"]) for e in orpheus] == [("0", 0.43), ("1", 0.87)]
    assert (gemma.visible, gemma.kwargs["gpu_memory_utilization"], gemma.kwargs["model"]) == (
        "0",
        0.29,
        settings.llm_model_name,
    )
    assert (whisper.visible, whisper.kwargs["gpu_memory_utilization"]) == ("0", 0.14)
    assert gemma.kwargs["stream_interval"] == 4 and all(e.kwargs["stream_interval"] == 7 for e in orpheus)
    assert whisper.kwargs["renderer_num_workers"] == settings.asr_input_workers == 4
    assert whisper.kwargs["max_num_batched_tokens"] == settings.asr_max_num_batched_tokens == 12000  # 8 windows
    assert all("max_num_batched_tokens" not in e.kwargs for e in (gemma, *orpheus))  # vllm serve's default
    assert all(e.kwargs["disable_log_stats"] for e in built)  # no per-token statistics on the event loop
    assert isinstance(tts, BalancedEngine) and tts.info.details["weights"] == [1.0, 1.0]  # SNAC on both cards
    assert [r.info.details["gpus"] for r in tts.replicas] == [(0,), (1,)]
    assert not isinstance(llm, BalancedEngine) and llm.info.details["gpus"] == (0,)
    assert layout.snac_device == "cuda:0" and "CUDA_VISIBLE_DEVICES" not in os.environ
    await tts.close()
    await llm.close()
    await asr.close()
    assert all(e.shut for e in built)


async def test_snac_in_engine_is_asked_of_every_orpheus_replica_by_its_own_name(built: list[AsyncLLMDouble]) -> None:
    settings = Settings(placement="speech", snac_in_engine=True, snac_low_priority=True, asr=False)
    layout = plan_layout(2, 139.8, LayoutRequest.from_settings(settings))
    llm, tts = await _build(settings, "vllm", layout, snac_hosts_of(settings, layout))
    orpheus = [e for e in built if "logits_processors" in e.kwargs]
    assert [(e.visible, e.kwargs.get("additional_config")) for e in orpheus] == [
        ("0", {SERVICE_KEY: snac_service_name(0), LOW_PRIORITY_KEY: True, BAND_GRAPHS_KEY: True}),
        ("1", {SERVICE_KEY: snac_service_name(1), LOW_PRIORITY_KEY: True, BAND_GRAPHS_KEY: True}),
    ]
    assert snac_service_name(0) != snac_service_name(1)
    assert all("additional_config" not in e.kwargs for e in built if e not in orpheus)  # not Gemma's
    await tts.close()
    await llm.close()


@pytest.mark.parametrize("flipped", [False, True])
async def test_orpheus_runs_without_prefix_caching_and_above_snac_by_default(
    built: list[AsyncLLMDouble], flipped: bool
) -> None:
    """Orpheus's audio is never reused, so its engine hashes none of it; Gemma's conversations keep their prefix
    cache. The Orpheus engine hosting SNAC puts its own kernels above SNAC's, runs its band work as CUDA graphs,
    and delivers its tokens in whole frames, under Python's GIL switch interval. The flags turn each around."""
    flipped_flags = {
        "tts_prefix_caching": True,
        "snac_low_priority": False,
        "tts_frame_deltas": False,
        "tts_engine_switch_interval_ms": 0.5,
    }
    flags = {**flipped_flags, "tts_band_graphs": False} if flipped else {}
    settings = Settings(asr=False, **flags)  # type: ignore[arg-type]
    layout = plan_layout(1, 139.8, LayoutRequest.from_settings(settings))
    llm, tts = await _build(settings, "vllm", layout, snac_hosts_of(settings, layout))
    (orpheus,) = [e for e in built if "logits_processors" in e.kwargs]
    (gemma,) = [e for e in built if e is not orpheus]
    assert orpheus.kwargs["enable_prefix_caching"] is flipped and gemma.kwargs["enable_prefix_caching"] is True
    graphs = {} if flipped else {BAND_GRAPHS_KEY: True}
    switch = {SWITCH_INTERVAL_KEY: 0.0005} if flipped else {}  # the engine process's GIL switch interval, in s
    assert orpheus.kwargs["additional_config"] == {
        SERVICE_KEY: snac_service_name(0),
        LOW_PRIORITY_KEY: not flipped,
        **graphs,
        **switch,
    }
    frames = orpheus.output_processor.add_request is not orpheus.add_request  # wrapped to hold the first token
    assert (frames, tts.info.details["frame_deltas"]) == (not flipped, not flipped)
    assert gemma.output_processor.add_request is gemma.add_request
    await tts.close()
    await llm.close()


@pytest.mark.parametrize(("mode", "config"), [("auto", None), ("full", {"cudagraph_mode": "FULL"})])
async def test_the_cudagraph_mode_reaches_orpheus_alone(
    built: list[AsyncLLMDouble], mode: str, config: dict[str, str] | None
) -> None:
    """`--tts-cudagraph-mode full`: vLLM's compilation config for Orpheus; auto leaves vLLM's default, Gemma's too."""
    settings = Settings(asr=False, tts_cudagraph_mode=mode)  # type: ignore[arg-type]
    layout = plan_layout(1, 139.8, LayoutRequest.from_settings(settings))
    llm, tts = await _build(settings, "vllm", layout, snac_hosts_of(settings, layout))
    (orpheus,) = [e for e in built if "logits_processors" in e.kwargs]
    (gemma,) = [e for e in built if e is not orpheus]
    assert orpheus.kwargs.get("compilation_config") == config and "compilation_config" not in gemma.kwargs
    assert tts.info.details["cudagraph_mode"] == mode
    await tts.close()
    await llm.close()


async def test_the_arrival_window_reaches_orpheus_alone(built: list[AsyncLLMDouble]) -> None:
    """`--tts-arrival-window-ms`: Orpheus's engine groups its arrivals; Gemma's lets each in at once."""
    settings = Settings(asr=False, tts_arrival_window_ms=20)
    layout = plan_layout(1, 139.8, LayoutRequest.from_settings(settings))
    llm, tts = await _build(settings, "vllm", layout, snac_hosts_of(settings, layout))
    assert tts.info.details["arrival_window_ms"] == 20 and llm.info.details["arrival_window_ms"] == 0
    assert isinstance(tts, vllm_engine.VLLMEngine) and tts.arrivals.window_s == pytest.approx(0.02)
    await tts.close()
    await llm.close()


async def test_engine_log_stats_reaches_every_vllm_engine(built: list[AsyncLLMDouble], demo_cache: Path) -> None:
    settings = Settings(engine_log_stats=True, asr_model_name=str(build_demo_whisper(demo_cache)))
    layout = plan_layout(1, 139.8, LayoutRequest.from_settings(settings))
    llm, tts = await _build(settings, "vllm", layout)
    asr = await build_asr(settings, "vllm", layout)
    assert asr is not None and len(built) == 3
    assert [e.kwargs["disable_log_stats"] for e in built] == [False, False, False]
    await tts.close()
    await llm.close()
    await asr.close()


async def test_vllm_data_parallel_stays_one_engine(built: list[AsyncLLMDouble]) -> None:
    settings = Settings(placement="chat", tts_data_parallel_size=2, asr=False)
    layout = plan_layout(3, 139.8, LayoutRequest.from_settings(settings))
    llm, tts = await _build(settings, "vllm", layout)
    orpheus = built[0]
    assert orpheus.visible == "1,2" and orpheus.kwargs["data_parallel_size"] == 2
    assert not isinstance(tts, BalancedEngine) and built[1].visible == "0"
    await tts.close()
    await llm.close()
