"""What SNAC's round trips cost an engine-like thread through the GIL, on the CPU: `--snac-rounds thread` against
`step`.

An engine process runs a loop shaped like vLLM's engine core on the host: each step some pure-Python work
(`--step-python-us`: the scheduler's and the input preparation's bookkeeping), small torch operations
(`--step-ops`; each lets go of the GIL, as vLLM's do), a wait standing for the GPU's part of the step
(`--step-wait-us`, the GIL let go, as a CUDA synchronize does), its outputs handed to an output thread that does
Python work of its own (`--output-python-us`, as vLLM's output thread serialises a step's outputs), and the Orpheus
logits processor's hook (`SnacService.step`) once a step. In the same process the real `SnacService` answers
rounds that a client in this process sends at `--rounds-per-s` (`--windows` steady windows each); its graphs are
stand-ins that launch at once and answer silence of the windows' real lengths, so only the round trip is measured,
as session 33's "round trip a round, no SNAC work" control on the H200 (`bench/results/h200_s33_random_weights/`:
30 % of the engine's steady tokens/s there).

For each of `--modes` (``none``: no rounds sent; ``thread``, ``step``: the service's rounds so answered) the
engine's steps a second over `--seconds`, against ``none``, and the rounds' latency at the client. Two CPU cores
are not the GPU machine's sixteen, and this loop is not vLLM's: the ratio is a lead, the GPU run the measurement.

    python bench/rounds_gil.py --out bench/results/cpu2core_rounds_gil_s42.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_json

from oai_server.codec.orpheus import SAMPLES_PER_FRAME
from oai_server.codec.snac_rounds import STEP_FROM_ROWS
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import WindowShape

STEADY: WindowShape = WindowPolicy(frames_per_decode=4).steady_shape


class SilentGraph:
    """A captured graph's stand-in: launches at once, reads back silence of the shape's real length."""

    slots = 1  # replays queued at once (`GraphSet.queues`): a round here fits one

    def __init__(self, shape: WindowShape) -> None:
        self.samples = shape[3] + SAMPLES_PER_FRAME * shape[2]

    def launch(self, levels: list[np.ndarray], slot: int = 0) -> Any:
        n = levels[0].shape[0]
        return lambda: np.zeros((n, self.samples), dtype=np.int16)


def python_work(iterations: int) -> int:
    """Pure-Python bookkeeping holding the GIL (`iterations` from the calibration)."""
    total = 0
    table: dict[int, int] = {}
    for i in range(iterations):
        table[i & 63] = i
        total += table.get((i * 7) & 63, 0)
    return total


def iterations_per_us() -> float:
    """How many `python_work` iterations take a microsecond here."""
    began = time.perf_counter()
    python_work(200_000)
    return 200_000 / ((time.perf_counter() - began) * 1e6)


def engine(name: str, rounds: str, args: argparse.Namespace, ready: Any, stop: Any, out: Any) -> None:
    """The engine process: the service, then the step loop until `stop`; its steps and the service's stats to `out`."""
    import torch

    from oai_server.codec.snac_graphs import GraphSet
    from oai_server.codec.snac_service import SnacService, service_address

    torch.set_num_threads(1)
    service = SnacService(service_address(name, os.getppid()), "cpu", "step" if rounds == "step" else "thread")
    service.model = object()  # the stand-in graphs serve every round: no model runs
    service.graphs = {STEADY: GraphSet(STEADY, {64: SilentGraph(STEADY)})}  # type: ignore[dict-item]
    service.start()
    per_us = iterations_per_us()
    step_work, output_work = int(args.step_python_us * per_us), int(args.output_python_us * per_us)
    outputs: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def output_thread() -> None:
        while outputs.get() is not None:
            python_work(output_work)

    threading.Thread(target=output_thread, daemon=True).start()
    x = torch.zeros(64)
    ready.set()
    steps, began = 0, time.perf_counter()
    while not stop.is_set():
        python_work(step_work)
        for _ in range(args.step_ops):
            x.add_(1.0)
        time.sleep(args.step_wait_us / 1e6)
        outputs.put(steps)
        service.step(args.rows)
        steps += 1
    elapsed = time.perf_counter() - began
    outputs.put(None)
    rounds_stats = service.rounds.stats() if service.rounds is not None else {"mode": "thread"}
    out.send({"steps_per_s": steps / elapsed, "rounds": rounds_stats})


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One engine process with `mode`'s rounds (or none) for `--seconds`: its steps a second, the rounds' latency."""
    from oai_server.codec.snac_service import ServiceConnection

    context = multiprocessing.get_context("spawn")
    name = f"gil-{uuid.uuid4().hex[:8]}"
    ready, stop = context.Event(), context.Event()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=engine, args=(name, mode, args, ready, stop, send), daemon=True)
    process.start()
    latencies: list[float] = []
    try:
        assert ready.wait(60), "the engine process did not start"
        connection = ServiceConnection.open(name)
        frames = np.random.default_rng(0).integers(0, 4096, (args.windows, STEADY[0], 7)).astype(np.int16)
        deadline = time.perf_counter() + args.seconds
        next_round = time.perf_counter()
        while time.perf_counter() < deadline:
            if mode != "none":
                began = time.perf_counter()
                connection.call("decode_many", [(frames, STEADY)])
                latencies.append(time.perf_counter() - began)
            next_round += 1 / args.rounds_per_s
            time.sleep(max(0.0, next_round - time.perf_counter()))
        stop.set()
        assert receive.poll(60), "the engine process did not report"
        result: dict[str, Any] = receive.recv()
        connection.close()
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    result["mode"] = mode
    if latencies:
        ms = np.asarray(latencies) * 1000
        result.update(
            rounds_sent=len(latencies),
            round_ms_p50=round(float(np.percentile(ms, 50)), 3),
            round_ms_p95=round(float(np.percentile(ms, 95)), 3),
        )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="none,thread,step,none,step,thread", help="in this order, one engine each")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--step-python-us", type=float, default=5000.0)
    p.add_argument("--step-ops", type=int, default=40)
    p.add_argument("--step-wait-us", type=float, default=2000.0)
    p.add_argument("--output-python-us", type=float, default=800.0)
    p.add_argument("--rows", type=int, default=192, help="speech requests the hook is told (step serves from 32)")
    p.add_argument("--rounds-per-s", type=float, default=80.0, help="session 35: ~81 rounds a second churning")
    p.add_argument("--windows", type=int, default=8, help="steady windows a round")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    runs = []
    for mode in args.modes.split(","):
        runs.append(run_mode(mode, args))
        print(json.dumps(runs[-1]), flush=True)
    alone = [r["steps_per_s"] for r in runs if r["mode"] == "none"]
    baseline = sum(alone) / len(alone) if alone else None
    summary = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        of_mode = [r for r in runs if r["mode"] == mode]
        steps = sum(r["steps_per_s"] for r in of_mode) / len(of_mode)
        summary[mode] = {
            "steps_per_s": round(steps, 2),
            "of_none": round(steps / baseline, 3) if baseline else None,
            "round_ms_p95": [r.get("round_ms_p95") for r in of_mode],
        }
    report = {
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "step_from_rows": STEP_FROM_ROWS,
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
        "summary": summary,
    }
    print("summary:", json.dumps(summary), flush=True)
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
