"""A stream's ramp takes its last step, to K-frame chunks, only once its listener holds a K-frame chunk's audio
(`--snac-grow-lead`).

The first K-frame chunk is the longest wait of a stream's start. While a listener who plays on arrival holds less
than `grow_lead` times that chunk's audio, the planner keeps the chunks one frame short of K; frames still go out
once each, in order, and every window keeps a shape the ramp already uses (no new CUDA graph).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from oai_server.codec.orpheus import FRAME_SECONDS
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import Window, WindowPlanner
from oai_server.engines.base import SamplingParams
from oai_server.engines.factory import window_policy
from oai_server.pipeline.speech import SpeechStats, VoiceOptions, synthesize_segments
from oai_server.settings import Settings

from .helpers import CountingDecoder, FrameEngine, emitted_frames, frame_synthesizer, frames

K_CHUNK_S = 4 * FRAME_SECONDS  # 341 ms: a K-frame chunk's audio with the defaults


def _counts(planner: WindowPlanner, n: int, lead_s: float | None) -> list[int]:
    windows = [w for frame in frames(n) for w in planner.add([frame], lead_s=lead_s)]
    return [w.count for w in windows + planner.finish()]


def test_a_listener_short_of_a_k_chunk_keeps_the_chunks_one_frame_short_of_k() -> None:
    held = _counts(WindowPolicy(grow_lead=1.0).planner(), 40, lead_s=K_CHUNK_S - 0.01)
    assert held[:7] == [1, 1, 2, 2, 3, 3, 3]  # the ramp up to K - 1 as before
    assert set(held[7:-1]) == {3}  # never a 4-frame chunk while the lead stays short
    assert sum(held) == 40


@pytest.mark.parametrize(
    ("grow_lead", "lead_s"),
    [(1.0, K_CHUNK_S + 0.001), (1.0, None), (0.0, 0.0), (0.5, K_CHUNK_S / 2 + 0.001)],
)
def test_a_listener_holding_enough_or_no_lead_given_or_off_follows_the_ramp(
    grow_lead: float, lead_s: float | None
) -> None:
    counts = _counts(WindowPolicy(grow_lead=grow_lead).planner(), 40, lead_s)
    assert counts[:8] == [1, 1, 2, 2, 3, 3, 3, 4]
    assert set(counts[8:-1]) == {4}


def test_the_chunks_emitted_in_the_same_call_count_toward_the_lead() -> None:
    # frames that arrive together: the chunks the call emits before the K-frame one add their audio to the lead
    together = WindowPolicy(grow_lead=1.0).planner()
    assert [w.count for w in together.add(frames(20), lead_s=0.1)] == [1, 1, 2, 2, 3, 3, 3, 4]
    apart = WindowPolicy(grow_lead=1.0).planner()
    stream = frames(20)
    assert [w.count for w in apart.add(stream[:16], lead_s=0.1)] == [1, 1, 2, 2, 3, 3, 3]
    assert [w.count for w in apart.add(stream[16:], lead_s=0.1)] == [3]  # 0.1 s measured now: short of 0.341


@pytest.mark.parametrize("seed", range(6))
def test_held_or_not_every_frame_goes_once_in_order_in_a_shape_the_ramp_already_has(seed: int) -> None:
    rng = random.Random(seed)
    policy = WindowPolicy(grow_lead=1.0)
    planner = policy.planner()
    stream = frames(90)
    windows: list[Window] = []
    i = 0
    while i < len(stream):
        n = rng.choice([0, 1, 1, 2, 5])
        windows += planner.add(stream[i : i + n], lead_s=rng.choice([None, 0.0, 0.2, 0.5]))
        i += n
    windows += planner.finish()
    assert emitted_frames(windows) == stream
    assert {w.shape for w in windows} <= set(policy.graph_shapes)
    assert any(w.count == 3 for w in windows[7:]) and any(w.count == 4 for w in windows)


def test_the_setting_reaches_the_window_policy_and_is_on_by_default() -> None:
    assert window_policy(Settings(asr=False)).grow_lead == 1.0
    assert window_policy(Settings(snac_grow_lead=0, asr=False)).grow_lead == 0.0
    assert WindowPolicy().planner().grow_lead == 1.0


@pytest.mark.parametrize(
    ("grow_lead", "seed", "counts"),
    [
        (1.0, None, [1, 1, 2, 2, 3, 3, 3, 3, 1]),
        (0.0, None, [1, 1, 2, 2, 3, 3, 3, 4]),
        (1.0, 7, [1, 1, 2, 2, 3, 3, 3, 4]),  # a seeded request's windows never follow the clock: its body repeats
    ],
)
async def test_the_pipeline_holds_a_stream_near_real_time_short_of_k(
    grow_lead: float, seed: int | None, counts: list[int]
) -> None:
    # Frames at real time: a listener who plays on arrival never holds more than ~1 frame + 20 x (85.3 - 80) ms,
    # well short of a 4-frame chunk, however late the event loop runs (lateness only shortens the lead).
    decoder = CountingDecoder()
    synthesizer = frame_synthesizer(FrameEngine(19, 0.080), decoder, WindowPolicy(grow_lead=grow_lead))
    options = VoiceOptions("tara", 0.0, 1.0, 1.0, seed=seed)
    pieces = [pcm async for pcm in synthesizer.synthesize("Hello.", options, SpeechStats())]
    assert decoder.counts == counts
    assert sum(len(pcm) for pcm in pieces) == 19 * 2048 * 2  # every frame once, 2048 samples each


class _FastThenRealTime(FrameEngine):
    """The reply's first segment at once (24 frames, 2 s of audio), every later one at real time."""

    def __init__(self) -> None:
        super().__init__(24)
        self.calls = 0

    async def generate(self, prompt: Any, params: SamplingParams, request_id: str) -> AsyncIterator[list[int]]:
        self.calls += 1
        if self.calls == 2:
            self.frames, self.frame_s = 19, 0.080
        async for delta in super().generate(prompt, params, request_id):
            yield delta


async def test_a_later_segment_counts_the_audio_the_reply_already_sent() -> None:
    # The second segment alone would hold at 3 frames (as above); its listener still holds ~1 s of the first one's
    # 2 s when the 4-frame chunk comes (a 650 ms late event loop would still leave 341 ms).
    decoder = CountingDecoder()
    synthesizer = frame_synthesizer(_FastThenRealTime(), decoder, WindowPolicy(grow_lead=1.0))

    async def segments() -> AsyncIterator[str]:
        for text in ("One.", "Two."):
            yield text

    options = VoiceOptions("tara", 0.0, 1.0, 1.0)
    events = [event async for event in synthesize_segments(synthesizer, segments(), options)]
    assert decoder.counts == [*[1, 1, 2, 2, 3, 3, 3, 4, 4, 1], *[1, 1, 2, 2, 3, 3, 3, 4]]
    assert sum(len(event.pcm) for event in events) == ((24 + 19) * 2048 - 240) * 2  # one crossfade at the join
