"""A small OpenAI-compatible upstream (vLLM's wire shape) over any `TokenEngine`, for tests.

`create_upstream_app(engine, tokenizer)` serves ``POST /v1/completions`` (token-id or string
prompt, streaming or not), ``GET /v1/models`` and
``GET /health`` the way `vllm serve` does: text deltas decoded with ``skip_special_tokens``,
``token_ids`` per streamed choice when ``return_token_ids`` is set (``prompt_token_ids`` in the
first chunk), the matched stop id included in ``token_ids`` but not in the text, errors after the
200 as ``data: {"error": ...}``, and ``vllm_xargs.orpheus_audio_slots`` mapped onto the engine's
slot constraint. `UpstreamFaults` on ``app.state.faults`` injects failures; ``app.state.received``
records each request. `serve_in_thread(app)` runs it with uvicorn on a real loopback socket.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from oai_server.engines.base import SamplingParams, TokenEngine

from .helpers import ThreadedServer


class UpstreamTokenizer(Protocol):
    """What the upstream needs from a tokenizer (a Hugging Face tokenizer fits)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass
class UpstreamFaults:
    """Failures to inject; mutate ``app.state.faults`` between requests."""

    statuses_before_stream: list[int] = field(default_factory=list)
    """Each request pops the first status and answers it (with an error body) instead of streaming."""
    retry_after: str | None = None
    """``Retry-After`` header sent with those statuses."""
    error_after_chunks: int | None = None
    """Send ``data: {"error": ...}`` after this many chunks, then end the stream."""
    stall_after_chunks: int | None = None
    """Go silent (connection open) after this many chunks."""
    tokens_per_chunk: int = 1
    """Group engine deltas until a chunk holds at least this many ids (multi-token deltas)."""
    omit_token_ids: bool = False
    """Behave like an upstream without ``return_token_ids`` support (text only)."""
    unhealthy: bool = False
    """``GET /health`` answers 503."""


def _sampling(body: Mapping[str, Any]) -> SamplingParams:
    xargs = body.get("vllm_xargs") or {}
    top_k = int(body.get("top_k") or 0)
    seed = body.get("seed")
    return SamplingParams(
        max_tokens=int(body.get("max_tokens") or 16),
        temperature=float(body.get("temperature", 1.0)),
        top_p=float(body.get("top_p", 1.0)),
        top_k=max(top_k, 0),
        repetition_penalty=float(body.get("repetition_penalty", 1.0)),
        presence_penalty=float(body.get("presence_penalty", 0.0)),
        frequency_penalty=float(body.get("frequency_penalty", 0.0)),
        seed=None if seed is None else int(seed),
        stop_token_ids=tuple(int(t) for t in body.get("stop_token_ids") or ()),
        min_tokens=int(body.get("min_tokens") or 0),
        orpheus_audio_slots=bool(xargs.get("orpheus_audio_slots")),
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "upstream_error", "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_upstream_app(engine: TokenEngine, tokenizer: UpstreamTokenizer, *, model: str = "demo") -> FastAPI:
    """An app serving ``engine`` under the model name ``model`` with vLLM's OpenAI wire shape."""
    app = FastAPI()
    app.state.faults = UpstreamFaults()
    app.state.received = []
    app.state.api_key = None

    def admit(request: Request, body: dict[str, Any]) -> Response | None:
        app.state.received.append({"body": body, "headers": dict(request.headers)})
        api_key = app.state.api_key
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "invalid api key")
        if body.get("model") != model:
            return _error(404, f"The model `{body.get('model')}` does not exist.")
        faults: UpstreamFaults = app.state.faults
        if faults.statuses_before_stream:
            status = faults.statuses_before_stream.pop(0)
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else None
            return _error(status, f"injected {status}", headers)
        return None

    def request_id(request: Request, body: dict[str, Any], prefix: str) -> str:
        base = request.headers.get("x-request-id") or body.get("request_id") or uuid.uuid4().hex
        return f"{prefix}-{base}"

    async def chunks(
        prompt_ids: list[int], body: dict[str, Any], rid: str
    ) -> AsyncIterator[tuple[list[int], str, str | None, int | None]]:
        """(ids, text, finish_reason, stop_reason) per wire chunk, grouped as the faults say."""
        params = _sampling(body)
        skip = bool(body.get("skip_special_tokens", True))
        per_chunk = max(app.state.faults.tokens_per_chunk, 1)
        generated: list[int] = []
        pending: list[int] = []
        sent_text = 0

        def text_delta(final: bool) -> str:
            # Incremental detokenization like vLLM's: hold text back while it ends in a split
            # multi-byte character.
            nonlocal sent_text
            text = tokenizer.decode(generated, skip_special_tokens=skip)
            if not final and text.endswith("\ufffd"):
                return ""
            delta, sent_text = text[sent_text:], len(text)
            return delta

        agen = engine.generate(prompt_ids, params, rid)
        try:
            async for delta in agen:
                # Exactly `per_chunk` ids per wire chunk, whatever the engine's delta sizes (a slow
                # reader gets larger engine deltas on a loaded machine).
                for token_id in delta:
                    generated.append(token_id)
                    pending.append(token_id)
                    if len(pending) == per_chunk:
                        yield pending, text_delta(False), None, None
                        pending = []
        finally:
            await agen.aclose()
        stopped = len(generated) < params.max_tokens and bool(params.stop_token_ids)
        text = text_delta(True)
        if stopped:  # vLLM puts the matched stop id in token_ids, not in the text
            yield [*pending, params.stop_token_ids[0]], text, "stop", params.stop_token_ids[0]
        else:
            yield pending, text, "length" if len(generated) >= params.max_tokens else "stop", None

    def sse(prompt_ids: list[int], body: dict[str, Any], rid: str) -> StreamingResponse:
        faults: UpstreamFaults = app.state.faults
        with_ids = bool(body.get("return_token_ids")) and not faults.omit_token_ids
        created = int(time.time())

        async def events() -> AsyncIterator[bytes]:
            sent = 0
            wire = chunks(prompt_ids, body, rid)
            try:
                async for item in wire:
                    yield encode(item, sent)
                    sent += 1
                    if faults.error_after_chunks is not None and sent >= faults.error_after_chunks:
                        error = {"error": {"message": "injected mid-stream failure", "type": "InternalServerError"}}
                        yield f"data: {json.dumps(error)}\n\n".encode()
                        break
                    if faults.stall_after_chunks is not None and sent >= faults.stall_after_chunks:
                        yield b": keep-alive, then silence\n\n"
                        await asyncio.sleep(3600)
            finally:
                await wire.aclose()  # closes the engine stream: the engine aborts the request
            yield b"data: [DONE]\n\n"

        def encode(item: tuple[list[int], str, str | None, int | None], sent: int) -> bytes:
            ids, text, finish, stop_reason = item
            choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish, "stop_reason": stop_reason}
            if with_ids:
                choice["token_ids"] = ids
                if sent == 0:
                    choice["prompt_token_ids"] = prompt_ids
            payload = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        body = await request.json()
        refused = admit(request, body)
        if refused is not None:
            return refused
        prompt = body.get("prompt")
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            prompt_ids = [int(t) for t in prompt]
        elif isinstance(prompt, str):
            prompt_ids = list(tokenizer.encode(prompt, add_special_tokens=True))
        else:
            return _error(400, "prompt must be a string or a list of token ids")
        rid = request_id(request, body, "cmpl")
        if body.get("stream"):
            return sse(prompt_ids, body, rid)
        ids: list[int] = []
        text = ""
        finish: str | None = None
        async for chunk_ids, chunk_text, chunk_finish, _ in chunks(prompt_ids, body, rid):
            ids += chunk_ids
            text += chunk_text
            finish = chunk_finish
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish}
        if body.get("return_token_ids"):
            choice["token_ids"] = ids
            choice["prompt_token_ids"] = prompt_ids
        return JSONResponse({"id": rid, "object": "text_completion", "model": model, "choices": [choice]})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": model,
            "object": "model",
            "owned_by": "test",
            "max_model_len": engine.info.max_model_len,
        }
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> Response:
        if app.state.faults.unhealthy:
            return _error(503, "injected: unhealthy")
        try:
            await engine.check_health()
        except Exception as exc:
            return _error(503, f"engine unhealthy: {exc}")
        return Response(status_code=200)

    return app


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yield its base URL."""
    server = ThreadedServer(app, lifespan="off", startup_timeout=10, name="upstream-uvicorn")
    try:
        yield server.url
    finally:
        server.stop(timeout=10)
