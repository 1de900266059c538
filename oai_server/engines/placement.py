"""Where each in-process vLLM engine runs: its GPUs, tensor parallelism and data-parallel replicas.

A `Placement` is one engine's cards. The placement flags name them: e.g. Gemma on GPU 0 and
Orpheus on GPU 1 (`--llm-gpus 0 --tts-gpus 1`), Orpheus on four cards as two tensor-parallel pairs
inside one vLLM engine (`--tts-gpus 1,2,3,4 --tts-tensor-parallel-size 2 --tts-data-parallel-size 2`),
or as several engines behind the server's own balancer: a list of more cards than one engine takes,
with data-parallel size 1, is that many replicas (`--tts-gpus 0,1` = an Orpheus engine on each card;
`engines/balanced.py`). Which cards each role gets when no flag names them is `engines/layout.py`.

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

GIB = 1024**3


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

    def cards(self) -> tuple[int, ...]:
        """The cards it occupies; `None` means the first tensor x data parallel visible ones."""
        if self.gpus is not None:
            return self.gpus
        return tuple(range(self.tensor_parallel * self.data_parallel))


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


def make_replicas(
    name: str, gpus: str | None, tensor_parallel: int, data_parallel: int, *, replicas: bool = True
) -> tuple[Placement, ...]:
    """The engines a GPU list means: one, or with data-parallel size 1 and a list of k x tensor-parallel
    cards (`replicas`), k engines of `tensor_parallel` consecutive listed cards each."""
    parsed = parse_gpus(gpus)
    several = parsed is not None and tensor_parallel >= 1 and len(parsed) > tensor_parallel
    if replicas and data_parallel == 1 and several and parsed is not None and len(parsed) % tensor_parallel == 0:
        groups = [parsed[i : i + tensor_parallel] for i in range(0, len(parsed), tensor_parallel)]
        return tuple(Placement(group, tensor_parallel, 1) for group in groups)
    return (make_placement(name, gpus, tensor_parallel, data_parallel),)


def placements(settings: Settings) -> dict[str, tuple[Placement, ...]]:
    """The engines the placement flags name per role (`llm`, `tts`, `asr`), validated without a GPU
    (raises `ValueError` naming the setting). Gemma and Orpheus may be replicated; Whisper is one engine."""
    return {
        "llm": make_replicas("llm", settings.llm_gpus, settings.llm_tensor_parallel_size, 1),
        "tts": make_replicas(
            "tts", settings.tts_gpus, settings.tts_tensor_parallel_size, settings.tts_data_parallel_size
        ),
        "asr": make_replicas("asr", settings.asr_gpus, 1, 1, replicas=False),
    }


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


def visible_card_count() -> int:
    """How many GPUs this process sees, without initializing CUDA in it (no context is made)."""
    import torch

    return int(torch.cuda.device_count())


def visible_cards() -> tuple[int, float]:
    """How many GPUs this process sees and the smallest one's memory in GiB (0 cards: (0, 0.0))."""
    import torch

    count = visible_card_count()
    if count == 0:
        return 0, 0.0
    return count, min(torch.cuda.get_device_properties(i).total_memory for i in range(count)) / GIB
