"""What the Orpheus slot constraint knows of each audio position's slot (``k % 7``), as tables on the logits' device.

A position may emit only its slot's band of 4096 ids (`orpheus.slot_band`), plus `END_OF_SPEECH` where
`orpheus.stop_allowed`. `build_slot_table` is that rule as a ``[7, vocab]`` bool table, `apply_slot_mask` its one
masked fill, and `PositionTables` everything the slot logits processor gathers by slot each step (the blocked ids,
the band's columns, the seen table's columns), built once per device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oai_server.codec import orpheus
from oai_server.engines.band_sampling import column_table


def build_slot_table(vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``[7, vocab_size]`` bool table of ids allowed at audio position ``k`` (row ``k % 7``)."""
    if vocab_size < orpheus.AUDIO_TOKEN_END:
        raise ValueError(
            f"vocab size {vocab_size} is smaller than the Orpheus audio band end {orpheus.AUDIO_TOKEN_END}"
        )
    table = torch.zeros((orpheus.TOKENS_PER_FRAME, vocab_size), dtype=torch.bool)
    for slot in range(orpheus.TOKENS_PER_FRAME):
        band = orpheus.slot_band(slot)
        table[slot, band.start : band.stop] = True
        if orpheus.stop_allowed(slot):
            table[slot, orpheus.END_OF_SPEECH] = True
    return table.to(device)


def apply_slot_mask(
    logits: torch.Tensor, table: torch.Tensor, rows: torch.Tensor | None, positions: torch.Tensor
) -> torch.Tensor:
    """Set to -inf, in place, every logit of ``rows`` outside the band of its audio position.

    ``rows`` and ``positions`` are int64 tensors of equal length on ``logits.device``; rows not
    listed are untouched. ``rows=None`` means every row in order (the common case of a batch of
    speech requests only): one masked fill of ``logits``, without gathering rows out and back in,
    which at 128 rows of a 157k vocabulary saves two full passes over the logits. Returns ``logits``.
    """
    if positions.numel() == 0:
        return logits
    blocked = table.index_select(0, torch.remainder(positions, orpheus.TOKENS_PER_FRAME)).logical_not_()
    if rows is None:
        return logits.masked_fill_(blocked, float("-inf"))
    masked = logits.index_select(0, rows).masked_fill_(blocked, float("-inf"))
    logits.index_copy_(0, rows, masked)
    return logits


@dataclass(frozen=True)
class PositionTables:
    """What depends only on an audio position's slot (``k % 7``), on the logits' device: one row per slot, then
    `slot_rows.HELD_STOP_ROW`."""

    blocked: torch.Tensor  # bool [8, vocab]: ids the slot may not emit
    columns: torch.Tensor  # int64 [8, 4097]: the ids it may (`band_columns`; END_OF_SPEECH's column -inf when held)
    seen_offsets: torch.Tensor  # int64 [8, 4096]: its band's columns of the seen table

    @classmethod
    def build(cls, vocab_size: int, device: torch.device) -> PositionTables:
        """The tables for a vocabulary of `vocab_size` ids, on `device` (once per device: vLLM's thread waits)."""
        columns = column_table(device)
        columns = torch.cat([columns, columns[:1]])
        blocked = build_slot_table(vocab_size, device).logical_not_()
        held = blocked[:1].clone()
        held[0, orpheus.END_OF_SPEECH] = True
        return cls(torch.cat([blocked, held]), columns, columns[:, : orpheus.CODEBOOK_SIZE] - orpheus.AUDIO_TOKEN_BASE)
