"""The seed-style column of `bench/baselines.py`: Canopy's parser, fed by an engine that batches its tokens.

vLLM streams `stream_interval` tokens per output (7 in the bench, as in the server) while the seed's engine
streamed one; Canopy's parser keeps only the last `<custom_token_N>` of the text it is handed. On the H200
(session 22) the seed column first came out empty ("no audio" for every stream) for that reason; the bench
now hands the parser one token at a time, and this checks it on the real demo tokenizer and SNAC.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from baselines import Bench  # noqa: E402

from oai_server.codec.orpheus import AUDIO_TOKEN_BASE, CODEBOOK_SIZE, SAMPLES_PER_FRAME, TOKENS_PER_FRAME  # noqa: E402
from oai_server.engines.demo import build_demo_models  # noqa: E402
from oai_server.engines.loading import load_tokenizer  # noqa: E402

FRAMES = 10


class ScriptedEngine:
    """Yields a fixed list of Orpheus token ids, `per_delta` of them per output."""

    def __init__(self, token_ids: list[int], per_delta: int) -> None:
        self.token_ids = token_ids
        self.per_delta = per_delta

    async def generate(self, prompt: list[int], params: Any, request_id: str) -> AsyncIterator[list[int]]:
        for start in range(0, len(self.token_ids), self.per_delta):
            await asyncio.sleep(0)
            yield self.token_ids[start : start + self.per_delta]


@pytest.mark.parametrize("per_delta", [1, 5, 7])
def test_the_seed_pipeline_plays_every_window_however_the_engine_batches_tokens(
    per_delta: int, demo_cache: Path
) -> None:
    from snac import SNAC

    demo = build_demo_models(demo_cache)
    rng = np.random.default_rng(per_delta)
    codes = rng.integers(1, CODEBOOK_SIZE, size=(FRAMES, TOKENS_PER_FRAME))  # Canopy drops a code of 0
    token_ids = [
        AUDIO_TOKEN_BASE + slot * CODEBOOK_SIZE + int(code) for frame in codes for slot, code in enumerate(frame)
    ]
    args = argparse.Namespace(
        text="Hello there.", max_tokens=len(token_ids), seed_decode="loop", snac_device="cpu", prebuffer_ms=250
    )
    snac = SNAC.from_pretrained(str(demo.snac_dir)).eval()
    bench = Bench(args, ScriptedEngine(token_ids, per_delta), load_tokenizer(str(demo.tts_dir)), snac)

    result = asyncio.run(bench.seed(0))

    # One decode of the last 4 frames at every 7th code from the 28th on: frames 4..10, 2048 samples each.
    assert result.ok and result.error is None
    assert result.bytes == (FRAMES - 3) * SAMPLES_PER_FRAME * 2
    assert [samples for _, samples in result.arrivals] == [k * SAMPLES_PER_FRAME for k in range(1, FRAMES - 2)]
