"""Speech to text for every transport: decode -> VAD gate -> cut at silences -> batch transcribe -> events.

`TranscriptionService` knows nothing of HTTP. `/v1/audio/transcriptions` and `/translations`,
spoken chat messages (`input_audio` parts) and, later, a Realtime session use it the same way::

    audio = await service.decode(data, param="file")          # any container -> 16 kHz mono (400 if bad)
                                                              # (or decode_base64, decode_pcm16 for raw pcm)
    job = await service.prepare(audio, service.options(...))  # VAD: where the speech is, cut into pieces
    async for event in service.stream(job): ...               # TranscriptTextDelta* / TranscriptSegment ...
    done = await service.transcribe(job)                      # or only the final TranscriptDone

The VAD gate (Silero, `engines.vad`) runs first: audio without speech gives an empty transcript
and never reaches Whisper (which invents text on silence). The speech regions are cut into
pieces of at most one model window (30 s), only in silences (`split_for_asr`): packed together
for plain text (Whisper pads every window to 30 s, so fewer windows cost less), or one piece per
stretch of speech for timestamped output (each piece is a segment with its own start and end).
All pieces are sent to the engine at once (it batches them), at most ``max_parallel`` per
request; their deltas come out in order, each piece's once the pieces before it are done.
Closing the stream aborts every engine request of the job.

Events, in this order::

    (TranscriptTextDelta* TranscriptSegment)*  TranscriptDone

Times are seconds of the decoded input; usage counts the audio (``audio_tokens``: Whisper's 50
encoder positions per second of audio sent to the model) and the transcript tokens. The
prompt's tokens are not counted: the engine seam does not report them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..codec.audio_input import (
    MAX_UPLOAD_BYTES,
    DecodedAudio,
    decode_audio,
    decode_base64,
    decode_pcm16,
    resample,
)
from ..engines.asr import (
    MAX_DECODER_POSITIONS,
    WINDOW_SECONDS,
    SpeechRecognizer,
    Task,
    TranscriptionParams,
    TranscriptPiece,
    check_language,
)
from ..engines.base import EngineError
from ..engines.vad import (
    SAMPLE_RATE,
    SileroVad,
    VadParams,
    default_vad,
    regions_from_probabilities,
    split_for_asr,
)
from ..errors import APIError, check_length, invalid, model_not_found
from ..protocol.transcription import ServerVadChunking, TranscriptionForm, TranslationForm
from ..settings import Settings
from .audio_workers import AudioWorkers
from .lifecycle import as_api_error
from .transcript_events import (
    AudioPiece,
    DeltaJoiner,
    TranscriptDone,
    TranscriptionEvent,
    TranscriptionJob,
    TranscriptionOptions,
    TranscriptionUsage,
    TranscriptSegment,
    TranscriptTextDelta,
    make_piece,
    make_segment,
)

TRANSCRIPTION_MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
"""OpenAI's transcription model ids, answered by the served Whisper."""
ENCODER_POSITIONS_PER_SECOND = 50
"""Whisper's encoder: one position per 20 ms of audio (1500 per 30 s window)."""
MAX_PARALLEL_PIECES = 16
"""Pieces of one request in the engine at once (a 25-minute file has ~50 packed pieces)."""


def translation_refusal(settings: Settings) -> str | None:
    """Why the configured speech model cannot translate to English, or None when it can."""
    if settings.asr_translation == "yes":
        return None
    name = Path(settings.asr_model_name).name
    if settings.asr_translation == "no":
        return f"The speech model '{name}' is configured without translation (--asr-translation no)."
    if name.lower().endswith(".en"):
        return f"The speech model '{name}' is English-only: it cannot translate."
    if "turbo" in name.lower():
        return (
            f"The speech model '{name}' cannot translate: Whisper large-v3-turbo was fine-tuned on transcription "
            "data only and ignores the translate task (as vLLM documents). Serve a multilingual Whisper such as "
            "openai/whisper-large-v3 for /v1/audio/translations, or set --asr-translation yes for a model that can."
        )
    return None


class TranscriptionService:
    """Transcribes (or translates) audio with the speech-recognition engine, gated and cut by the VAD."""

    def __init__(
        self,
        settings: Settings,
        asr: SpeechRecognizer | None,
        *,
        vad: SileroVad | None = None,
        max_parallel: int = MAX_PARALLEL_PIECES,
        workers: AudioWorkers | None = None,
    ) -> None:
        self.settings = settings
        self.asr = asr
        self._vad = vad
        self._max_parallel = max_parallel
        self._workers = workers or AudioWorkers(settings.asr_audio_workers)

    def close(self) -> None:
        """Stop the audio worker threads (decoding, resampling, the VAD)."""
        self._workers.close()

    # ------------------------------------------------------------------ validation
    @property
    def model_ids(self) -> tuple[str, ...]:
        """Model ids accepted for transcription (none when speech recognition is off)."""
        if self.asr is None:
            return ()
        return (self.settings.transcription_model_id, *TRANSCRIPTION_MODEL_ALIASES)

    def check_model(self, model: str, param: str = "model") -> None:
        """404 for a model id this server does not transcribe with (or when speech recognition is off)."""
        if self.asr is None:
            raise APIError(
                404,
                f"The model `{model}` does not exist: speech recognition is disabled on this server (--no-asr).",
                param=param,
                code="model_not_found",
            )
        if model not in self.model_ids:
            raise model_not_found(model)

    def check_translation(self) -> None:
        """400 with the reason when the model cannot translate."""
        reason = translation_refusal(self.settings)
        if reason is not None:
            raise invalid(reason, "model", "unsupported_value")

    def options(
        self,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        task: Task = "transcribe",
        vad: VadParams | None = None,
        timestamped: bool = False,
        max_tokens: int | None = None,
    ) -> TranscriptionOptions:
        """Validated options (400 for an unknown language, a temperature outside [0, 1], a prompt too long)."""
        asr = self._require("model")
        if not 0.0 <= temperature <= 1.0 or not math.isfinite(temperature):
            raise invalid(f"temperature must be between 0 and 1, got {temperature}.", "temperature")
        if prompt is not None:
            check_length(prompt, self.settings.max_input_chars, "prompt")
        code = check_language(language, asr.languages)
        if max_tokens is not None and not 1 <= max_tokens <= MAX_DECODER_POSITIONS:
            raise invalid(f"max_tokens must be between 1 and {MAX_DECODER_POSITIONS}, got {max_tokens}.", "max_tokens")
        limit = max_tokens or MAX_DECODER_POSITIONS
        return TranscriptionOptions(code, prompt or None, temperature, task, vad, timestamped, limit)

    async def prepare_form(self, form: TranscriptionForm | TranslationForm, data: bytes) -> TranscriptionJob:
        """A `/v1/audio/transcriptions` or `/translations` request, validated, decoded and planned (raises 400s).

        A `TranslationForm` that is not a `TranscriptionForm` asks for English text in any language.
        """
        self.check_model(form.model)
        if isinstance(form, TranscriptionForm):
            form.check_supported()
            chunking = form.chunking_strategy
            vad = None
            if isinstance(chunking, ServerVadChunking):
                base = self.vad_params()
                vad = VadParams(
                    base.threshold if chunking.threshold is None else chunking.threshold,
                    base.prefix_padding_ms if chunking.prefix_padding_ms is None else chunking.prefix_padding_ms,
                    base.silence_duration_ms if chunking.silence_duration_ms is None else chunking.silence_duration_ms,
                )
            options = self.options(
                language=form.language,
                prompt=form.prompt,
                temperature=form.temperature,
                vad=vad,
                timestamped=form.timestamped,
                max_tokens=form.max_tokens,
            )
        else:
            self.check_translation()
            options = self.options(
                prompt=form.prompt,
                temperature=form.temperature,
                task="translate",
                timestamped=form.timestamped,
                max_tokens=form.max_tokens,
            )
        return await self.prepare(await self.decode(data, param="file"), options)

    def vad_params(self) -> VadParams:
        """The server's voice activity parameters (``chunking_strategy: auto``)."""
        s = self.settings
        return VadParams(s.vad_threshold, s.vad_prefix_padding_ms, s.vad_silence_duration_ms)

    # ------------------------------------------------------------------ decoding and planning
    async def decode(self, data: bytes, *, param: str = "file", max_bytes: int = MAX_UPLOAD_BYTES) -> DecodedAudio:
        """Decode any accepted container to 16 kHz mono on an audio worker (400 envelopes naming ``param``)."""
        return await self._workers.run(
            decode_audio,
            data,
            sample_rate=SAMPLE_RATE,
            param=param,
            max_bytes=max_bytes,
            max_seconds=self.settings.asr_max_audio_seconds,
        )

    async def decode_base64(self, data: str, *, param: str) -> DecodedAudio:
        """Decode base64 audio (a chat ``input_audio`` part) on an audio worker."""

        def work() -> DecodedAudio:
            raw = decode_base64(data, param=param)
            return decode_audio(
                raw, sample_rate=SAMPLE_RATE, param=param, max_seconds=self.settings.asr_max_audio_seconds
            )

        return await self._workers.run(work)

    async def decode_pcm16(self, data: bytes, source_rate: int, *, param: str) -> DecodedAudio:
        """Raw s16le mono at ``source_rate`` (a Realtime input audio buffer: 24 kHz) to 16 kHz, on an audio worker."""
        return await self._workers.run(
            decode_pcm16,
            data,
            source_rate,
            sample_rate=SAMPLE_RATE,
            param=param,
            max_seconds=self.settings.asr_max_audio_seconds,
        )

    async def prepare(self, audio: DecodedAudio, options: TranscriptionOptions) -> TranscriptionJob:
        """Find the speech (VAD, on an audio worker) and cut it into model windows."""
        self._require("model")
        params = options.vad or self.vad_params()
        pieces = await self._workers.run(self._plan, audio.samples, params, options.timestamped)
        return TranscriptionJob(audio, options, pieces)

    def _plan(self, samples: np.ndarray, params: VadParams, timestamped: bool) -> tuple[AudioPiece, ...]:
        probs = (self._vad or default_vad()).probabilities(samples)
        regions = regions_from_probabilities(probs, len(samples), params)
        if not regions:
            return ()
        cuts = split_for_asr(
            regions, WINDOW_SECONDS, pad_ms=params.prefix_padding_ms, total_samples=len(samples), pack=not timestamped
        )
        return tuple(make_piece(index, cut, regions, probs) for index, cut in enumerate(cuts))

    # ------------------------------------------------------------------ transcription
    async def transcribe_parts(self, parts: list[tuple[str, str]]) -> list[TranscriptDone]:
        """Transcribe base64 audio (chat ``input_audio`` parts), all at once, under the request deadline.

        ``parts`` are (base64 data, param naming it); results come in the same order. The first
        failure (a 400 naming its part, or the engine's) cancels the others and is raised as an
        `APIError`.
        """
        self._require(parts[0][1] if parts else None)

        async def one(data: str, param: str) -> TranscriptDone:
            audio = await self.decode_base64(data, param=param)
            return await self.transcribe(await self.prepare(audio, TranscriptionOptions()))

        tasks = [asyncio.create_task(one(data, param)) for data, param in parts]
        try:
            async with asyncio.timeout(self.settings.request_timeout_seconds):
                return list(await asyncio.gather(*tasks))
        except Exception as exc:
            raise as_api_error(exc) from exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def transcribe(self, job: TranscriptionJob) -> TranscriptDone:
        """The whole transcript (every event but the last dropped)."""
        events = self.stream(job)
        try:
            async for event in events:
                if isinstance(event, TranscriptDone):
                    return event
        finally:
            await events.aclose()
        raise AssertionError("a transcription stream ends with TranscriptDone")

    async def stream(self, job: TranscriptionJob) -> AsyncGenerator[TranscriptionEvent, None]:
        """The job's events in order (see the module doc); closing it aborts the engine requests."""
        asr = self._require("model")
        o = job.options
        params = TranscriptionParams(o.language, o.prompt, o.temperature, o.max_tokens, o.task)
        queues: list[asyncio.Queue[TranscriptPiece | BaseException | None]] = [asyncio.Queue() for _ in job.pieces]
        limiter = asyncio.Semaphore(self._max_parallel)
        tasks = [
            asyncio.create_task(self._run_piece(asr, job, piece, params, queue, limiter))
            for piece, queue in zip(job.pieces, queues, strict=True)
        ]
        joiner = DeltaJoiner()
        language = o.language
        segments: list[TranscriptSegment] = []
        try:
            for piece, queue in zip(job.pieces, queues, strict=True):
                joiner.new_segment()
                texts: list[str] = []
                tokens = 0
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    language = language or item.language
                    tokens += item.tokens
                    texts.append(item.text)
                    delta = joiner.push(item.text)
                    if delta:
                        yield TranscriptTextDelta(delta, piece.index)
                segment = make_segment(piece, "".join(texts), tokens, o.temperature)
                segments.append(segment)
                yield segment
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        audio_tokens = sum(math.ceil(p.samples * ENCODER_POSITIONS_PER_SECOND / SAMPLE_RATE) for p in job.pieces)
        usage = TranscriptionUsage(job.duration, audio_tokens, sum(s.tokens for s in segments))
        yield TranscriptDone(joiner.text, language if segments else o.language, job.duration, tuple(segments), usage)

    async def _run_piece(
        self,
        asr: SpeechRecognizer,
        job: TranscriptionJob,
        piece: AudioPiece,
        params: TranscriptionParams,
        queue: asyncio.Queue[TranscriptPiece | BaseException | None],
        limiter: asyncio.Semaphore,
    ) -> None:
        try:
            async with limiter:
                samples = job.audio.samples[piece.start : piece.end]
                if asr.sample_rate != SAMPLE_RATE:
                    samples = await self._workers.run(resample, samples, SAMPLE_RATE, asr.sample_rate)
                budget = piece_token_budget(piece.samples / SAMPLE_RATE, self.settings.asr_max_tokens_per_second)
                piece_params = replace(params, max_tokens=min(params.max_tokens, budget))
                pieces = asr.transcribe(samples, piece_params, f"{job.job_id}-{piece.index}")
                try:
                    async for item in pieces:
                        queue.put_nowait(item)
                finally:
                    close = getattr(pieces, "aclose", None)
                    if close is not None:
                        await close()
            queue.put_nowait(None)
        except Exception as exc:
            queue.put_nowait(exc)
        except BaseException:
            # Cancelled: by `stream` closing (nobody reads on), or inside the engine (an abort from elsewhere).
            # Either way the reader gets an item, never a wait on a queue no task will fill.
            queue.put_nowait(EngineError(f"the transcription of piece {piece.index} was cancelled"))
            raise

    def _require(self, param: str | None) -> SpeechRecognizer:
        if self.asr is None:
            raise invalid("Speech recognition is disabled on this server (--no-asr).", param, "unsupported_value")
        return self.asr


PIECE_TOKEN_FLOOR = 16
"""Transcript tokens every piece may have, however short (a word or two, timestamps and punctuation)."""


def piece_token_budget(seconds: float, tokens_per_second: float) -> int:
    """Transcript tokens one piece of `seconds` may decode: ``16 + seconds * tokens_per_second``, at most the
    model's context (0 tokens per second: the context alone)."""
    if tokens_per_second <= 0:
        return MAX_DECODER_POSITIONS
    return min(MAX_DECODER_POSITIONS, PIECE_TOKEN_FLOOR + math.ceil(seconds * tokens_per_second))
