"""The SNAC decoder's precision setting: half precision decodes close to float32, and the int16 scaling is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oai_server.codec.orpheus import SAMPLES_PER_FRAME
from oai_server.codec.snac_model import decode_pcm, load_snac, resolve_snac_dtype
from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_windows import SEAM_SAMPLES, Window
from oai_server.engines.demo import DemoModels

from .helpers import quiet_snac


def test_auto_precision_is_float32() -> None:
    # float16 halved the pipeline's throughput on the H200 (bench/results/h200_baselines_s4_*)
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
    for name, precision in (("fp32", torch.float32), ("half", dtype)):
        decoder = SnacDecoder(load_snac(quiet, "cpu", precision), "cpu", max_batch=4)
        try:
            outputs[name] = np.frombuffer(decoder.decode_sync([window])[0], "<i2").astype(np.float64)
        finally:
            decoder.close()
    reference, half = outputs["fp32"], outputs["half"]
    assert len(half) == len(reference) == SEAM_SAMPLES + 2 * SAMPLES_PER_FRAME
    snr = 10 * np.log10(np.sum(reference**2) / max(np.sum((reference - half) ** 2), 1e-9))
    assert snr >= (50 if dtype == torch.float16 else 30), snr
