"""The speech-recognition seam: one `typing.Protocol` for a streaming transcription engine.

Shaped like `engines.base.TokenEngine`: audio goes in (mono float32 at the recognizer's
``sample_rate``, one model window: at most ``max_audio_seconds``, cut beforehand at silences by
`engines.vad.split_for_asr`), text deltas come out as they decode, each with the number of tokens
it covers. Abandoning the iterator (closing it, or cancelling the task that reads it) aborts the
request inside the engine; `abort` does the same by id. Inference never runs on the event loop.

Backends: `asr_transformers.TransformersWhisper` (CPU/GPU, batched), `asr_vllm.VLLMWhisper`
(in-process vLLM), `asr_remote.RemoteTranscriber` (an OpenAI-compatible upstream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from oai_server.engines.base import EngineInfo
from oai_server.errors import invalid

WINDOW_SECONDS = 30.0
"""Whisper's input window: longer audio must be split before `transcribe`."""
MAX_DECODER_POSITIONS = 448
"""Whisper's decoder context (prompt + start tokens + transcript)."""
MAX_PROMPT_TOKENS = MAX_DECODER_POSITIONS // 2 - 1
"""Whisper keeps at most the last 223 tokens of a prompt (``<|startofprev|>`` included), as OpenAI's does."""

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class TranscriptionParams:
    """Engine-neutral transcription parameters."""

    language: str | None = None
    """ISO-639-1 code (``"en"``); None lets the model detect it."""
    prompt: str | None = None
    """Text of a previous segment or vocabulary to condition on (Whisper's ``<|startofprev|>``)."""
    temperature: float = 0.0
    """0 decodes greedily; above 0 samples."""
    max_tokens: int = MAX_DECODER_POSITIONS
    """Upper bound on transcript tokens (the model's context bounds it further)."""
    task: Task = "transcribe"
    """``translate`` turns speech in any language into English text, where the model can."""


@dataclass(frozen=True)
class TranscriptPiece:
    """A text delta of a transcript."""

    text: str
    tokens: int
    """Transcript tokens this delta covers (the sum over pieces is the output token count)."""
    language: str | None = None
    """The language the model transcribes in (given or detected), on the first piece when known."""


@runtime_checkable
class SpeechRecognizer(Protocol):
    """A streaming speech-to-text engine (Whisper-like: one window of audio in, text deltas out)."""

    info: EngineInfo
    sample_rate: int
    """The rate `transcribe` expects (16 000 for Whisper)."""
    languages: frozenset[str]
    """Language codes `TranscriptionParams.language` may take."""

    def transcribe(
        self, audio: np.ndarray, params: TranscriptionParams, request_id: str
    ) -> AsyncIterator[TranscriptPiece]:
        """Stream text deltas for one window of audio; `request_id` must be unique.

        Raises `EngineError` for audio longer than one window, a closed engine, an unknown
        language, a failure inside the model, or when aborted while this consumer reads.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Abort an in-flight request by id; unknown ids are ignored."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve (used by `/health/ready`)."""
        ...

    def active_requests(self) -> int:
        """How many requests are in flight inside the engine right now."""
        ...

    async def close(self) -> None:
        """Abort everything in flight and release the engine's resources."""
        ...


def whisper_languages() -> frozenset[str]:
    """The 100 language codes of multilingual Whisper (v3), from transformers' table."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return frozenset(LANGUAGES)


def language_name(code: str | None) -> str | None:
    """Whisper's English name of a language code (``"en"`` -> ``"english"``), as verbose_json reports it."""
    if code is None:
        return None
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code, code)


def check_language(language: str | None, languages: frozenset[str], param: str = "language") -> str | None:
    """Normalise a requested language (``"EN"`` -> ``"en"``); raise the 400 envelope for one the model lacks."""
    if language is None or not language.strip():
        return None
    code = language.strip().lower()
    if code not in languages:
        raise invalid(
            f"Language '{language}' is not supported by this model; use an ISO-639-1 code such as "
            f"{', '.join(sorted(languages)[:8])}, ...",
            param,
            "unsupported_language",
        )
    return code


class TextDeltas:
    """Token ids -> text deltas, holding back an incomplete UTF-8 sequence until it completes.

    ``decode`` turns a list of text token ids into text (the tokenizer's); special ids must be
    filtered out before `push`.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._text = ""
        self._pending = 0

    def push(self, ids: Sequence[int]) -> TranscriptPiece | None:
        """Add ids; return the newly complete text (None when nothing is complete yet)."""
        self._ids.extend(ids)
        self._pending += len(ids)
        text = self._decode(self._ids)
        if text.endswith("\ufffd") or not text.startswith(self._text):
            return None
        return self._take(text)

    def flush(self) -> TranscriptPiece | None:
        """Whatever is left at the end (an incomplete sequence decodes to U+FFFD)."""
        if not self._pending:
            return None
        text = self._decode(self._ids)
        if not text.startswith(self._text):
            text = self._text + text[len(self._text) :]
        return self._take(text)

    def _take(self, text: str) -> TranscriptPiece | None:
        delta, self._text = text[len(self._text) :], text
        if not delta and not self._pending:
            return None
        piece = TranscriptPiece(delta, self._pending)
        self._pending = 0
        return piece


def window_samples(sample_rate: int) -> int:
    """Samples in one model window at ``sample_rate``."""
    return int(WINDOW_SECONDS * sample_rate)
