"""`SpeechRecognizer` on vLLM's in-process `AsyncLLM` serving Whisper (encoder-decoder), vLLM 0.26.0.

vLLM is imported lazily (engine and sampling-params factories), so this module imports without it;
the pure parts (`whisper_prompt`, `whisper_engine_kwargs`, `transcription_sampling_kwargs`) make
plain values. Whisper runs as its own `AsyncLLM` (its own engine-core process) beside Gemma and
Orpheus, with its own memory share, context (448 decoder positions), batch size and GPUs.

The prompt shape measured on vLLM 0.26.0 (shared/gpu/README.md): the audio rides on an empty
encoder prompt, the decoder prompt carries Whisper's start tokens as text::

    {"encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": (float32 array, 16000)}},
     "decoder_prompt": "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>"}

A text prompt goes before them as ``<|startofprev|> text``. Without a language, one extra
one-token request detects it (``<|startoftranscript|>`` with only the language tokens allowed),
as Whisper itself does.

Rendering: each prompt goes through vLLM's renderer (`render_cmpl_async`, as vLLM's own transcription
endpoint does), which tokenizes and computes the log-mel features in its own worker threads
(``renderer_num_workers``). Handed the raw prompt instead, ``AsyncLLM.generate`` does that work inline on
the event loop: tens of ms of CPU per request (Whisper's feature extractor took 78 ms for a 5 s utterance on
this project's 2-core CI machine), one request after another, during which no other stream of the server
moves. That is the likely cause of what an H200 showed before this change: 32 concurrent transcriptions
took 1.75 s p50, and 64 speech streams' TTFA p95 went from 0.8 to 2.6 s while transcriptions ran.

Streaming and aborts follow `engines.vllm_engine`: ``RequestOutputKind.DELTA`` with vLLM's own
detokenizer (``skip_special_tokens``) gives text deltas, a finished stream is drained before its
last delta is yielded, and closing or cancelling the consumer makes vLLM abort the request once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import numpy as np

from oai_server.engines.asr import (
    MAX_DECODER_POSITIONS,
    TranscriptionParams,
    TranscriptPiece,
    whisper_languages,
    window_samples,
)
from oai_server.engines.base import EngineError, EngineInfo
from oai_server.engines.placement import Placement, visible_devices
from oai_server.engines.vllm_args import vllm_sampling_params
from oai_server.engines.vllm_engine import AsyncLLMLifecycle, _describe, build_async_llm

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DETAIL_KEYS = (
    "dtype", "gpu_memory_utilization", "enforce_eager", "max_num_seqs", "renderer_num_workers", "max_num_batched_tokens"
)  # fmt: skip
"""Engine arguments `/v1/models` and the start-up log show."""
Factory = Callable[[dict[str, Any]], Any]
PromptParser = Callable[[Any, dict[str, Any]], Any]


def whisper_prompt(
    audio: np.ndarray, language: str, task: str = "transcribe", prompt: str | None = None
) -> dict[str, Any]:
    """The encoder/decoder prompt vLLM's Whisper takes for one window of 16 kHz audio."""
    previous = f"<|startofprev|> {prompt.strip()}" if prompt and prompt.strip() else ""
    return {
        "encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": (audio, SAMPLE_RATE)}},
        "decoder_prompt": f"{previous}<|startoftranscript|><|{language}|><|{task}|><|notimestamps|>",
    }


def transcription_sampling_kwargs(params: TranscriptionParams) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for a transcription (plain values)."""
    return {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "skip_special_tokens": True,
        "detokenize": True,
    }


def whisper_engine_kwargs(
    model: str,
    *,
    tokenizer: str | None = None,
    max_model_len: int = MAX_DECODER_POSITIONS,
    gpu_memory_utilization: float = 0.15,
    dtype: str = "auto",
    enforce_eager: bool = False,
    max_num_seqs: int | None = None,
    input_workers: int = 4,
    max_num_batched_tokens: int | None = None,
    log_stats: bool = False,
) -> dict[str, Any]:
    """``AsyncEngineArgs`` keyword arguments for a Whisper model (one audio per prompt).

    ``input_workers`` threads render prompts (``renderer_num_workers``; vLLM allows more than one
    because an encoder-decoder model has no multimodal processor cache). ``max_num_batched_tokens``
    bounds one step's work, encoder input included: each 30 s window is 1500 encoder tokens, so it
    sets how many windows one step encodes (vLLM's scheduler budget; unset: `vllm serve`'s default).
    """
    kwargs: dict[str, Any] = {
        "model": model,
        "tokenizer": tokenizer,
        "dtype": dtype,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enforce_eager": enforce_eager,
        "limit_mm_per_prompt": {"audio": 1},
        "renderer_num_workers": input_workers,
        "disable_log_stats": not log_stats,
    }
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    if max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = max_num_batched_tokens
    return kwargs


def vllm_parse_prompt(model_config: Any, prompt: dict[str, Any]) -> Any:
    """Default parser: vLLM's ``parse_model_prompt`` (the renderer's input shape)."""
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    return parse_model_prompt(model_config, prompt)


def language_token_ids(tokenizer: Any, languages: frozenset[str]) -> dict[str, int]:
    """``{"en": id of <|en|>, ...}`` for the languages the tokenizer has."""
    ids = {code: tokenizer.convert_tokens_to_ids(f"<|{code}|>") for code in sorted(languages)}
    unknown = getattr(tokenizer, "unk_token_id", None)
    return {code: int(i) for code, i in ids.items() if isinstance(i, int) and i != unknown}


class VLLMWhisper(AsyncLLMLifecycle):
    """A `SpeechRecognizer` over one in-process vLLM `AsyncLLM` running Whisper."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        engine: Any,
        info: EngineInfo,
        language_ids: Mapping[str, int],
        *,
        sampling_params_factory: Factory | None = None,
        prompt_parser: PromptParser | None = None,
    ) -> None:
        """Wrap an already built `AsyncLLM` (or a double with its interface); see `create`."""
        self.info = info
        self._engine = engine
        self._language_ids = dict(language_ids)
        self._id_to_language = {i: code for code, i in self._language_ids.items()}
        self.languages = frozenset(self._language_ids)
        self._make_params: Factory = sampling_params_factory or vllm_sampling_params
        self._parse: PromptParser = prompt_parser or vllm_parse_prompt
        self._in_flight: set[str] = set()
        self._closed = False

    @classmethod
    async def create(
        cls,
        model: str,
        *,
        tokenizer: str | None = None,
        max_model_len: int = MAX_DECODER_POSITIONS,
        gpu_memory_utilization: float = 0.15,
        dtype: str = "auto",
        enforce_eager: bool = False,
        max_num_seqs: int | None = None,
        input_workers: int = 4,
        max_num_batched_tokens: int | None = None,
        log_stats: bool = False,
        placement: Placement | None = None,
        kind: str = "vllm-whisper",
        engine_factory: Factory | None = None,
        sampling_params_factory: Factory | None = None,
        prompt_parser: PromptParser | None = None,
    ) -> VLLMWhisper:
        """Start an `AsyncLLM` for a Whisper ``model`` on its own ``placement`` (blocks while vLLM loads)."""
        from oai_server.engines.loading import load_tokenizer

        kwargs = whisper_engine_kwargs(
            model,
            tokenizer=tokenizer,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            enforce_eager=enforce_eager,
            max_num_seqs=max_num_seqs,
            input_workers=input_workers,
            max_num_batched_tokens=max_num_batched_tokens,
            log_stats=log_stats,
        )
        placement = placement or Placement(None)
        kwargs.update(placement.engine_kwargs())
        language_ids = language_token_ids(load_tokenizer(tokenizer or model), whisper_languages())
        with visible_devices(placement.gpus):  # on the loop thread: AsyncLLM binds its clients there
            built = (engine_factory or build_async_llm)(kwargs)
            engine = await built if inspect.isawaitable(built) else built
        details: dict[str, object] = {key: kwargs.get(key) for key in DETAIL_KEYS}
        details.update(gpus=placement.gpus, **placement.engine_kwargs())
        info = EngineInfo(kind=kind, model=model, max_model_len=max_model_len, details=details)
        return cls(
            engine, info, language_ids, sampling_params_factory=sampling_params_factory, prompt_parser=prompt_parser
        )

    async def transcribe(
        self, audio: np.ndarray, params: TranscriptionParams, request_id: str
    ) -> AsyncIterator[TranscriptPiece]:
        """Stream text deltas of one window (see `SpeechRecognizer.transcribe`)."""
        samples = self._validate(audio, params, request_id)
        self._in_flight.add(request_id)
        try:
            language = params.language or await self._detect_language(samples, request_id)
            prompt = await self._render(whisper_prompt(samples, language, params.task, params.prompt))
        except BaseException:
            self._in_flight.discard(request_id)
            raise
        stream = self._engine.generate(prompt, self._make_params(transcription_sampling_kwargs(params)), request_id)
        first = True
        final: TranscriptPiece | None = None
        try:
            async for output in stream:
                completion = output.outputs[0]
                tokens = len(completion.token_ids)
                if output.finished:
                    if completion.finish_reason == "error":
                        raise EngineError(f"vLLM reported an error for request {request_id}")
                    if completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
                        tokens = max(tokens - 1, 0)  # vLLM counts the <|endoftext|> it stopped on
                    final = TranscriptPiece(completion.text, tokens, language if first else None)
                    continue  # drained to the end first: closing after the last delta aborts nothing
                if completion.text or tokens:
                    yield TranscriptPiece(completion.text, tokens, language if first else None)
                    first = False
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(_describe(exc)) from exc
        finally:
            self._in_flight.discard(request_id)
            await stream.aclose()  # on our aclose() this makes vLLM's generate issue the one abort
        if final is not None and (final.text or final.tokens):
            yield final

    async def _render(self, prompt: dict[str, Any]) -> Any:
        """``prompt`` rendered by vLLM's renderer in its worker threads (see the module doc); a double
        without a renderer gets the raw prompt."""
        renderer = getattr(self._engine, "renderer", None)
        if renderer is None:
            return prompt
        try:
            (rendered,) = await renderer.render_cmpl_async([self._parse(self._engine.model_config, prompt)])
        except Exception as exc:
            raise EngineError(f"vLLM could not prepare the audio: {_describe(exc)}") from exc
        return rendered

    def _validate(self, audio: np.ndarray, params: TranscriptionParams, request_id: str) -> np.ndarray:
        if self._closed:
            raise EngineError("engine is closed")
        if request_id in self._in_flight:
            raise EngineError(f"request id {request_id!r} is already in flight")
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if not len(samples) or len(samples) > window_samples(SAMPLE_RATE):
            raise EngineError(f"audio must be 1 sample to 30 s at {SAMPLE_RATE} Hz, got {len(samples)} samples")
        if params.language is not None and params.language not in self.languages:
            raise EngineError(f"language {params.language!r} is not supported by {self.info.model}")
        return samples

    async def _detect_language(self, samples: np.ndarray, request_id: str) -> str:
        """One greedy token after ``<|startoftranscript|>``, restricted to the language tokens."""
        prompt = await self._render(
            {
                "encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": (samples, SAMPLE_RATE)}},
                "decoder_prompt": "<|startoftranscript|>",
            }
        )
        params = self._make_params(
            {
                "n": 1,
                "max_tokens": 1,
                "temperature": 0.0,
                "allowed_token_ids": sorted(self._id_to_language),
                "detokenize": False,
            }
        )
        token: int | None = None
        stream = self._engine.generate(prompt, params, f"{request_id}-lang")
        try:
            async for output in stream:
                if token is None and output.outputs[0].token_ids:
                    token = int(output.outputs[0].token_ids[0])
        except Exception as exc:
            raise EngineError(f"language detection failed: {_describe(exc)}") from exc
        finally:
            # A drained stream aborts nothing; after an error or a cancel, this aborts the request.
            await stream.aclose()
        if token not in self._id_to_language:
            raise EngineError(f"language detection returned no language token ({token})")
        return self._id_to_language[token]
