"""Logits processing: the Orpheus slot constraint, greedy/top-k/top-p, penalties and seeds."""

from __future__ import annotations

import pytest
import torch

from oai_server.codec import orpheus
from oai_server.engines.base import SamplingParams
from oai_server.engines.sampling import (
    TokenSampler,
    apply_presence_frequency,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    audio_slot_mask,
    choose,
    make_generator,
)

V = orpheus.ORPHEUS_VOCAB_SIZE


def _sampler(**kwargs: object) -> TokenSampler:
    params = SamplingParams(max_tokens=100, **kwargs)  # type: ignore[arg-type]
    return TokenSampler(params, [1, 2, 3], V)


def test_slot_constraint_only_in_band_ids_and_stop_on_boundaries() -> None:
    torch.manual_seed(0)
    sampler = _sampler(temperature=1.0, orpheus_audio_slots=True, seed=3)
    parser = orpheus.AudioTokenParser()
    for position in range(7 * 6):
        logits = torch.randn(V) * 5
        logits[orpheus.END_OF_SPEECH] = -1e9  # keep sampling; stop placement is checked below
        token = sampler.step(logits)
        assert token in orpheus.slot_band(position)
        assert len(parser.feed([token])) == (1 if position % 7 == 6 else 0)  # a frame on every 7th token
    assert parser.ignored == 0 and parser.audio_tokens == 42


@pytest.mark.parametrize("position", range(8))
def test_stop_is_only_allowed_on_frame_boundaries(position: int) -> None:
    logits = torch.zeros(V)
    logits[orpheus.END_OF_SPEECH] = 100.0
    masked = audio_slot_mask(logits, position)
    band = orpheus.slot_band(position)
    finite = torch.isfinite(masked).nonzero().flatten().tolist()
    expected = list(band) + ([orpheus.END_OF_SPEECH] if position % 7 == 0 else [])
    assert sorted(finite) == sorted(expected)
    sampler = _sampler(temperature=0.0, orpheus_audio_slots=True)
    sampler.generated = position
    chosen = sampler.step(logits)
    assert (chosen == orpheus.END_OF_SPEECH) == (position % 7 == 0)


def test_min_tokens_hold_the_end_of_speech_back_to_the_first_allowed_boundary() -> None:
    logits = torch.zeros(V)
    logits[orpheus.END_OF_SPEECH] = 100.0  # the model wants to stop at once
    sampler = _sampler(temperature=0.0, orpheus_audio_slots=True, min_tokens=21)
    chosen = [sampler.step(logits) for _ in range(22)]
    assert orpheus.END_OF_SPEECH not in chosen[:21] and chosen[21] == orpheus.END_OF_SPEECH
    for position in (0, 7, 14):
        assert torch.isinf(audio_slot_mask(logits, position, min_tokens=21)[orpheus.END_OF_SPEECH])
    assert audio_slot_mask(logits, 21, min_tokens=21)[orpheus.END_OF_SPEECH] == 100.0


def test_min_tokens_hold_plain_stop_ids_back_and_leave_the_callers_logits_alone() -> None:
    logits = torch.zeros(8)
    logits[5] = 10.0
    sampler = TokenSampler(SamplingParams(max_tokens=9, temperature=0.0, stop_token_ids=(5, 99), min_tokens=3), [], 8)
    assert [sampler.step(logits) for _ in range(4)] == [0, 0, 0, 5]
    assert logits[5] == 10.0
    unbounded = TokenSampler(SamplingParams(max_tokens=9, temperature=0.0, stop_token_ids=(5,)), [], 8)
    assert unbounded.step(logits) == 5


@pytest.mark.parametrize("code", [0, 4095])
@pytest.mark.parametrize("position", [0, 3, 6])
def test_edge_codes_reachable(code: int, position: int) -> None:
    logits = torch.zeros(V)
    target = orpheus.slot_band(position).start + code
    logits[target] = 50.0
    logits[target - 1 if code == 0 else target + 1] = 60.0  # the out-of-band neighbour is higher
    sampler = _sampler(temperature=0.0, orpheus_audio_slots=True)
    sampler.generated = position
    token = sampler.step(logits)
    assert token == target
    assert orpheus.token_to_code(token, position) == code


def test_subset_path_matches_full_mask_greedy() -> None:
    torch.manual_seed(1)
    for position in range(14):
        logits = torch.randn(V)
        sampler = _sampler(temperature=0.0, orpheus_audio_slots=True)
        sampler.generated = position
        expected = int(torch.argmax(audio_slot_mask(logits, position)))
        assert sampler.step(logits) == expected


def test_greedy_is_argmax_and_top_k_one_is_deterministic() -> None:
    torch.manual_seed(2)
    logits = torch.randn(1000)
    best = int(torch.argmax(logits))
    assert _sampler(temperature=0.0).step(torch.cat([logits, torch.full((V - 1000,), -50.0)])) == best
    params = SamplingParams(max_tokens=1, temperature=1.5, top_k=1)
    picks = {choose(logits, params, make_generator(seed)) for seed in range(20)}
    assert picks == {best}


def test_top_k_and_top_p_filters() -> None:
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    assert torch.isfinite(apply_top_k(logits, 2)).tolist() == [True, True, False, False, False]
    probs = torch.softmax(logits, 0)  # ~0.64, 0.24, 0.09, ...
    kept = torch.isfinite(apply_top_p(logits, float(probs[0]) + 0.01)).tolist()
    assert kept == [True, True, False, False, False]
    assert torch.isfinite(apply_top_p(logits, 0.01)).tolist() == [True, False, False, False, False]
    assert torch.equal(apply_top_p(logits, 1.0), logits)


def test_repetition_penalty_hf_style() -> None:
    logits = torch.tensor([2.0, -2.0, 2.0, -2.0])
    seen = torch.tensor([True, True, False, False])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [1.0, -4.0, 2.0, -2.0]


def test_presence_and_frequency_penalties_openai_style() -> None:
    logits = torch.zeros(4)
    counts = torch.tensor([0, 1, 3, 0], dtype=torch.int32)
    out = apply_presence_frequency(logits, counts, presence=0.5, frequency=0.25)
    assert out.tolist() == [0.0, -0.75, -1.25, 0.0]


def test_sampler_penalises_generated_and_prompt_tokens() -> None:
    sampler = TokenSampler(SamplingParams(max_tokens=10, repetition_penalty=2.0, frequency_penalty=1.0), [0], 4)
    sampler.record(1)
    sampler.record(1)
    out = sampler.process(torch.tensor([4.0, 4.0, 4.0, -1.0]))
    # id 0: prompt -> repetition only; id 1: generated twice -> repetition and frequency.
    assert out.tolist() == [2.0, 0.0, 4.0, -1.0]


def test_seeds_reproduce_and_differ() -> None:
    def run(seed: int) -> list[int]:
        sampler = _sampler(temperature=1.0, top_p=0.9, seed=seed, orpheus_audio_slots=True)
        torch.manual_seed(5)
        return [sampler.step(torch.randn(V)) for _ in range(21)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_audio_fast_path_matches_full_processing_with_penalties() -> None:
    torch.manual_seed(4)
    params = dict(temperature=0.0, orpheus_audio_slots=True, repetition_penalty=1.3, presence_penalty=0.5)
    fast, full = _sampler(**params), _sampler(**params)
    for _ in range(21):
        logits = torch.randn(V)
        expected = int(torch.argmax(full.process(logits)))
        full.record(expected)
        assert fast.step(logits) == expected
