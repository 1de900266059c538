"""A stream near real time sends its frames as they can be decoded (`--snac-hurry-lead-ms`).

Chunks of up to K frames wait for their last frame; while a listener who plays on arrival holds less than the
hurry lead, the planner sends every frame that has its lookahead at once instead, and the ramp goes on from that
shorter chunk. Frames still go out once each, in order, as 2048 samples each.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from openai import AsyncOpenAI

from oai_server.app import create_app
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import SEAM_SAMPLES, Window, WindowPlanner
from oai_server.engines.factory import window_policy
from oai_server.pipeline.speech import (
    ListenerLead,
    SpeechStats,
    SpeechSynthesizer,
    VoiceOptions,
    synthesize_segments,
)
from oai_server.settings import Settings

from .helpers import CountingDecoder, FrameEngine, emitted_frames, frame_synthesizer, frames


@pytest.mark.parametrize("seed", range(6))
def test_hurried_or_not_every_frame_goes_once_in_order_after_its_lookahead(seed: int) -> None:
    rng = random.Random(seed)
    planner = WindowPlanner(2, 1, 4, ramp="step")
    stream = frames(120)
    windows: list[Window] = []
    i = 0
    while i < len(stream):
        n = rng.choice([0, 1, 1, 2, 3])
        added = planner.add(stream[i : i + n], hurry=rng.random() < 0.5)
        i += n
        if added:  # a window is never sent before the frame after its chunk (L=1) has arrived
            last = added[-1]
            assert stream.index(last.frames[-1]) == stream.index(emitted_frames(added)[-1]) + 1 <= i - 1
        windows += added
    windows += planner.finish()
    assert emitted_frames(windows) == stream
    assert all(1 <= w.count <= 4 and w.emit <= 2 for w in windows)


def test_a_hurried_stream_sends_each_frame_when_its_lookahead_comes() -> None:
    policy = WindowPolicy(hurry_lead_ms=300)
    planner = policy.planner()
    per_frame = [planner.add([f], hurry=True) for f in frames(12)]
    assert per_frame[0] == [] and all(len(windows) == 1 for windows in per_frame[1:])
    counts = [windows[0].count for windows in per_frame[1:]]
    assert counts == [1] * 11
    past_start = per_frame[-1][0].shape
    assert past_start == (4, 2, 1, SEAM_SAMPLES)
    assert past_start in policy.graph_shapes and past_start not in WindowPolicy().graph_shapes


def test_the_ramp_goes_on_from_a_hurried_chunk() -> None:
    planner = WindowPolicy().planner()
    stream = frames(30)
    hurried = [w for f in stream[:8] for w in planner.add([f], hurry=True)]
    calm = [w for f in stream[8:] for w in planner.add([f])]
    assert [w.count for w in hurried] == [1] * 7
    assert [w.count for w in calm][:6] == [2, 2, 3, 3, 3, 4]  # one frame longer, each size repeated, as the ramp grows
    assert emitted_frames(hurried + calm + planner.finish()) == stream


def test_graph_shapes_add_the_shorter_steady_chunks_only_when_hurrying() -> None:
    calm, hurried = WindowPolicy(), WindowPolicy(hurry_lead_ms=250)
    assert calm.graph_shapes == calm.stream_shapes + calm.finish_shapes
    extra = [shape for shape in hurried.graph_shapes if shape not in calm.graph_shapes]
    assert extra == [(4, 2, 1, SEAM_SAMPLES)]  # (5, 2, 2) and (6, 2, 3) are the ramp's own
    assert window_policy(Settings(snac_hurry_lead_ms=250, asr=False)).hurry_lead_ms == 250


def test_listener_lead_counts_audio_sent_against_time_since_the_first() -> None:
    now = [10.0]
    lead = ListenerLead(clock=lambda: now[0])
    assert lead.seconds() == 0.0
    lead.sent(24000)  # one second of audio at 24 kHz
    now[0] = 10.25
    assert lead.seconds() == pytest.approx(0.75)
    lead.sent(12000)
    assert lead.seconds() == pytest.approx(1.25)
    assert lead.under(1.5) and not lead.under(1.0) and not lead.under(0)  # 0: never hurry
    now[0] = 13.0
    assert lead.seconds() == 0.0  # the listener ran dry; never negative
    assert lead.under(0.1)


def _synthesizer(hurry_lead_ms: int, decoder: CountingDecoder, frames: int = 12) -> SpeechSynthesizer:
    return frame_synthesizer(FrameEngine(frames), decoder, WindowPolicy(hurry_lead_ms=hurry_lead_ms))


OPTIONS = VoiceOptions("tara", 0.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("hurry_lead_ms", "first", "counts"),
    [
        (0, True, [1, 1, 2, 2, 3, 3]),  # the ramp alone; the last chunk at the end
        (5000, True, [1] * 12),  # 12 frames (1 s) never reach a 5 s lead: each frame goes alone
        (5000, False, [1, 1, 2, 2, 3, 3]),  # a later segment plays after another one: no hurry
    ],
)
async def test_a_first_segment_under_its_hurry_lead_sends_frame_by_frame(
    hurry_lead_ms: int, first: bool, counts: list[int]
) -> None:
    decoder = CountingDecoder()
    synthesizer = _synthesizer(hurry_lead_ms, decoder)
    pieces = [pcm async for pcm in synthesizer.synthesize("Hello.", OPTIONS, SpeechStats(), first=first)]
    assert decoder.counts == counts
    assert sum(len(pcm) for pcm in pieces) == 12 * 2048 * 2  # every frame once, 2048 samples each


async def test_only_the_first_of_a_replys_segments_hurries() -> None:
    decoder = CountingDecoder()

    async def segments() -> AsyncIterator[str]:
        for text in ("One.", "Two."):
            yield text

    events = [event async for event in synthesize_segments(_synthesizer(5000, decoder), segments(), OPTIONS)]
    assert decoder.counts == [1] * 12 + [1, 1, 2, 2, 3, 3]
    assert sum(len(event.pcm) for event in events) == (24 * 2048 - 240) * 2  # one crossfade at the join


@pytest.fixture(scope="module")
async def hurried_sdk(demo_cache: Path, demo_models: object) -> AsyncIterator[AsyncOpenAI]:
    """The openai SDK against the demo app (real tiny models, real SNAC) hurrying every first segment, in process."""
    app = create_app(Settings(demo=True, cache_dir=demo_cache, snac_hurry_lead_ms=5000))
    transport = httpx.ASGITransport(app=app)
    async with (
        LifespanManager(app, startup_timeout=120),
        httpx.AsyncClient(transport=transport, base_url="http://a/v1", timeout=120) as http,
        AsyncOpenAI(base_url="http://a/v1", api_key="sk-test", http_client=http, max_retries=0) as sdk,
    ):
        yield sdk


async def test_speech_through_the_real_models_is_whole_frames_when_hurried(hurried_sdk: AsyncOpenAI) -> None:
    speech = await hurried_sdk.audio.speech.create(
        model="tts-1", input="Hello there, how are you?", voice="tara", response_format="pcm"
    )
    assert len(speech.content) > 0 and len(speech.content) % (2048 * 2) == 0
