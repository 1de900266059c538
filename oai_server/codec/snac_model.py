"""The SNAC 24 kHz decoder model: loading (weight norm folded), device choice, one batched decode."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from .orpheus import SAMPLES_PER_FRAME, frames_to_levels
from .snac_crop import decode_span_of
from .snac_depthwise import SnacDepthwise, resolve_snac_depthwise, use_depthwise
from .snac_windows import WindowShape

logger = logging.getLogger(__name__)

SNAC_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

HALF_PRECISION_MIN_SNR_DB = 50.0
"""A half-precision SNAC is kept only if it decodes a test utterance within this SNR of float32 (noise off): the
fidelity bar the streamed decode keeps against a whole one. On the H200, random weights, the compiled decoder's
graphs: float16 65.7 dB, bfloat16 47.5 dB (`bench/results/h200_s35_random_weights/snac_precision/`)."""

PRECISION_CHECK_FRAMES = 48
"""Frames (4.1 s) of random codes the precision check decodes."""


def resolve_snac_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` -> float32 everywhere.

    With the compiled decoder's CUDA graphs (`--snac-fusion decoder`) float16 takes 23-30 % less GPU time than
    float32 on the H200 (1.57 / 2.70 / 9.30 against 2.03 / 3.70 / 13.25 ms at 8 / 16 / 64 steady windows) at
    65.7 dB from it (session 35, `bench/snac_decode.py`). Eagerly, before graphs, it had halved the pipeline's
    throughput (session 4, `bench/results/h200_baselines_s4_*`), and the server with it is not yet measured, so
    half precision stays opt-in (`--snac-dtype float16`), checked at load (`load_snac`).
    """
    del device  # kept for a per-device choice once half precision pays on the GPU
    if dtype == "auto":
        return torch.float32
    return SNAC_DTYPES[dtype]


def load_snac(
    name_or_path: str, device: str, dtype: torch.dtype = torch.float32, depthwise: SnacDepthwise = "auto"
) -> torch.nn.Module:
    """Load a SNAC model from a local dir (config.json + pytorch_model.bin) or a Hub id, ready for
    inference: eval mode, weight norm folded into the weights (the same outputs, without recomputing
    every weight on every decode), in `dtype`, its depthwise convolutions computed by `depthwise`
    (`snac_depthwise.resolve_snac_depthwise` on `device`)."""
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
    checked = checked_precision(model.to(device=device).eval(), dtype)
    return use_depthwise(checked, resolve_snac_depthwise(depthwise, device))


def checked_precision(
    model: torch.nn.Module, dtype: torch.dtype, min_snr_db: float = HALF_PRECISION_MIN_SNR_DB
) -> torch.nn.Module:
    """`model` (float32) in `dtype` if that decodes within `min_snr_db` of float32, else `model` itself, with a
    warning: weights whose activations overflow float16 or lose too much in bfloat16 keep float32 instead of
    streaming degraded audio."""
    if dtype == torch.float32:
        return model
    snr, name = precision_snr_db(model, dtype), str(dtype).removeprefix("torch.")
    if not snr >= min_snr_db:  # NaN (an overflow) fails too
        logger.warning("SNAC in %s decodes %.1f dB from float32, below %.0f dB: keeping float32", name, snr, min_snr_db)
        return model
    logger.info("SNAC in %s: %.1f dB from float32", name, snr)
    return model.to(dtype)


def precision_snr_db(model: Any, dtype: torch.dtype, frames: int = PRECISION_CHECK_FRAMES) -> float:
    """SNR in dB of `model` cast to `dtype` against `model` (float32) decoding one utterance of random codes whole,
    with SNAC's noise off (NaN when the cast decodes non-finite samples)."""
    device = next(model.parameters()).device
    codes = [
        torch.from_numpy(level).to(device)
        for level in frames_to_levels(np.random.default_rng(0).integers(0, 4096, size=(1, frames, 7)))
    ]
    with _noise_off(model), torch.inference_mode():
        reference = model.decode(codes).double()
        cast = copy.deepcopy(model).to(dtype)
        decoded = cast.decode(codes).double()
    if not bool(torch.isfinite(decoded).all()):
        return math.nan
    error = float(((decoded - reference) ** 2).sum())
    return math.inf if error == 0.0 else 10.0 * math.log10(float((reference**2).sum()) / error)


def remove_noise_blocks(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """Replace SNAC's NoiseBlocks by identities, so equal codes decode equal; (parent, name, block) of each, to put
    them back."""
    removed = [
        (parent, name, child)
        for parent in list(model.modules())
        for name, child in parent.named_children()
        if type(child).__name__ == "NoiseBlock"
    ]
    for parent, name, _ in removed:
        setattr(parent, name, torch.nn.Identity())
    return removed


@contextmanager
def _noise_off(model: torch.nn.Module) -> Iterator[None]:
    """SNAC's NoiseBlocks removed for the block (`remove_noise_blocks`), then put back."""
    removed = remove_noise_blocks(model)
    try:
        yield
    finally:
        for parent, name, child in removed:
            setattr(parent, name, child)


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
    audio = decode_span_of(model, codes, start, (emit + count) * SAMPLES_PER_FRAME)[:, 0]  # only what is kept
    # Scale in float32: float16 cannot hold 32767 * x to the nearest integer near full scale.
    return (audio.float().clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16)
