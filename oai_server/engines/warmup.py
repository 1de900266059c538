"""Engine warm-up before readiness.

The first batched, sampled request on vLLM JIT-compiles Triton sampling and penalty kernels for
that batch shape, which stalled every live stream for ~4 s on the H100. So before `/health/ready`
turns green, each engine runs short sampled requests at each configured batch size (with the same
sampling features real requests use: top-p, repetition penalty, the Orpheus slot mask), and SNAC
decodes a window of each shape once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

from ..codec.orpheus import STOP_TOKEN_IDS, TOKENS_PER_FRAME, speech_prompt
from ..codec.snac_window_policy import WindowPolicy
from ..codec.snac_windows import Window
from .base import SamplingParams, TokenEngine, new_request_id

if TYPE_CHECKING:
    from ..codec.tokenizer import TextTokenizer
    from .bundle import Engines

logger = logging.getLogger(__name__)


async def _drain(engine: TokenEngine, prompt: Sequence[int], params: SamplingParams) -> None:
    stream = engine.generate(prompt, params, new_request_id("warmup"))
    async with aclosing(stream):  # type: ignore[type-var]
        async for _ in stream:
            pass


async def warm_engine(engine: TokenEngine, prompt: Sequence[int], params: SamplingParams, sizes: Sequence[int]) -> None:
    """Run `n` concurrent copies of a short request for each batch size `n`."""
    for size in sizes:
        await asyncio.gather(*(_drain(engine, prompt, params) for _ in range(size)))


def tts_warmup_request(tokenizer: TextTokenizer) -> tuple[list[int], SamplingParams]:
    """A short Orpheus request with the sampling features real requests use."""
    prompt = speech_prompt(tokenizer, "tara", "Warming up.")
    params = SamplingParams(
        max_tokens=4 * TOKENS_PER_FRAME,
        temperature=0.6,
        top_p=0.8,
        repetition_penalty=1.1,
        stop_token_ids=STOP_TOKEN_IDS,
        orpheus_audio_slots=True,
    )
    return prompt, params


async def warm_up(
    engines: Engines,
    sizes: Sequence[int],
    llm_sizes: Sequence[int],
    windows: WindowPolicy,
    snac_graphs: bool = False,
) -> float:
    """Warm Orpheus at `sizes`, Gemma at `llm_sizes` and SNAC at every window length `windows` can
    produce (first capturing CUDA graphs of the lengths streams decode, ramp and steady, when `snac_graphs`
    and the decoder is on CUDA); returns the seconds it took."""
    start = time.monotonic()
    tts_prompt, tts_params = tts_warmup_request(engines.tts_tokenizer)
    llm_prompt = engines.llm_tokenizer.encode("Hello", add_special_tokens=True)
    llm_params = SamplingParams(
        max_tokens=8, temperature=1.0, top_p=0.95, presence_penalty=0.1, stop_token_ids=engines.llm_stop_token_ids
    )
    await asyncio.gather(
        warm_engine(engines.tts, tts_prompt, tts_params, sizes),
        warm_engine(engines.llm, llm_prompt, llm_params, llm_sizes),
    )
    if snac_graphs:  # after the engines' warm-up: a capture in the engine's process while it samples would fail it
        try:
            await engines.snac.capture_graphs(windows.decode_shapes)
        except Exception:
            logger.exception("SNAC CUDA graph capture failed; decoding eagerly")
    frame = (0,) * TOKENS_PER_FRAME
    for length in range(1, windows.longest_window + 1):
        await asyncio.gather(*(engines.snac.decode(Window((frame,) * length, 0)) for _ in range(4)))
    elapsed = time.monotonic() - start
    logger.info("warm-up done in %.1f s (batch sizes %s)", elapsed, list(sizes))
    return elapsed
