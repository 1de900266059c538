"""One `TokenEngine` over several replicas of a model (one vLLM engine per card), balanced by live streams.

Data parallelism for Orpheus (and Gemma when its cards list several engines) behind the one server.
A new request goes to the healthy replica with the fewest live streams per weight (the layout gives
a replica that shares its card with another engine weight 1/2); ties go round-robin. A request stays
on its replica for its whole life: its deltas, its abort and its end all go to the replica that
started it, so one utterance never moves between cards.

Why our own balancer and not vLLM's data parallelism (`--tts-data-parallel-size`, which still works:
one `AsyncLLM` whose client balances engine cores by queue length) by default:

* weights: vLLM treats its ranks as equal, but in the `speech` layout card 0's replica shares its card
  with Gemma, Whisper and SNAC, so it should take fewer streams;
* failure: a vLLM data-parallel engine is dead when one rank dies; here a replica that fails its health
  check is taken out of the rotation and the others keep serving (readiness fails only when all have);
* the layout decides each replica's card and memory share separately, e.g. a smaller share beside Gemma.

Its cost: the replicas start one after another (each vLLM engine starts on the event-loop thread),
where vLLM's data-parallel ranks start together; vLLM's compile cache makes the second start shorter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from .base import EngineError, EngineInfo, SamplingParams, TokenEngine

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 4.0
"""One replica's health check; `/health/ready` gives the whole check 5 s."""


class BalancedEngine:
    """A `TokenEngine` that spreads requests over replicas of one model (see the module docstring)."""

    def __init__(self, replicas: Sequence[TokenEngine], weights: Sequence[float] | None = None) -> None:
        """`replicas` serve the same model; `weights` (default all 1) scale the live streams each should take."""
        if not replicas:
            raise ValueError("a balanced engine needs at least one replica")
        self._weights = list(weights) if weights is not None else [1.0] * len(replicas)
        if len(self._weights) != len(replicas) or any(w <= 0 for w in self._weights):
            raise ValueError(f"one positive weight per replica is needed, got {list(self._weights)}")
        self.replicas = tuple(replicas)
        self._live = [0] * len(replicas)
        self._down: list[str | None] = [None] * len(replicas)
        self._where: dict[str, int] = {}
        self._cursor = 0
        self._closed = False
        first = replicas[0].info
        self.info = EngineInfo(
            kind=first.kind,
            model=first.model,
            max_model_len=min(replica.info.max_model_len for replica in replicas),
            details={
                "replicas": [dict(replica.info.details) for replica in replicas],
                "weights": list(self._weights),
                "balancing": "fewest live streams per weight, ties round-robin",
            },
        )

    def live_streams(self) -> list[int]:
        """Streams open on each replica right now (as this balancer routed them)."""
        return list(self._live)

    def down(self) -> dict[int, str]:
        """Replicas out of the rotation, with the error of their last health check."""
        return {index: reason for index, reason in enumerate(self._down) if reason is not None}

    def replica_of(self, request_id: str) -> int | None:
        """The replica serving the request in flight `request_id` (None: unknown, or not started yet)."""
        return self._where.get(request_id)

    def choose(self) -> int:
        """The replica the next request goes to (it is not reserved until `generate` starts)."""
        healthy = [i for i, reason in enumerate(self._down) if reason is None]
        if not healthy:
            raise EngineError(f"every replica failed its health check: {self.down()}")
        load = {i: self._live[i] / self._weights[i] for i in healthy}
        least = min(load.values())
        tied = [i for i in healthy if load[i] == least]
        return next((i for i in tied if i >= self._cursor), tied[0])

    async def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        """Stream the request on one replica, chosen when the stream starts; closing it aborts it there."""
        if self._closed:
            raise EngineError("engine is closed")
        if request_id in self._where:
            raise EngineError(f"request id {request_id!r} is already in flight")
        index = self.choose()  # chosen and counted before any await: concurrent starts see each other
        self._cursor = (index + 1) % len(self.replicas)
        self._live[index] += 1
        self._where[request_id] = index
        stream = self.replicas[index].generate(prompt_token_ids, params, request_id)
        try:
            async for delta in stream:
                yield delta
        except EngineError:
            await self._recheck(index)
            raise
        finally:
            self._live[index] -= 1
            self._where.pop(request_id, None)
            close = getattr(stream, "aclose", None)
            if close is not None:  # passes our consumer's close on, so the replica aborts the request
                await close()

    async def abort(self, request_id: str) -> None:
        """Abort a request on the replica that serves it; unknown ids are ignored."""
        index = self._where.get(request_id)
        if index is not None:
            await self.replicas[index].abort(request_id)

    async def check_health(self) -> None:
        """Check every replica: a failing one leaves the rotation, a passing one (re)joins it; raise
        `EngineError` only when none is healthy."""
        if self._closed:
            raise EngineError("engine is closed")
        await asyncio.gather(*(self._check_one(i) for i in range(len(self.replicas))))
        if all(reason is not None for reason in self._down):
            raise EngineError(f"every replica failed its health check: {self.down()}")

    def active_requests(self) -> int:
        """Requests in flight inside all replicas."""
        return sum(replica.active_requests() for replica in self.replicas)

    async def close(self) -> None:
        """Close every replica (each aborts what it has in flight). Idempotent."""
        if self._closed:
            return
        self._closed = True
        results = await asyncio.gather(*(replica.close() for replica in self.replicas), return_exceptions=True)
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                logger.error("closing replica %d failed: %r", index, result)

    async def _check_one(self, index: int) -> None:
        try:
            await asyncio.wait_for(self.replicas[index].check_health(), HEALTH_TIMEOUT_S)
        except Exception as exc:  # the replica's error, or its check timing out
            if self._down[index] is None:
                kind = self.info.kind
                logger.error("replica %d of %s failed its health check, out of rotation: %r", index, kind, exc)
            self._down[index] = repr(exc)
            return
        if self._down[index] is not None:
            logger.warning("replica %d of %s passes its health check again, back in rotation", index, self.info.kind)
        self._down[index] = None

    async def _recheck(self, index: int) -> None:
        """After a request failed on a replica: is the replica itself broken? (Never masks the request's error.)"""
        try:
            await self._check_one(index)
        except Exception:  # pragma: no cover - _check_one handles its own errors
            logger.exception("health check of replica %d failed unexpectedly", index)
