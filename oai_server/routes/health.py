"""`/health` (liveness, in the seed's shape) and `/health/ready` (the engines answer)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..errors import ErrorResponse
from .deps import services

if TYPE_CHECKING:
    from ..app import Services

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness: the process serves HTTP. Reports whether each engine is loaded (seed shape)."""
    svc = getattr(request.app.state, "services", None)
    loaded = svc is not None
    body: dict[str, Any] = {
        "status": "healthy" if loaded else "loading",
        "models": {"tts": loaded, "llm": loaded},
        "features": {"text_to_speech": loaded, "conversational_ai": loaded, "streaming": True},
    }
    if svc is not None:
        body["engines"] = {
            "llm": {"kind": svc.engines.llm.info.kind, "model": svc.settings.chat_model_id},
            "tts": {"kind": svc.engines.tts.info.kind, "model": svc.settings.speech_model_id},
        }
        body["active_streams"] = svc.admission.active
        body["queued_streams"] = svc.admission.queued
    return body


class Readiness(BaseModel):
    """The body of `/health/ready` (OpenAPI schema only)."""

    status: str
    """`ready`, or with a 503 `unavailable` or `draining`."""
    failures: dict[str, str] = {}
    """Engines whose health check failed, with the error."""


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Both engines answer and the server is not draining."},
    503: {
        "model": Readiness | ErrorResponse,
        "description": "An engine failed its check or the server is draining; the envelope while models load.",
    },
}


@router.get("/health/ready", response_model=None, responses=READY_RESPONSES)
async def ready(svc: Services = Depends(services)) -> JSONResponse | dict[str, Any]:
    """Readiness: both engines answer a health check and the server is not draining."""
    checks = await asyncio.gather(
        asyncio.wait_for(svc.engines.llm.check_health(), 5),
        asyncio.wait_for(svc.engines.tts.check_health(), 5),
        return_exceptions=True,
    )
    failures = {
        name: repr(result)
        for name, result in zip(("llm", "tts"), checks, strict=True)
        if isinstance(result, BaseException)
    }
    if failures or svc.admission.draining:
        status = "draining" if svc.admission.draining else "unavailable"
        return JSONResponse({"status": status, "failures": failures}, status_code=503)
    return {"status": "ready"}
