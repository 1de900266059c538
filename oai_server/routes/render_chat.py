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
from ..protocol.chat_responses import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    CompletionUsage,
    DeltaAudio,
    FinishReason,
    MessageAudio,
)
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


def usage_body(reply: ReplyUsage) -> CompletionUsage:
    """`usage` of a finished reply; the prompt's spoken part is `prompt_tokens_details.audio_tokens`."""
    return CompletionUsage.of(reply.prompt_tokens, reply.text_tokens, reply.audio_tokens, reply.audio_prompt_tokens)


def _reason(finished: ReplyFinished) -> FinishReason:
    """The reply's finish reason on the wire (the core only ends replies by a stop or the token limit)."""
    return "length" if finished.finish_reason == "length" else "stop"


def _body(job: ChatJob, choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> bytes:
    extra: dict[str, Any] = {"usage": usage} if job.include_usage else {}
    body = ChatCompletionChunk(id=job.completion_id, created=job.created, model=job.model, choices=choices, **extra)
    return data_event(body.wire())


def _chunk(job: ChatJob, delta: ChoiceDelta, finish_reason: FinishReason | None = None) -> bytes:
    return _body(job, [ChunkChoice(delta=delta, finish_reason=finish_reason)])


def _audio(**audio: Any) -> ChoiceDelta:
    return ChoiceDelta(audio=DeltaAudio(**audio))


def _finish(job: ChatJob, finished: ReplyFinished, expires_at: int | None) -> list[bytes]:
    out = [_chunk(job, ChoiceDelta(), _reason(finished))]
    if expires_at is not None:
        out.append(_chunk(job, _audio(expires_at=expires_at)))
    if job.include_usage:
        out.append(_body(job, [], usage_body(finished.usage)))
    out.append(DONE)
    return out


async def chat_sse(job: ChatJob, events: AsyncIterator[ReplyEvent]) -> AsyncIterator[bytes]:
    """The SSE body of a streaming request (text or audio)."""
    if not job.spoken:
        yield _chunk(job, ChoiceDelta(role="assistant", content="", refusal=None))
        async for event in events:
            if isinstance(event, TextDelta):
                yield _chunk(job, ChoiceDelta(content=event.text))
            elif isinstance(event, ReplyFinished):
                for data in _finish(job, event, None):
                    yield data
        return
    yield _chunk(job, ChoiceDelta(role="assistant", content=None, refusal=None))
    audio_id = ""
    announced = False
    carry = bytearray()
    async for event in events:
        if isinstance(event, SegmentStarted):
            if announced:
                yield _chunk(job, _audio(transcript=f" {event.text}"))
            else:  # the first audio delta carries the id, exactly once
                yield _chunk(job, ChoiceDelta(content=None, audio=DeltaAudio(id=audio_id, transcript=event.text)))
                announced = True
        elif isinstance(event, AudioChunk):
            for piece in b64_pieces(event.pcm, carry, final=False):
                yield _chunk(job, _audio(data=piece))
        elif isinstance(event, ReplyFinished):
            for piece in b64_pieces(b"", carry, final=True):
                yield _chunk(job, _audio(data=piece))
            if not announced:  # nothing was spoken: still announce the audio id once
                yield _chunk(job, ChoiceDelta(content=None, audio=DeltaAudio(id=audio_id, transcript="")))
            for data in _finish(job, event, event.expires_at):
                yield data
        elif isinstance(event, ReplyStarted) and event.audio_id is not None:
            audio_id = event.audio_id


def chat_failure(error: APIError) -> list[bytes]:
    """How a chat stream ends after a failure: the error event, then `[DONE]` (clients expect it)."""
    return [error_event(error), DONE]


async def chat_completion(job: ChatJob, events: AsyncIterator[ReplyEvent]) -> ChatCompletion:
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
    message = AssistantMessage(content="".join(text))
    if job.spoken:
        assert job.request.audio is not None and finished.expires_at is not None
        data = await asyncio.to_thread(encode_all, bytes(pcm), job.request.audio.format)
        audio = MessageAudio(
            id=audio_id,
            data=base64.b64encode(data).decode("ascii"),
            expires_at=finished.expires_at,
            transcript=finished.transcript,
        )
        message = AssistantMessage(content=None, audio=audio)
    choice = Choice(message=message, finish_reason=_reason(finished))
    usage = usage_body(finished.usage)
    return ChatCompletion(id=job.completion_id, created=job.created, model=job.model, choices=[choice], usage=usage)
