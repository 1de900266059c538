"""Cropped SNAC decodes (`codec/snac_crop.py`, `--snac-crop-decodes`): SNAC's later stages compute only where the kept
samples depend on them, and those samples equal the whole decode's (to float rounding). The planner cuts every window
past a stream's start from a decode that starts at its context's end; a window that starts before that keeps its whole
decode; the stitched stream is the uncropped one's, through the real decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oai_server.codec.orpheus import SAMPLES_PER_FRAME
from oai_server.codec.snac_crop import CROP_FROM, CroppedDecoder, decode_span, receptive_plan
from oai_server.codec.snac_model import decode_pcm
from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_window_policy import WindowPolicy, crops_decodes
from oai_server.codec.snac_windows import SeamStitcher, Window, cropped_decode, decode_shape
from oai_server.engines.demo import SNAC_24KHZ_CONFIG, SNAC_DEMO_CONFIG
from oai_server.engines.factory import window_policy
from oai_server.settings import Settings

from .test_snac_graphs import quiet_model

CROPPED = WindowPolicy(fill=True, crop=True)


def latents_of(model: torch.nn.Module, batch: int, frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    codes = [torch.randint(0, 4096, (batch, frames << level), generator=generator) for level in range(3)]
    latents: torch.Tensor = model.quantizer.from_codes(codes)  # type: ignore[operator]
    return latents


@pytest.mark.parametrize("config", [SNAC_DEMO_CONFIG, SNAC_24KHZ_CONFIG], ids=["demo", "real-24khz"])
def test_a_cropped_decode_equals_the_whole_one_where_it_keeps_samples(config: dict[str, object]) -> None:
    model = quiet_model(config)
    latents = latents_of(model, 2, 7, seed=3)
    with torch.inference_mode():
        whole = model.decoder(latents)
        cropped = CroppedDecoder(model.decoder)
        for start, end in [(3856, 12288), (3856, 14336), (0, 14336), (8000, 8001), (0, 100), (14000, 14336)]:
            got = cropped(latents, start, end)
            assert got.shape == (2, 1, end - start)
            assert float((got - whole[..., start:end]).abs().max()) < 1e-5, (start, end)


def test_the_plan_reads_each_stage_from_the_model() -> None:
    """The 24 kHz decoder: two input convolutions, four upsampling blocks (8, 8, 4, 2: 512 samples a code), the
    output convolution; a block's radius is its transposed convolution's kernel plus its residual units' 3 + 9 + 27."""
    plans = receptive_plan(list(quiet_model(SNAC_DEMO_CONFIG).decoder.model))
    assert [p.upsampling for p in plans] == [1, 1, 8, 8, 4, 2, 1, 1, 1]
    assert [p.radius for p in plans] == [3, 0, 16 + 39, 16 + 39, 8 + 39, 4 + 39, 0, 3, 0]
    assert CROP_FROM == 2  # the first block on: the input convolutions' reach covers a window anyway


def test_a_layer_the_crop_cannot_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="strided convolution"):
        receptive_plan([torch.nn.Conv1d(4, 4, kernel_size=4, stride=2)])
    odd = torch.nn.Module()
    odd.inner = torch.nn.Conv1d(4, 4, kernel_size=3)
    with pytest.raises(ValueError, match="cannot plan: Module"):
        receptive_plan([odd])


def test_a_crop_past_what_exists_clips_to_the_window() -> None:
    """The decoder's own edges (zero padding at the window's first and last samples) are kept as they were: a crop
    never reaches past the tensor, so a span at either end decodes exactly as the whole window does."""
    model = quiet_model(SNAC_DEMO_CONFIG)
    stages = list(model.decoder.model)
    latents = latents_of(model, 1, 3, seed=5)
    with torch.inference_mode():
        whole = model.decoder(latents)
        edge = decode_span(stages, receptive_plan(stages), latents, 0, 3 * SAMPLES_PER_FRAME)
    assert torch.equal(edge, whole)


def test_the_planner_cuts_windows_past_the_start_from_decodes_at_the_context_end() -> None:
    planner = CROPPED.planner()
    windows = [w for _ in range(40) for w in planner.add([(0,) * 7])] + planner.finish()
    decodes = {w.decode_shape for w in windows}
    assert (7, 2, 5, 240) in decodes and (7, 0, 7, 0) not in decodes  # steady windows and the last ones: cropped
    assert {w.decode_shape for w in windows[:3]} == {(2, 0, 2, 0), (3, 0, 3, 0), (5, 0, 5, 0)}  # the ramp's start
    for window in windows:
        decoded = window.decode_shape
        start = decoded[1] * SAMPLES_PER_FRAME - decoded[3]
        assert window.cut.start >= 0 and window.cut.stop <= decoded[3] + decoded[2] * SAMPLES_PER_FRAME
        assert window.cut.start + start == window.span.start  # the same samples as the whole decode's span
    whole_ones = {(2, 0, 2, 0), (3, 0, 3, 0), (5, 0, 5, 0), (4, 0, 4, 0)}  # emitting from before a context's end
    assert set(CROPPED.decode_shapes) == whole_ones | {(7, 2, 5, 240), (6, 1, 5, 240)}
    assert all(CROPPED.decode_of(w.shape) == w.decode_shape for w in windows)
    assert WindowPolicy(fill=True).decode_shapes == tuple(dict.fromkeys(map(decode_shape, CROPPED.graph_shapes)))


def test_a_window_emitting_before_the_crop_keeps_its_whole_decode() -> None:
    assert cropped_decode((7, 1, 5, 240), context=2, chunk=4, lookahead=1, seam=240) is None
    assert cropped_decode((7, 2, 4, 240), context=2, chunk=4, lookahead=1, seam=240) == (7, 2, 5, 240)
    assert cropped_decode((5, 2, 2, 240), context=2, chunk=4, lookahead=1, seam=240) is None  # nothing to crop
    window = Window(((0,) * 7,) * 7, 1, 5, 240)
    assert window.decode_shape == (7, 0, 7, 0) and window.cut == window.span


def test_the_stream_streams_the_same_audio_cropped_or_not() -> None:
    """Through the real decoder, one window at a time and stitched as the pipeline does: the same samples."""
    model = quiet_model(SNAC_DEMO_CONFIG)
    decoder = SnacDecoder(model, "cpu", max_batch=8)
    rng = np.random.default_rng(7)
    codes = [tuple(int(c) for c in frame) for frame in rng.integers(0, 4096, (23, 7))]
    try:
        streams = []
        for policy in (WindowPolicy(fill=True), CROPPED):
            planner, stitcher = policy.planner(), SeamStitcher()
            windows = [w for code in codes for w in planner.add([code])] + planner.finish()
            pcm = b"".join(stitcher.add(decoder.decode_sync([w])[0], w.lead) for w in windows) + stitcher.finish()
            streams.append(np.frombuffer(pcm, "<i2").astype(np.int32))
    finally:
        decoder.close()
    plain, cropped = streams
    assert len(plain) == len(cropped) == 23 * SAMPLES_PER_FRAME
    assert np.abs(plain - cropped).max() <= 1


def test_decode_pcm_of_a_cropped_shape_is_the_whole_decodes_span() -> None:
    model = quiet_model(SNAC_DEMO_CONFIG)
    generator = torch.Generator().manual_seed(9)
    codes = [torch.randint(0, 4096, (3, 7 << level), generator=generator) for level in range(3)]
    with torch.inference_mode():
        whole = decode_pcm(model, codes, (7, 0, 7, 0)).numpy().astype(np.int32)
        cropped = decode_pcm(model, codes, (7, 2, 5, 240)).numpy().astype(np.int32)
    assert cropped.shape == (3, 240 + 5 * SAMPLES_PER_FRAME)
    assert np.abs(cropped - whole[:, 2 * SAMPLES_PER_FRAME - 240 :]).max() <= 1


def test_the_setting_crops_on_the_cpu_by_default_and_reaches_the_policy() -> None:
    assert crops_decodes("auto", "cpu") and not crops_decodes("auto", "cuda")
    assert crops_decodes("on", "cuda") and not crops_decodes("off", "cpu")
    assert window_policy(Settings(asr=False, snac_device="cpu")).crop
    assert not window_policy(Settings(asr=False, snac_device="cpu", snac_crop_decodes="off")).crop
