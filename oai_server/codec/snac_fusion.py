"""Fused SNAC decoder kernels (`--snac-fusion`), through torch.compile.

Where SNAC's GPU time goes (H200, float32 with TF32, batch 128, K=4 windows; `bench/snac_decode.py
--kernel-profile`, random weights; per emitted frame): 73 us eager, of which ATen's generic depthwise
convolution kernel takes 21 us, the other convolutions 13 us, TorchScript's already-fused Snakes 23 us
and the residual and noise additions 16 us. So:

* ``snake``: each Snake one compiled kernel. TorchScript fuses them already on CUDA: 72 -> 68 us.
* ``decoder``: the whole decoder compiled, so the residual additions and noise blocks fuse with the
  Snakes around them (72 -> 48 us), and the depthwise convolutions become shifted sums
  (`ShiftSumDepthwiseConv1d`) that fuse with them too. SNAC's noise keeps torch's own random generator
  (``fallback_random``), so a CUDA graph draws fresh noise on every replay as in eager mode.
* ``off``: SNAC as published (eager kernels; CUDA graphs still apply).

Both compile with dynamic shapes, once per process (and again for batch 1 and for window lengths
outside the first compile's range); the compiles happen on the first decodes, which warm-up and
graph capture make before any stream. The outputs equal the eager decoder's to float rounding: within
1 int16 step on the CPU (tests, noise off), 16 steps on the H200, where TF32 convolutions are chosen
per layout.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

SnacFusion = Literal["off", "snake", "decoder"]
SNAC_FUSIONS: tuple[SnacFusion, ...] = ("off", "snake", "decoder")


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """SNAC's Snake activation on [B, C, T] with alpha [1, C, 1] (the same expression as `snac.layers.snake`)."""
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


class FusedSnake(torch.nn.Module):
    """A Snake1d whose activation runs as one compiled kernel (shared by every instance)."""

    def __init__(self, alpha: torch.Tensor, kernel: Any) -> None:
        super().__init__()
        # a buffer, not a Parameter: torch.compile keeps a Parameter's shape static, which would compile
        # the kernel again for each channel count (64 ... 1024) up to its recompile limit
        self.register_buffer("alpha", alpha.detach().clone())
        self._kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Snake(x), as `snac.layers.Snake1d` computes it."""
        out: torch.Tensor = self._kernel(x, self.alpha)
        return out


class ShiftSumDepthwiseConv1d(torch.nn.Module):
    """A depthwise Conv1d (one filter per channel, stride 1, zero padding) as a sum of shifted, weighted
    copies of its input.

    Eagerly this is slower than the convolution; compiled, inductor makes one kernel of it and the
    Snakes on either side. ATen runs SNAC's fp32 depthwise convolutions with its generic depthwise
    kernel, which took 45 % of the compiled decoder's GPU time on an H200 (`bench/snac_decode.py
    --kernel-profile`), for what is a memory-bound stencil.
    """

    def __init__(self, conv: torch.nn.Conv1d) -> None:
        super().__init__()
        self.register_buffer("weight", conv.weight.detach()[:, 0, :].clone())  # [C, K]
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.to(conv.weight.dtype).view(1, -1, 1))
        self.dilation = int(conv.dilation[0])
        self.padding = int(conv.padding[0])  # type: ignore[index]
        self.kernel_size = int(conv.kernel_size[0])

    @staticmethod
    def replaces(module: torch.nn.Module) -> bool:
        """Whether `module` is a convolution this class computes exactly."""
        return (
            type(module) is torch.nn.Conv1d
            and module.groups > 1
            and module.groups == module.in_channels == module.out_channels
            and module.stride == (1,)
            and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of x [B, C, T]."""
        length = x.shape[-1] + 2 * self.padding - self.dilation * (self.kernel_size - 1)
        padded = torch.nn.functional.pad(x, (self.padding, self.padding))
        out = self.bias
        for tap in range(self.kernel_size):
            start = tap * self.dilation
            out = out + padded[..., start : start + length] * self.weight[None, :, tap, None]
        return out


def _swap(model: torch.nn.Module, matches: Any, make: Any) -> None:
    """Replace every submodule for which `matches(module)` holds by `make(module)`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if matches(child):
                setattr(parent, name, make(child))


def fuse_snac(model: Any, fusion: SnacFusion) -> Any:
    """Apply `fusion` to a loaded SNAC model in place (see the module docstring); returns it."""
    if fusion == "off":
        return model
    if fusion == "snake":
        kernel = torch.compile(snake, dynamic=True, fullgraph=True)
        _swap(model, lambda m: type(m).__name__ == "Snake1d", lambda m: FusedSnake(m.alpha, kernel))
        return model
    if fusion == "decoder":
        _swap(model.decoder, ShiftSumDepthwiseConv1d.replaces, ShiftSumDepthwiseConv1d)
        model.decoder = torch.compile(model.decoder, dynamic=True, options={"fallback_random": True})
        return model
    raise ValueError(f"unknown SNAC fusion {fusion!r}; one of {', '.join(SNAC_FUSIONS)}")
