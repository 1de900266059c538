"""The CPU cost of a transcription's audio work on this host: decoding, the VAD, Whisper's log-mel features.

    python bench/audio_cpu.py [--n 32] [--out DIR]

On the 5 s espeak-ng utterance (`bench/data/utterance_5s.flac`, and the same samples as a 16-bit WAV for the
decoder's WAV fast path: ``decode wav``), each stage once on one thread (the mean of 20),
then N at once in thread pools of 1, 4 and N workers, alone and beside vLLM-style feature extraction (4 threads
computing Whisper's features, as vLLM's renderer does): how much of each stage holds the GIL, and what a
bounded pool would change on a machine of this many cores. It needs no GPU: on the lent GPU host it explains
what `bench/asr_profile.py` measured there (decoding and the VAD took ~0.8 s for 32 requests in the server
process, against ~0.25 s on a 2-core CI machine). No assertions: a table and ``--out/audio_cpu.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import as_wav, write_json

from oai_server.codec.audio_input import decode_audio
from oai_server.engines.vad import default_vad

UTTERANCE = Path(__file__).resolve().parent / "data" / "utterance_5s.flac"


def timed(work: Callable[[], Any], repeats: int = 20) -> float:
    """Mean milliseconds of ``work`` on this thread."""
    work()
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - start) / repeats * 1000


def burst(work: Callable[[], Any], n: int, workers: int, beside: Callable[[], Any] | None = None) -> float:
    """Milliseconds until ``n`` runs of ``work`` in a pool of ``workers`` are done (with 4 threads of ``beside``)."""
    with cf.ThreadPoolExecutor(workers) as pool, cf.ThreadPoolExecutor(4) as renderer:
        start = time.perf_counter()
        others = [renderer.submit(beside) for _ in range(n)] if beside else []
        for future in [pool.submit(work) for _ in range(n)]:
            future.result()
        elapsed = (time.perf_counter() - start) * 1000
        for future in others:
            future.result()
    return elapsed


def main(args: argparse.Namespace) -> None:
    import torch
    from transformers import WhisperFeatureExtractor

    data = UTTERANCE.read_bytes()
    vad = default_vad()
    features = WhisperFeatureExtractor(feature_size=128)

    def decode(upload: bytes = data) -> np.ndarray:
        return decode_audio(upload, sample_rate=16000, param="file", max_bytes=25 << 20, max_seconds=600).samples

    wav = as_wav(data)
    samples = decode()
    stages: dict[str, Callable[[], Any]] = {
        "decode": decode,
        "decode wav": lambda: decode(wav),
        "vad": lambda: vad.probabilities(samples),
        "decode+vad": lambda: vad.probabilities(decode()),
        "features": lambda: features(samples, sampling_rate=16000, return_tensors="pt"),
    }
    report: dict[str, Any] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "n": args.n}
    report["one_thread_ms"] = {name: round(timed(work), 2) for name, work in stages.items()}
    print(f"{report['cpus']} CPUs, torch threads {report['torch_threads']}; one thread, ms:", report["one_thread_ms"])
    bursts: dict[str, float] = {}
    for workers in (1, 4, args.n):
        for name in ("decode", "decode wav", "vad", "decode+vad"):
            bursts[f"{name} x{args.n}, {workers} workers"] = burst(stages[name], args.n, workers)
        key = f"decode+vad x{args.n}, {workers} workers, beside features"
        bursts[key] = burst(stages["decode+vad"], args.n, workers, stages["features"])
    report["burst_ms"] = {k: round(v, 1) for k, v in bursts.items()}
    for name, ms in report["burst_ms"].items():
        print(f"  {name:50s} {ms:8.1f} ms")
    if args.out:
        write_json(Path(args.out) / "audio_cpu.json", report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32, help="requests at once")
    parser.add_argument("--out", default=None)
    main(parser.parse_args())
