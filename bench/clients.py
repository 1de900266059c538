"""The bench's HTTP clients: one speech or chat-with-audio stream per call, as the client sees it.

Drives `/v1/audio/speech` (pcm, stream_format audio) and `/v1/chat/completions` with audio
(modalities text+audio, pcm16, stream; `delta.audio.data` base64) over real sockets. Each call
records the HTTP status and when the headers came (for a 429: the time to the refusal and its
`retry-after`), the audio timeline against the wall clock, and for chat the first transcript.

What a request asks for is a `RequestSpec`: its text, chat `max_tokens`, seed, and the speech
length an arrival model wanted, and which server it goes to when `--url` names several (one server per
card behind a client that deals requests out, as a round-robin balancer would). `speech_text` and
`chat_max_tokens` turn a wanted length into the server's knobs (see their docstrings); `Seeds` derives
per-request seeds from a base seed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from _common import REAL_TIME_TOKENS_PER_SECOND, SENTENCES, StreamResult, server_urls

TOKENS_PER_FRAME = 7
MIN_SEGMENT_TOKENS = 8 * TOKENS_PER_FRAME
"""The server's smallest per-segment token budget (`SpeechSynthesizer.token_budget`)."""


@dataclass(frozen=True)
class RequestSpec:
    """One request: its text (speech input or chat message) and knobs."""

    text: str
    max_tokens: int | None = None
    """Chat only: the reply's token budget."""
    seed: int | None = None
    target_audio_s: float | None = None
    server: int = 0
    """Which of the servers of `--url` (comma-separated) it goes to: `server_urls(...)[server % count]`."""
    at_s: float | None = None
    """A planned arrival: sent this long after the run's start, and hung if not done within `--hang-s` (None: a
    burst worker's request, sent as soon as its worker's previous one ended)."""


@asynccontextmanager
async def open_clients(
    url: str, limits: httpx.Limits, timeout: httpx.Timeout
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One connection pool per server of `url`, in `server_urls` order; a request takes `clients[spec.server % n]`."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout))
            for base in server_urls(url)
        ]


class Seeds:
    """Per-request seeds: base, base + 1, ... in the order requests are planned; None when unseeded."""

    def __init__(self, base: int | None) -> None:
        self.base = base
        self.count = 0

    def take(self) -> int | None:
        """The next request's seed."""
        if self.base is None:
            return None
        self.count += 1
        return (self.base + self.count - 1) % 2**31


def speech_text(seconds: float, tokens_per_char: float, offset: int = 0) -> str:
    """Input text whose token budget is `seconds` of audio.

    The server gives a segment `ceil(chars * tokens_per_char)` audio tokens (at least 56), and
    real time is 82 tokens/s, so `seconds` needs `seconds * 82 / tokens_per_char` characters.
    Random-weight Orpheus runs to its budget, so that is the audio length on the GPU bench; a real
    Orpheus stops when the text is spoken (~10-15 characters a second, the same order). The text is
    the built-in sentences run together from sentence `offset`, cut at the space nearest the target.
    """
    chars = max(1, round(seconds * REAL_TIME_TOKENS_PER_SECOND / tokens_per_char))
    source = " ".join(SENTENCES[(offset + k) % len(SENTENCES)] for k in range(len(SENTENCES)))
    while len(source) < chars + 40:
        source = f"{source} {source}"
    cut = min((i for i, c in enumerate(source) if c == " "), key=lambda i: abs(i - chars))
    return source[:cut] if cut > 0 else source[:chars]


def chat_max_tokens(seconds: float, tokens_per_s: float) -> int:
    """`max_tokens` for a reply of about `seconds` of speech (`tokens_per_s` LLM tokens per spoken second).

    English runs ~4 characters a token and ~10-15 characters a second of speech, so ~3 tokens a
    second; a random-weight Gemma writes other text, so the spoken length is only roughly this.
    """
    return max(1, math.ceil(seconds * tokens_per_s))


def headers(args: argparse.Namespace) -> dict[str, str]:
    """The Authorization header when `--api-key` is set."""
    return {"Authorization": f"Bearer {args.api_key}"} if getattr(args, "api_key", None) else {}


class _Recorder:
    """Accumulates the audio bytes of one stream into (time, cumulative samples) arrivals."""

    def __init__(self, spec: RequestSpec, sent_at_s: float | None) -> None:
        self.started = time.perf_counter()
        self.result = StreamResult(seed=spec.seed, target_audio_s=spec.target_audio_s, sent_at_s=sent_at_s)
        self._samples = 0

    def now(self) -> float:
        return time.perf_counter() - self.started

    def add(self, data: bytes) -> None:
        self.result.bytes += len(data)
        samples = self.result.bytes // 2
        if samples > self._samples:
            self._samples = samples
            self.result.arrivals.append((self.now(), samples))

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: when the connection was up and the request fully written."""
        if event == "connection.connect_tcp.complete":
            self.result.connected_s = self.now()
        elif event.endswith("send_request_body.complete"):
            self.result.sent_s = self.now()

    async def response(self, response: httpx.Response) -> bool:
        """Record status and headers; on a non-200 read the error body. True when the stream may go on."""
        self.result.status = response.status_code
        self.result.headers_s = self.now()
        if response.status_code == 200:
            return True
        retry = response.headers.get("retry-after")
        try:
            self.result.retry_after_s = float(retry) if retry is not None else None
        except ValueError:
            self.result.retry_after_s = None
        body = (await response.aread()).decode(errors="replace")
        self.result.error = f"HTTP {response.status_code}: {body[:200]}"
        return False

    def end(self, prebuffer_ms: float) -> StreamResult:
        if self.result.error is None:
            self.result.ok = self.result.bytes > 0
            self.result.error = None if self.result.ok else "no audio"
        return self.result.finish(self.now(), prebuffer_ms)


def _speech_body(args: argparse.Namespace, spec: RequestSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": args.speech_model,
        "input": spec.text,
        "voice": args.voice,
        "response_format": "pcm",
        "stream_format": "audio",
    }
    if spec.seed is not None:
        body["seed"] = spec.seed
    return body


def _chat_body(args: argparse.Namespace, spec: RequestSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": args.chat_model,
        "messages": [{"role": "user", "content": spec.text}],
        "modalities": ["text", "audio"],
        "audio": {"voice": args.voice, "format": "pcm16"},
        "stream": True,
    }
    max_tokens = spec.max_tokens or getattr(args, "max_tokens", None)
    if max_tokens:
        body["max_tokens"] = max_tokens
    if spec.seed is not None:
        body["seed"] = spec.seed
    return body


async def _read_speech(client: httpx.AsyncClient, args: argparse.Namespace, spec: RequestSpec, rec: _Recorder) -> None:
    body = _speech_body(args, spec)
    async with client.stream(
        "POST", "/v1/audio/speech", json=body, headers=headers(args), extensions={"trace": rec.trace}
    ) as resp:
        if await rec.response(resp):
            async for data in resp.aiter_raw():
                if data:
                    rec.add(data)


async def _read_chat(client: httpx.AsyncClient, args: argparse.Namespace, spec: RequestSpec, rec: _Recorder) -> None:
    body = _chat_body(args, spec)
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers=headers(args), extensions={"trace": rec.trace}
    ) as resp:
        if not await rec.response(resp):
            return
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            event = json.loads(payload)
            if "error" in event:
                rec.result.error = f"stream error: {str(event['error'])[:200]}"
                break
            for choice in event.get("choices") or ():
                audio = (choice.get("delta") or {}).get("audio") or {}
                if audio.get("transcript") and rec.result.first_text_s is None:
                    rec.result.first_text_s = rec.now()
                    rec.result.first_text = audio["transcript"]
                    rec.result.first_text_words = len(audio["transcript"].split())
                if audio.get("data"):
                    rec.add(base64.b64decode(audio["data"]))


async def _stream(
    read: Any,
    client: httpx.AsyncClient,
    args: argparse.Namespace,
    spec: RequestSpec | str,
    deadline_s: float | None,
    sent_at_s: float | None,
) -> StreamResult:
    spec = RequestSpec(spec) if isinstance(spec, str) else spec
    rec = _Recorder(spec, sent_at_s)
    try:
        async with asyncio.timeout(deadline_s):
            await read(client, args, spec, rec)
    except TimeoutError:
        rec.result.hung = True
        rec.result.error = f"hung: no end of stream after {deadline_s} s"
    except httpx.TimeoutException as exc:
        rec.result.hung = True
        rec.result.error = f"hung: {type(exc).__name__}: {exc}"
    except (httpx.HTTPError, OSError, ValueError) as exc:
        rec.result.error = f"{type(exc).__name__}: {exc}"
    return rec.end(args.prebuffer_ms)


async def speech_stream(
    client: httpx.AsyncClient,
    args: argparse.Namespace,
    spec: RequestSpec | str,
    deadline_s: float | None = None,
    sent_at_s: float | None = None,
) -> StreamResult:
    """One `/v1/audio/speech` pcm stream (`args`: speech_model, voice, prebuffer_ms, api_key)."""
    return await _stream(_read_speech, client, args, spec, deadline_s, sent_at_s)


async def chat_stream(
    client: httpx.AsyncClient,
    args: argparse.Namespace,
    spec: RequestSpec | str,
    deadline_s: float | None = None,
    sent_at_s: float | None = None,
) -> StreamResult:
    """One streamed chat completion with audio, pcm16 (`args`: chat_model, voice, max_tokens, prebuffer_ms)."""
    return await _stream(_read_chat, client, args, spec, deadline_s, sent_at_s)


def request_fn(mode: str) -> Any:
    """`speech_stream` or `chat_stream`."""
    return speech_stream if mode == "speech" else chat_stream
