"""`POST /v1/chat/completions` (https://platform.openai.com/docs/api-reference/chat/create)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..protocol.chat import ChatCompletionRequest
from .deps import services
from .direct_body import DirectBodyRoute
from .docs import chat_responses
from .render_chat import chat_completion, chat_failure, chat_sse
from .responses import AbortingStreamingResponse, stream_response, whole_response

if TYPE_CHECKING:
    from ..serving.services import Services

router = APIRouter(route_class=DirectBodyRoute)


@router.post("/v1/chat/completions", response_model=None, responses=chat_responses())
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, svc: Services = Depends(services)
) -> AbortingStreamingResponse | JSONResponse:
    """Chat with text or text + audio output, streamed as SSE chunks or returned whole."""
    job = await svc.chat.prepare(body)
    if body.stream:
        return await stream_response(
            svc,
            svc.chat.stream(job),
            partial(chat_sse, job),
            media_type="text/event-stream",
            on_failure=chat_failure,
            speaks=job.spoken,
        )
    result = await whole_response(svc, request, partial(chat_completion, job, svc.chat.stream(job)), speaks=job.spoken)
    return JSONResponse(result.wire())
