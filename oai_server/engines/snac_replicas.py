"""SNAC beside every Orpheus replica: each stream's windows decode on the card that generates it.

With `--snac-in-engine` and Orpheus replicas on several cards (the `speech` layout), each replica's
engine-core process hosts a SNAC service of its own (`codec.snac_service`). A stream's windows then
go to the service of the replica the balancer put the stream on, so SNAC's GPU time grows on each
card with the streams that card generates, instead of piling the decoding of every card's streams
onto one of them (at 72 µs a frame, 400 streams would take a third of that card).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

from ..codec.snac_stream import SnacDecoder
from ..codec.snac_windows import Window, WindowShape
from .balanced import BalancedEngine


class ReplicaSnacDecoders:
    """One `SnacDecoder` per replica of `engine`, in the replicas' order (a `SnacDecoding`)."""

    def __init__(self, engine: BalancedEngine, decoders: Sequence[SnacDecoder]) -> None:
        """`decoders[i]` decodes the streams of `engine.replicas[i]`."""
        if len(decoders) != len(engine.replicas):
            raise ValueError(f"one SNAC decoder per replica: {len(decoders)} for {len(engine.replicas)} replicas")
        self.engine = engine
        self.decoders = tuple(decoders)
        self._next = itertools.cycle(self.decoders)

    def for_stream(self, request_id: str) -> SnacDecoder:
        """The decoder of the replica generating `request_id`; the next in turn when none is known."""
        index = self.engine.replica_of(request_id)
        return self.decoders[index] if index is not None else next(self._next)

    async def decode(self, window: Window) -> bytes:
        """A window of no known stream (warm-up, an utterance without tokens): the decoders take turns."""
        return await next(self._next).decode(window)

    async def capture_graphs(self, shapes: Sequence[WindowShape]) -> None:
        """Capture the shapes' graphs in every decoder."""
        await asyncio.gather(*(decoder.capture_graphs(shapes) for decoder in self.decoders))

    def window_counts(self) -> tuple[int, int]:
        """(windows decoded, of them without a CUDA graph), summed over the decoders."""
        counts = [decoder.window_counts() for decoder in self.decoders]
        return sum(decoded for decoded, _ in counts), sum(eager for _, eager in counts)

    def work_seconds(self) -> tuple[float, float]:
        """(seconds in rounds, seconds windows waited for their round), summed over the decoders."""
        work = [decoder.work_seconds() for decoder in self.decoders]
        return sum(busy for busy, _ in work), sum(queued for _, queued in work)

    def close(self) -> None:
        """Close every decoder."""
        for decoder in self.decoders:
            decoder.close()
