"""Fused SNAC decoder kernels (`--snac-fusion`), through torch.compile.

SNAC's decoder spends much of its GPU time outside its convolutions: every Snake activation,
``x + 1/alpha * sin(alpha * x)^2``, runs eagerly as five elementwise kernels over the whole activation
(27 Snakes, most at the two widest stages: 2048 samples x 64-128 channels a frame), each reading and
writing it once. A CUDA graph removes the launches, not the memory traffic.

* ``snake``: each Snake is one compiled kernel (one read, one write), the rest eager as before.
* ``decoder``: the whole decoder compiled, so the residual additions and noise blocks fuse with the
  Snakes around them too; SNAC's noise keeps torch's own random generator (``fallback_random``), so a
  CUDA graph draws fresh noise on every replay as in eager mode.
* ``off``: SNAC as published (eager kernels; CUDA graphs still apply).

Both compile with dynamic shapes, once per process (plus once for batch 1, which torch.compile
specialises); the compile happens on the first decode, which warm-up and graph capture make before
any stream. The outputs equal the eager decoder's to float rounding (tests, noise off).
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


def fuse_snac(model: Any, fusion: SnacFusion) -> Any:
    """Apply `fusion` to a loaded SNAC model in place (see the module docstring); returns it."""
    if fusion == "off":
        return model
    if fusion == "snake":
        kernel = torch.compile(snake, dynamic=True, fullgraph=True)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child).__name__ == "Snake1d":
                    setattr(parent, name, FusedSnake(child.alpha, kernel))
        return model
    if fusion == "decoder":
        compiled = torch.compile(model.decoder, dynamic=True, options={"fallback_random": True})
        model.decoder = compiled
        return model
    raise ValueError(f"unknown SNAC fusion {fusion!r}; one of {', '.join(SNAC_FUSIONS)}")
