"""SNAC's decoder compiled by torch.compile for its CUDA graphs (`--snac-fusion decoder`).

Where SNAC's GPU time goes (an H200, float32 with TF32, batch 128, K=4 windows, random weights;
`bench/snac_decode.py --kernel-profile`), per emitted frame: 73 us eager, of which ATen's generic
depthwise convolution kernel takes 21 us, the other convolutions 13 us, the Snakes (which TorchScript
already fuses into one kernel each on CUDA) 23 us, and the residual and noise additions 16 us. Compiled
whole, inductor fuses each residual addition and noise block with the Snakes around it: 72 -> 48 us
per frame at batch 128 (51.8 at 64), as CUDA graphs both. (Compiling only the Snakes gave 68 us; the
depthwise convolutions written as shifted sums for inductor to fuse gave 56 us, slower than ATen's kernel; one
Triton kernel each, `--snac-depthwise triton` (`snac_depthwise.py`), is an opaque call inductor leaves as it is, so
the kernel applies the Snake after each residual unit's convolution itself.)

A cropped decode (`--snac-crop-decodes`, `snac_crop.py`) runs the decoder's stages one by one, each compiled on its
own: compiled whole with a crop's bounds, the decoder recompiled for every pair of them. A whole decode keeps the
decoder compiled whole, as measured above.

The compiled decoder serves only the CUDA graphs captured at warm-up: every compile happens then
(dynamic shapes; torch.compile specialises batch 1 and some window lengths, ~20 s each on the H200),
and a replay never enters torch.compile again. Windows of other shapes (a stream's last one) decode
eagerly, so no shape met while serving can start a compile that would stall every stream. SNAC's noise
keeps torch's own random generator (``fallback_random``): each replay draws fresh noise, as in eager
mode. The outputs equal the eager decoder's to float rounding (CPU: within 1 int16 step, tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from .snac_crop import CroppedDecoder

SnacFusion = Literal["off", "decoder"]
SNAC_FUSIONS: tuple[SnacFusion, ...] = ("off", "decoder")
COMPILE_OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = {"fallback_random": True}
"""SNAC's noise keeps torch's own random generator."""


class CompiledSnac:
    """A SNAC model with its decoder compiled, whole and stage by stage for cropped decodes (`snac_crop.decode_span_of`
    decodes with it as with the model); the eager model is untouched (weights shared)."""

    def __init__(self, model: Any) -> None:
        self.quantizer = model.quantizer
        self.hop_length = model.hop_length
        self.decoder = torch.compile(model.decoder, dynamic=True, options=COMPILE_OPTIONS)
        # a crop's bounds are Python ints, and a whole decoder compiled with them recompiled for every pair: stage by
        # stage instead, each compiled for any length
        stages = [torch.compile(stage, dynamic=True, options=COMPILE_OPTIONS) for stage in model.decoder.model]
        self.cropped = CroppedDecoder(model.decoder, stages)


def check_fusion(fusion: str) -> SnacFusion:
    """`fusion` if it is one of `SNAC_FUSIONS`, else ValueError."""
    if fusion not in SNAC_FUSIONS:
        raise ValueError(f"unknown SNAC fusion {fusion!r}; one of {', '.join(SNAC_FUSIONS)}")
    return fusion


def graph_model(model: Any, fusion: SnacFusion) -> Any:
    """What CUDA graphs capture for `fusion`: the model itself (off) or its `CompiledSnac` (decoder)."""
    return CompiledSnac(model) if check_fusion(fusion) == "decoder" else model
