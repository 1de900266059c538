"""SNAC beside every Orpheus replica (`engines/snac_replicas.py`): a stream's windows decode with the SNAC
of the replica that generates it, and the samples are those one shared decoder would make.

The replicas are scripted (each request yields the same deterministic frames, so the test knows which
replica ran which stream); the decoders are real SNAC decoders on the demo model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from oai_server.codec.orpheus import SAMPLES_PER_FRAME, slot_band
from oai_server.codec.snac_model import load_snac
from oai_server.codec.snac_stream import SnacDecoder, SnacDecoding
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import Window
from oai_server.engines.balanced import BalancedEngine
from oai_server.engines.base import EngineInfo, SamplingParams
from oai_server.engines.demo import SNAC_DEMO_CONFIG, write_random_snac
from oai_server.engines.snac_replicas import ReplicaSnacDecoders
from oai_server.pipeline.speech import SpeechStats, SpeechSynthesizer, VoiceOptions

FRAMES = 9


class FrameEngine:
    """Yields `FRAMES` audio frames, one delta each, after `go` is set (so concurrent streams overlap)."""

    def __init__(self, name: str, go: asyncio.Event) -> None:
        self.info = EngineInfo(kind="frames", model="m", max_model_len=4096, details={"name": name})
        self.go = go
        self.started: list[str] = []

    async def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        self.started.append(request_id)
        await self.go.wait()
        for frame in range(FRAMES):
            yield [slot_band(k).start + (frame * 7 + k) * 37 % 4096 for k in range(7)]
            await asyncio.sleep(0)

    async def abort(self, request_id: str) -> None:
        pass

    async def check_health(self) -> None:
        pass

    def active_requests(self) -> int:
        return 0

    async def close(self) -> None:
        pass


@pytest.fixture
def decoders(tmp_path: Path) -> Any:
    """Three decoders of one demo-sized SNAC without its noise blocks (two decodes of the same codes agree)."""
    torch.manual_seed(0)
    write_random_snac(tmp_path, {**SNAC_DEMO_CONFIG, "noise": False})
    made = [SnacDecoder(load_snac(str(tmp_path), "cpu"), "cpu", max_batch=8) for _ in range(3)]
    yield made
    for decoder in made:
        decoder.close()


def synthesizer(engine: Any, decoder: SnacDecoding) -> SpeechSynthesizer:
    tokenizer = SimpleNamespace(encode=lambda text, add_special_tokens=False: [1, 2, 3])
    return SpeechSynthesizer(
        engine, tokenizer, decoder, windows=WindowPolicy(), tokens_per_char=8.0,
        max_tokens=1024, max_model_len=2048,
    )  # fmt: skip


async def speak(speaker: SpeechSynthesizer) -> bytes:
    options = VoiceOptions("tara", 0.6, 0.8, 1.1, max_tokens=FRAMES * 7)
    return b"".join([pcm async for pcm in speaker.synthesize("Hello there.", options, SpeechStats())])


async def test_each_streams_windows_decode_on_its_replicas_snac(decoders: list[SnacDecoder]) -> None:
    go = [asyncio.Event(), asyncio.Event()]
    replicas = [FrameEngine("card0", go[0]), FrameEngine("card1", go[1])]
    engine = BalancedEngine(replicas)
    speaker = synthesizer(engine, ReplicaSnacDecoders(engine, decoders[:2]))
    talks = [asyncio.ensure_future(speak(speaker)) for _ in range(3)]
    for _ in range(20):  # let every stream start (each waits for its replica's `go`): all three live at once
        await asyncio.sleep(0)
    assert [len(r.started) for r in replicas] == [2, 1]  # fewest live streams, ties in turn
    go[1].set()  # card 1's stream speaks first: its windows are the first any decoder sees
    await talks[1]
    assert [d.frames_emitted for d in decoders[:2]] == [0, FRAMES]
    go[0].set()
    pcms = await asyncio.gather(*talks)
    assert [d.frames_emitted for d in decoders[:2]] == [2 * FRAMES, FRAMES]  # every frame on its card's SNAC

    alone = await speak(synthesizer(FrameEngine("one", go[0]), decoders[2]))  # one decoder for everything
    assert len(alone) == FRAMES * SAMPLES_PER_FRAME * 2
    for pcm in pcms:  # the same samples (batches of other sizes round differently by a unit or two)
        np.testing.assert_allclose(np.frombuffer(pcm, "<i2"), np.frombuffer(alone, "<i2"), atol=2)


async def test_windows_of_no_known_stream_take_turns_and_control_reaches_every_decoder(
    decoders: list[SnacDecoder],
) -> None:
    engine = BalancedEngine([FrameEngine("a", asyncio.Event()), FrameEngine("b", asyncio.Event())])
    routed = ReplicaSnacDecoders(engine, decoders[:2])
    assert routed.for_stream("never-started") is decoders[0] and routed.for_stream("nor-this") is decoders[1]
    window = Window(((0,) * 7,) * 2, 0, 2)
    pcm = await asyncio.gather(*(routed.decode(window) for _ in range(4)))  # warm-up's unrouted windows
    assert all(len(p) == 2 * SAMPLES_PER_FRAME * 2 for p in pcm)
    assert [d.windows_decoded for d in decoders[:2]] == [2, 2]
    assert routed.window_counts() == (4, 4)  # summed over the replicas' decoders; on CPU every window is eager
    (busy_a, queued_a), (busy_b, queued_b) = (d.work_seconds() for d in decoders[:2])
    assert routed.work_seconds() == (busy_a + busy_b, queued_a + queued_b) and busy_a > 0 and busy_b > 0
    await routed.capture_graphs([window.shape])  # CPU: nothing to capture, on either
    routed.close()
    assert not any(d._thread.is_alive() for d in decoders[:2])


def test_one_decoder_per_replica_is_required(decoders: list[SnacDecoder]) -> None:
    engine = BalancedEngine([FrameEngine("a", asyncio.Event()), FrameEngine("b", asyncio.Event())])
    with pytest.raises(ValueError, match="one SNAC decoder per replica"):
        ReplicaSnacDecoders(engine, decoders[:1])
