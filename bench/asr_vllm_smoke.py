"""Smoke test and timings of `VLLMWhisper` (vLLM in-process Whisper) on a GPU.

    python bench/asr_vllm_smoke.py [--model DIR] [--wav 16k-mono.wav] [--gpu-memory-utilization 0.1]

Without ``--model`` it builds the tiny demo Whisper (random weights) into ``--cache``. It checks
language detection, a text prompt, sampling, max_tokens, the abort on close of the iterator, and
prints the time to the first delta and to the end at 1, 8 and 32 concurrent requests.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import wave
from pathlib import Path

import numpy as np

from oai_server.engines.asr import TranscriptionParams, TranscriptPiece
from oai_server.engines.asr_vllm import VLLMWhisper
from oai_server.engines.demo_whisper import build_demo_whisper


def _audio(path: str | None, seconds: float = 5.0) -> np.ndarray:
    if path:
        with wave.open(path) as f:
            assert f.getframerate() == 16000 and f.getnchannels() == 1 and f.getsampwidth() == 2
            return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / 32768
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    voiced = np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * voiced + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


async def _run(
    engine: VLLMWhisper, audio: np.ndarray, params: TranscriptionParams, rid: str
) -> tuple[float, float, list[TranscriptPiece]]:
    start = time.perf_counter()
    first = 0.0
    pieces: list[TranscriptPiece] = []
    async for piece in engine.transcribe(audio, params, rid):
        first = first or time.perf_counter() - start
        pieces.append(piece)
    return first, time.perf_counter() - start, pieces


async def main(args: argparse.Namespace) -> None:
    model = args.model or str(build_demo_whisper(Path(args.cache)))
    audio = _audio(args.wav)
    start = time.perf_counter()
    engine = await VLLMWhisper.create(
        model, gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager, max_num_seqs=64
    )
    print(
        f"started in {time.perf_counter() - start:.1f}s; {len(engine.languages)} languages; "
        f"{len(audio) / 16000:.2f}s of audio"
    )
    cases = {
        "en": TranscriptionParams(language="en"),
        "detect": TranscriptionParams(),
        "de+prompt": TranscriptionParams(language="de", prompt="The quick brown fox"),
        "sampled": TranscriptionParams(language="en", temperature=0.8),
        "max3": TranscriptionParams(language="en", max_tokens=3),
        "translate": TranscriptionParams(language="de", task="translate"),
    }
    for name, params in cases.items():
        first, total, pieces = await _run(engine, audio, params, f"case-{name}")
        tokens = sum(p.tokens for p in pieces)
        text = "".join(p.text for p in pieces)
        language = pieces[0].language if pieces else None
        print(f"{name:10s} first {first * 1000:6.1f} ms  total {total * 1000:6.1f} ms  pieces {len(pieces):3d}  "
              f"tokens {tokens:3d}  language {language}  {text[:50]!r}")  # fmt: skip
    stream = engine.transcribe(audio, cases["en"], "abandoned")
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    print("after aclose: active", engine.active_requests())
    for n in (1, 8, 32):
        for _ in range(2):  # the first round warms up
            results = await asyncio.gather(
                *(_run(engine, audio, cases["en"], f"c{n}-{i}-{time.time()}") for i in range(n))
            )
        firsts = sorted(r[0] * 1000 for r in results)
        totals = sorted(r[1] * 1000 for r in results)
        p95 = totals[max(0, int(0.95 * len(totals)) - 1)]
        print(f"concurrency {n:2d}: first p50 {statistics.median(firsts):6.1f} ms  total p50 "
              f"{statistics.median(totals):6.1f} ms  p95 {p95:6.1f} ms")  # fmt: skip
    await engine.close()


if __name__ == "__main__":  # vLLM spawns its engine core: the guard is required
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--cache", default="/tmp/asr-demo-cache")
    parser.add_argument("--wav")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    parser.add_argument("--enforce-eager", action="store_true")
    asyncio.run(main(parser.parse_args()))
