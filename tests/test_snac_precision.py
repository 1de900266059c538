"""The SNAC decoder's precision setting: half precision decodes close to float32, a half precision that does not is
refused at load, and the int16 scaling is exact."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from oai_server.codec.orpheus import SAMPLES_PER_FRAME
from oai_server.codec.snac_model import (
    HALF_PRECISION_MIN_SNR_DB,
    checked_precision,
    decode_pcm,
    load_snac,
    precision_snr_db,
    resolve_snac_dtype,
)
from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_windows import SEAM_SAMPLES, Window
from oai_server.engines.demo import DemoModels

from .helpers import quiet_snac


def test_auto_precision_is_float32() -> None:
    # float16 is faster on the H200's graphs (session 35) but not yet measured through the server: opt-in
    assert resolve_snac_dtype("auto", "cuda") == torch.float32
    assert resolve_snac_dtype("auto", "cpu") == torch.float32
    assert resolve_snac_dtype("float16", "cuda") == torch.float16
    assert resolve_snac_dtype("bfloat16", "cpu") == torch.bfloat16


def test_scaling_to_int16_is_exact_for_half_outputs() -> None:
    class FullScale(torch.nn.Module):
        def decode(self, codes: list[torch.Tensor]) -> torch.Tensor:
            ramp = torch.linspace(-1.0, 1.0, 3 * SAMPLES_PER_FRAME, dtype=torch.float32)
            return ramp.to(torch.float16).reshape(1, 1, -1)

    pcm = decode_pcm(FullScale(), [torch.zeros(1, 3, dtype=torch.long)], (3, 0, 3, 0))
    expected = (torch.linspace(-1.0, 1.0, 3 * SAMPLES_PER_FRAME).half().float() * 32767).round().to(torch.int16)
    assert torch.equal(pcm[0], expected)  # scaled in float32, not in float16 (which rounds to 16s there)
    assert pcm.max().item() == 32767 and pcm.min().item() == -32767


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_decode_stays_close_to_float32(
    demo_models: DemoModels, tmp_path_factory: pytest.TempPathFactory, dtype: torch.dtype
) -> None:
    quiet = str(quiet_snac(demo_models.snac_dir, tmp_path_factory.mktemp("quiet")))
    rng = np.random.default_rng(5)
    frames = [tuple(int(c) for c in rng.integers(0, 4096, 7)) for _ in range(6)]
    window = Window(tuple(frames), 2, 2, SEAM_SAMPLES)
    outputs = {}
    float32 = load_snac(quiet, "cpu")
    for name, model in (("fp32", float32), ("half", float32.to(dtype))):  # the cast itself, past the load's check
        decoder = SnacDecoder(model, "cpu", max_batch=4)
        try:
            outputs[name] = np.frombuffer(decoder.decode_sync([window])[0], "<i2").astype(np.float64)
        finally:
            decoder.close()
    reference, half = outputs["fp32"], outputs["half"]
    assert len(half) == len(reference) == SEAM_SAMPLES + 2 * SAMPLES_PER_FRAME
    snr = 10 * np.log10(np.sum(reference**2) / max(np.sum((reference - half) ** 2), 1e-9))
    assert snr >= (50 if dtype == torch.float16 else 30), snr


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def test_float16_passes_the_load_check_and_decodes_in_float16(demo_models: DemoModels) -> None:
    model = load_snac(str(demo_models.snac_dir), "cpu", torch.float16)
    assert _dtype(model) == torch.float16
    assert precision_snr_db(load_snac(str(demo_models.snac_dir), "cpu"), torch.float16) >= HALF_PRECISION_MIN_SNR_DB


def test_a_half_precision_below_the_bar_keeps_float32_with_a_warning(
    demo_models: DemoModels, caplog: pytest.LogCaptureFixture
) -> None:
    float32 = load_snac(str(demo_models.snac_dir), "cpu")
    snr = precision_snr_db(float32, torch.float16)
    with caplog.at_level(logging.WARNING, logger="oai_server.codec.snac_model"):
        kept = checked_precision(float32, torch.float16, min_snr_db=snr + 1.0)
    assert kept is float32 and _dtype(kept) == torch.float32
    assert "keeping float32" in caplog.text and "float16" in caplog.text
    with caplog.at_level(logging.WARNING, logger="oai_server.codec.snac_model"):
        assert _dtype(checked_precision(float32, torch.float16, min_snr_db=snr - 1.0)) == torch.float16


def test_the_check_measures_with_noise_off_and_leaves_the_noise_in_place(demo_models: DemoModels) -> None:
    model = load_snac(str(demo_models.snac_dir), "cpu")  # the demo's SNAC has its NoiseBlocks on
    noise_blocks = [name for name, module in model.named_modules() if type(module).__name__ == "NoiseBlock"]
    assert noise_blocks
    assert precision_snr_db(model, torch.float32) == math.inf  # equal codes decode equal: no fresh noise in it
    assert noise_blocks == [name for name, module in model.named_modules() if type(module).__name__ == "NoiseBlock"]


def test_a_cast_that_decodes_non_finite_samples_fails_the_check() -> None:
    class Overflowing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = torch.nn.Parameter(torch.tensor(1.0e5))

        def decode(self, codes: list[torch.Tensor]) -> torch.Tensor:
            wave = torch.sin(codes[0].to(self.gain.dtype)).reshape(1, 1, -1)
            return wave * self.gain / 1.0e5  # float16 holds at most 65 504: its gain is inf, its samples inf or NaN

    model = Overflowing()
    assert math.isnan(precision_snr_db(model, torch.float16))
    assert checked_precision(model, torch.float16) is model
