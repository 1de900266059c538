"""vLLM v1 logits processor that keeps Orpheus sampling inside the audio band of each position.

Written against vLLM 0.26.0 (`vllm/v1/sample/logits_processor/interface.py`). vLLM builds one
instance per engine (in the engine-core process) from ``AsyncEngineArgs(logits_processors=[...])``;
every step it calls `update_state` with the batch changes and then `apply` on the
``[num_reqs, vocab]`` logits, row i being persistent-batch index i. A request opts in through
``SamplingParams.extra_args[EXTRA_ARGS_KEY]`` (truthy; the OpenAI server's ``vllm_xargs`` land
there too). Requests that did not opt in are left untouched.

For an opted-in row, audio position k is the number of tokens it has generated so far, read as
``len(output_tok_ids)`` from the live list vLLM hands over in `BatchUpdate.added` (under async
scheduling the list may end in ``-1`` placeholders, which still count). Only
``orpheus.slot_band(k)`` is allowed, plus ``END_OF_SPEECH`` where ``orpheus.stop_allowed(k)``.
The mask is one gather from a precomputed ``[7, vocab]`` bool table on the logits' device; the
Python work per step is O(opted-in rows).

The module imports without vLLM (CI): the base class falls back to `object`, and the pure
mask functions below need only torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from oai_server.pipeline import orpheus

try:  # vLLM is an optional extra; without it the class is still importable and testable.
    from vllm.v1.sample.logits_processor import LogitsProcessor as _LogitsProcessorBase
except ImportError:  # pragma: no cover - depends on the environment
    _LogitsProcessorBase = object

EXTRA_ARGS_KEY = "orpheus_audio_slots"
"""Key in ``SamplingParams.extra_args`` that switches the slot constraint on for a request."""


def wants_audio_slots(extra_args: dict[str, Any] | None) -> bool:
    """Whether a request's ``extra_args`` opt it into the slot constraint."""
    return bool(extra_args and extra_args.get(EXTRA_ARGS_KEY))


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


class OrpheusSlotLogitsProcessor(_LogitsProcessorBase):
    """Per-position Orpheus audio-band constraint as a vLLM v1 `LogitsProcessor`.

    Pass the class in ``AsyncEngineArgs(logits_processors=[OrpheusSlotLogitsProcessor])``; it is
    pickled by reference into vLLM's engine-core process, so it must stay a module-level class.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self._device = torch.device(device)
        self._pin_memory = bool(is_pin_memory) and self._device.type == "cuda"
        # Persistent-batch row -> the request's live output-token list (owned by vLLM).
        self._output_ids: dict[int, Sequence[int]] = {}
        self._table: torch.Tensor | None = None

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Reject a malformed opt-in flag early, in the frontend (vLLM calls this per request)."""
        extra = getattr(sampling_params, "extra_args", None) or {}
        value = extra.get(EXTRA_ARGS_KEY)
        if value is not None and not isinstance(value, (bool, int)):
            raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}] must be a bool, got {value!r}")

    def is_argmax_invariant(self) -> bool:
        """The mask changes the argmax, so it must also apply to greedy requests."""
        return False

    def update_state(self, batch_update: Any) -> None:
        """Track opted-in rows through vLLM's removed -> added -> moved batch changes."""
        if batch_update is None:
            return
        rows = self._output_ids
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            if wants_audio_slots(getattr(params, "extra_args", None)):
                rows[index] = output_ids
            else:
                rows.pop(index, None)
        for a_index, b_index, direction in batch_update.moved:
            a_entry = rows.pop(a_index, None)
            b_entry = rows.pop(b_index, None)
            if a_entry is not None:
                rows[b_index] = a_entry
            if b_entry is not None and direction.name == "SWAP":
                rows[a_index] = b_entry

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask the logits of opted-in rows (in place) and return them."""
        if not self._output_ids:
            return logits
        table = self._table
        if table is None or table.shape[1] != logits.shape[1] or table.device != logits.device:
            table = self._table = build_slot_table(logits.shape[1], logits.device)
        num_rows = logits.shape[0]
        items = sorted((row, len(ids)) for row, ids in self._output_ids.items() if row < num_rows)
        if not items:
            return logits
        host = torch.tensor(items, dtype=torch.int64, pin_memory=self._pin_memory)
        dev = host.to(logits.device, non_blocking=self._pin_memory)
        every_row = len(items) == num_rows  # distinct rows < num_rows, sorted: exactly 0..num_rows-1
        return apply_slot_mask(logits, table, None if every_row else dev[:, 0], dev[:, 1])
