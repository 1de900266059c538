"""Filled SNAC windows (`WindowPolicy.fill`, the server's `--snac-fill-windows`): a chunk shorter than K takes more
left context, up to the steady window's length, so past a stream's first three windows every window decodes as
one length, one batch; the samples it emits only gain context."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from oai_server.codec.orpheus import SAMPLES_PER_FRAME
from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import SEAM_SAMPLES, Window
from oai_server.engines.demo import SNAC_DEMO_CONFIG

from .helpers import emitted_frames, frames, quiet_settings, quiet_snac, start_server, stitched_snr
from .test_snac_graphs import quiet_model

FILLED = WindowPolicy(fill=True)
STEADY_LENGTH = FILLED.steady_shape[0]


def _stream(policy: WindowPolicy, length: int, seed: int = 0, lead_s: float | None = None) -> list[Window]:
    """A stream's windows, frames arriving one, two or five at a time."""
    rng = random.Random(seed)
    planner = policy.planner()
    stream, windows, i = frames(length), [], 0
    while i < length:
        n = rng.choice([1, 1, 2, 5])
        windows += planner.add(stream[i : i + n], lead_s=lead_s)
        i += n
    return windows + planner.finish()


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 9, 16, 17, 40, 151])
@pytest.mark.parametrize("lead_s", [None, 0.0])  # the ramp alone; a listener short of a K-chunk (held at 3)
def test_past_its_first_three_windows_every_window_of_a_stream_decodes_the_steady_length(
    length: int, lead_s: float | None
) -> None:
    filled, plain = _stream(FILLED, length, lead_s=lead_s), _stream(WindowPolicy(), length, lead_s=lead_s)
    assert emitted_frames(filled) == frames(length)  # every frame once, in order
    assert [(w.count, w.lead) for w in filled] == [(w.count, w.lead) for w in plain]  # the same chunks, seams
    emitted = 0
    for got, was in zip(filled, plain, strict=True):
        # only frames before: the emitted ones and their lookahead are the window's as it was
        assert got.frames[len(got.frames) - len(was.frames) :] == was.frames
        assert len(got.frames) - got.emit == len(was.frames) - was.emit
        end = emitted - was.emit + len(was.frames)  # the stream's frames up to the window's last
        assert len(got.frames) == min(STEADY_LENGTH, end)  # as long as a steady one, where the stream allows
        emitted += was.count
    if length >= STEADY_LENGTH:  # a shorter stream's last windows cannot be as long
        assert all(len(w.frames) == STEADY_LENGTH for w in filled[3:])
    if length > FILLED.context_frames + FILLED.lookahead_frames:  # shorter streams end in eager windows of their own
        assert {w.decode_shape for w in filled} <= set(FILLED.decode_shapes)


def test_a_filled_policy_captures_no_more_lengths_than_the_plain_one() -> None:
    """The lengths are those of a stream's first three windows, the steady one and the last windows of streams too
    short to fill (under 7 frames); a hurried stream's shorter chunks add none."""
    assert [shape[0] for shape in FILLED.decode_shapes] == [2, 3, 5, 7, 4, 6]
    assert set(FILLED.decode_shapes) == set(WindowPolicy().decode_shapes)
    assert len(WindowPolicy().graph_shapes) == 9  # window shapes: as many graphs each before decodes went by length
    hurried = WindowPolicy(fill=True, hurry_lead_ms=300)
    assert set(hurried.decode_shapes) == set(FILLED.decode_shapes)
    assert all(shape[0] == STEADY_LENGTH for shape in hurried.graph_shapes if shape not in FILLED.graph_shapes)


def test_a_hurried_filled_stream_decodes_the_steady_length_past_its_start() -> None:
    planner = WindowPolicy(fill=True, hurry_lead_ms=300).planner()
    stream = frames(30)
    windows = [w for i in range(30) for w in planner.add(stream[i : i + 1], hurry=i > 12)] + planner.finish()
    assert emitted_frames(windows) == stream
    assert all(len(w.frames) == STEADY_LENGTH for w in windows[4:]) and any(w.count == 1 for w in windows[4:])


def test_filled_windows_bring_the_stream_as_close_or_closer_to_decoding_it_whole() -> None:
    """The stitched stream of filled windows against the plain ones', both against one decode of the whole
    utterance (SNAC's noise off): the ramp's windows gain left context, the rest are the same windows."""
    model = quiet_model(SNAC_DEMO_CONFIG)
    decoder = SnacDecoder(model, "cpu", max_batch=8)
    rng = np.random.default_rng(7)
    codes = [tuple(int(c) for c in f) for f in rng.integers(0, 4096, (23, 7))]
    try:
        (plain, _), (filled, _) = stitched_snr(decoder, codes, WindowPolicy()), stitched_snr(decoder, codes, FILLED)
    finally:
        decoder.close()
    assert filled >= plain - 0.05 and filled > 30


def test_a_filled_planners_memory_stays_bounded() -> None:
    planner = FILLED.planner()
    stream = frames(2000)
    for i in range(2000):
        planner.add(stream[i : i + 1])
    assert len(planner._frames) <= 64 + STEADY_LENGTH + 1


@pytest.mark.parametrize(
    ("setting", "device", "graphs", "fill"),
    [("auto", "cpu", True, False), ("auto", "cuda", True, True), ("auto", "cuda", False, False),
     ("on", "cpu", True, True), ("off", "cuda", True, False)],
)  # fmt: skip
def test_the_setting_fills_where_snac_replays_cuda_graphs_unless_told(
    setting: str, device: str, graphs: bool, fill: bool
) -> None:
    from oai_server.engines.factory import window_policy
    from oai_server.settings import Settings

    settings = Settings(snac_fill_windows=setting, snac_device=device, snac_cuda_graphs=graphs, asr=False)
    assert window_policy(settings).fill is fill


def test_a_server_that_fills_its_windows_changes_only_its_ramps_samples(
    quiet_server: Any, demo_cache: Path, demo_models: Any, tmp_path: Path
) -> None:
    """The setting reaches the real pipeline: a seeded request's audio on a server filling its windows is as long,
    differs in the ramp's chunks (1, 1, 2, 2, 3, 3, 3 frames: more left context) and is the same sample for sample
    in the steady chunks after them, which decode the same frames either way (SNAC's noise off, each window alone)."""
    snac = quiet_snac(demo_models.snac_dir, tmp_path)
    filled = start_server(quiet_settings(demo_cache, demo_models, snac, snac_fill_windows="on"))
    body = {"model": "tts-1", "input": "Hello there, one sentence", "voice": "tara", "seed": 3}
    body["response_format"] = "pcm"
    try:
        plain_pcm, filled_pcm = (
            np.frombuffer(httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=60).content, "<i2")
            for server in (quiet_server, filled)
        )
    finally:
        filled.stop()
    ramp = 15 * SAMPLES_PER_FRAME
    assert len(plain_pcm) == len(filled_pcm) >= ramp + 2 * 4 * SAMPLES_PER_FRAME
    assert not np.array_equal(plain_pcm[:ramp], filled_pcm[:ramp])
    steady = slice(ramp + SEAM_SAMPLES, ramp + 2 * 4 * SAMPLES_PER_FRAME - SEAM_SAMPLES)  # two 4-frame chunks
    assert np.array_equal(plain_pcm[steady], filled_pcm[steady])
