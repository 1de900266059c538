"""`POST /v1/audio/speech` (https://platform.openai.com/docs/api-reference/audio/createSpeech)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends

from ..admission import HeldBody
from ..models import SpeechRequest
from ..pipeline.encode import AUDIO_FORMATS
from ..responses import AbortingStreamingResponse
from ..serving.streams import guarded
from .deps import services
from .docs import SPEECH_EVENT, binary, sse, streamed

if TYPE_CHECKING:
    from ..app import Services

router = APIRouter()


RESPONSES = streamed(
    "The audio in `response_format`, or `speech.audio.delta` / `speech.audio.done` events with `stream_format: sse`.",
    {**binary(*AUDIO_FORMATS.values()), **sse(SPEECH_EVENT)},
)


@router.post("/v1/audio/speech", response_class=AbortingStreamingResponse, responses=RESPONSES)
async def create_speech(body: SpeechRequest, svc: Services = Depends(services)) -> AbortingStreamingResponse:
    """Stream speech in the requested format, or as `speech.audio.*` SSE events."""
    job = svc.speech.prepare(body)
    ticket = await svc.admission.acquire()
    stream = guarded(
        svc.speech.body(job), deadline_seconds=svc.settings.request_timeout_seconds, sse=job.sse, send_done=False
    )
    return AbortingStreamingResponse(HeldBody(stream, ticket), media_type=job.media_type)
