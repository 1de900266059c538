"""Stretched SNAC chunks (`WindowPolicy.stretch_frames`, the server's `--snac-stretch-frames`): a stream whose listener
holds `grow_lead` times a K2-frame chunk's audio sends K2-frame chunks, fewer frames decoded per frame sent, and goes
back to K-frame chunks, at once, as soon as that lead falls short."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from oai_server.codec.orpheus import FRAME_SECONDS, SAMPLES_PER_FRAME
from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import Window, WindowPlanner
from oai_server.engines.demo import SNAC_DEMO_CONFIG
from oai_server.engines.factory import window_policy
from oai_server.pipeline.speech import SpeechStats, VoiceOptions
from oai_server.settings import Settings

from .helpers import (
    CountingDecoder,
    FrameEngine,
    demo_settings,
    emitted_frames,
    frame_synthesizer,
    frames,
    scrape,
    start_server,
    stitched_snr,
)
from .test_snac_graphs import quiet_model

STRETCHED = WindowPolicy(stretch_frames=8, fill=True)
K2_CHUNK_S = 8 * FRAME_SECONDS  # 683 ms: what a listener must hold before a chunk stretches, with grow_lead 1


def _counts(planner: WindowPlanner, n: int, lead_s: float | None) -> list[int]:
    windows = [w for frame in frames(n) for w in planner.add([frame], lead_s=lead_s)]
    return [w.count for w in windows + planner.finish()]


def test_a_listener_holding_a_stretched_chunks_audio_gets_stretched_chunks_after_the_ramp() -> None:
    counts = _counts(STRETCHED.planner(), 60, lead_s=K2_CHUNK_S + 0.001)
    # the ramp up to K - 1; its K-frame step goes straight to K2, the 15 frames sent holding more than a K2 chunk
    assert counts[:8] == [1, 1, 2, 2, 3, 3, 3, 8]
    assert counts[8:] == [8, 8, 8, 8, 4, 1]  # the stream's end in K-frame chunks, as without stretching


@pytest.mark.parametrize(
    ("policy", "lead_s"),
    [
        (STRETCHED, K2_CHUNK_S - 0.001),  # short of the stretched chunk's audio
        (STRETCHED, None),  # no listener (a seeded request)
        (WindowPolicy(fill=True), 10.0),  # stretching off (the default)
        (WindowPolicy(stretch_frames=8, grow_lead=0.0), 10.0),  # no lead followed at all
    ],
)
def test_without_the_lead_or_the_setting_the_chunks_are_the_ramps(policy: WindowPolicy, lead_s: float | None) -> None:
    assert _counts(policy.planner(), 60, lead_s) == _counts(WindowPolicy().planner(), 60, None)


def test_a_stretched_chunk_still_waiting_shrinks_back_to_k_once_the_lead_falls_short() -> None:
    planner = STRETCHED.planner()
    stream = frames(40)
    sent = [w.count for w in planner.add(stream[:20], lead_s=5.0)]
    assert sent == [1, 1, 2, 2, 3, 3, 3]  # 15 frames sent; the next chunk, stretched, needs 8 more and a lookahead
    assert planner.add(stream[20:23], lead_s=5.0) == []  # 8 frames waiting
    # the listener's lead falls short: the frames waiting go now, in K-frame chunks, without another frame
    assert [w.count for w in planner.add([], lead_s=0.5)] == [4]
    windows = [w for frame in stream[23:] for w in planner.add([frame], lead_s=0.5)] + planner.finish()
    assert 8 not in [w.count for w in windows] and emitted_frames(windows) == stream[19:]


@pytest.mark.parametrize("seed", range(8))
def test_stretched_or_not_every_frame_goes_once_in_order_in_a_shape_the_policy_captures(seed: int) -> None:
    rng = random.Random(seed)
    planner = STRETCHED.planner()
    stream = frames(150)
    windows: list[Window] = []
    i = 0
    while i < len(stream):
        n = rng.choice([0, 1, 1, 2, 5, 9])
        windows += planner.add(stream[i : i + n], lead_s=rng.choice([None, 0.2, 0.5, 0.9, 3.0]))
        i += n
    windows += planner.finish()
    assert emitted_frames(windows) == stream
    assert {w.decode_shape for w in windows} <= set(STRETCHED.decode_shapes)
    assert any(w.count == 8 for w in windows) and any(w.count == 4 for w in windows[9:])
    assert all(len(w.frames) in (7, 11) for w in windows[3:-1])  # two lengths past the start: two batches a round


def test_the_stretched_window_is_one_more_captured_length_and_the_longest() -> None:
    assert STRETCHED.stretched_shape == (11, 2, 8, 240)
    assert set(STRETCHED.decode_shapes) - set(WindowPolicy(fill=True).decode_shapes) == {(11, 0, 11, 0)}
    assert STRETCHED.longest_window == 11 and WindowPolicy().longest_window == 7
    assert WindowPolicy(stretch_frames=8, grow_lead=0.0).stretched_shape is None


def test_the_setting_reaches_the_window_policy_and_is_checked() -> None:
    assert window_policy(Settings(asr=False)).stretch_frames == 0
    assert window_policy(Settings(snac_stretch_frames=8, asr=False)).stretch_frames == 8
    with pytest.raises(ValidationError, match="more than snac_frames_per_decode"):
        Settings(snac_stretch_frames=4, asr=False)


async def test_the_pipeline_stretches_a_stream_far_ahead_of_its_listener() -> None:
    """Frames all at once: the listener's lead is the whole audio sent, so past the ramp every chunk stretches;
    every frame goes once, 2048 samples each."""
    decoder = CountingDecoder()
    synthesizer = frame_synthesizer(FrameEngine(43), decoder, STRETCHED)
    pieces = [pcm async for pcm in synthesizer.synthesize("Hello.", VoiceOptions("tara", 0.0, 1.0, 1.0), SpeechStats())]
    assert decoder.counts == [1, 1, 2, 2, 3, 3, 3, 8, 8, 8, 4]
    assert sum(len(pcm) for pcm in pieces) == 43 * SAMPLES_PER_FRAME * 2


def test_stretched_chunks_bring_the_stream_as_close_or_closer_to_decoding_it_whole() -> None:
    """The stitched stream of stretched chunks against K-frame ones, both against one decode of the whole utterance
    (SNAC's noise off): fewer seams, the same context at each."""
    model = quiet_model(SNAC_DEMO_CONFIG)
    decoder = SnacDecoder(model, "cpu", max_batch=8)
    rng = np.random.default_rng(11)
    codes = [tuple(int(c) for c in f) for f in rng.integers(0, 4096, (41, 7))]
    try:
        plain, plain_windows = stitched_snr(decoder, codes, WindowPolicy(fill=True), lead_s=10.0)
        stretched, stretched_windows = stitched_snr(decoder, codes, STRETCHED, lead_s=10.0)
    finally:
        decoder.close()
    assert stretched_windows < plain_windows
    assert stretched >= plain - 0.05 and stretched > 30


def _windows_decoded(url: str) -> float:
    return sum(value for series, value in scrape(url).items() if series.startswith("oai_snac_windows_total"))


def test_a_server_with_stretched_chunks_decodes_fewer_windows_for_as_much_audio(demo_cache: Path) -> None:
    """The setting reaches the real pipeline on the demo models: the CPU engine runs far ahead of real time, so a
    long reply's chunks stretch, in fewer windows than the ramp's K-frame chunks would take; its audio still
    arrives whole, 2048 samples a frame (one sentence: one segment, no crossfade). A grow lead of 0.25 stretches once
    the listener holds 171 ms, which the demo keeps however slow the machine running the suite."""
    body = {"model": "tts-1", "voice": "tara", "response_format": "pcm", "input": "A sentence that goes on and on"}
    server = start_server(demo_settings(demo_cache, snac_stretch_frames=8, snac_grow_lead=0.25))
    lengths: list[int] = []
    try:
        before = _windows_decoded(server.url)
        # the random model's replies vary: one of 24 frames has the ramp's 15, a stretched chunk and its lookahead
        while len(lengths) < 20 and max(lengths, default=0) < 24:
            audio = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=120).content
            assert len(audio) % (2 * SAMPLES_PER_FRAME) == 0
            lengths.append(len(audio) // (2 * SAMPLES_PER_FRAME))
        windows = _windows_decoded(server.url) - before
    finally:
        server.stop()
    assert max(lengths) >= 24, lengths
    assert windows < sum(len(_counts(WindowPolicy().planner(), n, lead_s=None)) for n in lengths)  # the ramp's
