"""What the Orpheus slot logits processor costs vLLM's engine-core thread per step, on the host, at N rows.

vLLM calls `OrpheusSlotLogitsProcessor.apply` once per decode step, on the thread that also schedules the next
step. At 192 streams on an H200, py-spy found that thread inside `apply` 20 % of the time, mostly in torch calls
that had released the GIL, i.e. kernel launches (`bench/results/h200_s17_random_weights/`). The engine core is
host-bound there, so launches matter.

This script drives N speech rows, each gaining one token a step, sampled the way the server samples them: the
penalty and top-p in the band, with vLLM's draw. It reports two numbers per step:

* the ATen ops `apply` dispatches. On a GPU each one is at least one kernel launch from vLLM's thread.
* the host time of `apply`, with tensors on PyTorch's `meta` device. Every op is dispatched as on a GPU but
  computes nothing, so what is timed is the Python plus the dispatch. A meta op costs more than a CUDA launch,
  so compare variants with each other, not with a GPU.

A batch change (a stream ending, another taking its row) is timed apart on the CPU device: the processor's update
and the layout its next `apply` rebuilds, which vLLM's thread pays at every step whose batch changed.

`--old REV` runs the processor and its band sampling as they were at git revision REV beside the current code.
`--band-graphs` also counts the launches of the processor with `--tts-band-graphs`, where the penalty and top-p
of a step are one CUDA graph replay (counted as one; its host time is not modelled on the meta device).

    python bench/slot_processor_cost.py --rows 64,192,384 --old 491b38e --band-graphs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from oai_server.codec import orpheus
from oai_server.engines import band_graphs, band_sampling, vllm_orpheus_logits
from oai_server.engines.band_sampling import TOP_K_KEY, TOP_P_KEY

ROOT = Path(__file__).resolve().parent.parent
PROCESSOR = "oai_server/engines/vllm_orpheus_logits.py"
BAND_SAMPLING = "oai_server/engines/band_sampling.py"


def _module(name: str, source: str) -> types.ModuleType:
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def load_revision(revision: str) -> types.ModuleType:
    """The processor's module as it was at git `revision`, bound to that revision's band sampling."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    old_band = _module(f"band_sampling_{revision}", show(BAND_SAMPLING))
    processor = _module(f"slots_{revision}", show(PROCESSOR))
    for name in vars(band_sampling):  # what it imported from band_sampling, as that revision had it
        if not name.startswith("_") and name in vars(processor) and hasattr(old_band, name):
            setattr(processor, name, getattr(old_band, name))
    return processor


class _OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched: on a GPU each is (at least) one kernel launch from vLLM's thread."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.paused = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += not self.paused
        return func(*args, **(kwargs or {}))


def ops_per_step(module: types.ModuleType, rows: int, steps: int = 3, graphs: bool = False) -> float:
    """ATen ops one `apply` dispatches at `rows` speech rows (a few steps, averaged); with `graphs`, the processor
    of `--tts-band-graphs`, each graph replay counted as the one launch it is on a GPU."""
    step = _speech_batch(module, rows, graphs)
    step()  # the first step builds the tables and the batch layout
    counter = _OpCounter()
    with counter, _replays_counted_once(counter) if graphs else contextlib.nullcontext():
        for _ in range(steps):
            step()
    return counter.ops / steps


@contextlib.contextmanager
def _replays_counted_once(counter: _OpCounter) -> Iterator[None]:
    """`BandGraph.run` (eager off CUDA) counted as one op, its work not counted."""
    run = band_graphs.BandGraph.run

    def replay(graph: band_graphs.BandGraph) -> None:
        counter.paused = True
        try:
            run(graph)
        finally:
            counter.paused = False
        counter.ops += 1

    band_graphs.BandGraph.run = replay  # type: ignore[method-assign]
    try:
        yield
    finally:
        band_graphs.BandGraph.run = run  # type: ignore[method-assign]


def host_ms_per_step(module: types.ModuleType, rows: int, steps: int = 200, change_every: int = 0) -> float:
    """ms of host time per `apply` at `rows` speech rows, its ops dispatched to the `meta` device (with a stream
    ending and another starting in its row every `change_every` steps, as under arrivals)."""
    step = _speech_batch(module, rows, change_every=change_every)
    for _ in range(10):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * 1e3


def _speech_rows(
    module: types.ModuleType, rows: int, device: torch.device, graphs: bool = False
) -> tuple[Any, Any, list[list[int]]]:
    """A processor on `device` with `rows` speech rows added, sampled as the server samples them: the processor, the
    rows' sampling params and their (empty, live) output lists."""
    config = types.SimpleNamespace(additional_config={band_graphs.BAND_GRAPHS_KEY: True}) if graphs else None
    processor = module.OrpheusSlotLogitsProcessor(config, device, False)
    extra = {module.EXTRA_ARGS_KEY: True, module.PENALTY_KEY: 1.1, TOP_P_KEY: 0.8, TOP_K_KEY: 0}
    params = types.SimpleNamespace(temperature=0.6, extra_args=extra)
    outputs: list[list[int]] = [[] for _ in range(rows)]
    added = [(i, params, [1], outputs[i]) for i in range(rows)]
    processor.update_state(types.SimpleNamespace(batch_size=rows, removed=[], added=added, moved=[]))
    return processor, params, outputs


def batch_change_us(module: types.ModuleType, rows: int, changes: int = 300) -> float:
    """µs of host time a batch change costs the processor at `rows` speech rows: one stream ending and another
    taking its row (vLLM's removed, then added), then the layout the next `apply` rebuilds for it (`_layout_for`),
    on the CPU device (its copies are host copies there; on a GPU small pinned uploads). Under churn vLLM's thread
    pays it at every step whose batch changed (~40 a second at 192 streams coming and going)."""
    device = torch.device("cpu")
    processor, params, _ = _speech_rows(module, rows, device)
    started = time.perf_counter()
    for change in range(changes):
        row = change % rows
        update = types.SimpleNamespace(batch_size=rows, removed=[row], added=[(row, params, [1], [])], moved=[])
        processor.update_state(update)
        processor._layout_for(rows, device)
    return (time.perf_counter() - started) / changes * 1e6


def batch_change_best_us(modules: dict[str, types.ModuleType], rows: int, rounds: int = 5) -> dict[str, float]:
    """`batch_change_us` of each variant, the best of `rounds` rounds taken in turn (this host's speed drifts by a
    third from minute to minute: variants timed one after the other would compare the drift)."""
    best = dict.fromkeys(modules, float("inf"))
    for _ in range(rounds):
        for name, module in modules.items():
            best[name] = min(best[name], batch_change_us(module, rows))
    return best


def _speech_batch(module: types.ModuleType, rows: int, graphs: bool = False, change_every: int = 0) -> Any:
    """One step of a processor on the `meta` device with `rows` speech rows, sampled as the server samples them;
    every `change_every` steps (0: never) one row's stream ends and a new one takes its row (vLLM's batch update:
    removed, then added at that index)."""
    device = torch.device("meta")
    processor, params, outputs = _speech_rows(module, rows, device, graphs)
    logits = torch.empty(rows, orpheus.ORPHEUS_VOCAB_SIZE, device=device)

    count = [0]

    def step() -> None:
        count[0] += 1
        update = None
        if change_every and count[0] % change_every == 0:
            row = count[0] // change_every % rows
            outputs[row] = []
            update = types.SimpleNamespace(
                batch_size=rows, removed=[row], added=[(row, params, [1], outputs[row])], moved=[]
            )
        for output in outputs:
            output.append(orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * (len(output) % 7) + len(output) % 50)
        processor.update_state(update)
        processor.apply(logits)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="64,192,384", help="speech rows in the batch (comma-separated)")
    p.add_argument("--old", default=None, help="a git revision whose processor to time beside the current one")
    p.add_argument("--band-graphs", action="store_true", help="also count the launches with --tts-band-graphs")
    p.add_argument(
        "--change-every", type=int, default=0,
        help="host time with a stream ending and another starting every this many steps too (arrivals: ~2)",
    )  # fmt: skip
    args = p.parse_args()
    variants: dict[str, Any] = {"current": lambda: vllm_orpheus_logits}
    if args.old:
        variants[args.old] = lambda: load_revision(args.old)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        changes = batch_change_best_us({name: fresh() for name, fresh in variants.items()}, rows)
        for name, fresh in variants.items():
            ops = ops_per_step(fresh(), rows)
            ms = host_ms_per_step(fresh(), rows)
            change_us = changes[name]
            result = {
                "variant": name, "rows": rows, "host_ms_per_step": ms, "aten_ops_per_step": ops,
                "batch_change_us": change_us,
            }  # fmt: skip
            churn = ""
            if args.change_every:
                result["host_ms_per_step_churn"] = host_ms_per_step(fresh(), rows, change_every=args.change_every)
                churn = f", {result['host_ms_per_step_churn']:.3f} ms with a new stream every {args.change_every} steps"
            results.append(result)
            print(
                f"{name:>8} {rows:>4} rows: {ops:.0f} ATen ops, {ms:.3f} ms of host time (meta device) a step"
                f"{churn}; a batch change {change_us:.0f} us (CPU device)"
            )
        if args.band_graphs:  # its host time is not modelled here: on the meta device the graph's work runs eagerly
            ops = ops_per_step(vllm_orpheus_logits, rows, graphs=True)
            results.append({"variant": "graphs", "rows": rows, "host_ms_per_step": None, "aten_ops_per_step": ops})
            print(f"{'graphs':>8} {rows:>4} rows: {ops:.0f} launches (a replay counts as one)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
