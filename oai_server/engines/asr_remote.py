"""`SpeechRecognizer` over HTTP: an OpenAI-compatible ``/v1/audio/transcriptions`` upstream.

For example ``vllm serve openai/whisper-large-v3-turbo``. Each window of audio is uploaded as a
16-bit wav (multipart, ``response_format=json``) with ``stream=true``; the answer may be:

- OpenAI's SSE: ``transcript.text.delta`` {delta} ... ``transcript.text.done`` {text, usage};
- vLLM's SSE: chunks ``{"object": "transcription.chunk", "choices": [{"delta": {"content"}}]}``,
  maybe a usage chunk, then ``[DONE]``;
- a plain JSON body ``{"text", "usage"?}`` from an upstream that does not stream (it is read whole).

An upstream that rejects the ``stream`` field (a 400 naming it) is asked again without it, and
never again with it. Token counts: a streamed delta counts as one token (both servers send about
one token per event) and the final usage, when the upstream reports ``output_tokens``, tops the
count up to it; a JSON answer counts its ``usage.output_tokens``, else about four characters a token.

Cancellation and retries as in `engines.remote`: each request streams in its own task; closing or
cancelling the consumer, or `abort(request_id)`, cancels that task, which closes the connection.
Retries happen only before a 2xx response has started; a stall longer than ``read_timeout`` is an
`EngineError`.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from oai_server.engines.asr import TranscriptionParams, TranscriptPiece, whisper_languages, window_samples
from oai_server.engines.base import EngineError, EngineInfo
from oai_server.engines.upstream import STREAM_END, UpstreamCalls, upstream_message

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class RemoteTranscriberConfig:
    """Where the transcription upstream is and how to talk to it."""

    base_url: str
    """Server root, e.g. ``http://vllm-whisper:8000`` (a trailing ``/v1`` is tolerated)."""
    model: str
    api_key: str | None = None
    stream: bool = True
    """Ask for SSE deltas (dropped automatically for an upstream that refuses the field)."""
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    """Longest silence between two reads (a stall) before `EngineError`."""
    pool_timeout: float = 10.0
    max_connections: int = 256
    max_retries: int = 3
    """Attempts after the first, only before a response started (connect errors, 429/502/503/504)."""
    backoff_seconds: float = 0.2
    retry_after_cap: float = 5.0
    languages: frozenset[str] | None = None
    """Codes the upstream accepts; None means Whisper's."""


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Mono float32 samples as a 16-bit PCM wav file."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


class RemoteTranscriber(UpstreamCalls):
    """A `SpeechRecognizer` backed by an OpenAI-compatible transcription server."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        config: RemoteTranscriberConfig,
        *,
        kind: str = "remote-asr",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._base = config.base_url.rstrip("/").removesuffix("/v1")
        self.languages = config.languages or whisper_languages()
        self.info = EngineInfo(kind=kind, model=config.model, max_model_len=0, details={"base_url": self._base})
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {config.api_key}"} if config.api_key else {},
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout, pool=config.pool_timeout),
            limits=httpx.Limits(
                max_connections=config.max_connections, max_keepalive_connections=config.max_connections
            ),
            transport=transport,
        )
        self._stream_supported = config.stream
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    async def transcribe(
        self, audio: np.ndarray, params: TranscriptionParams, request_id: str
    ) -> AsyncIterator[TranscriptPiece]:
        """Stream text deltas of one window of 16 kHz audio from the upstream."""
        if self._closed:
            raise EngineError("remote transcriber is closed")
        if request_id in self._tasks:
            raise EngineError(f"request id {request_id!r} is already in flight")
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if not len(samples) or len(samples) > window_samples(SAMPLE_RATE):
            raise EngineError(f"audio must be 1 sample to 30 s at {SAMPLE_RATE} Hz, got {len(samples)} samples")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        wav = wav_bytes(samples)
        call = functools.partial(self._transcribe, wav, params, request_id, queue)
        task = self._start(request_id, call, queue, what="transcriber")
        first = True
        try:
            while True:
                item = await queue.get()
                if item is STREAM_END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if first:
                    item = TranscriptPiece(item.text, item.tokens, params.language)
                    first = False
                yield item
        finally:
            task.cancel()
            await asyncio.wait([task])

    async def abort(self, request_id: str) -> None:
        """Close the upstream stream of ``request_id``; its iterator then ends without error."""
        task = self._tasks.get(request_id)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def check_health(self) -> None:
        """GET ``/health`` (vLLM), falling back to ``/v1/models``; raise `EngineError` if unhealthy."""
        try:
            response = await self._client.get(f"{self._base}/health")
            if response.status_code in (404, 405):
                response = await self._client.get(f"{self._base}/v1/models")
        except httpx.HTTPError as exc:
            raise EngineError(f"upstream {self._base} unreachable: {exc!r}") from exc
        if not response.is_success:
            raise EngineError(f"upstream {self._base} answered {response.status_code}")

    # --- internals -----------------------------------------------------------------------

    def _form(self, params: TranscriptionParams, stream: bool) -> dict[str, str]:
        form = {"model": self.config.model, "response_format": "json", "temperature": str(params.temperature)}
        if params.language and params.task == "transcribe":
            form["language"] = params.language
        if params.prompt:
            form["prompt"] = params.prompt
        if stream:
            form["stream"] = "true"
        return form

    async def _open(self, wav: bytes, params: TranscriptionParams, request_id: str) -> httpx.Response:
        """Send the upload (`UpstreamCalls._send`); an upstream that refuses ``stream`` is asked plainly after."""
        path = "/v1/audio/translations" if params.task == "translate" else "/v1/audio/transcriptions"

        def build() -> httpx.Request:
            return self._client.build_request(
                "POST",
                f"{self._base}{path}",
                data=self._form(params, self._stream_supported),
                files={"file": ("audio.wav", wav, "audio/wav")},
                headers={"X-Request-Id": request_id},
            )

        def refuses_streaming(status: int, message: str) -> bool:
            if status == 400 and self._stream_supported and "stream" in message.lower():
                self._stream_supported = False
                return True
            return False

        return await self._send(build, refuses_streaming)

    async def _transcribe(
        self, wav: bytes, params: TranscriptionParams, request_id: str, queue: asyncio.Queue[Any]
    ) -> None:
        response = await self._open(wav, params, request_id)
        try:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                payload = json.loads(await response.aread())
                text = str(payload.get("text", "")) if isinstance(payload, dict) else ""
                tokens = _output_tokens(payload)
                queue.put_nowait(TranscriptPiece(text, tokens if tokens is not None else -(-len(text) // 4)))
                return
            counted = 0
            data: list[str] = []
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                    continue
                if line or not data:
                    continue
                event, data = "\n".join(data), []
                if event.strip() == "[DONE]":
                    return
                payload = json.loads(event)
                if not isinstance(payload, dict):
                    raise EngineError(f"unexpected upstream event: {event[:200]}")
                if "error" in payload:
                    raise EngineError(f"upstream error mid-stream: {upstream_message(payload, event)}")
                delta, done = _delta(payload)
                if delta:
                    counted += 1
                    queue.put_nowait(TranscriptPiece(delta, 1))
                total = _output_tokens(payload)
                if total is not None and total > counted:
                    queue.put_nowait(TranscriptPiece("", total - counted))
                    counted = total
                if done:
                    return
            raise EngineError(f"upstream {self._base} ended the stream before it finished")
        finally:
            await response.aclose()


def _delta(payload: dict[str, Any]) -> tuple[str, bool]:
    """(text delta, finished) of one SSE event in OpenAI's or vLLM's shape."""
    kind = payload.get("type")
    if kind == "transcript.text.delta":
        return str(payload.get("delta") or ""), False
    if kind == "transcript.text.done":
        return "", True
    choices = payload.get("choices") or []
    if choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta") or {}
        return str(delta.get("content") or "") if isinstance(delta, dict) else "", False
    return "", False


def _output_tokens(payload: Any) -> int | None:
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if isinstance(usage, dict):
        for key in ("output_tokens", "completion_tokens"):
            if isinstance(usage.get(key), int):
                return int(usage[key])
    return None
