"""`TokenEngine` on vLLM's in-process `AsyncLLM` (v1 engine), written against vLLM 0.26.0.

vLLM is imported lazily (in `create` and in the default sampling-params factory), so this module
imports without it. The pure mappings (`vllm_args`: `sampling_kwargs`, `EngineSpec.engine_kwargs`) produce
plain dicts; only the ``vllm.SamplingParams(**kwargs)`` / ``AsyncEngineArgs(**kwargs)`` calls need vLLM.

Streaming: requests use ``RequestOutputKind.DELTA`` and ``detokenize=False``; each
``RequestOutput.outputs[0].token_ids`` is a delta (vLLM merges deltas when we lag, so one delta
may carry several ids). vLLM's ``CompletionOutput.token_ids`` keep the stop token (EOS or a
``stop_token_ids`` hit, see ``v1/core/sched/utils.py:check_stop``); the seam promises stop
tokens are not yielded, so the last id of a ``finish_reason == "stop"`` output is dropped.

Abort, exactly once: ``AsyncLLM.generate`` aborts its own request when `CancelledError` or
`GeneratorExit` reaches its frame. A cancelled consumer raises `CancelledError` inside that frame
(we are awaiting it), and on `aclose()` of our generator we `aclose()` vLLM's, so vLLM issues
the single abort and we never add a second one. A finished stream is always drained to its end
before its last delta is yielded, so closing after the last delta aborts nothing. `abort(id)`
from another task goes to ``AsyncLLM.abort(id)`` (external id); vLLM then ends the stream with
an ``abort`` output and our generator returns.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from oai_server.engines.arrival_window import ArrivalWindow
from oai_server.engines.base import EngineError, EngineInfo, SamplingParams
from oai_server.engines.frame_deltas import deliver_on_frame_boundaries, frames_per_delta
from oai_server.engines.placement import Placement, visible_devices
from oai_server.engines.vllm_args import EngineSpec, sampling_kwargs, vllm_sampling_params

logger = logging.getLogger(__name__)

SamplingParamsFactory = Callable[[dict[str, Any]], Any]
EngineFactory = Callable[[dict[str, Any]], Any]


def build_async_llm(kwargs: dict[str, Any]) -> Any:
    """``AsyncLLM`` from engine-args keywords, with `vllm serve`'s defaults for what is left unset.

    ``from_engine_args`` alone assumes an embedded engine (``UsageContext.ENGINE_CONTEXT``) and leaves
    ``max_num_batched_tokens`` at 2048, where `vllm serve` uses 8192 on a GPU of 70 GB or more (2048
    below): the tokens, prompt and encoder input (1500 per Whisper window) together, one step may take.
    At 2048 a burst's prompts trickle into the batch over several steps, and Whisper encodes one window a step.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs), usage_context=UsageContext.OPENAI_API_SERVER)


def _describe(exc: BaseException) -> str:
    """A message for `EngineError`; vLLM's `EngineGenerateError` is empty and chains the cause."""
    chain = [exc] if exc.__cause__ is None else [exc, exc.__cause__]
    return " <- ".join(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__ for e in chain)


class AsyncLLMLifecycle:
    """Abort by id, health, in-flight count and shutdown of an engine on one vLLM ``AsyncLLM``.

    Subclasses set ``_engine`` (the ``AsyncLLM``), ``_in_flight`` (ids whose stream is open) and
    ``_closed``; the Orpheus/Gemma engine and the Whisper engine share this.
    """

    _engine: Any
    _in_flight: set[str]
    _closed: bool

    async def abort(self, request_id: str) -> None:
        """Abort an in-flight request by id (``AsyncLLM.abort``); unknown ids are ignored."""
        if request_id in self._in_flight:
            await self._engine.abort(request_id)

    async def check_health(self) -> None:
        """Raise `EngineError` if vLLM's engine core is dead (``AsyncLLM.check_health``)."""
        if self._closed:
            raise EngineError("engine is closed")
        try:
            await self._engine.check_health()
        except Exception as exc:
            raise EngineError(_describe(exc)) from exc

    def active_requests(self) -> int:
        """Requests whose stream is open right now."""
        return len(self._in_flight)

    async def close(self) -> None:
        """Abort everything in flight, then shut vLLM's engine core down. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for request_id in sorted(self._in_flight):
            try:
                await self._engine.abort(request_id)
            except Exception:
                logger.exception("abort of %s failed during close", request_id)
        result = self._engine.shutdown()
        if inspect.isawaitable(result):
            await result


class VLLMEngine(AsyncLLMLifecycle):
    """A `TokenEngine` over one in-process vLLM `AsyncLLM`."""

    def __init__(
        self,
        engine: Any,
        info: EngineInfo,
        *,
        orpheus_slots: bool = False,
        sampling_params_factory: SamplingParamsFactory | None = None,
        arrival_window_ms: float = 0.0,
    ) -> None:
        """Wrap an already built `AsyncLLM` (or a double with its interface); see `create`."""
        self.info = info
        self._engine = engine
        self._orpheus_slots = orpheus_slots
        self.arrivals = ArrivalWindow(arrival_window_ms / 1000)
        self._held: set[str] = set()  # in flight, waiting for their group (`arrivals`): not yet in vLLM
        self._make_params: SamplingParamsFactory = sampling_params_factory or vllm_sampling_params
        self._in_flight: set[str] = set()
        self._closed = False

    @classmethod
    async def create(
        cls,
        spec: EngineSpec,
        *,
        frame_deltas: bool = True,
        arrival_window_ms: float = 0.0,
        placement: Placement | None = None,
        kind: str = "vllm",
        engine_factory: EngineFactory | None = None,
        sampling_params_factory: SamplingParamsFactory | None = None,
    ) -> VLLMEngine:
        """Start an `AsyncLLM` as ``spec`` asks (blocking this thread while vLLM loads, 45-120 s).

        ``engine_factory(kwargs)`` replaces ``AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))``
        (tests inject a double); it may return the engine or an awaitable of it. With ``spec.orpheus_slots``,
        requests with ``orpheus_audio_slots`` are constrained to the audio band of each position (`EngineSpec` says
        what else that processor hosts). With ``frame_deltas``, an Orpheus engine whose ``stream_interval`` is whole
        frames gets its deltas on frame boundaries (`frame_deltas`). With ``arrival_window_ms``, new requests into a
        busy engine are let in in groups (`ArrivalWindow`).
        """
        kwargs = spec.engine_kwargs()
        placement = placement or Placement(None)
        kwargs.update(placement.engine_kwargs())
        # Built on the event-loop thread on purpose: AsyncLLM binds its ZMQ/asyncio clients there.
        with visible_devices(placement.gpus):
            built = (engine_factory or build_async_llm)(kwargs)
            engine = await built if inspect.isawaitable(built) else built
        frame_deltas = frame_deltas and spec.orpheus_slots and frames_per_delta(spec.stream_interval)
        if frame_deltas:
            deliver_on_frame_boundaries(engine)
        details: dict[str, object] = {
            key: kwargs.get(key)
            for key in ("dtype", "gpu_memory_utilization", "enforce_eager", "max_num_seqs", "stream_interval")
        }
        details.update(
            kv_cache_dtype=spec.kv_cache_dtype,
            quantization=spec.quantization,
            enable_prefix_caching=spec.enable_prefix_caching,
            orpheus_slots=spec.orpheus_slots,
            snac_service=spec.snac_service,
            snac_low_priority=spec.snac_low_priority,
            snac_rounds=spec.snac_rounds,
            switch_interval_ms=spec.switch_interval_ms,
            band_graphs=spec.band_graphs,
            frame_deltas=frame_deltas,
            cudagraph_mode=spec.cudagraph_mode,
            arrival_window_ms=arrival_window_ms,
            gpus=placement.gpus,
            **placement.engine_kwargs(),
        )
        info = EngineInfo(kind=kind, model=spec.model, max_model_len=spec.max_model_len, details=details)
        return cls(
            engine,
            info,
            orpheus_slots=spec.orpheus_slots,
            sampling_params_factory=sampling_params_factory,
            arrival_window_ms=arrival_window_ms,
        )

    async def abort(self, request_id: str) -> None:
        """Abort an in-flight request by id; one still waiting for its group ends without reaching vLLM."""
        if request_id in self._held:
            self._held.discard(request_id)
            return
        await super().abort(request_id)

    async def _wait_for_group(self, request_id: str) -> bool:
        """Wait for the request's arrival group (`arrivals`); False when `abort` took it meanwhile."""
        self._held.add(request_id)
        try:
            await self.arrivals.enter(len(self._in_flight) - 1)
            if self._closed:
                raise EngineError("engine is closed")
            return request_id in self._held
        finally:
            self._held.discard(request_id)

    async def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        """Stream token-id deltas (stop token excluded); closing or cancelling aborts in vLLM."""
        if self._closed:
            raise EngineError("engine is closed")
        if request_id in self._in_flight:
            raise EngineError(f"request id {request_id!r} is already in flight")
        if params.orpheus_audio_slots and not self._orpheus_slots:
            raise EngineError("orpheus_audio_slots requested but the engine has no slot logits processor")
        vllm_params = self._make_params(sampling_kwargs(params))
        prompt = {"prompt_token_ids": list(prompt_token_ids)}
        self._in_flight.add(request_id)
        try:
            let_in = await self._wait_for_group(request_id)
        except BaseException:  # cancelled (or closed) while its group waited: it never reached vLLM
            self._in_flight.discard(request_id)
            raise
        if not let_in:  # aborted by id while its group waited: it ends as an aborted vLLM request would, empty
            self._in_flight.discard(request_id)
            return
        stream = self._engine.generate(prompt, vllm_params, request_id)
        final: list[int] = []
        try:
            async for output in stream:
                completion = output.outputs[0]
                ids = list(completion.token_ids)
                if output.finished:
                    if completion.finish_reason == "error":
                        raise EngineError(f"vLLM reported an error for request {request_id}")
                    if completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
                        ids = ids[:-1]
                    # Drain vLLM's generator to its end before yielding, so a consumer that stops
                    # after the last delta does not make it abort a finished request.
                    final = ids
                    continue
                if ids:
                    yield ids
        except EngineError:
            raise
        except Exception as exc:  # vLLM's own errors (dead engine, bad request, ...)
            raise EngineError(_describe(exc)) from exc
        finally:
            self._in_flight.discard(request_id)
            # No-op when the stream ended or was cancelled inside; on our aclose() this throws
            # GeneratorExit into vLLM's generate, which issues the one abort.
            await stream.aclose()
        if final:
            yield final
