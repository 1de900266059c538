"""Does confining SNAC to a few SMs stop it delaying the engine? A CUDA green context, probed on the GPU.

SNAC's kernels run on a CUDA stream of the lowest priority in the Orpheus engine's process: they fill the gaps of
the engine's steps, but a kernel of theirs that holds SMs when the engine's next kernel arrives delays it (no
preemption). A green context (CUDA 12.4+, driver API) owns a partition of the SMs; work on a stream of it runs on
those SMs only, while the process's other streams keep every SM, so SNAC could never hold more than its partition.
This probe answers whether that works here and what it buys, without vLLM:

* the driver: a green context of `--sms` SMs made through libcuda (ctypes), a stream of it wrapped as a torch
  `ExternalStream`, and whether a SNAC decode and a CUDA graph capture and replay run on it;
* interference: an engine-like loop (a CUDA graph of bf16 GEMMs of about `--step-ms` of GPU time on a stream of the
  highest priority, waited for, then `--host-gap-ms` of host time, as vLLM's host-bound step does) alone, then beside
  SNAC decoding windows (the real 24 kHz architecture, random weights, the server's steady window, batches of `--batch`,
  CUDA graphs) at `--windows-per-s` on (a) a stream of the lowest priority, as the server runs it, and (b) a green
  context stream of each partition size; the engine loop's steps a second and SNAC's windows a second each time.

    python3 bench/green_context_probe.py --out $OUT/green_context.json      # GPU only; ~1 min

Random weights; speed does not depend on weight values. Without CUDA it writes {"cuda": false} and exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CU_DEV_RESOURCE_TYPE_SM = 1
CU_GREEN_CTX_DEFAULT_STREAM = 0x1
CU_STREAM_NON_BLOCKING = 0x1
RESOURCE_BYTES = 4096
"""Room for one CUdevResource whatever the driver's struct size (only one is ever passed, so no stride matters)."""


class GreenStreams:
    """Green contexts of a given SM count on one device, and a non-blocking stream of each, through libcuda."""

    def __init__(self, device: int = 0) -> None:
        self.cuda = ctypes.CDLL("libcuda.so.1")
        self.device = ctypes.c_int()
        self._check(self.cuda.cuDeviceGet(ctypes.byref(self.device), device), "cuDeviceGet")
        self.contexts: list[ctypes.c_void_p] = []

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with CUresult {status}")

    def stream(self, sms: int, priority: int = 0) -> tuple[torch.cuda.Stream, int]:
        """A stream of a new green context of at least `sms` SMs, and the SM count the driver gave it."""
        whole = ctypes.create_string_buffer(RESOURCE_BYTES)
        self._check(
            self.cuda.cuDeviceGetDevResource(self.device, whole, CU_DEV_RESOURCE_TYPE_SM), "cuDeviceGetDevResource"
        )
        part, rest = ctypes.create_string_buffer(RESOURCE_BYTES), ctypes.create_string_buffer(RESOURCE_BYTES)
        groups = ctypes.c_uint(1)
        self._check(
            self.cuda.cuDevSmResourceSplitByCount(part, ctypes.byref(groups), whole, rest, 0, ctypes.c_uint(sms)),
            "cuDevSmResourceSplitByCount",
        )
        given = ctypes.c_uint.from_buffer(part, 4 + 92).value  # CUdevResource: type, 92 bytes padding, sm.smCount
        desc, context = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.cuda.cuDevResourceGenerateDesc(ctypes.byref(desc), part, 1), "cuDevResourceGenerateDesc")
        self._check(
            self.cuda.cuGreenCtxCreate(ctypes.byref(context), desc, self.device, CU_GREEN_CTX_DEFAULT_STREAM),
            "cuGreenCtxCreate",
        )
        self.contexts.append(context)
        handle = ctypes.c_void_p()
        self._check(
            self.cuda.cuGreenCtxStreamCreate(ctypes.byref(handle), context, CU_STREAM_NON_BLOCKING, priority),
            "cuGreenCtxStreamCreate",
        )
        return torch.cuda.ExternalStream(handle.value), given


def snac_decoder(batch: int) -> tuple[Any, list[torch.Tensor]]:
    """The real 24 kHz SNAC as `snac_decode.py` builds it (seed-0 random weights, weight norm folded, as the server
    loads it) and one batch of the server's steady window's codes on the GPU."""
    from snac_decode import snac_model, windows

    from oai_server.codec.snac_window_policy import WindowPolicy

    levels = windows(batch, WindowPolicy().steady_shape[0])
    return snac_model(None, "cuda", fold=True), [torch.from_numpy(level).to("cuda") for level in levels]


def capture(model: Any, codes: list[torch.Tensor], stream: torch.cuda.Stream) -> torch.cuda.CUDAGraph:
    """A CUDA graph of one decode of `codes`, captured on `stream`."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(2):
            model.decode(codes)
        stream.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            model.decode(codes)
    stream.synchronize()
    return graph


class EngineLike:
    """A host-bound engine step: a CUDA graph of bf16 GEMMs of about `step_ms` on a stream of the highest priority,
    waited for, then `host_gap_ms` of host time in which the GPU has nothing of the engine's to do."""

    def __init__(self, step_ms: float, host_gap_ms: float) -> None:
        self.stream = torch.cuda.Stream(priority=-(2**16))
        self.host_gap_s = host_gap_ms / 1000
        self.x = torch.randn(192, 3072, device="cuda", dtype=torch.bfloat16)
        self.w = torch.randn(3072, 3072, device="cuda", dtype=torch.bfloat16)
        probe = self._graph(64)
        per_gemm = self._replay_s(probe) / 64
        self.gemms = max(1, round(step_ms / 1000 / per_gemm))
        self.graph = self._graph(self.gemms)
        self.step_gpu_ms = self._replay_s(self.graph) * 1000

    def _graph(self, gemms: int) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(self.stream):
            self._chain(gemms)
            self.stream.synchronize()
            with torch.cuda.graph(graph, stream=self.stream):
                self._chain(gemms)
        self.stream.synchronize()
        return graph

    def _chain(self, gemms: int) -> None:
        y = self.x
        for _ in range(gemms):
            y = torch.mm(y, self.w) * 1e-3

    def _replay_s(self, graph: torch.cuda.CUDAGraph) -> float:
        with torch.cuda.stream(self.stream):
            graph.replay()
            self.stream.synchronize()
            start = time.perf_counter()
            for _ in range(5):
                graph.replay()
            self.stream.synchronize()
        return (time.perf_counter() - start) / 5

    def steps_per_s(self, seconds: float) -> float:
        """Steps a second over `seconds`."""
        steps, end = 0, time.perf_counter() + seconds
        with torch.cuda.stream(self.stream):
            while time.perf_counter() < end:
                self.graph.replay()
                self.stream.synchronize()
                time.sleep(self.host_gap_s)
                steps += 1
        return steps / seconds


def snac_load(graph: torch.cuda.CUDAGraph, stream: torch.cuda.Stream, batch: int, rate: float, stop: threading.Event,
              done: list[int]) -> None:  # fmt: skip
    """Replay `graph` (a batch of `batch` windows) on `stream` at `rate` windows a second until `stop`."""
    interval, next_at = batch / rate, time.perf_counter()
    with torch.cuda.stream(stream):
        while not stop.is_set():
            graph.replay()
            stream.synchronize()
            done[0] += batch
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))


def interference(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """The engine-like loop alone, then beside SNAC on each stream; steps and windows a second."""
    engine = EngineLike(args.step_ms, args.host_gap_ms)
    model, codes = snac_decoder(args.batch)
    streams: dict[str, torch.cuda.Stream] = {"low_priority": torch.cuda.Stream(priority=0)}
    greens: GreenStreams | None = None
    for sms in args.sms:
        try:
            greens = greens or GreenStreams()
            green, given = greens.stream(sms)
            streams[f"green_{given}_sms"] = green
        except Exception as exc:  # a driver or device without green contexts: say so, measure the rest
            report.setdefault("green_errors", {})[str(sms)] = f"{type(exc).__name__}: {exc}"
    rows = [{"snac": "none", "engine_steps_per_s": engine.steps_per_s(args.seconds)}]
    for name, stream in streams.items():
        try:
            graph = capture(model, codes, stream)
        except Exception as exc:
            report.setdefault("capture_errors", {})[name] = f"{type(exc).__name__}: {exc}"
            continue
        start = time.perf_counter()
        for _ in range(20):
            with torch.cuda.stream(stream):
                graph.replay()
        stream.synchronize()
        alone_ms = (time.perf_counter() - start) / 20 * 1000
        stop, done = threading.Event(), [0]
        worker = threading.Thread(target=snac_load, args=(graph, stream, args.batch, args.windows_per_s, stop, done))
        worker.start()
        steps = engine.steps_per_s(args.seconds)
        stop.set()
        worker.join()
        rows.append({
            "snac": name, "engine_steps_per_s": steps, "snac_windows_per_s": done[0] / args.seconds,
            "snac_batch_ms_alone": alone_ms,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    report["engine_gemms_per_step"] = engine.gemms
    report["engine_step_gpu_ms_alone"] = engine.step_gpu_ms
    report["rows"] = rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sms", default="16,24,32", type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--batch", type=int, default=16, help="SNAC windows a replay")
    p.add_argument("--windows-per-s", type=float, default=700.0, help="SNAC's load (192 streams: ~670)")
    p.add_argument("--step-ms", type=float, default=5.0, help="the engine-like step's GPU time")
    p.add_argument("--host-gap-ms", type=float, default=1.5, help="its host time after each wait (the GPU's gap)")
    p.add_argument("--seconds", type=float, default=4.0, help="each measurement")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Probe, print, write the report."""
    args = parse_args(argv)
    report: dict[str, Any] = {"cuda": torch.cuda.is_available(), "torch": torch.__version__, "config": vars(args)}
    if report["cuda"]:
        report["device"] = torch.cuda.get_device_name()
        report["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
        interference(args, report)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
