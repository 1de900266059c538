"""Where each in-process vLLM engine runs: its GPUs, tensor parallelism and data-parallel replicas.

The defaults keep one-GPU behaviour (both engines share the visible GPUs, split by memory
share). With several GPUs, each engine can get its own cards, e.g. Gemma on GPU 0 and Orpheus
on GPU 1 (`--llm-gpus 0 --tts-gpus 1`), Orpheus on four cards as two tensor-parallel pairs
(`--tts-gpus 1,2,3,4 --tts-tensor-parallel-size 2 --tts-data-parallel-size 2`), and so on for any
number of GPUs. An engine's list must hold exactly tensor_parallel x data_parallel indices.

vLLM starts each engine core in its own spawned process, which reads CUDA_VISIBLE_DEVICES when
it starts; so the variable is set to the engine's cards while that engine is created, and
restored afterwards. The engines see their cards renumbered from 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass(frozen=True)
class Placement:
    """The GPUs and parallelism of one engine."""

    gpus: tuple[int, ...] | None
    """Physical GPU indices, or None for "whatever is visible" (the one-GPU default)."""
    tensor_parallel: int = 1
    data_parallel: int = 1

    def engine_kwargs(self) -> dict[str, int]:
        """The vLLM engine arguments this placement adds."""
        kwargs = {}
        if self.tensor_parallel > 1:
            kwargs["tensor_parallel_size"] = self.tensor_parallel
        if self.data_parallel > 1:
            kwargs["data_parallel_size"] = self.data_parallel
        return kwargs


def parse_gpus(value: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """`"0,1"` -> (0, 1); empty or None -> None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    gpus = tuple(int(item) for item in (i.strip() for i in items) if item)
    if any(gpu < 0 for gpu in gpus):
        raise ValueError(f"GPU indices must be >= 0, got {value!r}")
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"GPU indices repeat in {value!r}")
    return gpus or None


def make_placement(name: str, gpus: str | None, tensor_parallel: int, data_parallel: int) -> Placement:
    """A validated placement: the GPU list matches tensor x data parallelism."""
    if tensor_parallel < 1 or data_parallel < 1:
        raise ValueError(f"{name}: tensor and data parallel sizes must be >= 1")
    parsed = parse_gpus(gpus)
    needed = tensor_parallel * data_parallel
    if parsed is not None and len(parsed) != needed:
        raise ValueError(
            f"{name}: {len(parsed)} GPU(s) given ({gpus}) but tensor_parallel {tensor_parallel} x "
            f"data_parallel {data_parallel} needs {needed}"
        )
    return Placement(parsed, tensor_parallel, data_parallel)


def check_against_devices(placements: dict[str, Placement], device_count: int) -> None:
    """Fail early when a placement names a GPU that does not exist."""
    for name, placement in placements.items():
        if placement.gpus is None:
            needed = placement.tensor_parallel * placement.data_parallel
            if device_count and needed > device_count:
                raise ValueError(f"{name}: needs {needed} GPUs but {device_count} are visible")
            continue
        missing = [gpu for gpu in placement.gpus if gpu >= device_count]
        if missing:
            raise ValueError(f"{name}: GPU(s) {missing} do not exist ({device_count} visible)")


@contextmanager
def visible_devices(gpus: tuple[int, ...] | None) -> Iterator[None]:
    """Set CUDA_VISIBLE_DEVICES to `gpus` (physical indices) while an engine starts."""
    if gpus is None:
        yield
        return
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    if previous:  # indices are relative to what this process may see
        visible = [item.strip() for item in previous.split(",") if item.strip()]
        chosen = [visible[gpu] for gpu in gpus]
    else:
        chosen = [str(gpu) for gpu in gpus]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def placements(settings: Settings) -> dict[str, Placement]:
    """Validated placement of each in-process vLLM engine (raises `ValueError` naming the setting)."""
    return {
        "llm": make_placement("llm", settings.llm_gpus, settings.llm_tensor_parallel_size, 1),
        "tts": make_placement(
            "tts", settings.tts_gpus, settings.tts_tensor_parallel_size, settings.tts_data_parallel_size
        ),
    }
