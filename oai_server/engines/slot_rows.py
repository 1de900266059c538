"""The Orpheus slot logits processor's state per opted-in request, and its one pass over them every step.

vLLM's engine-core thread calls the processor once a step, for every live row, while the GPU may be waiting for that
thread: `step_rows` reads each row's position and new tokens in one loop with no per-row allocation in the usual
case (one token a step), a quarter of the host time of a slice, a `min` and a comprehension per row (69 against
250 µs a step at 192 rows on a 2-core CPU, `bench/slot_rows_cost.py`, session 34).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from oai_server.codec import orpheus
from oai_server.engines.band_penalty import AUDIO_SPAN
from oai_server.engines.band_sampling import BandSampling

HELD_STOP_ROW = orpheus.TOKENS_PER_FRAME
"""The position tables' row after the seven slots': slot 0's, `END_OF_SPEECH` blocked too (a frame boundary before a
request's `min_tokens`)."""


@dataclass
class SlotRow:
    """One opted-in request: its live output list, its line of the seen table, its penalty, its band sampling."""

    output_ids: Sequence[int]
    slot: int
    penalty: float
    band: BandSampling | None = None
    synced: int = 0  # output_ids[:synced] are already marked in the seen table
    min_tokens: int = 0  # END_OF_SPEECH stays blocked before this position
    mark_offset: int = field(init=False)  # + an audio token id: its flat index in the seen table

    def __post_init__(self) -> None:
        self.mark_offset = self.slot * AUDIO_SPAN - orpheus.AUDIO_TOKEN_BASE


def step_rows(rows: Sequence[SlotRow]) -> tuple[list[int], list[int]]:
    """Each row's row of the position tables now (its audio position's slot, or `HELD_STOP_ROW` on a frame boundary
    before its `min_tokens`), then the flat seen-table indices of the audio tokens that arrived since the last step,
    each row marked synced past them (placeholders ``-1``, vLLM's for tokens still being sampled, wait for the next
    step with whatever follows them)."""
    slots: list[int] = []
    marks: list[int] = []
    low, high, frame, held = orpheus.AUDIO_TOKEN_BASE, orpheus.AUDIO_TOKEN_END, orpheus.TOKENS_PER_FRAME, HELD_STOP_ROW
    for row in rows:
        ids = row.output_ids
        position, synced = len(ids), row.synced
        slot = position % frame
        slots.append(held if slot == 0 and position < row.min_tokens else slot)
        if position == synced + 1:  # the usual step: one token, or its placeholder
            token = ids[synced]
            if token >= 0:
                row.synced = position
                if low <= token < high:
                    marks.append(row.mark_offset + token)
        elif position > synced:  # several at once
            new = ids[synced:]
            if min(new) < 0:
                new = new[: next(i for i, token in enumerate(new) if token < 0)]
            row.synced += len(new)
            marks += [row.mark_offset + token for token in new if low <= token < high]
    return slots, marks
