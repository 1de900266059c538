"""A spoken segment always carries audio: Orpheus may not end it before three frames.

Orpheus may stop on any frame boundary, the first one included. On an H200 two of 649 random-weight
requests did, and their clients got a 200 with no audio. The synthesizer asks every engine for
`MIN_SPEECH_TOKENS` first (vLLM's ``min_tokens``; the transformers sampler masks the end of speech).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import torch

from oai_server.codec import orpheus
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.engines.base import SamplingParams
from oai_server.engines.sampling import TokenSampler
from oai_server.pipeline.speech import MIN_SPEECH_TOKENS, SpeechStats, SpeechSynthesizer, VoiceOptions


class _EagerToStopEngine:
    """Samples with the real `TokenSampler` from logits that always favour the end of speech."""

    def __init__(self) -> None:
        self.params: list[SamplingParams] = []

    async def generate(self, prompt: Any, params: SamplingParams, request_id: str) -> AsyncIterator[list[int]]:
        self.params.append(params)
        sampler = TokenSampler(params, prompt, orpheus.ORPHEUS_VOCAB_SIZE)
        logits = torch.zeros(orpheus.ORPHEUS_VOCAB_SIZE)
        logits[orpheus.END_OF_SPEECH] = 50.0
        for _ in range(params.max_tokens):
            token = sampler.step(logits)
            if token in params.stop_token_ids:
                return
            yield [token]


class _Decoder:
    def for_stream(self, request_id: str) -> Any:
        return self

    async def decode(self, window: Any) -> bytes:
        return b"\0\0" * (window.lead + 2048 * window.count)  # the seam before its chunk, then the chunk


async def _speak(engine: _EagerToStopEngine, max_tokens: int | None = None) -> bytes:
    tokenizer = SimpleNamespace(encode=lambda text, add_special_tokens=False: [1, 2, 3])
    synthesizer = SpeechSynthesizer(
        engine, tokenizer, _Decoder(), windows=WindowPolicy(), tokens_per_char=8.0,  # type: ignore[arg-type]
        max_tokens=1024, max_model_len=2048,
    )  # fmt: skip
    options = VoiceOptions("tara", 0.0, 1.0, 1.0, max_tokens=max_tokens)
    return b"".join([pcm async for pcm in synthesizer.synthesize("Hi.", options, SpeechStats())])


async def test_a_model_that_wants_to_stop_at_once_still_speaks_three_frames() -> None:
    engine = _EagerToStopEngine()
    pcm = await _speak(engine)
    assert MIN_SPEECH_TOKENS == 21 and engine.params[0].min_tokens == 21
    assert len(pcm) == 3 * 2048 * 2  # three SNAC frames of 2048 samples, s16le


async def test_min_tokens_never_exceed_a_smaller_budget() -> None:
    engine = _EagerToStopEngine()
    pcm = await _speak(engine, max_tokens=7)
    assert engine.params[0].max_tokens == 7 and engine.params[0].min_tokens == 7
    assert len(pcm) == 2048 * 2
