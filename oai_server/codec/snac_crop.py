"""SNAC decodes that compute only the samples a window keeps (`--snac-crop-decodes`): the same PCM, less GPU work.

A window decodes C + K + L frames and keeps K of them (and the seam before them): with the defaults 7 frames
decoded, 4 kept. SNAC's decoder is convolutions, upsampling transposed convolutions and pointwise layers, each of
which needs only a bounded neighbourhood of its input (its receptive radius). The decoder's early stages run at the
codes' low rates and are cheap, but their radii are wide (most of SNAC's ~2.3 frames of receptive field); its later
stages run at 3, 12 and 24 kHz over few channels and do most of the work, and their radii are narrow (39 samples of
each stage's output for its three residual units, 16 for an upsampling by 8). So `decode_span` runs the stages in
order and, before each stage from `CROP_FROM` on, cuts its input to what the kept samples depend on through the
stages after it, with a sample more each side: every kept sample is computed from exactly the inputs it had in the
whole decode, and only those (equal to float rounding: the same PCM to within one int16 step).

The kept samples are `[start, end)` of the whole decode's output. `receptive_plan` reads every stage's upsampling
factor and radius from the model itself, so another SNAC variant is planned from its own layers. The planner cuts
every window of one length past a stream's start from one such decode (`snac_windows.cropped_decode`): from 240 samples
before the context's end to the window's end, since a stream's last windows run to it; for the steady 7-frame window
that is 73 % of the samples, and on 2 CPU cores (batch 8, the real 24 kHz architecture, random weights) 0.72 of the
whole decode's time (`bench/snac_decode.py --crops off,on`, `bench/results/cpu2core_snac_crop_s40.json`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

CROP_FROM = 2
"""Stages (of `decoder.model`) before this one run on the whole window: SNAC's input convolutions at the codes'
rate, whose radius spans the window anyway."""


@dataclass(frozen=True)
class StagePlan:
    """One stage of the decoder: how many output samples it makes per input sample, and its receptive radius in its
    own output's samples."""

    upsampling: int
    radius: int


def _stage_plan(layer: torch.nn.Module) -> StagePlan:
    """A layer's upsampling and radius: convolutions by their kernel and dilation, transposed ones by their stride
    and kernel (an output depends on the inputs within a kernel of it, counted in output samples), SNAC's blocks
    and residual units through their parts, everything else pointwise."""
    if isinstance(layer, torch.nn.ConvTranspose1d):
        return StagePlan(layer.stride[0], layer.kernel_size[0])
    if isinstance(layer, torch.nn.Conv1d):
        if layer.stride[0] != 1:
            raise ValueError(f"a strided convolution in SNAC's decoder cannot be cropped: {layer}")
        return StagePlan(1, layer.dilation[0] * (layer.kernel_size[0] - 1) // 2)
    parts = getattr(layer, "block", None)
    if isinstance(parts, torch.nn.Sequential):
        upsampling, radius = 1, 0
        for part in parts:
            plan = _stage_plan(part)
            upsampling *= plan.upsampling
            radius = radius * plan.upsampling + plan.radius
        return StagePlan(upsampling, radius)
    for child in layer.modules():  # anything else must be pointwise, as SNAC's noise blocks (a 1x1 convolution)
        if isinstance(child, torch.nn.Conv1d | torch.nn.ConvTranspose1d) and (
            child.kernel_size[0] != 1 or child.stride[0] != 1
        ):
            raise ValueError(f"a layer of SNAC's decoder the crop cannot plan: {type(layer).__name__}")
    return StagePlan(1, 0)


def receptive_plan(stages: Sequence[torch.nn.Module]) -> list[StagePlan]:
    """Each stage's `StagePlan` (ValueError for a layer whose neighbourhood cannot be bounded)."""
    return [_stage_plan(stage) for stage in stages]


def decode_span(
    stages: Sequence[torch.nn.Module], plans: Sequence[StagePlan], latents: torch.Tensor, start: int, end: int
) -> torch.Tensor:
    """The decoder's output samples ``[start, end)`` (``[B, 1, end - start]``) of `latents` ``[B, D, T]``, computing
    each stage from `CROP_FROM` on only where those samples depend on it."""
    count = len(stages)
    to_output = [1] * (count + 1)  # output samples per sample of stage j's input
    reach = [0] * (count + 1)  # receptive radius of stages j.. in output samples
    for j in range(count - 1, -1, -1):
        to_output[j] = to_output[j + 1] * plans[j].upsampling
        reach[j] = reach[j + 1] + plans[j].radius * to_output[j + 1]
    x, offset = latents, 0  # offset: the index, in stage j's input samples, of x[..., 0]
    for j, stage in enumerate(stages):
        if j >= CROP_FROM:
            low = max(offset, (start - reach[j]) // to_output[j] - 1)
            high = min(offset + x.shape[-1], -(-(end + reach[j]) // to_output[j]) + 1)
            x = x[..., low - offset : high - offset]
            offset = low
        x = stage(x)
        offset *= plans[j].upsampling
    return x[..., start - offset : end - offset]


class CroppedDecoder(torch.nn.Module):
    """SNAC's decoder as `decode_span` runs it: ``forward(latents, start, end)`` -> samples ``[start, end)``."""

    def __init__(self, decoder: Any, runs: Sequence[Any] | None = None) -> None:
        super().__init__()
        self.stages = torch.nn.ModuleList(decoder.model)
        self.plans = receptive_plan(list(self.stages))
        self.runs = list(runs) if runs is not None else list(self.stages)
        """What runs each stage: the stage itself, or its compiled form (`snac_fusion.CompiledSnac`)."""

    def forward(self, latents: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """The output samples ``[start, end)`` of `latents`."""
        return decode_span(self.runs, self.plans, latents, start, end)


def decode_span_of(model: Any, codes: Sequence[torch.Tensor], start: int, end: int) -> torch.Tensor:
    """Samples ``[start, end)`` (``[B, 1, end - start]``) of the codes' whole decode by `model`: a SNAC model or its
    `snac_fusion.CompiledSnac` (the whole span through its ``decoder``, a part through its ``cropped`` decoder, or one
    built here), or anything else with a ``decode`` (a stand-in in a test or a bench: its whole decode, cut)."""
    if not hasattr(model, "decoder"):
        whole: torch.Tensor = model.decode(list(codes))
        return whole[..., start:end]
    latents = model.quantizer.from_codes(list(codes))
    if start == 0 and end == latents.shape[-1] * int(model.hop_length):  # nothing to crop: the decoder as it is
        audio: torch.Tensor = model.decoder(latents)
        return audio
    cropped = getattr(model, "cropped", None) or CroppedDecoder(model.decoder)
    span: torch.Tensor = cropped(latents, start, end)
    return span
