"""A small OpenAI-compatible transcription upstream over any `SpeechRecognizer`, for tests.

`create_asr_upstream(recognizer)` serves ``POST /v1/audio/transcriptions`` and
``/v1/audio/translations`` (multipart: file, model, language, prompt, temperature, stream,
response_format json|text), ``GET /health`` and ``GET /v1/models``. Streaming answers in OpenAI's
SSE shape (``transcript.text.delta`` ... ``transcript.text.done`` with usage) or, with
``faults.vllm_shape``, in vLLM's (``transcription.chunk`` choices, a usage chunk, ``[DONE]``).
`AsrFaults` on ``app.state.faults`` injects failures; ``app.state.received`` records each form (and its ``path``).
Run it with `tests.upstream_server.serve_in_thread`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from oai_server.codec.audio_input import decode_audio
from oai_server.engines.asr import SpeechRecognizer, TranscriptionParams
from oai_server.errors import APIError


@dataclass
class AsrFaults:
    """Failures and quirks to inject; mutate ``app.state.faults`` between requests."""

    statuses_before_stream: list[int] = field(default_factory=list)
    """Each request pops the first status and answers it with an error body instead of transcribing."""
    stall_after_events: int | None = None
    """Go silent (connection open) after this many SSE events."""
    stall_before_body: bool = False
    """Answer 200 for a non-streamed request, then never send the body."""
    rejects_stream: bool = False
    """Answer 400 naming ``stream`` to any request that sets it (an upstream that cannot stream)."""
    vllm_shape: bool = False
    """Stream vLLM's chunk shape instead of OpenAI's transcript.text.* events."""


def create_asr_upstream(recognizer: SpeechRecognizer, model: str = "whisper-test") -> FastAPI:
    """The upstream app over ``recognizer`` (it must accept 16 kHz audio)."""
    app = FastAPI()
    app.state.faults = AsrFaults()
    app.state.received = []

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model, "object": "model"}]}

    async def transcribe(request: Request, task: str) -> Response:
        faults: AsrFaults = app.state.faults
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        app.state.received.append({**fields, "path": request.url.path})
        if faults.statuses_before_stream:
            status = faults.statuses_before_stream.pop(0)
            return JSONResponse({"error": {"message": f"injected {status}", "type": "server_error"}}, status)
        stream = fields.get("stream", "false").lower() == "true"
        if stream and faults.rejects_stream:
            return JSONResponse({"error": {"message": "stream is not supported", "type": "invalid_request_error"}}, 400)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"error": {"message": "file is required", "type": "invalid_request_error"}}, 400)
        try:
            audio = decode_audio(await upload.read(), sample_rate=recognizer.sample_rate, param="file")
        except APIError as error:
            return error.response()
        params = TranscriptionParams(
            language=fields.get("language") or None,
            prompt=fields.get("prompt") or None,
            temperature=float(fields.get("temperature") or 0),
            task="translate" if task == "translate" else "transcribe",
        )
        pieces = recognizer.transcribe(audio.samples, params, f"upstream-{uuid.uuid4().hex}")
        if stream:
            return StreamingResponse(_events(pieces, faults, model), media_type="text/event-stream")
        if faults.stall_before_body:
            return StreamingResponse(_stall(), media_type="application/json")
        text, tokens = "", 0
        async for piece in pieces:
            text, tokens = text + piece.text, tokens + piece.tokens
        if fields.get("response_format") == "text":
            return PlainTextResponse(text)
        return JSONResponse({"text": text, "usage": {"type": "tokens", "input_tokens": 0, "output_tokens": tokens}})

    @app.post("/v1/audio/transcriptions", response_model=None)
    async def transcriptions(request: Request) -> Response:
        return await transcribe(request, "transcribe")

    @app.post("/v1/audio/translations", response_model=None)
    async def translations(request: Request) -> Response:
        return await transcribe(request, "translate")

    return app


async def _stall() -> AsyncIterator[bytes]:
    await asyncio.sleep(3600)
    yield b""


async def _events(pieces: AsyncIterator[Any], faults: AsrFaults, model: str) -> AsyncIterator[bytes]:
    sent, text, tokens = 0, "", 0
    rid, created = f"trsc-{uuid.uuid4().hex}", int(time.time())

    def event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    try:
        async for piece in pieces:
            text, tokens = text + piece.text, tokens + piece.tokens
            if faults.vllm_shape:
                choice = {"index": 0, "delta": {"content": piece.text}, "finish_reason": None}
                yield event({"id": rid, "object": "transcription.chunk", "created": created, "model": model,
                             "choices": [choice]})  # fmt: skip
            else:
                yield event({"type": "transcript.text.delta", "delta": piece.text})
            sent += 1
            if faults.stall_after_events is not None and sent >= faults.stall_after_events:
                yield b": keep-alive, then silence\n\n"
                await asyncio.sleep(3600)
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]  # closes the recognizer's stream: it aborts
    usage = {"type": "tokens", "input_tokens": 0, "output_tokens": tokens}
    if faults.vllm_shape:
        yield event({"id": rid, "object": "transcription.chunk", "created": created, "model": model, "choices": [],
                     "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}})  # fmt: skip
        yield b"data: [DONE]\n\n"
    else:
        yield event({"type": "transcript.text.done", "text": text, "usage": usage})
