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
The mask is one gather from a precomputed ``[7, vocab]`` bool table on the logits' device (`slot_tables`); the
Python work per step is O(opted-in rows), and what only changes with the batch (the rows' order, seen-table
lines, penalties, band settings, as device tensors) is built once per change vLLM reports: vLLM's thread
runs `apply` between steps, while the GPU may be waiting for it.

Repetition penalty: a request may carry its Orpheus repetition penalty in
``extra_args[PENALTY_KEY]`` (with vLLM's own ``repetition_penalty`` left at 1.0); it is applied here on the
band, from a table of the tokens each request has seen (`band_penalty`: why not vLLM's path).

Top-k, top-p and the draw over the band (`band_sampling`): a request that asks for them in its
``extra_args`` has them applied here, on the 4097 ids its position can emit, instead of by vLLM's sampler
over the whole vocabulary.

An engine built with ``additional_config={"oai_snac_service": name}`` also starts the server's SNAC
decoding in its process here (`oai_server.codec.snac_service`), and with ``"oai_snac_low_priority": True``
moves the engine's own work to a CUDA stream of higher priority than SNAC's; with ``"oai_snac_rounds": "step"`` the
engine's thread serves SNAC's rounds itself at every `update_state` while enough speech requests run
(`oai_server.codec.snac_rounds`); ``"oai_engine_switch_interval_s"`` sets the engine process's GIL switch interval.
With ``"oai_band_graphs": True`` the band work of a step runs as one CUDA graph (`band_graphs`).

The module imports without vLLM (CI): the base class falls back to `object`, and the pure
mask functions below need only torch.
"""

from __future__ import annotations

import array
import logging
from dataclasses import dataclass
from typing import Any

import torch

from oai_server.codec import snac_service
from oai_server.codec.snac_rounds import check_rounds
from oai_server.engines.band_graphs import BAND_GRAPHS_KEY, BandGraph, BandGraphs
from oai_server.engines.band_penalty import AUDIO_SPAN, BandPenalty, band_penalty, penalize_band, seen_hits
from oai_server.engines.band_sampling import (
    BandFilter,
    band_filter,
    band_sampling_of,
    check_band_args,
    filter_band,
)
from oai_server.engines.slot_rows import SlotRow, step_rows
from oai_server.engines.slot_tables import PositionTables

try:  # vLLM is an optional extra; without it the class is still importable and testable.
    from vllm.v1.sample.logits_processor import LogitsProcessor as _LogitsProcessorBase
except ImportError:  # pragma: no cover - depends on the environment
    _LogitsProcessorBase = object

logger = logging.getLogger(__name__)

EXTRA_ARGS_KEY = "orpheus_audio_slots"
"""Key in ``SamplingParams.extra_args`` that switches the slot constraint on for a request."""
PENALTY_KEY = "orpheus_repetition_penalty"
"""Key in ``SamplingParams.extra_args``: the repetition penalty this processor applies (default 1)."""
MIN_TOKENS_KEY = "orpheus_min_tokens"
"""Key in ``SamplingParams.extra_args``: audio tokens before this processor lets `END_OF_SPEECH` through (default 0).

The slot mask already blocks every other id a stop could be, so this is vLLM's ``min_tokens`` for these requests,
without vLLM's `MinTokensLogitsProcessor`: that one rebuilds its device tensors at every batch change while any
request is under its minimum, which with streams coming and going is most steps (~3 % of the engine core's host
time under arrivals on an H200, session 28)."""


def wants_audio_slots(extra_args: dict[str, Any] | None) -> bool:
    """Whether a request's ``extra_args`` opt it into the slot constraint."""
    return bool(extra_args and extra_args.get(EXTRA_ARGS_KEY))


def min_tokens_of(extra_args: dict[str, Any] | None) -> int:
    """The audio tokens a request's ``extra_args`` hold `END_OF_SPEECH` back for (0: none)."""
    return int((extra_args or {}).get(MIN_TOKENS_KEY) or 0)


def penalty_of(extra_args: dict[str, Any] | None) -> float:
    """The repetition penalty a request's ``extra_args`` ask this processor for (1.0: none)."""
    value = (extra_args or {}).get(PENALTY_KEY)
    return 1.0 if value is None else float(value)


def log_through_vllm() -> None:
    """In vLLM's engine core only vLLM's own logger has a handler, so this project's lines (the SNAC service, the
    stream priority, a failed graph capture) would be lost or bare: hand them to vLLM's handlers, at INFO. Nothing
    changes where the process already logs (a root handler, or ours set up)."""
    ours, theirs = logging.getLogger("oai_server"), logging.getLogger("vllm")
    if ours.handlers or logging.getLogger().handlers or not theirs.handlers:
        return
    for handler in theirs.handlers:
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


@dataclass
class _BandGroup:
    """Rows that sample in the band one way (drawn here or by vLLM): their settings and where they sit."""

    draw: bool
    spec: BandFilter
    index: torch.Tensor | None  # int64 positions in the opted-in rows; None: all of them


@dataclass
class _Layout:
    """What `apply` needs of the batch that does not change from step to step (rebuilt when vLLM changes it)."""

    rows: list[SlotRow]  # the opted-in rows, by persistent-batch index
    index: torch.Tensor | None  # their batch indices; None when they are every row in order
    penalty: BandPenalty | None  # None when no row has a penalty
    bands: list[_BandGroup]


_TYPECODES = {torch.int64: "q", torch.float32: "f"}
"""`array` type codes of the dtypes the processor hands to the device."""


class OrpheusSlotLogitsProcessor(_LogitsProcessorBase):
    """Per-position Orpheus audio-band constraint (and band repetition penalty) as a vLLM v1 `LogitsProcessor`.

    Pass the class in ``AsyncEngineArgs(logits_processors=[OrpheusSlotLogitsProcessor])``; it is
    pickled by reference into vLLM's engine-core process, so it must stay a module-level class.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self._device = torch.device(device)
        self._pin_memory = bool(is_pin_memory) and self._device.type == "cuda"
        self._rows: dict[int, SlotRow] = {}  # persistent-batch row -> request state
        self._tables: PositionTables | None = None
        self._seen: torch.Tensor | None = None  # [slots, AUDIO_SPAN] bool
        self._free: list[int] = []
        self._slots = 0
        self._stale: list[int] = []  # slots handed to new requests, to clear before use
        self._version = 0  # bumped by every batch change: the cached layout is rebuilt on the next step
        self._layout: tuple[tuple[int, int], _Layout | None] | None = None
        log_through_vllm()
        config = getattr(vllm_config, "additional_config", None) or {}
        service = config.get(snac_service.SERVICE_KEY)
        # the one hook of this project in the engine-core process: SNAC decoding joins the engine's CUDA context
        rounds = check_rounds(str(config.get(snac_service.ROUNDS_KEY) or "thread"))
        self.snac_service = snac_service.start_service(str(service), str(device), rounds) if service else None
        if service and config.get(snac_service.LOW_PRIORITY_KEY):
            snac_service.prioritize_engine_stream(self._device)
        snac_service.set_switch_interval(config.get(snac_service.SWITCH_INTERVAL_KEY))
        if self.snac_service is not None and self._device.type == "cuda":  # reported by the service's stats
            self.snac_service.engine_stream_priority = torch.cuda.current_stream(self._device).priority
        max_rows = getattr(getattr(vllm_config, "scheduler_config", None), "max_num_seqs", None)
        self._graphs = BandGraphs(self._device, max_rows) if config.get(BAND_GRAPHS_KEY) else None

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Reject a malformed opt-in flag early, in the frontend (vLLM calls this per request)."""
        extra = getattr(sampling_params, "extra_args", None) or {}
        value = extra.get(EXTRA_ARGS_KEY)
        if value is not None and not isinstance(value, (bool, int)):
            raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}] must be a bool, got {value!r}")
        penalty = extra.get(PENALTY_KEY)
        if penalty is not None and (
            isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not 0 < penalty <= 10
        ):
            raise ValueError(f"extra_args[{PENALTY_KEY!r}] must be a number in (0, 10], got {penalty!r}")
        minimum = extra.get(MIN_TOKENS_KEY)
        if minimum is not None and (isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0):
            raise ValueError(f"extra_args[{MIN_TOKENS_KEY!r}] must be a non-negative integer, got {minimum!r}")
        check_band_args(extra)

    def is_argmax_invariant(self) -> bool:
        """The mask changes the argmax, so it must also apply to greedy requests."""
        return False

    def _take_slot(self) -> int:
        if not self._free:
            grown = max(8, 2 * self._slots)
            self._free.extend(range(grown - 1, self._slots - 1, -1))
            self._slots = grown
        slot = self._free.pop()
        self._stale.append(slot)
        return slot

    def _drop(self, index: int) -> None:
        row = self._rows.pop(index, None)
        if row is not None:
            self._free.append(row.slot)

    def update_state(self, batch_update: Any) -> None:
        """Track opted-in rows through vLLM's removed -> added -> moved batch changes; then, once a step, SNAC's
        rounds get their turn on this thread (`snac_rounds.StepRounds`, with ``--snac-rounds step``)."""
        if batch_update is not None:
            self._update_rows(batch_update)
        if self.snac_service is not None:
            self.snac_service.step(len(self._rows))

    def _update_rows(self, batch_update: Any) -> None:
        self._version += 1
        rows = self._rows
        for index in batch_update.removed:
            self._drop(index)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            self._drop(index)
            extra = getattr(params, "extra_args", None)
            if wants_audio_slots(extra):
                rows[index] = SlotRow(
                    output_ids,
                    self._take_slot(),
                    penalty_of(extra),
                    band_sampling_of(params),
                    min_tokens=min_tokens_of(extra),
                )
        for a_index, b_index, direction in batch_update.moved:
            a_entry = rows.pop(a_index, None)
            b_entry = rows.pop(b_index, None)
            if a_entry is not None:
                rows[b_index] = a_entry
            if b_entry is not None:
                if direction.name == "SWAP":
                    rows[a_index] = b_entry
                else:
                    self._free.append(b_entry.slot)

    def _to_device(self, values: list[int] | list[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A small flat host list on ``device`` without stalling the host (pinned, non-blocking copy). Through an
        `array`: a third of `torch.tensor`'s host time for a few hundred values, which vLLM's thread pays every step
        (the step's indices) and at every batch change (the layout's)."""
        if not values:
            return torch.empty(0, dtype=dtype, device=device)
        host = torch.frombuffer(array.array(_TYPECODES[dtype], values), dtype=dtype)
        if self._pin_memory:
            host = host.pin_memory()
        return host.to(device, non_blocking=self._pin_memory)

    def _seen_table(self, device: torch.device) -> torch.Tensor:
        seen = self._seen
        if seen is None or seen.device != device:
            seen = torch.zeros((self._slots, AUDIO_SPAN), dtype=torch.bool, device=device)
        elif seen.shape[0] < self._slots:
            extra = torch.zeros((self._slots - seen.shape[0], AUDIO_SPAN), dtype=torch.bool, device=device)
            seen = torch.cat([seen, extra])
        self._seen = seen
        return seen

    def _layout_for(self, num_rows: int, device: torch.device) -> _Layout | None:
        """The batch's layout, rebuilt only after vLLM changed the batch (None: no opted-in row)."""
        key = (self._version, num_rows)
        if self._layout is not None and self._layout[0] == key:
            return self._layout[1]
        items = sorted((index, row) for index, row in self._rows.items() if index < num_rows)
        layout = None
        if items:
            rows = [row for _, row in items]
            every_row = len(items) == num_rows  # distinct rows < num_rows, sorted: exactly 0..num_rows-1
            penalties = [row.penalty for row in rows]
            penalty = None
            if penalties.count(1.0) != len(penalties):
                slots = self._to_device([row.slot for row in rows], torch.int64, device)
                penalty = band_penalty(slots, self._to_device(penalties, torch.float32, device))
            layout = _Layout(
                rows=rows,
                index=None if every_row else self._to_device([i for i, _ in items], torch.int64, device),
                penalty=penalty,
                bands=self._band_groups(rows, device),
            )
        self._layout = (key, layout)
        return layout

    def _band_groups(self, rows: list[SlotRow], device: torch.device) -> list[_BandGroup]:
        """The rows drawn in the band here, then those only filtered here (vLLM draws): one group each."""
        chosen: dict[bool, tuple[list[int], list[float]]] = {True: ([], []), False: ([], [])}
        top_k = {True: False, False: False}
        for i, row in enumerate(rows):  # one pass: vLLM's thread runs this at every batch change
            band = row.band
            if band is not None:
                index, flat = chosen[band.draw]
                index.append(i)
                flat += band.values
                top_k[band.draw] = top_k[band.draw] or band.top_k > 0
        groups = []
        for draw in (True, False):
            index, flat = chosen[draw]
            if index:
                settings = self._to_device(flat, torch.float32, device).view(len(index), -1)
                where = None if len(index) == len(rows) else self._to_device(index, torch.int64, device)
                groups.append(_BandGroup(draw, band_filter(settings, top_k[draw]), where))
        return groups

    def _graph_for(self, layout: _Layout, dtype: torch.dtype) -> BandGraph | None:
        """The CUDA graph that runs this batch's band work (`band_graphs`), or None: eager."""
        if self._graphs is None or len(layout.bands) != 1 or layout.bands[0].index is not None:
            return None
        group = layout.bands[0]
        try:
            return self._graphs.graph_for(len(layout.rows), dtype, group.spec, group.draw, layout.penalty)
        except Exception:  # a capture the device refuses must not take the engine down: eager from now on
            logger.exception("CUDA graphs of the band work failed; the slot processor runs eagerly")
            self._graphs = None
            return None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the opted-in rows' repetition penalty, band mask and band sampling (in place); return the logits.

        One masked fill blocks what a row's position cannot emit; the penalty and the band sampling then work on
        the 4097 columns it can (its `band_columns`), gathered once and written back once. Everything that only
        changes with the batch is prepared in its layout, and the per-position tables once per device: vLLM's
        thread launches each of these kernels while the GPU may be waiting for it.
        """
        if not self._rows:
            return logits
        tables = self._tables
        if tables is None or tables.blocked.shape[1] != logits.shape[1] or tables.blocked.device != logits.device:
            tables = self._tables = PositionTables.build(logits.shape[1], logits.device)
        layout = self._layout_for(logits.shape[0], logits.device)
        if layout is None:
            return logits
        seen = self._seen_table(logits.device)
        if self._stale:  # lines handed to new requests since the last step
            seen.index_fill_(0, self._to_device(self._stale, torch.int64, seen.device), False)
            self._stale.clear()
        # what changes every step, in one copy: each row's slot (its audio position mod 7), then the new tokens
        slots, marks = step_rows(layout.rows)
        step = self._to_device(slots + marks, torch.int64, logits.device)
        slot = step[: len(slots)]
        if marks:
            seen.view(-1).index_fill_(0, step[len(slots) :], True)
        target = logits if layout.index is None else logits.index_select(0, layout.index)  # opted-in rows, in order
        target.masked_fill_(tables.blocked.index_select(0, slot), float("-inf"))
        if layout.penalty is not None or layout.bands:
            columns = tables.columns.index_select(0, slot)
            offsets = None if layout.penalty is None else tables.seen_offsets.index_select(0, slot)
            graph = self._graph_for(layout, target.dtype)
            if graph is not None:  # the penalty and top-p as one replay, on the graph's buffers
                values = graph.values[: len(layout.rows)]
                torch.gather(target, 1, columns, out=values)
                if graph.hit is not None and layout.penalty is not None and offsets is not None:
                    seen_hits(seen, offsets, layout.penalty, out=graph.hit[: len(layout.rows)])
                graph.load(layout, layout.bands[0].spec, layout.penalty, len(layout.rows))
                graph.run()
            else:
                values = target.gather(1, columns)
                if layout.penalty is not None and offsets is not None:
                    penalize_band(values, seen, offsets, layout.penalty)
                for group in layout.bands:
                    if group.index is None:
                        filter_band(values, group.spec, group.draw)
                    else:
                        chosen = filter_band(values.index_select(0, group.index), group.spec, group.draw)
                        values.index_copy_(0, group.index, chosen)
            target.scatter_(1, columns, values)
        if layout.index is not None:
            logits.index_copy_(0, layout.index, target)
        return logits
