"""`TokenEngine` over HTTP: a separately deployed OpenAI-compatible engine server.

For scale-out the models can run in `vllm serve` (or vLLM production-stack, KServe, llm-d)
instead of in-process. `RemoteEngine` keeps the token-id seam: it sends the prompt as token ids
to `POST /v1/completions` (vLLM accepts `prompt: [ids]`) and reads the generated ids from
vLLM's `choices[0].token_ids` (`return_token_ids: true`, vLLM >= 0.10.2). When an upstream
does not return ids, every `<custom_token_N>` in the text delta becomes id ``128256 + N``
(Orpheus's audio tokens; a delta may carry several); other text is re-encoded with the optional
tokenizer, or dropped without one.

Chat-only upstreams (``/v1/chat/completions`` without ``/v1/completions``) are not supported: the
server hands every engine an already templated prompt as token ids, which a chat endpoint cannot take.

The Orpheus per-position slot constraint (`SamplingParams.orpheus_audio_slots`) cannot be
enforced by a remote client. It is forwarded as ``vllm_xargs={"orpheus_audio_slots": 1}`` so an
upstream running `engines.vllm_orpheus_logits.OrpheusSlotLogitsProcessor` (``vllm serve
--logits-processors``) applies it; without it, out-of-band ids are skipped downstream by
`pipeline.orpheus.AudioTokenParser`.

Cancellation: each request streams in its own task; closing or cancelling the consumer, or
`abort(request_id)`, cancels that task, which closes the HTTP connection, and vLLM aborts a
request whose client disconnected. Retries happen only before a 2xx response has started.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from ..codec.tokenizer import TextTokenizer
from .base import EngineError, EngineInfo, SamplingParams
from .upstream import STREAM_END, UpstreamCalls, upstream_message

CUSTOM_TOKEN_BASE = 128256
"""Id of ``<custom_token_0>`` in the Orpheus (Llama 3) vocabulary."""
_CUSTOM_TOKEN = re.compile(r"<custom_token_(\d+)>")
_PREFIX = "<custom_token_"
_Queue = asyncio.Queue[Any]  # deltas, then STREAM_END or the EngineError that ended the stream


@dataclass(frozen=True)
class RemoteEngineConfig:
    """Where the upstream is and how to talk to it."""

    base_url: str
    """Server root, e.g. ``http://vllm-orpheus:8000`` (a trailing ``/v1`` is tolerated)."""
    model: str
    """The `model` field sent upstream (vLLM's served model name)."""
    api_key: str | None = None
    """Sent as ``Authorization: Bearer ...`` when set."""
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    """Longest silence between two reads of a stream (a stall) before `EngineError`."""
    pool_timeout: float = 10.0
    """Longest wait for a free pooled connection before `EngineOverloadedError`."""
    max_connections: int = 512
    max_retries: int = 3
    """Attempts after the first, only before the response started (connect errors, 429/5xx)."""
    backoff_seconds: float = 0.2
    """First retry delay; doubles per attempt, with jitter."""
    retry_after_cap: float = 5.0
    """Upper bound on an honoured ``Retry-After``."""
    max_model_len: int = 0
    """Reported in `info`; 0 means learn it from ``/v1/models`` on `check_health`."""
    forward_orpheus_slots: bool = True
    """Send ``vllm_xargs.orpheus_audio_slots`` for requests that ask for the slot constraint."""


class _TextDecoder:
    """Text deltas -> ids: every ``<custom_token_N>``; other text via the tokenizer, if any.

    A token split across two deltas is held back until its closing ``>`` arrives.
    """

    def __init__(self, tokenizer: TextTokenizer | None) -> None:
        self._tokenizer = tokenizer
        self._tail = ""
        self.exact = True
        """False once some ids came from re-encoding text (their count may differ upstream's)."""

    def feed(self, text: str) -> list[int]:
        text = self._tail + text
        self._tail = ""
        cut = text.rfind("<")
        if cut != -1 and ">" not in text[cut:] and (_PREFIX.startswith(text[cut:]) or text[cut:].startswith(_PREFIX)):
            text, self._tail = text[:cut], text[cut:]
        ids: list[int] = []
        pos = 0
        for match in _CUSTOM_TOKEN.finditer(text):
            ids.extend(self._plain(text[pos : match.start()]))
            ids.append(CUSTOM_TOKEN_BASE + int(match.group(1)))
            pos = match.end()
        ids.extend(self._plain(text[pos:]))
        return ids

    def flush(self) -> list[int]:
        tail, self._tail = self._tail, ""
        return self._plain(tail)

    def _plain(self, text: str) -> list[int]:
        if not text or self._tokenizer is None:
            return []
        self.exact = False
        return list(self._tokenizer.encode(text, add_special_tokens=False))


class RemoteEngine(UpstreamCalls):
    """A `TokenEngine` backed by an OpenAI-compatible HTTP server (vLLM first of all).

    `generate` streams token-id deltas from ``/v1/completions``. Stop ids are never yielded.
    """

    def __init__(
        self,
        config: RemoteEngineConfig,
        *,
        tokenizer: TextTokenizer | None = None,
        kind: str = "remote",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._tokenizer = tokenizer
        self._base = config.base_url.rstrip("/").removesuffix("/v1")
        self.info = EngineInfo(
            kind=kind,
            model=config.model,
            max_model_len=config.max_model_len,
            details={"base_url": self._base},
        )
        c, pool = config, config.max_connections
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {c.api_key}"} if c.api_key else {},
            # httpx's read timeout bounds every socket read: it is the per-chunk stall timeout.
            timeout=httpx.Timeout(c.read_timeout, connect=c.connect_timeout, pool=c.pool_timeout),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            transport=transport,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    # --- TokenEngine ---------------------------------------------------------------------

    def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        """Stream generated id deltas for a token-id prompt via ``/v1/completions``."""
        body = {"prompt": list(prompt_token_ids), **self._sampling_body(params)}
        return self._run("/v1/completions", body, params, request_id)

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
            if response.status_code in (404, 405) or response.is_success:
                await self._check_models(required=response.status_code in (404, 405))
                return
        except (httpx.HTTPError, ValueError) as exc:
            raise EngineError(f"upstream {self._base} unreachable or malformed: {exc!r}") from exc
        raise EngineError(f"upstream {self._base}/health answered {response.status_code}")

    # --- internals -----------------------------------------------------------------------

    def _sampling_body(self, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "stream": True,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k > 0 else -1,
            "repetition_penalty": params.repetition_penalty,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "skip_special_tokens": False,
            "return_token_ids": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop_token_ids:
            body["stop_token_ids"] = list(params.stop_token_ids)
        if params.min_tokens:
            body["min_tokens"] = params.min_tokens  # vLLM's extension of the completions API
        if params.orpheus_audio_slots and self.config.forward_orpheus_slots:
            # Only the slot flag: the penalty stays vLLM's, so an upstream without our processor keeps it.
            body["vllm_xargs"] = {"orpheus_audio_slots": 1}
        return body

    async def _check_models(self, *, required: bool) -> None:
        response = await self._client.get(f"{self._base}/v1/models")
        if not response.is_success:
            if required:
                raise EngineError(f"upstream {self._base}/v1/models answered {response.status_code}")
            return
        cards = [c for c in response.json().get("data", []) if isinstance(c, dict)]
        card = next((c for c in cards if c.get("id") == self.config.model), None)
        if card is None:
            served = [c.get("id") for c in cards]
            raise EngineError(f"upstream {self._base} does not serve {self.config.model!r} (serves {served})")
        if not self.info.max_model_len and isinstance(card.get("max_model_len"), int):
            self.info = replace(self.info, max_model_len=card["max_model_len"])

    async def _run(
        self, path: str, body: dict[str, Any], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        if self._closed:
            raise EngineError("remote engine is closed")
        if request_id in self._tasks:
            raise EngineError(f"request id {request_id!r} is already in flight")
        body["request_id"] = request_id
        queue: _Queue = asyncio.Queue()
        task = self._start(request_id, lambda: self._stream(path, body, params, queue), queue, what="engine")
        try:
            while True:
                item = await queue.get()
                if item is STREAM_END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            task.cancel()
            await asyncio.wait([task])

    async def _open(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """Send the request (`UpstreamCalls._send`: retried only while no 2xx response has started)."""
        request = self._client.build_request(
            "POST", f"{self._base}{path}", json=body, headers={"X-Request-Id": body["request_id"]}
        )
        return await self._send(lambda: request)

    async def _stream(self, path: str, body: dict[str, Any], params: SamplingParams, queue: _Queue) -> None:
        response = await self._open(path, body)
        decoder = _TextDecoder(self._tokenizer)
        stops = frozenset(params.stop_token_ids)
        emitted = 0
        final: list[int] | None = None  # the upstream's last delta, held until its [DONE]
        data: list[str] = []
        try:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                    continue
                if line or not data:
                    continue  # comment (":"), other SSE fields, or blank line between events
                event, data = "\n".join(data), []
                if event.strip() == "[DONE]":
                    final = [] if final is None else final
                    break
                ids, upstream_done = self._parse_event(event, decoder)
                if final is not None:
                    continue
                if upstream_done:
                    ids.extend(decoder.flush())
                # A stop id ends the stream unyielded (the Protocol's contract); vLLM includes the
                # matched stop id in token_ids.
                hit_stop = next((i for i, token_id in enumerate(ids) if token_id in stops), None)
                ids = ids[: hit_stop if hit_stop is not None else len(ids)]
                if decoder.exact:  # re-encoded text may count differently; then the upstream caps
                    ids = ids[: max(params.max_tokens - emitted, 0)]
                emitted += len(ids)
                if upstream_done:
                    # Read on to [DONE] first, so the connection returns to the pool and a consumer
                    # that stops after the last delta cannot abort a request that already finished.
                    final = ids
                    continue
                if ids:
                    queue.put_nowait(ids)
                if hit_stop is not None or (decoder.exact and emitted >= params.max_tokens):
                    return  # ended here, not upstream: closing the stream aborts the request there
        finally:
            await response.aclose()
        if final is None:
            raise EngineError(f"upstream {self._base} ended the stream before it finished")
        if final:
            queue.put_nowait(final)

    def _parse_event(self, event: str, decoder: _TextDecoder) -> tuple[list[int], bool]:
        """One SSE data payload -> (generated ids, finished)."""
        payload = json.loads(event)
        if not isinstance(payload, dict):
            raise EngineError(f"unexpected upstream event: {event[:200]}")
        if "error" in payload or payload.get("object") == "error":
            raise EngineError(f"upstream error mid-stream: {upstream_message(payload, event)}")
        choices = payload.get("choices") or []
        if not choices:
            return [], False  # e.g. a trailing usage-only chunk
        choice = choices[0]
        token_ids = choice.get("token_ids")
        ids = [int(t) for t in token_ids] if token_ids is not None else decoder.feed(choice.get("text") or "")
        return ids, choice.get("finish_reason") is not None
