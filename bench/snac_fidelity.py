"""SNAC audio fidelity in dB: precision variants against fp32, and our streamed decode against a whole one.

Both with SNAC's noise off (its NoiseBlocks add fresh noise to every decode, which would swamp
any comparison), on one utterance of random codes (`frames` frames, seeded):

* `precision_snr`: the whole utterance decoded with the model cast to bf16 / fp16 against the fp32
  decode. ``snr_db`` compares the float outputs; ``snr_db_pcm16`` the int16 PCM that `decode_pcm`
  makes of them (as the server does, scaling in the model's dtype), so it also shows what
  converting in half precision costs.
* `streamed_snr`: the utterance cut into the windows `WindowPlanner` plans (context C, lookahead L,
  K frames per decode), decoded in batches of one window shape by the server's
  `SnacDecoder.decode_sync` (through the CUDA graphs the server captures, on CUDA), stitched, as
  int16 PCM against the whole decode's (fp32). Target: >= 50 dB.

SNR = 10 log10(sum(reference^2) / sum((x - reference)^2)); identical signals report None
(``identical: true``), since JSON has no infinity.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from oai_server.codec.orpheus import frames_to_levels
from oai_server.codec.snac_model import decode_pcm
from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import Window, WindowShape
from oai_server.pipeline.speech import seam_stitcher

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def snr_db(reference: np.ndarray, signal: np.ndarray) -> float | None:
    """SNR of `signal` against `reference` in dB; None when they are identical."""
    ref = reference.astype(np.float64).ravel()
    noise = signal.astype(np.float64).ravel() - ref
    power = float(np.sum(noise * noise))
    if power == 0.0:
        return None
    return 10.0 * math.log10(float(np.sum(ref * ref)) / power)


def utterance(frames: int, seed: int = 0) -> np.ndarray:
    """Random SNAC codes of one utterance, [frames, 7] (Orpheus frame layout)."""
    return np.random.default_rng(seed).integers(0, 4096, size=(frames, 7))


def _codes(frames: np.ndarray, device: str) -> list[torch.Tensor]:
    return [torch.from_numpy(level).to(device) for level in frames_to_levels(frames)]


class _Decoded:
    """Stands in for a model whose output is already known, so `decode_pcm` converts it without decoding again."""

    def __init__(self, audio: torch.Tensor) -> None:
        self.audio = audio

    def decode(self, codes: list[torch.Tensor]) -> torch.Tensor:
        return self.audio


def decode_whole(model: Any, frames: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray]:
    """One utterance [n, 7] decoded whole: float32 samples, and the int16 PCM `decode_pcm` makes of them."""
    n = len(frames)
    codes = _codes(frames[None], device)
    with torch.inference_mode():
        audio = model.decode(codes)
        pcm = decode_pcm(_Decoded(audio), codes, (n, 0, n, 0))  # the server's conversion, in the model's dtype
    return audio[0, 0].float().cpu().numpy(), pcm[0].cpu().numpy()


def cast(model: Any, precision: str) -> Any:
    """A copy of `model` in `precision` (fp32 returns the model itself)."""
    return model if precision == "fp32" else copy.deepcopy(model).to(DTYPES[precision])


def precision_snr(
    model: Any, precisions: Sequence[str], device: str, codes: np.ndarray, reference: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """Per precision: whether it ran here (and why not), and its SNR against the fp32 `reference` decode of `codes`."""
    ref_float, ref_pcm = reference
    out: dict[str, Any] = {}
    for name in precisions:
        if name == "fp32":
            out[name] = {"ran": True, "reference": True}
            continue
        try:
            got_float, got_pcm = decode_whole(cast(model, name), codes, device)
        except (RuntimeError, TypeError, NotImplementedError) as exc:
            out[name] = {"ran": False, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        out[name] = {
            "ran": True,
            "snr_db": snr_db(ref_float, got_float),
            "snr_db_pcm16": snr_db(ref_pcm, got_pcm),
            "max_abs_diff_int16": int(np.abs(ref_pcm.astype(np.int32) - got_pcm.astype(np.int32)).max()),
        }
    return out


def plan_windows(frames: np.ndarray, policy: WindowPolicy) -> list[Window]:
    """The windows the server's planner makes for this utterance, one frame arriving at a time."""
    planner = policy.planner()
    windows: list[Window] = []
    for frame in frames:
        windows += planner.add([tuple(int(x) for x in frame)])
    return windows + planner.finish()


def _stitch_pcm(decoder: SnacDecoder, windows: list[Window], policy: WindowPolicy) -> np.ndarray:
    """The stream the server makes of these windows: decoded by shape, joined in order as its synthesizer does."""
    pieces: list[bytes] = [b""] * len(windows)
    groups: dict[WindowShape, list[int]] = {}
    for i, window in enumerate(windows):
        groups.setdefault(window.shape, []).append(i)
    for members in groups.values():
        for i, pcm in zip(members, decoder.decode_sync([windows[i] for i in members]), strict=True):
            pieces[i] = pcm
    stitcher = seam_stitcher(policy)
    joined = [stitcher.add(pcm, window.lead) for pcm, window in zip(pieces, windows, strict=True)]
    return np.frombuffer(b"".join(joined) + stitcher.finish(), dtype="<i2")


def _decoder(model: Any, device: str, policy: WindowPolicy, graphs: bool) -> SnacDecoder:
    decoder = SnacDecoder(model, device, max_batch=64)
    if graphs and device.startswith("cuda"):
        asyncio.run(decoder.capture_graphs(policy.decode_shapes))  # what the server's warm-up does
    return decoder


def streamed_pcm(
    model: Any, device: str, codes: np.ndarray, policy: WindowPolicy, graphs: bool = True
) -> tuple[np.ndarray, list[Window], list[WindowShape]]:
    """The server's windowed decode of `codes` under `policy`, stitched: its int16 PCM, its windows, and the window
    lengths (decode shapes) that ran as CUDA graphs."""
    windows = plan_windows(codes, policy)
    decoder = _decoder(model, device, policy, graphs)
    try:
        return _stitch_pcm(decoder, windows, policy), windows, sorted(decoder.graphs)
    finally:
        decoder.close()


def streamed_snr(
    model: Any,
    device: str,
    codes: np.ndarray,
    whole_pcm: np.ndarray,
    frames_per_decode: Sequence[int],
    target_db: float = 50.0,
    policy: WindowPolicy = WindowPolicy(),
    graphs: bool = True,
) -> list[dict[str, Any]]:
    """Per K: the server's windowed decode of `codes` against `whole_pcm`, their whole decode (fp32, noise off)."""
    rows = []
    for k in frames_per_decode:
        windowing = dataclasses.replace(policy, frames_per_decode=k)
        streamed, windows, graph_shapes = streamed_pcm(model, device, codes, windowing, graphs)
        assert streamed.shape == whole_pcm.shape, (streamed.shape, whole_pcm.shape)
        snr = snr_db(whole_pcm, streamed)
        rows.append(
            {
                "context_frames": windowing.context_frames,
                "lookahead_frames": windowing.lookahead_frames,
                "frames_per_decode": k,
                "seam_samples": windowing.seam_samples,
                "frames": len(codes),
                "windows": len(windows),
                "cuda_graphs": graph_shapes,
                "snr_db": snr,
                "identical": snr is None,
                "max_abs_diff_int16": int(np.abs(whole_pcm.astype(np.int32) - streamed.astype(np.int32)).max()),
                "target_db": target_db,
                "meets_target": snr is None or snr >= target_db,
            }
        )
    return rows
