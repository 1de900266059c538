"""Orpheus's repetition penalty on the audio band, from a per-request table of the tokens seen so far.

vLLM's penalty path rebuilds a padded tensor of every request's whole output history on the host at every step
(O(total generated tokens), several ms per step at 128 long speech streams, in Python) and bins it over the full
vocabulary on the GPU. The slot processor (`vllm_orpheus_logits`) keeps instead a ``[slots, AUDIO_SPAN]`` bool
"seen" table on the device, one line per request, updated with only the tokens that arrived since the last step,
and the penalty touches only the 4096 logits of the position's band (everything else is masked anyway). The result
equals vLLM's for these rows: prompt tokens never fall in an audio band, and vLLM's formula (``logit / p`` if
``logit > 0`` else ``logit * p``, for seen tokens) is applied as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oai_server.codec import orpheus

AUDIO_SPAN = orpheus.AUDIO_TOKEN_END - orpheus.AUDIO_TOKEN_BASE
"""Columns of a seen-table line: every audio token id, less `AUDIO_TOKEN_BASE`."""


@dataclass(frozen=True)
class BandPenalty:
    """A batch's repetition penalties, as `penalize_band` needs them (built once per batch change)."""

    seen_base: torch.Tensor  # int64 [rows, 1]: where each row's line starts in the flattened seen table
    factor: torch.Tensor  # float [rows, 1]: the penalty p
    inverse: torch.Tensor  # float [rows, 1]: 1 / p


def band_penalty(slots: torch.Tensor, penalties: torch.Tensor) -> BandPenalty:
    """The `BandPenalty` of rows holding seen-table lines ``slots`` (int64) with ``penalties`` (float32)."""
    factor = penalties.unsqueeze(1)
    return BandPenalty(slots.unsqueeze(1) * AUDIO_SPAN, factor, factor.reciprocal())


def seen_hits(
    seen: torch.Tensor, offsets: torch.Tensor, penalty: BandPenalty, out: torch.Tensor | None = None
) -> torch.Tensor:
    """bool ``[rows, 4096]``: which of each row's band ids it has generated (``offsets``: the band's columns of
    ``seen``), into ``out`` when given."""
    index = penalty.seen_base + offsets
    return torch.take(seen, index) if out is None else torch.take(seen, index, out=out)


def penalize_hits(values: torch.Tensor, hit: torch.Tensor, factor: torch.Tensor, inverse: torch.Tensor) -> None:
    """vLLM's formula on the band's ``values`` (``[rows, 4097]``, end of speech last and never touched) where
    ``hit``; in place. Only gathers and elementwise work (no advanced-index assignment, which would copy a host
    scalar and stall the host on the GPU, or break a CUDA graph)."""
    band = values[:, : orpheus.CODEBOOK_SIZE]
    scale = torch.where(band > 0, inverse, factor).to(band.dtype)
    band.copy_(torch.where(hit, band * scale, band))


def penalize_band(
    values: torch.Tensor, seen: torch.Tensor, offsets: torch.Tensor, penalty: BandPenalty
) -> torch.Tensor:
    """vLLM's repetition penalty on the band, for tokens marked in ``seen``; changes ``values`` in place, returns it.

    ``values`` is ``[rows, 4097]``, each row's `band_columns` gathered from its logits (only the 4096 of the band
    are touched: end of speech is never generated before a stream ends); ``seen`` is ``[slots, AUDIO_SPAN]`` bool
    (column = token id - ``AUDIO_TOKEN_BASE``), ``offsets`` ``[rows, 4096]`` the band's columns of it.
    """
    penalize_hits(values, seen_hits(seen, offsets, penalty), penalty.factor, penalty.inverse)
    return values
