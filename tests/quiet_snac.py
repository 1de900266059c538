"""A copy of a SNAC model without its decode noise, for tests that compare audio bit for bit."""

from __future__ import annotations

import json
from pathlib import Path


def quiet_snac(source: Path, target: Path) -> Path:
    """A copy of a SNAC model whose NoiseBlocks add nothing (their 1x1 convolution's weight-norm gain is 0)."""
    import torch
    from snac import SNAC
    from snac.layers import NoiseBlock

    config = json.loads((source / "config.json").read_text())
    names = [name for name, module in SNAC(**config).named_modules() if isinstance(module, NoiseBlock)]
    state = torch.load(source / "pytorch_model.bin", map_location="cpu")
    for name in names:
        gain = f"{name}.linear.parametrizations.weight.original0"
        state[gain] = torch.zeros_like(state[gain])
    torch.save(state, target / "pytorch_model.bin")
    (target / "config.json").write_text(json.dumps(config))
    return target
