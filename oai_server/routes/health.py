"""`/health` (liveness, in the seed's shape) and `/health/ready` (the engines answer)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from .deps import services
from .errors import ErrorResponse

if TYPE_CHECKING:
    from ..serving.services import Services

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
        s = svc.settings
        served = {"llm": s.chat_model_id, "tts": s.speech_model_id, "asr": s.transcription_model_id}
        body["engines"] = {
            name: {"kind": engine.info.kind, "model": served.get(name, engine.info.model)}
            for name, engine in svc.engines.roles().items()
        }
        body["active_streams"] = svc.admission.active
        body["queued_streams"] = svc.admission.queued
    replica = getattr(request.app.state, "replica", None)
    if replica is not None:  # one of several server processes on this port (--placement replicated)
        body["replica"] = replica
    return body


class Readiness(BaseModel):
    """The body of `/health/ready` (OpenAPI schema only)."""

    status: str
    """`ready`, or with a 503 `unavailable` or `draining`."""
    failures: dict[str, str] = {}
    """Engines whose health check failed, with the error."""


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Every engine answers and the server is not draining."},
    503: {
        "model": Readiness | ErrorResponse,
        "description": "An engine failed its check or the server is draining; the envelope while models load.",
    },
}


@router.get("/health/ready", response_model=None, responses=READY_RESPONSES)
async def ready(svc: Services = Depends(services)) -> JSONResponse | dict[str, Any]:
    """Readiness: every engine answers a health check and the server is not draining."""
    roles = svc.engines.roles()
    checks = await asyncio.gather(
        *(asyncio.wait_for(engine.check_health(), 5) for engine in roles.values()), return_exceptions=True
    )
    failures = {
        name: repr(result) for name, result in zip(roles, checks, strict=True) if isinstance(result, BaseException)
    }
    if failures or svc.admission.draining:
        status = "draining" if svc.admission.draining else "unavailable"
        return JSONResponse({"status": status, "failures": failures}, status_code=503)
    return {"status": "ready"}
