"""`POST /v1/chat/completions` (https://platform.openai.com/docs/api-reference/chat/create)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..admission import HeldBody
from ..models import ChatCompletionRequest
from ..responses import AbortingStreamingResponse, cancel_on_disconnect
from ..serving.streams import as_api_error, guarded
from .deps import services
from .docs import CHAT_COMPLETION, CHAT_EVENT, sse, streamed

if TYPE_CHECKING:
    from ..app import Services

router = APIRouter()


RESPONSES = streamed(
    "A `chat.completion`, or `chat.completion.chunk` events ending with `[DONE]` when streamed.",
    {"application/json": {"schema": CHAT_COMPLETION}, **sse(CHAT_EVENT)},
)


@router.post("/v1/chat/completions", response_model=None, responses=RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, svc: Services = Depends(services)
) -> AbortingStreamingResponse | JSONResponse:
    """Chat with text or text + audio output, streamed as SSE chunks or returned whole."""
    job = await svc.chat.prepare(body)
    ticket = await svc.admission.acquire()
    if body.stream:
        stream = guarded(
            svc.chat.stream(job), deadline_seconds=svc.settings.request_timeout_seconds, sse=True, send_done=True
        )
        return AbortingStreamingResponse(HeldBody(stream, ticket), media_type="text/event-stream")
    try:
        work = asyncio.wait_for(svc.chat.complete(job), svc.settings.request_timeout_seconds)
        result: dict[str, Any] = await cancel_on_disconnect(request, work)
    except Exception as exc:
        raise as_api_error(exc) from exc
    finally:
        ticket.release()
    return JSONResponse(result)
