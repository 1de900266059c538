"""`SpeechRecognizer` on transformers Whisper (``WhisperForConditionalGeneration``): CPU or any GPU, batched.

Requests wait in one queue. Worker threads (``max_concurrency`` of them, a `ThreadPoolExecutor`)
each take the requests waiting at that moment (up to ``max_batch`` that share task, prompt,
temperature and whether the language is given; a worker that finds fewer waits up to
``batch_window_ms`` for more) and decode them in ONE ``generate`` call: the feature extractor
turns the batch into (B, mel, 3000) features, per-row languages go in as a list, and Whisper's
own generate (language detection, prompt conditioning, sampling) does the rest. A streamer
routes each step's token column to the requests' queues as text deltas; a per-row stopping
criterion ends a row at its own ``max_tokens`` or when it is aborted (closing the consumer,
`abort`, `close`), and the call returns as soon as every row is done.

Threads: torch's intra-op pool is process-wide; ``torch_threads`` sets it once, as in
`engines.transformers_engine`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oai_server.engines.asr import (
    MAX_PROMPT_TOKENS,
    TranscriptionParams,
    TranscriptPiece,
    whisper_languages,
    window_samples,
)
from oai_server.engines.asr_batch import BatchRequest, Item, RowStop, RowStreamer
from oai_server.engines.base import EngineError, EngineInfo, EngineOverloadedError
from oai_server.engines.loading import ModelLoadError, _hub_errors, _load_error, resolve_device, resolve_dtype
from oai_server.engines.sampling import GREEDY_BELOW


class TransformersWhisper:
    """A batched `SpeechRecognizer` over a transformers Whisper model.

    Args:
        model: a local directory or Hub id (model, processor and generation config), or a loaded model
            (then ``processor`` is required).
        processor: a ``WhisperProcessor``; loaded from ``model`` when omitted.
        max_batch: requests decoded together in one generate call.
        max_concurrency: generate calls running at once (worker threads).
        batch_window_ms: how long a worker holding fewer than ``max_batch`` requests waits for more.
        max_waiting: if set, `transcribe` raises `EngineOverloadedError` when this many wait already.
    """

    def __init__(
        self,
        model: str | Path | Any,
        *,
        processor: Any = None,
        kind: str = "transformers-whisper",
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        max_batch: int = 8,
        max_concurrency: int = 1,
        batch_window_ms: float = 5.0,
        max_waiting: int | None = None,
        torch_threads: int | None = None,
    ) -> None:
        if max_batch < 1 or max_concurrency < 1:
            raise ValueError("max_batch and max_concurrency must be >= 1")
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        name = str(model) if isinstance(model, (str, Path)) else str(getattr(model.config, "_name_or_path", ""))
        if isinstance(model, (str, Path)):
            model, processor = _load(name, device, dtype)
        elif processor is None:
            raise ValueError("a loaded model needs its processor")
        self._model = model
        self._processor = processor
        self._tokenizer = processor.tokenizer
        param = next(model.parameters())
        self._device, self._dtype = param.device, param.dtype
        self._generation_config = copy.deepcopy(model.generation_config)
        self._eot = int(self._generation_config.eos_token_id)
        self._sot = int(self._generation_config.decoder_start_token_id)
        self._id_to_language = {i: t[2:-2] for t, i in self._generation_config.lang_to_id.items()}
        self._max_positions = int(model.config.max_target_positions)
        self.sample_rate = int(processor.feature_extractor.sampling_rate)
        self.languages = frozenset(self._id_to_language.values()) or whisper_languages()
        self._max_batch = max_batch
        self._window = batch_window_ms / 1000
        self._max_waiting = max_waiting
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrency, thread_name_prefix=f"{kind}-worker")
        self._cond = threading.Condition()
        self._waiting: collections.deque[BatchRequest] = collections.deque()
        self._requests: dict[str, BatchRequest] = {}
        self._running = 0
        self._generated = 0
        self._closed = False
        self.batch_sizes: list[int] = []
        """Rows of every generate call so far (for metrics and tests)."""
        self.info = EngineInfo(
            kind=kind,
            model=name or type(model).__name__,
            max_model_len=self._max_positions,
            details={
                "device": str(self._device),
                "dtype": str(self._dtype).removeprefix("torch."),
                "max_batch": max_batch,
                "max_concurrency": max_concurrency,
                "torch_threads": torch.get_num_threads(),
            },
        )

    # ----------------------------------------------------------------- public seam
    async def transcribe(
        self, audio: np.ndarray, params: TranscriptionParams, request_id: str
    ) -> AsyncIterator[TranscriptPiece]:
        """Stream text deltas of one window of 16 kHz audio (see `SpeechRecognizer.transcribe`)."""
        samples = self._validate(audio, params)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Item] = asyncio.Queue()

        def emit(item: Item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody listens any more
                request.abort.set()

        request = BatchRequest(request_id, samples, params, emit)
        self._enqueue(request)
        try:
            while True:
                item = await queue.get()
                pieces: list[TranscriptPiece] = []
                while isinstance(item, TranscriptPiece):
                    pieces.append(item)
                    item = queue.get_nowait() if not queue.empty() else _NOTHING
                if pieces:
                    yield _merge(pieces)
                if isinstance(item, BaseException):
                    raise EngineError(f"request {request_id} failed: {item}") from item
                if item is None:
                    if request.aborted:
                        raise EngineError(f"request {request_id} was aborted")
                    return
        finally:
            self._abort(request)

    async def abort(self, request_id: str) -> None:
        """Abort a waiting or running request by id; unknown ids are ignored."""
        with self._cond:
            request = self._requests.get(request_id)
        if request is not None:
            self._abort(request)

    async def check_health(self) -> None:
        """The model is loaded and the worker pool accepts work."""
        if self._closed:
            raise EngineError(f"{self.info.kind} engine is closed")

    def active_requests(self) -> int:
        """Requests waiting or decoding."""
        with self._cond:
            return len(self._requests)

    def generated_tokens(self) -> int:
        """Transcript tokens decoded since the engine started, all requests together."""
        with self._cond:
            return self._generated

    async def close(self) -> None:
        """Abort everything and stop the workers (a running generate ends at its next step)."""
        with self._cond:
            self._closed = True
            requests = list(self._requests.values())
            self._cond.notify_all()
        for request in requests:
            self._abort(request)
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    # ----------------------------------------------------------------- internals
    def _validate(self, audio: np.ndarray, params: TranscriptionParams) -> np.ndarray:
        if self._closed:
            raise EngineError(f"{self.info.kind} engine is closed")
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if not len(samples) or len(samples) > window_samples(self.sample_rate):
            raise EngineError(f"audio must be 1 sample to 30 s at {self.sample_rate} Hz, got {len(samples)} samples")
        if params.language is not None and params.language not in self.languages:
            raise EngineError(f"language {params.language!r} is not supported by {self.info.model}")
        if params.max_tokens < 1 or params.temperature < 0:
            raise EngineError("max_tokens must be >= 1 and temperature >= 0")
        return samples

    def _enqueue(self, request: BatchRequest) -> None:
        with self._cond:
            if request.request_id in self._requests:
                raise EngineError(f"request id {request.request_id!r} is already in flight")
            if self._max_waiting is not None and len(self._waiting) >= self._max_waiting:
                raise EngineOverloadedError(f"{self.info.kind} engine is full: {len(self._waiting)} waiting")
            self._requests[request.request_id] = request
            self._waiting.append(request)
            self._cond.notify_all()
        try:
            self._pool.submit(self._run_batch)
        except RuntimeError as exc:  # shut down between the check and submit
            self._forget(request)
            raise EngineError("engine is closed") from exc

    def _abort(self, request: BatchRequest) -> None:
        request.abort.set()
        with self._cond:
            waiting = request in self._waiting
            if waiting:
                self._waiting.remove(request)
        if waiting:
            self._forget(request)
            request.aborted = True
            request.emit(None)

    def _forget(self, request: BatchRequest) -> None:
        with self._cond:
            if self._requests.get(request.request_id) is request:
                del self._requests[request.request_id]

    def _take_batch(self) -> list[BatchRequest]:
        """The requests this worker decodes: the oldest waiting one and others like it."""
        with self._cond:
            deadline = time.monotonic() + self._window
            while self._waiting and len(self._waiting) < self._max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    break
            if not self._waiting:
                return []
            key = self._waiting[0].key
            batch = [r for r in self._waiting if r.key == key][: self._max_batch]
            for request in batch:
                self._waiting.remove(request)
            self._running += len(batch)
            return batch

    def _run_batch(self) -> None:
        batch = self._take_batch()
        if not batch:
            return
        try:
            self._generate(batch)
        except Exception as exc:
            for request in batch:
                request.emit(exc)
        finally:
            with self._cond:
                self._running -= len(batch)
            for request in batch:
                # Forget before signalling, so a consumer that saw the end sees the engine idle.
                self._forget(request)
                request.aborted = request.abort.is_set()
                request.emit(None)

    def _prompt_ids(self, prompt: str | None) -> torch.Tensor | None:
        if not prompt or not prompt.strip():
            return None
        ids = self._tokenizer.get_prompt_ids(prompt, return_tensors="pt")
        if len(ids) > MAX_PROMPT_TOKENS:  # keep <|startofprev|> and the prompt's end, as Whisper does
            ids = torch.cat([ids[:1], ids[len(ids) - MAX_PROMPT_TOKENS + 1 :]])
        return ids.to(self._device)

    def _generate(self, batch: list[BatchRequest]) -> None:
        self.batch_sizes.append(len(batch))
        first = batch[0].params
        features = self._processor.feature_extractor(
            [r.audio for r in batch], sampling_rate=self.sample_rate, return_tensors="pt"
        ).input_features.to(self._device, self._dtype)
        prompt_ids = self._prompt_ids(first.prompt)
        start_tokens = 4 + (0 if prompt_ids is None else len(prompt_ids))  # sot, language, task, notimestamps
        max_new = min(max(r.params.max_tokens for r in batch), self._max_positions - start_tokens)
        if max_new < 1:
            raise EngineError("the prompt leaves no room for a transcript")
        streamer = RowStreamer(batch, self._tokenizer, self._eot, self._sot, self._id_to_language)
        config = copy.deepcopy(self._generation_config)
        # Whisper's generate adds the start tokens to max_length (max_new_tokens would clash with the
        # config's max_length and warn on every call); `RowStop` enforces each row's own bound.
        config.max_length, config.max_new_tokens = max_new, None
        from transformers import StoppingCriteriaList

        with torch.inference_mode():
            self._model.generate(
                features,
                generation_config=config,
                language=None if first.language is None else [r.params.language for r in batch],
                task=first.task,
                prompt_ids=prompt_ids,
                # Like vLLM and the chat sampler: a (nearly) zero temperature is greedy, not a division by ~0.
                temperature=first.temperature if first.temperature >= GREEDY_BELOW else 0.0,
                return_timestamps=False,
                # One decoding pass per window: a (random-weight) model that emits timestamp tokens
                # would otherwise make Whisper's generate seek on and decode the window again.
                force_unique_generate_call=True,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([RowStop(batch, streamer)]),
            )
        streamer.finish()
        with self._cond:
            self._generated += sum(streamer.counts)


_NOTHING: Any = object()


def _merge(pieces: list[TranscriptPiece]) -> TranscriptPiece:
    if len(pieces) == 1:
        return pieces[0]
    language = next((p.language for p in pieces if p.language), None)
    return TranscriptPiece("".join(p.text for p in pieces), sum(p.tokens for p in pieces), language)


def _load(name: str, device: str | torch.device, dtype: str | torch.dtype) -> tuple[Any, Any]:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    target = resolve_device(device)
    try:
        processor = WhisperProcessor.from_pretrained(name)
        model: Any = WhisperForConditionalGeneration.from_pretrained(name, dtype=resolve_dtype(dtype, target))
    except _hub_errors() as exc:
        raise _load_error(name, "speech recognition model", exc) from exc
    except ValueError as exc:
        raise ModelLoadError(f"{name!r} is not a Whisper model: {exc}") from exc
    return model.to(target).eval(), processor
