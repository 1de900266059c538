"""What the Orpheus slot logits processor costs vLLM's engine-core thread per step, on the host, at N rows.

vLLM calls `OrpheusSlotLogitsProcessor.apply` once per decode step on the thread that schedules the next step;
at 192 streams on an H200 the GPU idles ~2 ms of each 10.26 ms step waiting for that thread
(`bench/results/h200_s16_random_weights/`), so the processor's own Python is worth keeping short. This times
`apply` with its tensor work stubbed out (what is left is the host's share: bookkeeping, lists, host-to-device
tensors), N speech rows each gaining one token a step, as the server samples them (penalty and top-p in the band,
vLLM's draw). It also counts the ATen ops one `apply` dispatches with its tensor work real: on a GPU each is a
kernel launch from vLLM's thread, and py-spy found that thread inside the processor's torch calls ~15 % of the
time at 192 streams (`bench/results/h200_s17_random_weights/`). `--old FILE` times another version of
`engines/vllm_orpheus_logits.py` beside this one.

    python bench/slot_processor_cost.py --rows 64,192,384
    git show 45ea837:oai_server/engines/vllm_orpheus_logits.py > /tmp/slots_old.py
    python bench/slot_processor_cost.py --old /tmp/slots_old.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from oai_server.codec import orpheus
from oai_server.engines import vllm_orpheus_logits
from oai_server.engines.band_sampling import TOP_K_KEY, TOP_P_KEY

TENSOR_WORK = (
    "apply_band_penalty",
    "apply_slot_mask",
    "sample_band",
    "apply_band_top_k_top_p",
    "penalize_band",
    "filter_band",
)


def _load(path: Path) -> types.ModuleType:
    """Another copy of the processor's module (absolute imports, so it loads as is)."""
    spec = importlib.util.spec_from_loader("slots_variant", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return module


class _OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched: on a GPU each is (at least) one kernel launch from vLLM's thread."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(module: types.ModuleType, rows: int, steps: int = 3) -> float:
    """ATen ops one `apply` dispatches at `rows` speech rows, its tensor work real (a few steps, averaged)."""
    step = _speech_batch(module, rows)
    step()  # the first step builds the tables and the batch layout
    counter = _OpCounter()
    with counter:
        for _ in range(steps):
            step()
    return counter.ops / steps


def host_ms_per_step(module: types.ModuleType, rows: int, steps: int = 300) -> float:
    """ms of host time per `apply` at `rows` speech rows, the module's tensor work stubbed out."""
    real = {name: getattr(module, name) for name in TENSOR_WORK if hasattr(module, name)}
    try:
        for name in real:
            setattr(module, name, lambda logits, *args, **kwargs: logits)
        step = _speech_batch(module, rows)
        for _ in range(20):
            step()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - started) / steps * 1e3
    finally:
        for name, function in real.items():
            setattr(module, name, function)


def _speech_batch(module: types.ModuleType, rows: int) -> Any:
    """One step of a processor with `rows` speech rows, sampled as the server samples them."""
    processor = module.OrpheusSlotLogitsProcessor(None, torch.device("cpu"), False)
    extra = {module.EXTRA_ARGS_KEY: True, module.PENALTY_KEY: 1.1, TOP_P_KEY: 0.8, TOP_K_KEY: 0}
    params = types.SimpleNamespace(temperature=0.6, extra_args=extra)
    outputs: list[list[int]] = [[] for _ in range(rows)]
    added = [(i, params, [1], outputs[i]) for i in range(rows)]
    processor.update_state(types.SimpleNamespace(batch_size=rows, removed=[], added=added, moved=[]))
    logits = torch.zeros(rows, orpheus.ORPHEUS_VOCAB_SIZE)

    def step() -> None:
        for output in outputs:
            output.append(orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * (len(output) % 7) + len(output) % 50)
        processor.update_state(None)
        processor.apply(logits)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="64,192,384", help="speech rows in the batch (comma-separated)")
    p.add_argument("--old", type=Path, default=None, help="another vllm_orpheus_logits.py to time beside this one")
    args = p.parse_args()
    variants: dict[str, Any] = {"current": lambda: vllm_orpheus_logits}
    if args.old:
        variants["old"] = lambda: _load(args.old)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for name, fresh in variants.items():
            ops = ops_per_step(fresh(), rows)
            ms = host_ms_per_step(fresh(), rows)
            results.append({"variant": name, "rows": rows, "host_ms_per_step": ms, "aten_ops_per_step": ops})
            print(f"{name:>8} {rows:>4} rows: {ms:.3f} ms of host time per step, {ops:.0f} ATen ops")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
