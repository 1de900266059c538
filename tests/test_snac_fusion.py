"""`--snac-fusion decoder` (`codec/snac_fusion.py`): the CUDA graphs capture SNAC's decoder compiled by
torch.compile. Compiled, it decodes what the published eager decoder decodes (noise off) at every window shape a
stream uses and at batch 1 (a shape torch.compile specialises); the eager model it wraps is left as it was, so
windows decoded outside the graphs never compile; the choice reaches the decoders and is checked there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from oai_server.codec.snac_fusion import SNAC_FUSIONS, CompiledSnac, graph_model
from oai_server.codec.snac_model import decode_pcm, load_snac
from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.settings import Settings


def codes_of(batch: int, frames: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * 100 + frames)
    return [torch.randint(0, 4096, (batch, frames << level), generator=generator) for level in range(3)]


def test_the_compiled_decoder_decodes_what_the_eager_one_does(noiseless_snac: Path) -> None:
    eager = load_snac(str(noiseless_snac), "cpu")
    compiled = graph_model(eager, "decoder")
    assert isinstance(compiled, CompiledSnac) and type(compiled.decoder).__name__ == "OptimizedModule"
    assert {type(run).__name__ for run in compiled.cropped.runs} == {"OptimizedModule"}  # cropped: stage by stage
    assert type(eager.decoder).__name__ == "Decoder"  # the eager model is not touched
    with torch.inference_mode():
        for batch in (1, 3):
            for shape in WindowPolicy().stream_shapes:
                codes = codes_of(batch, shape[0])
                want = decode_pcm(eager, codes, shape).numpy().astype(np.int32)
                got = decode_pcm(compiled, codes, shape).numpy().astype(np.int32)
                assert got.shape == want.shape == (batch, shape[3] + 2048 * shape[2])  # the seam, then the chunk
                assert np.abs(got - want).max() <= 1, (batch, shape)
            for shape in WindowPolicy(fill=True, crop=True).decode_shapes:  # whole decodes and cropped ones
                codes = codes_of(batch, shape[0])
                want = decode_pcm(eager, codes, shape).numpy().astype(np.int32)
                got = decode_pcm(compiled, codes, shape).numpy().astype(np.int32)
                assert got.shape == want.shape and np.abs(got - want).max() <= 1, (batch, shape)


def test_off_captures_the_model_itself_and_an_unknown_fusion_is_refused(noiseless_snac: Path) -> None:
    model = load_snac(str(noiseless_snac), "cpu")
    assert graph_model(model, "off") is model
    with pytest.raises(ValueError, match="unknown SNAC fusion 'snake'"):
        graph_model(model, "snake")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown SNAC fusion 'fast'"):
        SnacDecoder(model, "cpu", fusion="fast")  # type: ignore[arg-type]
    decoder = SnacDecoder(model, "cpu", fusion="decoder")
    try:
        assert decoder.fusion == "decoder" and decoder.model is model
    finally:
        decoder.close()


def test_the_setting_takes_each_fusion_and_defaults_to_off() -> None:
    assert Settings().snac_fusion == "off"
    for fusion in SNAC_FUSIONS:
        assert Settings(snac_fusion=fusion).snac_fusion == fusion
