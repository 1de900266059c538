"""`TokenEngine` on Hugging Face transformers + torch: CPU or any GPU, no vLLM needed.

Each request runs its own manual decode loop (prefill, then one token per step reusing the
KV cache) inside a worker thread of a `ThreadPoolExecutor` with ``max_concurrency`` threads;
requests beyond that wait their turn FIFO in the executor's queue. Tokens cross into the
event loop through an `asyncio.Queue` via `loop.call_soon_threadsafe`, and the consumer
batches whatever has arrived into one delta. Aborting (closing/cancelling the consumer,
`abort`, `close`) sets a per-request flag that the worker checks before every step.

Threads: torch's intra-op pool is process-wide. Pass ``torch_threads`` (once, for the whole
process) to set it; on a 2-core CPU with two engines in one process, 1-2 threads each is
right. It is never changed per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from oai_server.engines.base import EngineError, EngineInfo, EngineOverloadedError, SamplingParams
from oai_server.engines.loading import load_causal_lm
from oai_server.engines.sampling import TokenSampler


class _Finished:
    """Queue sentinel: the worker ended; ``aborted`` says whether it was cut short."""

    def __init__(self, aborted: bool) -> None:
        self.aborted = aborted


@dataclass
class _Request:
    request_id: str
    abort: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future[None] | None = None
    steps: int = 0


class TransformersEngine:
    """A `TokenEngine` that runs a transformers causal LM in worker threads.

    Args:
        model: a local directory or Hugging Face id (loaded with `load_causal_lm`), or an
            already loaded ``PreTrainedModel``.
        kind: the engine name reported in `info` (e.g. ``"transformers-orpheus"``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        dtype: ``"auto"``, ``"float32"``, ``"float16"``, ``"bfloat16"`` or a torch dtype.
        max_model_len: context bound (prompt + generated); defaults to the model's
            ``max_position_embeddings`` capped at 8192.
        max_concurrency: requests generating at once; the rest wait FIFO.
        max_waiting: if set, `generate` raises `EngineOverloadedError` when this many
            requests are already waiting for a slot.
        torch_threads: if set, `torch.set_num_threads` for the whole process (see module doc).
    """

    def __init__(
        self,
        model: str | Path | Any,
        *,
        kind: str = "transformers",
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        max_model_len: int | None = None,
        max_concurrency: int = 1,
        max_waiting: int | None = None,
        torch_threads: int | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        if isinstance(model, (str, Path)):
            name = str(model)
            model = load_causal_lm(name, device=device, dtype=dtype)
        else:
            name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self._model = model
        self._device = next(model.parameters()).device
        config = model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        forward_params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"
        self._vocab_size = int(text_config.vocab_size)
        native_len = int(getattr(text_config, "max_position_embeddings", 8192) or 8192)
        self._max_model_len = max_model_len if max_model_len is not None else min(native_len, 8192)
        if self._max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
        self._max_concurrency = max_concurrency
        self._max_waiting = max_waiting
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix=f"{kind}-worker"
        )
        self._lock = threading.Lock()
        self._requests: dict[str, _Request] = {}
        self._running = 0
        self._generated_tokens = 0
        self._closed = False
        self.info = EngineInfo(
            kind=kind,
            model=name,
            max_model_len=self._max_model_len,
            details={
                "device": str(self._device),
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                "max_concurrency": max_concurrency,
                "torch_threads": torch.get_num_threads(),
            },
        )

    # ----------------------------------------------------------------- public seam
    async def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        """Stream token-id deltas for one request (see `TokenEngine.generate`).

        Raises `EngineError` for an empty or too long prompt, a duplicate ``request_id``, a
        closed engine, a failure inside the model, or when the request is aborted by
        `abort`/`close` while this consumer is still reading. Stop ids are not yielded.
        """
        prompt = [int(t) for t in prompt_token_ids]
        max_tokens = self._validate(prompt, params)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[int | _Finished | BaseException] = asyncio.Queue()
        request = self._register(request_id)

        def emit(item: int | _Finished | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                request.abort.set()

        try:
            request.future = self._pool.submit(self._run, request, prompt, params, max_tokens, emit)
        except RuntimeError as exc:  # pool shut down between the check and submit
            self._forget(request)
            raise EngineError("engine is closed") from exc
        request.future.add_done_callback(lambda future: emit(_Finished(aborted=True)) if future.cancelled() else None)
        try:
            while True:
                batch: list[int] = []
                item = await queue.get()
                while True:
                    if isinstance(item, BaseException):
                        if batch:
                            yield batch
                        raise EngineError(f"request {request_id} failed: {item}") from item
                    if isinstance(item, _Finished):
                        if batch:
                            yield batch
                        if item.aborted:
                            raise EngineError(f"request {request_id} was aborted")
                        return
                    batch.append(item)
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                yield batch
        finally:
            # Closing or cancelling the consumer lands here: stop the worker, free the slot.
            self._abort_request(request)

    async def abort(self, request_id: str) -> None:
        """Abort a request by id (waiting or running); unknown ids are ignored."""
        with self._lock:
            request = self._requests.get(request_id)
        if request is not None:
            self._abort_request(request)

    async def check_health(self) -> None:
        """Cheap readiness check: the model is loaded and the worker pool accepts work."""
        if self._closed or self._model is None:
            raise EngineError(f"{self.info.kind} engine is closed")
        if getattr(self._pool, "_shutdown", False):
            raise EngineError(f"{self.info.kind} worker pool is shut down")

    def active_requests(self) -> int:
        """Requests inside the engine: waiting for a slot or generating."""
        with self._lock:
            return len(self._requests)

    def running_requests(self) -> int:
        """Requests currently generating in a worker thread (at most ``max_concurrency``)."""
        with self._lock:
            return self._running

    def generated_tokens(self) -> int:
        """Decode steps completed since the engine started, all requests together."""
        with self._lock:
            return self._generated_tokens

    async def close(self) -> None:
        """Abort every request and shut the worker pool down (running steps finish first)."""
        self._closed = True
        with self._lock:
            requests = list(self._requests.values())
        for request in requests:
            self._abort_request(request)
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    # ----------------------------------------------------------------- internals
    def _validate(self, prompt: list[int], params: SamplingParams) -> int:
        if self._closed:
            raise EngineError(f"{self.info.kind} engine is closed")
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) > self._max_model_len - 1:
            raise EngineError(
                f"prompt has {len(prompt)} tokens; this engine allows at most "
                f"{self._max_model_len - 1} (max_model_len {self._max_model_len} minus 1 to generate)"
            )
        bad = [t for t in prompt if not 0 <= t < self._vocab_size]
        if bad:
            raise EngineError(f"prompt token ids out of range [0, {self._vocab_size}): {bad[:5]}")
        if params.max_tokens < 1:
            raise EngineError("max_tokens must be >= 1")
        return min(params.max_tokens, self._max_model_len - len(prompt))

    def _register(self, request_id: str) -> _Request:
        with self._lock:
            if request_id in self._requests:
                raise EngineError(f"request id {request_id!r} is already in flight")
            waiting = len(self._requests) - self._running
            if self._max_waiting is not None and waiting >= self._max_waiting:
                raise EngineOverloadedError(
                    f"{self.info.kind} engine is full: {self._running} generating, {waiting} waiting"
                )
            request = _Request(request_id)
            self._requests[request_id] = request
            return request

    def _forget(self, request: _Request) -> None:
        with self._lock:
            if self._requests.get(request.request_id) is request:
                del self._requests[request.request_id]

    def _abort_request(self, request: _Request) -> None:
        request.abort.set()
        # A request still queued never reaches a worker: drop it now. A running one is
        # dropped by its worker after the current step.
        if request.future is not None and request.future.cancel():
            self._forget(request)

    def _run(
        self,
        request: _Request,
        prompt: list[int],
        params: SamplingParams,
        max_tokens: int,
        emit: Callable[[int | _Finished | BaseException], None],
    ) -> None:
        with self._lock:
            self._running += 1
        finished: int | _Finished | BaseException = _Finished(aborted=True)
        try:
            if not request.abort.is_set():
                self._decode(request, prompt, params, max_tokens, emit)
                finished = _Finished(aborted=request.abort.is_set())
        except Exception as exc:
            finished = exc
        finally:
            with self._lock:
                self._running -= 1
            # Forget before signalling, so a consumer that saw the end sees the engine idle.
            self._forget(request)
            emit(finished)

    def _decode(
        self,
        request: _Request,
        prompt: list[int],
        params: SamplingParams,
        max_tokens: int,
        emit: Callable[[int | _Finished | BaseException], None],
    ) -> None:
        stops = frozenset(params.stop_token_ids)
        sampler = TokenSampler(params, prompt, self._vocab_size, self._device)
        with torch.inference_mode():
            # The cache object is filled in place; its keyword is `cache` from transformers
            # ~5.2x on (`past_key_values` before, still accepted with a warning).
            kv = {self._cache_kwarg: DynamicCache(config=self._model.config)}
            input_ids = torch.tensor([prompt], dtype=torch.long, device=self._device)
            out = self._model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **kv)
            for step in range(max_tokens):
                if request.abort.is_set():
                    return
                token = sampler.step(out.logits[0, -1])
                with self._lock:
                    self._generated_tokens += 1
                request.steps += 1
                if token in stops:
                    return
                emit(token)
                if step + 1 == max_tokens:
                    return
                next_ids = torch.tensor([[token]], dtype=torch.long, device=self._device)
                out = self._model(input_ids=next_ids, use_cache=True, **kv)
