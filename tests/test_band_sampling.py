"""Top-k/top-p over the Orpheus band in the slot logits processor: the ids it keeps are vLLM's."""

from __future__ import annotations

import types
from dataclasses import replace
from typing import Any

import pytest
import torch

from oai_server.codec import orpheus
from oai_server.engines.band_sampling import (
    TEMPERATURE_KEY,
    TOP_K_KEY,
    TOP_P_KEY,
    BandSampling,
    band_columns,
    band_sampling_of,
    sample_band,
)
from oai_server.engines.base import SamplingParams
from oai_server.engines.slot_tables import apply_slot_mask, build_slot_table
from oai_server.engines.vllm_args import sampling_kwargs
from oai_server.engines.vllm_orpheus_logits import (
    EXTRA_ARGS_KEY,
    MIN_TOKENS_KEY,
    PENALTY_KEY,
    OrpheusSlotLogitsProcessor,
)

V = orpheus.ORPHEUS_VOCAB_SIZE
TABLE = build_slot_table(V)


def vllm_top_k_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
    """vLLM 0.26.0's `apply_top_k_top_p_pytorch` (its reference path), over the whole vocabulary."""
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    if k is not None:
        top_k_mask = logits_sort.gather(1, (logits_sort.size(1) - k.to(torch.long)).unsqueeze(1))
        logits_sort.masked_fill_(logits_sort < top_k_mask, -float("inf"))
    if p is not None:
        probs_sum = logits_sort.softmax(dim=-1, dtype=torch.float32).cumsum(dim=-1)
        top_p_mask = probs_sum <= 1 - p.unsqueeze(dim=1)
        top_p_mask[:, -1] = False
        logits_sort.masked_fill_(top_p_mask, -float("inf"))
    return logits.scatter_(dim=-1, index=logits_idx, src=logits_sort)


def vllm_kept(logits: torch.Tensor, positions: torch.Tensor, filters: list[tuple[float, float, int]]) -> torch.Tensor:
    """What vLLM's sampler may draw from: the slot mask, then temperature, then its top-k/top-p."""
    masked = apply_slot_mask(logits.clone(), TABLE, None, positions)
    temperature = torch.tensor([f[0] for f in filters])
    k = torch.tensor([f[2] if f[2] > 0 else V for f in filters])
    p = torch.tensor([f[1] for f in filters])
    return torch.isfinite(vllm_top_k_top_p(masked / temperature.unsqueeze(1), k, p))


def band_kept(logits: torch.Tensor, positions: torch.Tensor, filters: list[tuple[float, float, int]]) -> torch.Tensor:
    masked = apply_slot_mask(logits.clone(), TABLE, None, positions)
    out = sample_band(masked.clone(), positions, torch.tensor(filters, dtype=torch.float32), draw=False)
    kept = torch.isfinite(out)
    assert torch.equal(out[kept], masked[kept])  # kept logits are untouched: vLLM still applies the temperature
    return kept


@pytest.mark.parametrize(
    "filters",
    [
        [(0.6, 0.8, 0)] * 4,  # the server's Orpheus defaults
        [(1.0, 0.95, 0), (0.3, 0.5, 0), (1.5, 0.99, 0), (0.6, 0.1, 0)],
        [(0.6, 1.0, 50), (1.0, 0.9, 20), (0.8, 0.7, 4096), (0.6, 0.8, 1)],  # top-k alone, then with top-p
    ],
)
def test_band_filter_keeps_exactly_the_ids_vllms_sampler_keeps(filters: list[tuple[float, float, int]]) -> None:
    g = torch.Generator().manual_seed(len(filters) + int(10 * filters[1][1]))
    positions = torch.tensor([0, 3, 7, 13])  # 0 and 7: frame boundaries, END_OF_SPEECH allowed
    logits = torch.randn(4, V, generator=g) * 4
    logits[0, orpheus.END_OF_SPEECH] = 16.0  # a likely stop must survive the filter where it is allowed
    logits[1, orpheus.END_OF_SPEECH] = 50.0  # and stay masked where it is not
    expected = vllm_kept(logits, positions, filters)
    got = band_kept(logits, positions, filters)
    assert torch.equal(got, expected)
    counts = got.sum(dim=1).tolist()
    assert all(1 <= c < orpheus.CODEBOOK_SIZE for c in counts), counts  # the filter did cut, and kept some
    assert bool(got[0, orpheus.END_OF_SPEECH]) and not bool(got[1, orpheus.END_OF_SPEECH])


def test_band_sampling_of_reads_the_request_and_skips_what_cannot_change_a_draw() -> None:
    def params(temperature: float, extra: dict[str, Any] | None) -> types.SimpleNamespace:
        return types.SimpleNamespace(temperature=temperature, extra_args=extra)

    assert band_sampling_of(params(0.6, {TOP_P_KEY: 0.8, TOP_K_KEY: 0})) == BandSampling(0.6, 0.8, 0)
    assert band_sampling_of(params(1.0, {TOP_K_KEY: 30})) == BandSampling(1.0, 1.0, 30)
    assert band_sampling_of(params(0.0, {TOP_P_KEY: 0.8})) is None  # greedy: the argmax is always kept
    assert band_sampling_of(params(0.6, {TOP_P_KEY: 1.0, TOP_K_KEY: 0})) is None
    assert band_sampling_of(params(0.6, None)) is None
    # drawn here: vLLM got temperature 0, the request's own travels in extra_args (and the draw needs no filter)
    drawn = band_sampling_of(params(0.0, {TEMPERATURE_KEY: 0.6, TOP_P_KEY: 0.8}))
    assert drawn == BandSampling(0.6, 0.8, 0, draw=True)
    assert band_sampling_of(params(0.0, {TEMPERATURE_KEY: 1.2})) == BandSampling(1.2, 1.0, 0, draw=True)


def test_sampling_kwargs_move_the_filter_and_the_draw_into_the_band_unless_asked_not_to() -> None:
    params = SamplingParams(max_tokens=70, temperature=0.6, top_p=0.8, top_k=40, orpheus_audio_slots=True)
    filtered = sampling_kwargs(params)  # the default: the filter in the band, vLLM's sampler draws
    assert (filtered["top_p"], filtered["top_k"], filtered["temperature"]) == (1.0, 0, 0.6)
    assert filtered["extra_args"] == {
        EXTRA_ARGS_KEY: True, PENALTY_KEY: 1.0, MIN_TOKENS_KEY: 0, TOP_P_KEY: 0.8, TOP_K_KEY: 40,
    }  # fmt: skip
    params = replace(params, orpheus_band_draw=True)
    kwargs = sampling_kwargs(params)
    assert (kwargs["top_p"], kwargs["top_k"], kwargs["temperature"]) == (1.0, 0, 0.0)  # vLLM: greedy over one id
    assert kwargs["extra_args"] == {
        EXTRA_ARGS_KEY: True, PENALTY_KEY: 1.0, MIN_TOKENS_KEY: 0, TOP_P_KEY: 0.8, TOP_K_KEY: 40, TEMPERATURE_KEY: 0.6,
    }  # fmt: skip
    seeded = sampling_kwargs(replace(params, seed=7))
    assert seeded["temperature"] == 0.6 and TEMPERATURE_KEY not in seeded["extra_args"]  # vLLM's generator draws
    assert seeded["top_p"] == 1.0 and seeded["extra_args"][TOP_P_KEY] == 0.8  # the filter stays in the band
    greedy = sampling_kwargs(replace(params, temperature=0.0))
    assert greedy["temperature"] == 0.0 and TEMPERATURE_KEY not in greedy["extra_args"]
    whole = sampling_kwargs(
        SamplingParams(max_tokens=70, top_p=0.8, top_k=-1, orpheus_audio_slots=True, orpheus_band_sampling=False)
    )
    assert (whole["top_p"], whole["top_k"]) == (0.8, 0)
    assert TOP_P_KEY not in whole["extra_args"] and TOP_K_KEY not in whole["extra_args"]
    text = sampling_kwargs(SamplingParams(max_tokens=5, top_p=0.9, top_k=7, min_tokens=3))  # no slots: vLLM's own
    assert (text["top_p"], text["top_k"], text["min_tokens"]) == (0.9, 7, 3) and "extra_args" not in text
    held = sampling_kwargs(SamplingParams(max_tokens=70, min_tokens=21, orpheus_audio_slots=True))
    assert held["min_tokens"] == 0 and held["extra_args"][MIN_TOKENS_KEY] == 21  # the slot processor holds the stop


@pytest.mark.parametrize("mode", ["masked", "filtered", "drawn"])
def test_the_processor_holds_the_end_of_speech_back_until_min_tokens(mode: str) -> None:
    """vLLM's min_tokens moved into the slot mask: END_OF_SPEECH only on frame boundaries from `min_tokens` on, for
    the rows that asked, however the row samples (greedy: masked only; top-p in the band; drawn in the band), even
    when the model wants nothing else (its logit far above the band's)."""
    proc = OrpheusSlotLogitsProcessor(None, torch.device("cpu"), False)
    histories: list[list[int]] = [[orpheus.AUDIO_TOKEN_BASE] * k for k in (0, 7, 14, 21, 28, 7, 8)]
    minimums = [21, 21, 21, 21, 21, 0, 21]
    added = []
    for index, (history, minimum) in enumerate(zip(histories, minimums, strict=True)):
        params = request(0.0) if mode == "masked" else request(0.6, top_p=0.8, draw=mode == "drawn")
        params.extra_args[MIN_TOKENS_KEY] = minimum
        added.append((index, params, [1], history))
    proc.update_state(batch(added))
    logits = torch.zeros(len(histories), V)
    logits[:, orpheus.END_OF_SPEECH] = 50.0
    got = proc.apply(logits.clone())
    stop_open = torch.isfinite(got[:, orpheus.END_OF_SPEECH]).tolist()
    assert stop_open == [False, False, False, True, True, True, False]  # 8: not a frame boundary anyway
    for row, history in enumerate(histories):  # nothing outside the position's band and the stop, if open
        band = orpheus.slot_band(len(history))
        kept = torch.isfinite(got[row])
        in_band = int(kept[band.start : band.stop].sum())
        assert int(kept.sum()) == in_band + stop_open[row], row
        if mode == "masked":  # greedy rows are masked, not filtered: the whole band stays
            assert in_band == orpheus.CODEBOOK_SIZE, row
        else:  # top-p (and the draw) keep the stop alone where it is open, ids of the band where it is held
            assert (in_band > 0) != stop_open[row], row
    histories[0].extend([orpheus.AUDIO_TOKEN_BASE] * 21)  # vLLM appends in place: position 21 next step
    assert bool(torch.isfinite(proc.apply(logits.clone())[0, orpheus.END_OF_SPEECH]))


@pytest.mark.parametrize("bad", [-1, 1.5, "21", True])
def test_a_malformed_min_tokens_is_rejected_in_the_frontend(bad: Any) -> None:
    with pytest.raises(ValueError, match=MIN_TOKENS_KEY):
        OrpheusSlotLogitsProcessor.validate_params(
            types.SimpleNamespace(extra_args={EXTRA_ARGS_KEY: True, MIN_TOKENS_KEY: bad})
        )


def batch(added: list[tuple[int, Any, list[int], list[int]]]) -> types.SimpleNamespace:
    return types.SimpleNamespace(batch_size=0, removed=[], added=added, moved=[])


def request(
    temperature: float, top_p: float | None = None, top_k: int | None = None, opted: bool = True, draw: bool = False
) -> Any:
    extra: dict[str, Any] = {EXTRA_ARGS_KEY: opted}
    if draw:  # as sampling_kwargs sends it: vLLM greedy, the temperature for the band
        extra[TEMPERATURE_KEY], temperature = temperature, 0.0
    if top_p is not None:
        extra[TOP_P_KEY] = top_p
    if top_k is not None:
        extra[TOP_K_KEY] = top_k
    return types.SimpleNamespace(temperature=temperature, extra_args=extra)


def test_processor_filters_only_the_rows_that_asked_and_follows_their_positions() -> None:
    proc = OrpheusSlotLogitsProcessor(None, torch.device("cpu"), False)
    out = [[orpheus.AUDIO_TOKEN_BASE] * 7, [], [1, 2, 3], [5] * 13]
    proc.update_state(
        batch(
            [
                (0, request(0.6, top_p=0.8), [1], out[0]),  # filtered, position 7
                (1, request(0.0, top_p=0.8), [1], out[1]),  # greedy: masked, not filtered
                (2, request(0.6, top_p=0.8, opted=False), [1], out[2]),  # not opted in: untouched
                (3, request(1.0, top_p=0.9, top_k=25), [1], out[3]),  # filtered, position 13
            ]
        )
    )
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, V, generator=g) * 4
    got = proc.apply(logits.clone())
    expected = vllm_kept(logits[[0, 3]], torch.tensor([7, 13]), [(0.6, 0.8, 0), (1.0, 0.9, 25)])
    assert torch.equal(torch.isfinite(got[[0, 3]]), expected)
    assert 1 <= int(expected[1].sum()) <= 25
    masked_only = apply_slot_mask(logits[1:2].clone(), TABLE, None, torch.tensor([0]))
    assert torch.equal(got[1:2], masked_only)
    assert torch.equal(got[2], logits[2])


def test_processor_filters_every_row_of_an_all_speech_batch() -> None:
    proc = OrpheusSlotLogitsProcessor(None, torch.device("cpu"), False)
    histories: list[list[int]] = [[0] * k for k in (0, 1, 6, 7)]
    proc.update_state(batch([(i, request(0.6, top_p=0.8), [1], h) for i, h in enumerate(histories)]))
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(5)) * 4
    got = proc.apply(logits.clone())
    expected = vllm_kept(logits, torch.tensor([0, 1, 6, 7]), [(0.6, 0.8, 0)] * 4)
    assert torch.equal(torch.isfinite(got), expected)


def test_the_band_draw_follows_vllms_distribution_over_the_ids_it_keeps() -> None:
    torch.manual_seed(11)
    positions = torch.tensor([7])  # a frame boundary: END_OF_SPEECH may be drawn too
    logits = torch.full((1, V), -30.0)
    columns = band_columns(positions)[0]
    likely = columns[[3, 100, 2000, 4095, 4096]]  # four codes and END_OF_SPEECH carry the mass
    logits[0, likely] = torch.tensor([2.0, 1.6, 1.2, 0.4, 1.0])
    settings = torch.tensor([[0.8, 0.9, 0.0]])
    kept = vllm_kept(logits, positions, [(0.8, 0.9, 0)])[0]
    expected = torch.softmax(logits[0] / 0.8 + torch.where(kept, 0.0, float("-inf")), dim=0)
    assert int(kept.sum()) == 4 and not bool(kept[likely[3]])  # top-p 0.9 drops the weakest of the five
    rows, rounds = 200, 30  # 6000 draws; sample_band writes only the band's columns, so one tensor serves them all
    work = apply_slot_mask(logits.repeat(rows, 1), TABLE, None, positions.repeat(rows))
    cols = band_columns(positions.repeat(rows))
    band = work.gather(1, cols)
    outside = torch.ones(V, dtype=torch.bool)
    outside[cols[0]] = False
    assert not bool(torch.isfinite(work[:, outside]).any())
    picks = []
    for _ in range(rounds):
        out = sample_band(work.scatter_(1, cols, band), positions.repeat(rows), settings.repeat(rows, 1), draw=True)
        left = out.gather(1, cols)
        assert bool((torch.isfinite(left).sum(dim=1) == 1).all())  # one id left a row: vLLM's greedy path takes it
        index = left.argmax(dim=1, keepdim=True)
        assert torch.equal(left.gather(1, index), band.gather(1, index))  # the drawn id keeps its logit
        picks.append(cols.gather(1, index).squeeze(1))
    chosen, draws = torch.cat(picks), rows * rounds
    counts = torch.bincount(chosen, minlength=V).float() / draws
    assert set(torch.nonzero(counts).flatten().tolist()) <= set(torch.nonzero(kept).flatten().tolist())
    for token in torch.nonzero(kept).flatten().tolist():  # 6000 draws: a standard error of at most 0.65 %
        assert abs(float(counts[token]) - float(expected[token])) < 0.025, (token, counts[token], expected[token])


def test_processor_draws_for_the_rows_that_ask_and_filters_for_the_others() -> None:
    proc = OrpheusSlotLogitsProcessor(None, torch.device("cpu"), False)
    histories: list[list[int]] = [[0] * 3, [0] * 7, [0] * 9]
    proc.update_state(
        batch(
            [
                (0, request(0.6, top_p=0.8, draw=True), [1], histories[0]),
                (1, request(0.6, top_p=0.8), [1], histories[1]),  # seeded in real life: filtered, vLLM draws
                (2, request(1.0, draw=True), [1], histories[2]),  # no filter, still drawn here
            ]
        )
    )
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(2)) * 4
    got = proc.apply(logits.clone())
    assert [int(torch.isfinite(row).sum()) for row in got[[0, 2]]] == [1, 1]
    assert int(got[0].argmax()) in set(
        torch.nonzero(vllm_kept(logits[0:1], torch.tensor([3]), [(0.6, 0.8, 0)])[0]).flatten().tolist()
    )
    assert int(got[2].argmax()) in set(band_columns(torch.tensor([9]))[0, :4096].tolist())
    assert torch.equal(torch.isfinite(got[1:2]), vllm_kept(logits[1:2], torch.tensor([7]), [(0.6, 0.8, 0)]))


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        (TOP_P_KEY, 0),
        (TOP_P_KEY, 1.5),
        (TOP_P_KEY, True),
        (TOP_P_KEY, "0.8"),
        (TOP_K_KEY, -1),
        (TOP_K_KEY, 2.5),
        (TEMPERATURE_KEY, 0.0),
        (TEMPERATURE_KEY, -1),
        (TEMPERATURE_KEY, "hot"),
        (TEMPERATURE_KEY, False),
    ],
)
def test_malformed_band_filters_are_rejected_in_the_frontend(key: str, bad: Any) -> None:
    OrpheusSlotLogitsProcessor.validate_params(request(0.6, top_p=0.8, top_k=10))
    with pytest.raises(ValueError, match=key):
        OrpheusSlotLogitsProcessor.validate_params(types.SimpleNamespace(extra_args={EXTRA_ARGS_KEY: True, key: bad}))


def test_the_batch_layout_is_built_once_per_batch_change_and_positions_still_follow() -> None:
    proc = OrpheusSlotLogitsProcessor(None, torch.device("cpu"), False)
    histories: list[list[int]] = [[0] * 3, [0] * 5]
    proc.update_state(batch([(i, request(0.6, top_p=0.8, draw=True), [1], h) for i, h in enumerate(histories)]))
    logits = torch.randn(2, V, generator=torch.Generator().manual_seed(4)) * 4
    proc.apply(logits.clone())
    layout = proc._layout
    for history in histories:
        history.append(orpheus.AUDIO_TOKEN_BASE)  # a step: one token each, no batch change
    proc.update_state(None)
    got = proc.apply(logits.clone())
    assert proc._layout is layout  # nothing rebuilt between steps of an unchanged batch
    assert int(got[0].argmax()) in band_columns(torch.tensor([4]))[0].tolist()  # positions 4 and 6 now
    assert int(got[1].argmax()) in band_columns(torch.tensor([6]))[0].tolist()
    proc.update_state(
        batch(
            [],
        )
    )  # any change from vLLM (even an empty one) rebuilds it
    proc.apply(logits.clone())
    assert proc._layout is not layout
