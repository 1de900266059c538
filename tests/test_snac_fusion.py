"""`--snac-fusion` (`codec/snac_fusion.py`): SNAC's decoder with its Snakes, or all of it, compiled by
torch.compile decodes what the published eager decoder decodes (noise off), at every window shape and batch
size a stream uses, and the settings carry the choice to the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from oai_server.codec.snac_fusion import SNAC_FUSIONS, FusedSnake, fuse_snac
from oai_server.codec.snac_model import decode_pcm, load_snac
from oai_server.codec.snac_windows import WindowPolicy
from oai_server.engines.demo import SNAC_DEMO_CONFIG, write_random_snac
from oai_server.settings import Settings


@pytest.fixture(scope="module")
def quiet_snac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-sized SNAC without its noise blocks, so two decodes of the same codes are equal."""
    out = tmp_path_factory.mktemp("snac")
    torch.manual_seed(0)
    write_random_snac(out, {**SNAC_DEMO_CONFIG, "noise": False})
    return out


def codes_of(batch: int, frames: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * 100 + frames)
    return [torch.randint(0, 4096, (batch, frames << level), generator=generator) for level in range(3)]


@pytest.mark.parametrize("fusion", ["snake", "decoder"])
def test_a_fused_decoder_decodes_what_the_eager_one_does(quiet_snac: Path, fusion: str) -> None:
    eager = load_snac(str(quiet_snac), "cpu")
    fused = load_snac(str(quiet_snac), "cpu", fusion=fusion)  # type: ignore[arg-type]
    snakes = [type(m).__name__ for m in fused.modules() if type(m).__name__ in ("Snake1d", "FusedSnake")]
    if fusion == "snake":
        assert snakes and set(snakes) == {"FusedSnake"}  # every Snake replaced
    else:
        assert type(fused.decoder).__name__ == "OptimizedModule"
    shapes = [*WindowPolicy().stream_shapes, WindowPolicy().steady_shape]
    with torch.inference_mode():
        for batch in (1, 3):  # batch 1 is a shape torch.compile specialises
            for shape in shapes:
                codes = codes_of(batch, shape[0])
                want = decode_pcm(eager, codes, shape).numpy().astype(np.int32)
                got = decode_pcm(fused, codes, shape).numpy().astype(np.int32)
                assert got.shape == want.shape
                assert np.abs(got - want).max() <= 1, (batch, shape)


def test_off_leaves_the_model_as_published_and_an_unknown_fusion_is_an_error(quiet_snac: Path) -> None:
    model = load_snac(str(quiet_snac), "cpu")
    assert fuse_snac(model, "off") is model
    assert not any(isinstance(m, FusedSnake) for m in model.modules())
    with pytest.raises(ValueError, match="unknown SNAC fusion 'fast'"):
        fuse_snac(model, "fast")  # type: ignore[arg-type]


def test_the_setting_takes_each_fusion_and_defaults_to_off() -> None:
    assert Settings().snac_fusion == "off"
    for fusion in SNAC_FUSIONS:
        assert Settings(snac_fusion=fusion).snac_fusion == fusion
