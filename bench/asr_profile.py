"""Where a transcription's time goes in the vLLM Whisper engine (GPU), stage by stage, and a torch profile.

    python bench/asr_profile.py --model /tmp/rand/whisper --out $OUT/asr_profile [--max-num-batched-tokens 12000]

The 5 s espeak-ng utterance (`bench/data/utterance_5s.flac`, 16 kHz), `language=en`, 24 transcript tokens
(random weights never stop early). For each N of ``--concurrency``, each stage as N simultaneous requests:

- ``render``: vLLM's renderer alone (tokenizing and the log-mel features, in its worker threads);
- ``encode``: N pre-rendered prompts at once with ``max_tokens=1`` (the encoder and one decoder step);
- ``decode``: the same with 24 tokens; every output's arrival is kept, and arrivals closer than 0.3 ms
  count as one engine step, so the step times show where the engine's time goes;
- ``transcribe``: `VLLMWhisper.transcribe` (render, then generate);
- ``service``: the server's `TranscriptionService` without HTTP: the flac decoded, the VAD, then ``transcribe``.

Then one more ``transcribe`` round at the largest N under vLLM's torch profiler (the engine core's CPU and
CUDA activity): vLLM writes its table to ``--out/profile/profiler_out_0.txt``, and this script adds the GPU's
busy time over the profiled span from the trace, and for the longest gaps in the GPU's work what the engine
core's CPU ran meanwhile. During the unprofiled ``transcribe`` rounds a sampler notes
every 2 ms what each thread of this process runs, and a 1 ms ticker measures the event loop's lag.

No assertions: it measures and reports (``--out/asr_profile.json`` and a table on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import spread, write_json
from profile_engine import gpu_kernels, read_trace, summarize_events

from oai_server.codec.audio_input import decode_audio
from oai_server.engines.asr import TranscriptionParams
from oai_server.engines.asr_vllm import VLLMWhisper, transcription_sampling_kwargs, whisper_prompt
from oai_server.engines.vllm_engine import build_async_llm
from oai_server.serving.transcription import TranscriptionService
from oai_server.settings import Settings

UTTERANCE = Path(__file__).resolve().parent / "data" / "utterance_5s.flac"
STEP_GAP_S = 0.0003


class Sampler:
    """Every ``period`` seconds, the innermost frame of every thread of this process (name -> counts)."""

    def __init__(self, period: float = 0.002) -> None:
        self.period = period
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        names = {}
        while not self._stop.wait(self.period):
            for ident, frame in sys._current_frames().items():
                if ident == threading.get_ident():
                    continue
                if ident not in names:
                    names = {t.ident: t.name.split("_")[0].rstrip("-0123456789") for t in threading.enumerate()}
                code = frame.f_code
                self.counts[names.get(ident, "?")][f"{Path(code.co_filename).name}:{code.co_name}"] += 1

    def top(self, n: int = 12) -> dict[str, list[tuple[str, int]]]:
        return {name: counter.most_common(n) for name, counter in self.counts.items()}


async def loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    """How late a 1 ms sleep wakes, while ``stop`` is unset."""
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - before - 0.001)


def steps_of(arrivals: list[float]) -> list[float]:
    """Durations between distinct output arrivals (one engine step each)."""
    times = sorted(arrivals)
    marks = [times[0]] if times else []
    for t in times[1:]:
        if t - marks[-1] > STEP_GAP_S:
            marks.append(t)
    return [b - a for a, b in itertools.pairwise(marks)]


async def render(engine: VLLMWhisper, audio: np.ndarray, n: int) -> tuple[list[Any], list[float]]:
    async def one() -> tuple[Any, float]:
        start = time.perf_counter()
        prompt = await engine._render(whisper_prompt(audio, "en"))
        return prompt, time.perf_counter() - start

    results = await asyncio.gather(*(one() for _ in range(n)))
    return [r[0] for r in results], [r[1] for r in results]


async def generate(engine: VLLMWhisper, prompts: list[Any], max_tokens: int, tag: str) -> dict[str, Any]:
    """The pre-rendered ``prompts`` at once: per-request first/last output times and the step durations."""
    params = engine._make_params(transcription_sampling_kwargs(TranscriptionParams("en", max_tokens=max_tokens)))
    arrivals: list[float] = []
    start = time.perf_counter()

    async def one(i: int, prompt: Any) -> tuple[float, float]:
        first = 0.0
        async for _ in engine._engine.generate(prompt, params, f"{tag}-{i}-{time.time_ns()}"):
            now = time.perf_counter()
            arrivals.append(now)
            first = first or now - start
        return first, time.perf_counter() - start

    results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    steps = steps_of(arrivals)
    return {
        "first_ms": spread([r[0] * 1000 for r in results]),
        "total_ms": spread([r[1] * 1000 for r in results]),
        "steps": len(steps),
        "step_ms": [round(s * 1000, 2) for s in steps[:64]],
    }


async def transcribe(engine: VLLMWhisper, audio: np.ndarray, n: int, tag: str) -> list[float]:
    params = TranscriptionParams("en", max_tokens=24)

    async def one(i: int) -> float:
        start = time.perf_counter()
        async for _ in engine.transcribe(audio, params, f"{tag}-{i}-{time.time_ns()}"):
            pass
        return time.perf_counter() - start

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def service(svc: TranscriptionService, data: bytes, n: int) -> list[float]:
    """N concurrent transcriptions of the file's bytes through the server's service (decode, VAD, engine)."""
    options = svc.options(language="en", max_tokens=24)

    async def one() -> float:
        start = time.perf_counter()
        await svc.transcribe(await svc.prepare(await svc.decode(data), options))
        return time.perf_counter() - start

    return list(await asyncio.gather(*(one() for _ in range(n))))


def idle_gaps(events: list[dict[str, Any]], top: int = 8) -> list[dict[str, Any]]:
    """The ``top`` longest gaps (over 1 ms) between GPU kernels, each with the CPU events that overlap it most."""
    cpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "cuda_runtime", "user_annotation")]
    gaps, end = [], 0.0
    for start, stop in sorted((e["ts"], e["ts"] + e["dur"]) for e in gpu_kernels(events)):
        if end and start - end > 1000:
            gaps.append((start - end, end, start))
        end = max(end, stop)
    out = []
    for length, begin, finish in sorted(gaps, reverse=True)[:top]:
        overlap = collections.Counter[str]()
        for e in cpu:
            lo, hi = max(begin, e["ts"]), min(finish, e["ts"] + e.get("dur", 0))
            if hi > lo:
                overlap[f"{e.get('cat')}:{e['name'][:70]}"] += hi - lo
        cpu_ms = [(name, round(us / 1000, 2)) for name, us in overlap.most_common(8)]
        out.append({"gap_ms": round(length / 1000, 2), "cpu_ms": cpu_ms})
    return out


def gpu_busy(trace_dir: Path) -> dict[str, Any]:
    """`profile_engine.summarize_events` of the worker's trace, the GPU's busy fraction, and its idle gaps."""
    traces = sorted(trace_dir.glob("*.pt.trace.json*"))
    if not traces:
        return {"trace": None}
    events = read_trace(traces[-1])
    summary = summarize_events(events, traces[-1].name, top=15)
    wall = summary["profiled_wall_ms_per_step"]
    summary["busy_fraction"] = round(summary["gpu_busy_ms_per_step"] / wall, 3) if wall else None
    summary["gaps"] = idle_gaps(events)
    return summary


async def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    profile_dir = (out / "profile").resolve()
    profile_dir.mkdir(parents=True, exist_ok=True)
    audio = decode_audio(
        UTTERANCE.read_bytes(), sample_rate=16000, param="file", max_bytes=25 << 20, max_seconds=60
    ).samples

    def factory(kwargs: dict[str, Any]) -> Any:
        kwargs["profiler_config"] = {
            "profiler": "torch",
            "torch_profiler_dir": str(profile_dir),
            "torch_profiler_with_stack": False,
            "ignore_frontend": True,
        }
        return build_async_llm(kwargs)

    started = time.perf_counter()
    engine = await VLLMWhisper.create(
        args.model,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        engine_factory=factory,
    )
    report: dict[str, Any] = {"model": args.model, "engine": engine.info.details, "audio_s": len(audio) / 16000}
    report["start_s"] = round(time.perf_counter() - started, 1)
    await transcribe(engine, audio, 4, "warm")
    levels = [int(n) for n in args.concurrency.split(",")]
    threads: dict[str, Any] = {}
    for n in levels:
        level: dict[str, Any] = {}
        prompts, render_s = await render(engine, audio, n)
        level["render_ms"] = spread([s * 1000 for s in render_s])
        level["encode"] = await generate(engine, prompts, 1, f"enc{n}")
        level["decode"] = await generate(engine, prompts, 24, f"dec{n}")
        stop, lags = asyncio.Event(), list[float]()
        ticker = asyncio.create_task(loop_lag(stop, lags))
        with (sampler := Sampler()):
            totals = [t for _ in range(args.rounds) for t in await transcribe(engine, audio, n, f"t{n}")]
        stop.set()
        await ticker
        level["transcribe_ms"] = spread([t * 1000 for t in totals])
        level["loop_lag_ms"] = spread([lag * 1000 for lag in lags])
        report[f"n{n}"] = level
        threads[f"n{n}"] = sampler.top()
        enc, dec = level["encode"], level["decode"]
        print(f"N={n:3d} render p50 {level['render_ms']['p50']:7.1f}  encode(1 tok) p95 "
              f"{enc['total_ms']['p95']:7.1f}  decode(24) first p50 {dec['first_ms']['p50']:7.1f} "
              f"total p95 {dec['total_ms']['p95']:7.1f} steps {dec['steps']}  "
              f"transcribe p50 {level['transcribe_ms']['p50']:7.1f} p95 {level['transcribe_ms']['p95']:7.1f}  "
              f"loop lag p99 {level['loop_lag_ms']['p99']:5.1f}", flush=True)  # fmt: skip
        print("   decode step ms:", level["decode"]["step_ms"][:40], flush=True)
    report["threads"] = threads
    svc = TranscriptionService(Settings(), engine)
    data = UTTERANCE.read_bytes()
    for n in levels:
        totals = [t for _ in range(args.rounds) for t in await service(svc, data, n)]
        report[f"n{n}"]["service_ms"] = spread([t * 1000 for t in totals])
        print(f"N={n:3d} service (decode, VAD, transcribe) p50 {report[f'n{n}']['service_ms']['p50']:7.1f} "
              f"p95 {report[f'n{n}']['service_ms']['p95']:7.1f}", flush=True)  # fmt: skip
    await engine._engine.start_profile()
    profiled = await transcribe(engine, audio, levels[-1], "prof")
    await engine._engine.stop_profile()
    report["profiled_transcribe_ms"] = spread([t * 1000 for t in profiled])
    await asyncio.sleep(2)  # the trace file is written after stop returns
    report["gpu"] = gpu_busy(profile_dir)
    write_json(out / "asr_profile.json", report)
    print(json.dumps({"gpu": report["gpu"], "threads": report["threads"]}, indent=1)[:6000])
    svc.close()
    await engine.close()


if __name__ == "__main__":  # vLLM spawns its engine core: the guard is required
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=12000)
    asyncio.run(main(parser.parse_args()))
