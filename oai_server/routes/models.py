"""`GET /v1/models`, `GET /v1/models/{id}` (https://platform.openai.com/docs/api-reference/models)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends

from ..errors import model_not_found
from ..protocol.chat import model_card
from .deps import services
from .errors import ERROR_RESPONSES

if TYPE_CHECKING:
    from ..serving.services import Services

router = APIRouter()


def _cards(svc: Services) -> list[dict[str, Any]]:
    created = int(svc.started_at)
    ids = dict.fromkeys([*svc.chat.model_ids, *svc.speech.model_ids, *svc.transcription.model_ids])
    return [model_card(model_id, created) for model_id in ids]


@router.get("/v1/models", responses=ERROR_RESPONSES)
async def list_models(svc: Services = Depends(services)) -> dict[str, Any]:
    """Every model id the server answers to (chat and speech, with OpenAI aliases)."""
    return {"object": "list", "data": _cards(svc)}


@router.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES)
async def retrieve_model(model_id: str, svc: Services = Depends(services)) -> dict[str, Any]:
    """One model; 404 `model_not_found` for unknown ids (ids may contain `/`, raw or %2F)."""
    wanted = unquote(model_id)
    for card in _cards(svc):
        if card["id"] == wanted:
            return card
    raise model_not_found(wanted)
