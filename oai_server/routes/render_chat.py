"""Chat replies on the wire: `chat.completion.chunk` SSE events, or one whole `chat.completion`.

Audio streams follow the contract's chunk order exactly: the role chunk; `delta.audio` with
`id` and the first transcript; further transcript and `data` deltas (base64 of 6-byte-aligned
pcm16, sent per SNAC frame); the `finish_reason` chunk; one chunk with `expires_at`; the usage
chunk (`choices: []`) when asked; `[DONE]`. The transcript of a segment is sent right before
its audio, so it is always the text actually spoken.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

from ..errors import APIError
from ..pipeline.encode import encode_all
from ..protocol.chat import chunk, completion, usage
from ..serving.chat import ChatJob
from ..serving.reply_events import (
    AudioChunk,
    ReplyEvent,
    ReplyFinished,
    ReplyStarted,
    ReplyUsage,
    SegmentStarted,
    TextDelta,
)
from .sse import DONE, b64_pieces, data_event, error_event


def usage_body(reply: ReplyUsage) -> dict[str, Any]:
    """`usage` of a finished reply; the prompt's spoken part is `prompt_tokens_details.audio_tokens`."""
    body = usage(reply.prompt_tokens, reply.text_tokens, reply.audio_tokens)
    body["prompt_tokens_details"].update(
        audio_tokens=reply.audio_prompt_tokens, text_tokens=reply.prompt_tokens - reply.audio_prompt_tokens
    )
    return body


def _chunk(job: ChatJob, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    body = chunk(job.completion_id, job.created, job.request.model, delta, finish_reason)
    if job.include_usage:
        body["usage"] = None
    return data_event(body)


def _finish(job: ChatJob, finished: ReplyFinished, audio: dict[str, Any] | None) -> list[bytes]:
    out = [_chunk(job, {}, finished.finish_reason)]
    if audio is not None:
        out.append(_chunk(job, {"audio": audio}))
    if job.include_usage:
        final = {**chunk(job.completion_id, job.created, job.request.model, {}), "choices": []}
        out.append(data_event({**final, "usage": usage_body(finished.usage)}))
    out.append(DONE)
    return out


async def chat_sse(job: ChatJob, events: AsyncIterator[ReplyEvent]) -> AsyncIterator[bytes]:
    """The SSE body of a streaming request (text or audio)."""
    if not job.spoken:
        yield _chunk(job, {"role": "assistant", "content": "", "refusal": None})
        async for event in events:
            if isinstance(event, TextDelta):
                yield _chunk(job, {"content": event.text})
            elif isinstance(event, ReplyFinished):
                for data in _finish(job, event, None):
                    yield data
        return
    yield _chunk(job, {"role": "assistant", "content": None, "refusal": None})
    audio_id = ""
    announced = False
    carry = bytearray()
    async for event in events:
        if isinstance(event, SegmentStarted):
            if announced:
                yield _chunk(job, {"audio": {"transcript": f" {event.text}"}})
            else:  # the first audio delta carries the id, exactly once
                yield _chunk(job, {"content": None, "audio": {"id": audio_id, "transcript": event.text}})
                announced = True
        elif isinstance(event, AudioChunk):
            for piece in b64_pieces(event.pcm, carry, final=False):
                yield _chunk(job, {"audio": {"data": piece}})
        elif isinstance(event, ReplyFinished):
            for piece in b64_pieces(b"", carry, final=True):
                yield _chunk(job, {"audio": {"data": piece}})
            if not announced:  # nothing was spoken: still announce the audio id once
                yield _chunk(job, {"content": None, "audio": {"id": audio_id, "transcript": ""}})
            for data in _finish(job, event, {"expires_at": event.expires_at}):
                yield data
        elif isinstance(event, ReplyStarted) and event.audio_id is not None:
            audio_id = event.audio_id


def chat_failure(error: APIError) -> list[bytes]:
    """How a chat stream ends after a failure: the error event, then `[DONE]` (clients expect it)."""
    return [error_event(error), DONE]


async def chat_completion(job: ChatJob, events: AsyncIterator[ReplyEvent]) -> dict[str, Any]:
    """The whole `chat.completion` of a non-streaming request."""
    text: list[str] = []
    pcm = bytearray()
    audio_id = ""
    finished: ReplyFinished | None = None
    async for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, AudioChunk):
            pcm.extend(event.pcm)
        elif isinstance(event, ReplyFinished):
            finished = event
        elif isinstance(event, ReplyStarted) and event.audio_id is not None:
            audio_id = event.audio_id
    assert finished is not None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text), "refusal": None, "annotations": []}
    if job.spoken:
        assert job.request.audio is not None
        data = await asyncio.to_thread(encode_all, bytes(pcm), job.request.audio.format)
        message["content"] = None
        message["audio"] = {
            "id": audio_id,
            "data": base64.b64encode(data).decode("ascii"),
            "expires_at": finished.expires_at,
            "transcript": finished.transcript,
        }
    usage_dict = usage_body(finished.usage)
    return completion(job.completion_id, job.created, job.request.model, message, finished.finish_reason, usage_dict)
