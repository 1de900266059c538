"""`POST /v1/audio/speech` (https://platform.openai.com/docs/api-reference/audio/createSpeech)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends

from ..errors import APIError
from ..pipeline.encode import AUDIO_FORMATS, content_type_for
from ..protocol.chat import SpeechRequest
from ..protocol.speech import SpeechAudioDelta, SpeechAudioDone
from ..serving.speech import EncodedAudio, SpeechOutput
from .deps import services
from .direct_body import DirectBodyRoute
from .docs import SPEECH_EVENT, binary, sse, streamed
from .responses import AbortingStreamingResponse, stream_response
from .sse import b64_pieces, error_event, named_event

if TYPE_CHECKING:
    from ..serving.services import Services

router = APIRouter(route_class=DirectBodyRoute)


RESPONSES = streamed(
    "The audio in `response_format`, or `speech.audio.delta` / `speech.audio.done` events with `stream_format: sse`.",
    {**binary(*AUDIO_FORMATS.values()), **sse(SPEECH_EVENT)},
)


async def raw_audio(outputs: AsyncIterator[SpeechOutput]) -> AsyncIterator[bytes]:
    """The encoded audio as the body itself."""
    async for output in outputs:
        if isinstance(output, EncodedAudio):
            yield output.data


def _delta(piece: str) -> bytes:
    event = SpeechAudioDelta(audio=piece)
    return named_event(event.type, event.wire())


async def speech_sse(outputs: AsyncIterator[SpeechOutput]) -> AsyncIterator[bytes]:
    """`speech.audio.delta` events, then `speech.audio.done` with usage.

    The base64 pieces concatenate to the whole file, and each is cut at a multiple of 6 bytes (whole
    16-bit samples of pcm, and of wav after its 44-byte header), so a client may decode every delta
    on its own.
    """
    carry = bytearray()
    async for output in outputs:
        if isinstance(output, EncodedAudio):
            for piece in b64_pieces(output.data, carry, final=False):
                yield _delta(piece)
            continue
        for piece in b64_pieces(b"", carry, final=True):
            yield _delta(piece)
        done = SpeechAudioDone.of(output.input_tokens, output.output_tokens)
        yield named_event(done.type, done.wire())


def speech_failure(error: APIError) -> list[bytes]:
    """How a speech SSE stream ends after a failure: one error event."""
    return [error_event(error)]


@router.post("/v1/audio/speech", response_class=AbortingStreamingResponse, responses=RESPONSES)
async def create_speech(body: SpeechRequest, svc: Services = Depends(services)) -> AbortingStreamingResponse:
    """Stream speech in the requested format, or as `speech.audio.*` SSE events."""
    job = svc.speech.prepare(body)
    if body.stream_format == "sse":
        return await stream_response(
            svc,
            svc.speech.stream(job),
            speech_sse,
            media_type="text/event-stream",
            on_failure=speech_failure,
            speaks=True,
        )
    media_type = content_type_for(job.response_format)
    return await stream_response(svc, svc.speech.stream(job), raw_audio, media_type=media_type, speaks=True)
