"""The SNAC 24 kHz decoder model: loading (weight norm folded), device choice, one batched decode."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .orpheus import SAMPLES_PER_FRAME
from .snac_windows import WindowShape

SNAC_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_snac_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` -> float32 everywhere.

    float16 decodes within 66 dB of float32 (CPU, random weights), but on the H200 it halved the
    pipeline's throughput at 128 streams (7,746 vs 11,376 audio tokens/s in `bench/baselines.py`,
    `bench/results/h200_baselines_s4_*`), so half precision is opt-in until that is understood.
    """
    del device  # kept for a per-device choice once half precision pays on the GPU
    if dtype == "auto":
        return torch.float32
    return SNAC_DTYPES[dtype]


def load_snac(name_or_path: str, device: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load a SNAC model from a local dir (config.json + pytorch_model.bin) or a Hub id, ready for
    inference: eval mode, weight norm folded into the weights (the same outputs, without recomputing
    every weight on every decode), in `dtype`."""
    from snac import SNAC

    from ..errors import ModelLoadError

    try:
        model = SNAC.from_pretrained(str(name_or_path))
    except Exception as exc:  # hub errors come in many types
        raise ModelLoadError(
            f"Could not load the SNAC decoder '{name_or_path}': {exc}. Check network access to the "
            "Hugging Face Hub (set HF_TOKEN if needed) or pass a local path, or run with --demo "
            "for the offline demo profile."
        ) from exc
    fold_weight_norm(model)
    return model.to(device=device, dtype=dtype).eval()


def fold_weight_norm(model: torch.nn.Module) -> None:
    """Replace every weight-norm parametrization by the plain weight it computes."""
    from torch.nn.utils import parametrize

    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def decode_pcm(model: Any, codes: Sequence[torch.Tensor], shape: WindowShape) -> torch.Tensor:
    """SNAC decode of a batch of windows of one shape -> int16 [B, lead + 2048 * count]: the samples of the emitted
    frames, after the `lead` samples before them (the previous chunk's last ones, decoded again)."""
    _, emit, count, lead = shape
    start = emit * SAMPLES_PER_FRAME - lead
    audio = model.decode(list(codes))[:, 0, start : (emit + count) * SAMPLES_PER_FRAME]
    # Scale in float32: float16 cannot hold 32767 * x to the nearest integer near full scale.
    return (audio.float().clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16)
