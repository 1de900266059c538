"""The voice assistant's dataflow: LLM token deltas -> text deltas -> spoken segments.

    text = reply_text(llm, ...)          # AsyncIterator[str], stop strings applied
    segs = spoken_segments(text, ...)    # AsyncIterator[str], cut by the segmenter, cleaned
    audio = synthesize_segments(synth, segs, voice)   # see pipeline.speech

Each stage is an async generator; closing the last one closes the ones before it, which
aborts the LLM request and every TTS request of the reply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from ..codec.tokenizer import TextTokenizer
from ..engines.base import SamplingParams, TokenEngine, new_request_id
from .detokenize import IncrementalDetokenizer, StopMatcher
from .segmenter import SentenceSegmenter
from .text_clean import clean_for_speech


@dataclass
class ReplyStats:
    """What the LLM did, for `usage` and `finish_reason`."""

    prompt_tokens: int = 0
    text_tokens: int = 0
    finish_reason: str = "stop"


async def reply_text(
    llm: TokenEngine,
    tokenizer: TextTokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    stops: Sequence[str],
    stats: ReplyStats,
) -> AsyncIterator[str]:
    """Text deltas of the LLM's reply, cut at the first stop string."""
    stats.prompt_tokens = len(prompt_ids)
    detokenizer = IncrementalDetokenizer(tokenizer)
    matcher = StopMatcher(stops)
    deltas = llm.generate(prompt_ids, params, new_request_id("chat"))
    async with aclosing(deltas):  # type: ignore[type-var]
        async for delta in deltas:
            stats.text_tokens += len(delta)
            text = matcher.feed(detokenizer.feed(delta))
            if text:
                yield text
            if matcher.stopped:
                stats.finish_reason = "stop"
                return
    rest = matcher.flush()
    if rest:
        yield rest
    stats.finish_reason = "length" if stats.text_tokens >= params.max_tokens else "stop"


async def spoken_segments(
    text: AsyncIterator[str], *, max_chars: int, first_segment_words: int, first_segment_max_words: int = 0
) -> AsyncIterator[str]:
    """Segments to speak: cut at sentence (or, first, clause or word-count) boundaries; markdown and emoji removed."""
    segmenter = SentenceSegmenter(
        max_chars=max_chars,
        first_segment_words=first_segment_words or None,
        first_segment_max_words=first_segment_max_words or None,
    )
    async with aclosing(text):  # type: ignore[type-var]
        async for delta in text:
            for segment in segmenter.push(delta):
                spoken = clean_for_speech(segment)
                if spoken:
                    yield spoken
    for segment in segmenter.flush():
        spoken = clean_for_speech(segment)
        if spoken:
            yield spoken
