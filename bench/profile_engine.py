"""Where a decode step's time goes: the Orpheus engine at N streams, under vLLM's torch profiler.

One vLLM `AsyncLLM` on an Orpheus-shaped model, set up as `bench/baselines.py`'s raw mode (our slot
logits processor, the server's Orpheus sampling: temperature 0.6, top_p 0.8, repetition penalty 1.1;
top-p by vLLM's sampler, or with `--sampling band` over the band in the slot processor as the server
does). `--mode ours_in_engine` runs the server's pipeline instead: SNAC decoding in the engine-core
process (`--snac`), so the trace holds both, and the summary splits GPU time by CUDA stream (the
engine's and SNAC's, their overlap) and host time by thread (the engine core's and SNAC's service).
`--py-spy PATH` also samples the engine core over the unprofiled window (`engine_spy.py`): per thread,
what it does and how often it holds the GIL.
After the usual batched warm-up it runs N streams, measures the unprofiled step time for
`--measure-s`, then profiles `--steps` engine steps (vLLM `ProfilerConfig.max_iterations`) and
summarises the worker's trace: GPU kernel time per step against the unprofiled wall time per step
(the gap is time the GPU waits for the host), kernel time by category and by vLLM region
(forward, sample, ...), and the top kernels. GPU only; needs vLLM.
`--churn` then measures the same engine again (`unprofiled_churn`) with the N streams coming and going
as the server's Poisson arrivals do: each of N lanes starts a new stream the moment its last ends, with
a length from the arrivals' mix (`arrivals.LengthMix`, 1-20 s), so prefills and batch changes come as
under load, and profiles that (py-spy too). Both report the streams started a second.
`--snac-round-wait each` makes SNAC's worker wait for its stream after each window shape of a round, as before
session 31 (an A/B of the one wait a round in one run: CHURN_VARIANTS in `gpu_session.sh`).
`--snac-decode round-trip` keeps the pipeline and one round trip a worker round to the engine's SNAC thread (it wakes
and takes the GIL) but sends no frames and decodes nothing (silence back); `none` decodes silence in this process, no
round trip: with `gpu` (the server's) and raw vLLM with `--sampling band` (the same engine, no pipeline) one run splits
what streams coming and going cost ours into SNAC's GPU work, its thread in the engine core and the pipeline; `idle`
loads, compiles and captures SNAC in the engine core as `gpu` does and then decodes silence here, never asking it (what
SNAC's presence costs the engine, apart from its round trips). `--engine-switch-interval-ms` sets the engine process's
GIL switch interval (the server's `--tts-engine-switch-interval-ms`).
`--snac-ab VARIANTS` (with `--churn`) then runs SNAC variants in turn on the same churning engine, the order reversed
each repeat (`snac_ab.py`): ATen's depthwise kernel against the Triton kernel, against no SNAC work, one engine's
measurements apart from the next engine's drift.
`--trace` after `--no-trace` (a variant of `gpu_session.sh`'s churn_ab) profiles the churning engine too: the trace's
GPU time per CUDA stream (the engine's, SNAC's, their overlap) against the wall time of a step.
`--snac-fill-windows off` decodes each window shape as a batch of its own, as the server did before session 37 (an
A/B of filling the ramp's and the last windows to the steady length, so they batch with the steady ones);
`--snac-context-frames` is the server's C.
`--snac-graph-shapes stream` captures SNAC graphs of the ramp's and the steady shape only, as the server did before
session 28 (every stream's last window eager); an A/B takes two runs, since a capture while the engine samples
fails it (session 28: "Offset increment outside graph capture").

    python3 bench/profile_engine.py --tts-model /tmp/rand/orpheus --concurrency 128 --out /tmp/out/profile
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    SENTENCES,
    TOKENS_PER_FRAME,
    add_engine_variant_flags,
    orpheus_engine_spec,
    orpheus_params,
    orpheus_prompt,
    read_json,
    speech_synthesizer,
    voice_options,
    write_json,
)
from arrivals import LengthMix
from baselines import SilentDecoder
from engine_spy import spy_engine_core
from snac_ab import SnacVariant, SwitchableDecoder, parse_variants, prepare, snac_ab

from oai_server.codec.snac_service import EngineSnacDecoder, ServiceConnection
from oai_server.codec.snac_stream import SnacDecoder, window_frames
from oai_server.codec.snac_windows import Window

SNAC_SERVICE = "profile"

CATEGORIES = (  # first match wins; kernel names lowercased
    ("attention", ("flash", "fmha", "attn", "paged", "reshape_and_cache")),
    ("gemm", ("gemm", "cutlass", "nvjet", "xmma", "cublas", "matmul", "splitk", "scaled_mm", "fp8")),
    ("sampling", ("sort", "topk", "top_k", "top_p", "softmax", "cumsum", "scan", "exponential", "argmax", "sample")),
    ("penalties/logits", ("scatter", "gather", "index", "masked", "bincount", "penalt", "where")),
    ("norm/activation/rope", ("norm", "silu", "act_and_mul", "rotary", "gelu")),
    ("copies", ("memcpy", "memset", "copy", "cat")),
)


def category(name: str) -> str:
    """The coarse category of a kernel name."""
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "other")


def _union_us(intervals: Iterable[tuple[float, float]]) -> float:
    total, end = 0.0, -1.0
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def _is_step(name: str) -> bool:
    """vLLM 0.26 annotates each engine step as ``execute_context_<n>(..)_generation_<m>(..)``."""
    return name.startswith("execute_context_") or name == "gpu_model_runner: forward"


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The events of a torch-profiler chrome trace (gzipped or not)."""
    events: list[dict[str, Any]] = read_json(path)["traceEvents"]
    return events


def gpu_kernels(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trace's GPU work: kernels, copies and memsets."""
    return [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]


def summarize_trace(path: Path, top: int = 25) -> dict[str, Any]:
    """GPU time of a torch-profiler chrome trace: per step, by category, by vLLM region, top kernels."""
    return summarize_events(read_trace(path), path.name, top)


def _by_stream(kernels: list[dict[str, Any]], per: int) -> dict[str, dict[str, Any]]:
    """GPU time per CUDA stream: busy ms per step and the stream's top kernels."""
    streams: dict[str, list[dict[str, Any]]] = {}
    for e in kernels:
        streams.setdefault(str((e.get("args") or {}).get("stream", e.get("tid"))), []).append(e)
    out = {}
    for stream, events in sorted(streams.items(), key=lambda item: -sum(e["dur"] for e in item[1])):
        names: Counter[str] = Counter()
        for e in events:
            names[e["name"]] += e["dur"]
        out[stream] = {
            "busy_ms_per_step": _union_us((e["ts"], e["ts"] + e["dur"]) for e in events) / per / 1000,
            "kernels_per_step": len(events) / per,
            "top": [(n[:80], us / per / 1000) for n, us in names.most_common(3)],
        }
    return out


def _host_threads(events: list[dict[str, Any]], per: int) -> dict[str, float]:
    """Host time per thread: the union of its CPU ops' spans, ms per step (threads named where the trace names them)."""
    names = {
        str(e.get("tid")): str((e.get("args") or {}).get("name"))
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    spans: dict[str, list[tuple[float, float]]] = {}
    for e in events:
        if e.get("cat") in ("cpu_op", "python_function", "user_annotation") and "dur" in e:
            spans.setdefault(str(e.get("tid")), []).append((e["ts"], e["ts"] + e["dur"]))
    return {
        f"{tid} {names.get(tid, '')}".strip(): _union_us(s) / per / 1000
        for tid, s in sorted(spans.items(), key=lambda item: -len(item[1]))
    }


def summarize_events(events: list[dict[str, Any]], name: str, top: int = 25) -> dict[str, Any]:
    """`summarize_trace` of already read trace events (``name``: the trace file's)."""
    kernels = gpu_kernels(events)
    steps = sum(1 for e in events if e.get("cat") == "user_annotation" and _is_step(str(e.get("name", ""))))
    by_name: Counter[str] = Counter()
    by_cat: Counter[str] = Counter()
    for e in kernels:
        by_name[e["name"]] += e["dur"]
        by_cat[category(e["name"])] += e["dur"]
    regions: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "gpu_user_annotation" and str(e.get("name", "")).startswith("gpu_model_runner"):
            regions[e["name"].removeprefix("gpu_model_runner: ")] += e.get("dur", 0)
    busy = _union_us((e["ts"], e["ts"] + e["dur"]) for e in kernels)
    span = max((e["ts"] + e["dur"] for e in kernels), default=0) - min((e["ts"] for e in kernels), default=0)
    per = max(steps, 1)
    streams = _by_stream(kernels, per)
    total = sum(by_cat.values()) or 1
    return {
        "trace": name,
        "steps": steps,
        "gpu_busy_ms_per_step": busy / per / 1000,
        "profiled_wall_ms_per_step": span / per / 1000,
        "kernels_per_step": len(kernels) / per,
        "by_category_ms_per_step": {k: v / per / 1000 for k, v in by_cat.most_common()},
        "by_category_share": {k: v / total for k, v in by_cat.most_common()},
        "by_region_gpu_ms_per_step": {k: v / per / 1000 for k, v in regions.most_common()},
        "by_stream": streams,
        "streams_overlap_ms_per_step": sum(s["busy_ms_per_step"] for s in streams.values()) - busy / per / 1000,
        "host_ms_per_step_by_thread": _host_threads(events, per),
        "top_kernels_ms_per_step": [(name[:120], us / per / 1000) for name, us in by_name.most_common(top)],
    }


async def _stream(engine: Any, prompt: list[int], params: Any, index: int, counter: list[int]) -> None:
    from oai_server.engines.base import new_request_id

    async for delta in engine.generate(prompt, params, new_request_id(f"prof{index}")):
        counter[0] += len(delta)


async def _speak(synthesizer: Any, text: str, max_tokens: int, counter: list[int]) -> None:
    """One stream through the server's pipeline; ``counter`` in audio tokens (7 per 2048 samples decoded)."""
    from oai_server.pipeline.speech import SpeechStats

    async for pcm in synthesizer.synthesize(text, voice_options(max_tokens), SpeechStats()):
        counter[0] += len(pcm) // 2 // 2048 * 7


def churn_tokens(seconds: float) -> int:
    """The token budget of `seconds` of speech, in whole frames."""
    return max(1, round(seconds * SAMPLE_RATE / SAMPLES_PER_FRAME)) * TOKENS_PER_FRAME


async def _lane(run: Callable[[int, int], Awaitable[None]], lane: int, mix: LengthMix, started: list[int]) -> None:
    """One of `--churn`'s N lanes: stream after stream, each as long as a draw from `mix`, until cancelled."""
    lengths = random.Random(f"churn:{lane}")
    while True:
        started[0] += 1
        await run(churn_tokens(mix.draw(lengths)), started[0])


async def loop_lateness(seconds: float, tick_s: float = 0.01) -> dict[str, float]:
    """How late this process's event loop ran a `tick_s` timer over `seconds`, in ms: mean and p99. The bench's loop
    runs every stream's pipeline (ours) or reads every stream's tokens (raw): a late loop starts a lane's next stream
    late, which reads as a slower engine."""
    late: list[float] = []
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        await asyncio.sleep(tick_s)
        late.append(max(0.0, time.perf_counter() - now - tick_s))
    late.sort()
    if not late:
        return {"loop_late_ms_mean": 0.0, "loop_late_ms_p99": 0.0}
    return {
        "loop_late_ms_mean": 1000 * sum(late) / len(late),
        "loop_late_ms_p99": 1000 * late[int(0.99 * (len(late) - 1))],
    }


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the streams (their engine requests are aborted) and wait for them to end."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class WaitPerShape(EngineSnacDecoder):
    """`--snac-round-wait each`: a round's shapes one request each, so the engine's SNAC thread waits for its stream
    after every shape, as every round did before session 31 (the control of an A/B in one run)."""

    def decode_groups(self, groups: Sequence[Sequence[Window]]) -> Iterator[list[bytes] | Exception]:
        """Each group in a request of its own, decoded and waited for before the next."""
        for windows in groups:
            try:
                pcm = self.connection.call("decode", window_frames(windows), windows[0].decode_shape)
            except Exception as exc:
                yield exc
                continue
            yield self._pcm_of(windows, pcm)


class RoundTripOnly(SwitchableDecoder):
    """`--snac-decode round-trip`: a round costs the engine core what the server's does on the host side of a wait
    (its SNAC thread wakes, takes the GIL, answers) but no frames cross and no GPU work runs; each window gets silence
    of its decoded length."""

    decode_mode = "round-trip"


def _snac_counts(synthesizer: Any) -> tuple[int, int, int, float, float]:
    """(windows decoded, of them without a CUDA graph, worker rounds, seconds the worker spent in rounds, seconds
    windows waited for their round) so far; zeros without a synthesizer (`--mode raw`)."""
    if synthesizer is None:
        return 0, 0, 0, 0.0, 0.0
    decoder = synthesizer.decoder
    (decoded, eager), (busy, queued) = decoder.window_counts(), decoder.work_seconds()
    return decoded, eager, decoder.rounds, busy, queued


async def _pipeline(
    args: argparse.Namespace, engine: Any, tokenizer: Any, closers: list[Callable[[], None]]
) -> tuple[Any, ServiceConnection | None]:
    """The server's synthesizer with SNAC decoded by the engine's service (`--mode ours_in_engine`), and a connection
    to that service (None with `--snac-decode none` unless `--switch-interval-ab` needs one); what to close at the
    end, its decoder's and the service's connection, goes to `closers`."""
    from oai_server.codec.snac_model import resolve_snac_dtype
    from oai_server.codec.snac_window_policy import WindowPolicy, fills_windows
    from oai_server.codec.snac_windows import decode_shape

    dtype = resolve_snac_dtype(args.snac_dtype, "cuda")
    windows = WindowPolicy(
        context_frames=args.snac_context_frames,
        frames_per_decode=4,
        fill=fills_windows(args.snac_fill_windows, "cuda"),
        stretch_frames=args.snac_stretch_frames,
        crop=args.snac_crop_decodes == "on",
    )
    # as the server's warm-up does ("stream": as it did before session 28, every stream's last window eager)
    shapes = (
        windows.decode_shapes
        if args.snac_graph_shapes == "all"
        else tuple(dict.fromkeys(map(decode_shape, windows.stream_shapes)))
    )
    decoder: SnacDecoder
    control: ServiceConnection | None = None
    if args.snac_decode == "none" and args.switch_interval_ab:
        control = await asyncio.to_thread(ServiceConnection.open, SNAC_SERVICE)
        closers.append(control.close)
    if args.snac_decode == "idle":  # SNAC loaded, compiled and captured in the engine's process, then never asked
        service = await asyncio.to_thread(
            EngineSnacDecoder.load, SNAC_SERVICE, args.snac, "cuda", dtype, 64, args.snac_fusion, args.snac_depthwise
        )
        await service.capture_graphs(shapes)
        closers.append(service.close)
        control = service.connection
    if args.snac_decode in ("none", "idle"):
        decoder = SilentDecoder(None, "cpu", 64)
    else:
        served = SwitchableDecoder if args.snac_ab else EngineSnacDecoder
        gpu = WaitPerShape if args.snac_round_wait == "each" else served
        load = {"round-trip": RoundTripOnly, "gpu": gpu}[args.snac_decode].load
        decoder = await asyncio.to_thread(
            load, SNAC_SERVICE, args.snac, "cuda", dtype, 64, args.snac_fusion, args.snac_depthwise,
            args.snac_round_slices,
        )  # fmt: skip
        control = decoder.connection
    await decoder.capture_graphs(shapes)
    closers.append(decoder.close)
    if isinstance(decoder, SwitchableDecoder) and args.snac_ab:
        await prepare(decoder, snac_variants(args), args.snac, shapes)
    return speech_synthesizer(engine, tokenizer, decoder, windows, args.max_tokens, args.max_model_len), control


def snac_variants(args: argparse.Namespace) -> list[SnacVariant]:
    """`--snac-ab`'s variants, what a variant does not set from the run's own SNAC flags."""
    return parse_variants(args.snac_ab, args.snac_depthwise, args.snac_dtype, args.snac_fusion)


async def switch_interval_ab(
    control: ServiceConnection, measure: Callable[[float], Awaitable[dict[str, Any]]], args: argparse.Namespace
) -> dict[str, Any]:
    """`--switch-interval-ab MS`: on one engine, while streams churn, its process's GIL switch interval at MS, then back
    at what it was, `--switch-repeats` times, a measurement each (two engines differ by more than the A/B's effect:
    session 32 measured 16-19 % between two of the same code). Every run's line is printed as it comes."""
    before = await asyncio.to_thread(control.call, "switch_interval", None)
    runs: list[dict[str, Any]] = []
    for _ in range(args.switch_repeats):
        for seconds in (args.switch_interval_ab / 1000, before):
            now = await asyncio.to_thread(control.call, "switch_interval", seconds)
            runs.append({"switch_interval_ms": 1000 * now, **await measure(args.switch_settle_s)})
            print(f"unprofiled, churn, switch {1000 * now:g} ms: {json.dumps(runs[-1])}", flush=True)
    return {"switch_interval_ms_before": 1000 * before, "runs": runs}


async def churn_over_time(measure: Callable[[float], Awaitable[dict[str, Any]]], args: argparse.Namespace) -> list[Any]:
    """`--churn-repeats N`: the churning engine measured N times more, `--churn-gap-s` apart, each run's line printed as
    it comes (its `churn_s`: seconds since the lanes began). Whether a figure taken `--churn-settle-s` after the lanes
    began is the churn's steady state: every lane starts at once, so the streams in flight only reach the length mix's
    share of long ones after its longest stream (session 34: ours fell 25 % between 8 and 24 s)."""
    runs: list[dict[str, Any]] = []
    for _ in range(args.churn_repeats):
        runs.append(await measure(args.churn_gap_s))
        print(f"unprofiled, churn, at {runs[-1]['churn_s']:.0f} s: {json.dumps(runs[-1])}", flush=True)
    return runs


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up, measure, profile; the report."""
    from vllm.config import ProfilerConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from oai_server.engines.loading import load_tokenizer
    from oai_server.engines.vllm_engine import VLLMEngine
    from oai_server.engines.warmup import tts_warmup_request, warm_engine

    trace_dir = args.out / "trace"
    trace_dir.mkdir(parents=True, exist_ok=True)
    profiler = ProfilerConfig(
        profiler="torch",
        torch_profiler_dir=str(trace_dir),
        torch_profiler_with_stack=False,
        ignore_frontend=True,
        max_iterations=args.steps,
    )
    built: list[Any] = []

    def factory(kwargs: dict[str, Any]) -> Any:
        built.append(AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs, profiler_config=profiler)))
        return built[0]

    n = args.concurrency
    engine = await VLLMEngine.create(
        orpheus_engine_spec(args, max_num_seqs=n, snac_service=SNAC_SERVICE if args.mode == "ours_in_engine" else None),
        frame_deltas=args.frame_deltas,
        arrival_window_ms=args.arrival_window_ms,
        kind="vllm-orpheus",
        engine_factory=factory,
    )
    tokenizer = load_tokenizer(args.tts_model)
    closers: list[Callable[[], None]] = []
    synthesizer, control = (
        await _pipeline(args, engine, tokenizer, closers) if args.mode == "ours_in_engine" else (None, None)
    )
    report: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    try:
        prompt, params = tts_warmup_request(tokenizer)
        band = args.sampling == "band" or synthesizer is not None
        # warmed as it will run: vLLM's own top-p compiles its Triton kernel at the first batch of 8 or more
        await warm_engine(engine, prompt, dataclasses.replace(params, orpheus_band_sampling=band), sorted({1, n}))
        counter, started = [0], [0]

        async def one_stream(tokens: int, index: int) -> None:
            text = SENTENCES[index % len(SENTENCES)]
            if synthesizer is not None:
                await _speak(synthesizer, text, tokens, counter)
            else:
                sampling = orpheus_params(tokens, band_sampling=band)
                await _stream(engine, orpheus_prompt(tokenizer, text), sampling, index, counter)

        async def measure(settle_s: float, spy: bool) -> dict[str, Any]:
            """Tokens a second over `--measure-s` after `settle_s` (py-spy on the engine core if `spy`)."""
            await asyncio.sleep(settle_s)
            c0, s0, t0 = counter[0], started[0], time.perf_counter()
            w0, e0, r0, b0, q0 = _snac_counts(synthesizer)
            g0, h0 = engine.arrivals.groups, engine.arrivals.held
            lateness = asyncio.create_task(loop_lateness(args.measure_s))
            if spy and args.py_spy:  # the engine core's threads and who holds its GIL, over the unprofiled window
                report["engine_core_py_spy"] = await spy_engine_core(args.py_spy, os.getpid(), args.measure_s, args.out)
            else:
                await asyncio.sleep(args.measure_s)
            c1, s1, t1 = counter[0], started[0], time.perf_counter()
            w1, e1, r1, b1, q1 = _snac_counts(synthesizer)
            g1, h1 = engine.arrivals.groups, engine.arrivals.held
            steps_per_s = (c1 - c0) / n / (t1 - t0)
            return {
                "tokens_per_s_per_stream": steps_per_s,
                "wall_ms_per_step": 1000 / steps_per_s if steps_per_s else None,
                "aggregate_tokens_per_s": (c1 - c0) / (t1 - t0),
                "streams_started_per_s": (s1 - s0) / (t1 - t0),
                "snac_windows_per_s": (w1 - w0) / (t1 - t0),
                "snac_eager_windows_per_s": (e1 - e0) / (t1 - t0),  # windows of a shape without a graph
                # the SNAC worker's share of the wall time (near 1: streams wait on SNAC, not on the engine), its
                # rounds, and how long a window waited for its round
                "snac_busy": (b1 - b0) / (t1 - t0),
                "snac_rounds_per_s": (r1 - r0) / (t1 - t0),
                "snac_queued_ms_per_window": 1000 * (q1 - q0) / (w1 - w0) if w1 > w0 else None,
                "arrival_groups_per_s": (g1 - g0) / (t1 - t0),  # --arrival-window-ms: groups let in after a wait
                "arrivals_held_per_s": (h1 - h0) / (t1 - t0),
                **(await lateness),
            }

        tasks = [asyncio.create_task(one_stream(args.max_tokens, i)) for i in range(n)]
        report["unprofiled"] = await measure(args.settle_s, spy=not args.churn)
        print(f"unprofiled: {json.dumps(report['unprofiled'])}", flush=True)
        if args.churn:  # then, on the same engine, lanes of streams that end and start as arrivals do
            await _cancel(tasks)
            tasks = [asyncio.create_task(_lane(one_stream, lane, LengthMix(), started)) for lane in range(n)]
            churn_began = time.perf_counter()

            async def churn_run(settle_s: float, spy: bool = False) -> dict[str, Any]:
                """A measurement of the churning engine, with its start in seconds since the lanes began."""
                await asyncio.sleep(settle_s)
                return {"churn_s": time.perf_counter() - churn_began, **await measure(0.0, spy)}

            report["unprofiled_churn"] = await churn_run(args.churn_settle_s, spy=True)
            print(f"unprofiled, churn: {json.dumps(report['unprofiled_churn'])}", flush=True)
            if control is not None and args.switch_interval_ab:
                report["churn_switch_interval_ab"] = await switch_interval_ab(control, churn_run, args)
            if args.snac_ab and synthesizer is not None:
                report["churn_snac_ab"] = await snac_ab(
                    synthesizer.decoder, snac_variants(args), churn_run, args.snac, args.snac_ab_repeats,
                    args.snac_ab_settle_s,
                )  # fmt: skip
            if args.churn_repeats:
                report["churn_over_time"] = await churn_over_time(churn_run, args)
        if control is not None:  # the service's own counts: who answered its rounds (--snac-rounds), its graphs
            report["snac_service"] = await asyncio.to_thread(control.call, "stats")
        if not args.trace:
            await _cancel(tasks)
            return report
        await built[0].start_profile()
        await asyncio.sleep(args.profile_s)
        await built[0].stop_profile()
        await _cancel(tasks)
        deadline = time.monotonic() + args.trace_timeout
        traces: list[Path] = []
        while time.monotonic() < deadline and not traces:
            await asyncio.sleep(1)
            traces = sorted(trace_dir.rglob("*.json*"), key=lambda p: p.stat().st_size)
        if not traces:
            raise RuntimeError(f"no trace written under {trace_dir}")
        await asyncio.sleep(2)  # let a trace still being gzipped finish
        report["profile"] = summarize_trace(traces[-1])
    finally:
        await engine.close()
        for close in closers:
            close()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tts-model", required=True)
    p.add_argument("--mode", choices=("raw", "ours_in_engine"), default="raw")
    p.add_argument("--sampling", choices=("vocab", "band"), default="vocab", help="raw: where top-p runs")
    p.add_argument("--snac", default=None, help="ours_in_engine: the SNAC model")
    p.add_argument("--snac-fusion", default="off", choices=["off", "decoder"])
    p.add_argument(
        "--snac-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
        help="SNAC's precision, as the server's --snac-dtype (a half precision below 50 dB from float32 keeps float32)",
    )  # fmt: skip
    p.add_argument("--snac-low-priority", action="store_true", help="the server's --snac-low-priority")
    p.add_argument(
        "--snac-fill-windows", choices=("on", "off"), default="on",
        help="ours_in_engine: the server's --snac-fill-windows (on: its default on CUDA; off: each window shape a "
        "batch of its own, as before session 37)",
    )  # fmt: skip
    p.add_argument(
        "--snac-context-frames", type=int, default=2, help="ours_in_engine: the server's --snac-context-frames"
    )
    p.add_argument(
        "--snac-crop-decodes", choices=("on", "off"), default="off",
        help="ours_in_engine: the server's --snac-crop-decodes (off: its default on CUDA; on: SNAC's later stages only "
        "where the kept samples depend on them, session 40)",
    )  # fmt: skip
    p.add_argument(
        "--snac-depthwise", choices=("aten", "triton"), default="aten",
        help="ours_in_engine: the server's --snac-depthwise (aten: its default; triton: SNAC's depthwise convolutions "
        "by one Triton kernel each, session 41)",
    )  # fmt: skip
    p.add_argument(
        "--snac-stretch-frames", type=int, default=0, help="ours_in_engine: the server's --snac-stretch-frames (0: off)"
    )
    add_engine_variant_flags(p)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    p.add_argument("--quantization", default=None, help="vLLM weight quantization, e.g. fp8")
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--stream-interval", type=int, default=7, help="vLLM stream_interval (the server's default)")
    p.add_argument(
        "--churn", action="store_true",
        help="also measure (and profile) N lanes of streams with the arrivals' length mix, each restarted as it ends",
    )  # fmt: skip
    p.add_argument(
        "--snac-graph-shapes", choices=("all", "stream"), default="all",
        help="ours_in_engine: the SNAC shapes captured, the server's (all) or the ramp's and the steady one only "
        "(stream: the server before session 28, every stream's last window decoded eagerly)",
    )  # fmt: skip
    p.add_argument(
        "--snac-round-wait", choices=("once", "each"), default="once",
        help="ours_in_engine: SNAC's worker waits for its stream once a round (the server's) or after each of the "
        "round's window shapes (each: as before session 31)",
    )  # fmt: skip
    p.add_argument(
        "--snac-decode", choices=("gpu", "round-trip", "idle", "none"), default="gpu",
        help="ours_in_engine: SNAC decoded on the GPU by the engine's service (the server's), or silence after one "
        "round trip to it a worker round (round-trip), or silence in this process with SNAC loaded, compiled and "
        "captured in the engine's all the same (idle), or without (none)",
    )  # fmt: skip
    p.add_argument("--churn-settle-s", type=float, default=8.0, help="--churn: run this long before measuring")
    p.add_argument(
        "--switch-interval-ab", type=float, default=0.0, metavar="MS",
        help="ours_in_engine --churn: then, on the same engine, its process's GIL switch interval at MS and back, "
        "--switch-repeats times, each measured after --switch-settle-s (0: off)",
    )  # fmt: skip
    p.add_argument("--switch-repeats", type=int, default=2)
    p.add_argument(
        "--snac-ab", default="", metavar="VARIANTS",
        help="ours_in_engine --churn: then, on the same engine, SNAC variants in turn (snac_ab.py), e.g. "
        "depthwise=aten,depthwise=triton,decode=none: each --snac-ab-repeats times, the order reversed each time",
    )  # fmt: skip
    p.add_argument("--snac-ab-repeats", type=int, default=2)
    p.add_argument("--snac-ab-settle-s", type=float, default=1.0, help="--snac-ab: run this long after a switch")
    p.add_argument(
        "--churn-repeats", type=int, default=0, metavar="N",
        help="--churn: then measure the churning engine N times more, --churn-gap-s apart (0: off)",
    )  # fmt: skip
    p.add_argument("--churn-gap-s", type=float, default=2.0)
    p.add_argument("--switch-settle-s", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=30, help="engine steps to profile")
    p.add_argument(
        "--trace", action=argparse.BooleanOptionalAction, default=True,
        help="--no-trace: the unprofiled measurements only, no torch profile (the last of the two given wins: a "
        "variant of gpu_session.sh's churn_ab, which passes --no-trace, traces with --trace)",
    )  # fmt: skip
    p.add_argument("--settle-s", type=float, default=1.5, help="run this long before measuring")
    p.add_argument("--measure-s", type=float, default=2.0, help="unprofiled measurement window")
    p.add_argument("--profile-s", type=float, default=4.0, help="how long the profiler stays on at most")
    p.add_argument("--trace-timeout", type=float, default=180.0)
    p.add_argument("--py-spy", default=None, help="py-spy binary: sample the engine core over --measure-s too")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run it, print the summary, write `profile.json` under --out."""
    args = parse_args(argv)
    if args.mode == "ours_in_engine" and not args.snac:
        raise SystemExit("--mode ours_in_engine needs --snac")
    if args.switch_interval_ab and not (args.mode == "ours_in_engine" and args.churn):
        raise SystemExit("--switch-interval-ab needs --mode ours_in_engine --churn (the SNAC service sets it)")
    if args.snac_ab:
        rounds = (args.snac_decode, args.snac_round_wait)
        if not (args.mode == "ours_in_engine" and args.churn and rounds == ("gpu", "once")):
            raise SystemExit(
                "--snac-ab needs --mode ours_in_engine --churn, --snac-decode gpu and --snac-round-wait once (its "
                "variants set what a round does)"
            )
        try:
            snac_variants(args)
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
    report = asyncio.run(amain(args))
    write_json(args.out / "profile.json", report)
    if not args.trace:
        return 0
    prof = report["profile"]
    print("=== profile summary ===")
    print(json.dumps(report["unprofiled"]))
    print(json.dumps({k: v for k, v in prof.items() if k != "top_kernels_ms_per_step"}, indent=1))
    for name, ms in prof["top_kernels_ms_per_step"]:
        print(f"{ms:8.3f} ms/step  {category(name):<22} {name}")
    write_json(args.out / "profile.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
