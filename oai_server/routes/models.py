"""`GET /v1/models`, `GET /v1/models/{id}` (https://platform.openai.com/docs/api-reference/models).

The list holds the ids each endpoint lists (its model's served id and OpenAI's names); other ids
are served too unless `--strict-model-names` (see `serving.model_names`), but are not listed and
have no card. In the demo profile every card is owned by `oai-server-demo`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote

from fastapi import APIRouter, Depends

from ..errors import model_not_found
from ..protocol.catalog import ModelCard, ModelList
from .deps import services
from .errors import ERROR_RESPONSES

if TYPE_CHECKING:
    from ..serving.services import Services

router = APIRouter()


def _cards(svc: Services) -> list[ModelCard]:
    created = int(svc.started_at)
    owner = "oai-server-demo" if svc.settings.demo else "oai-server"
    ids = dict.fromkeys([*svc.chat.model_ids, *svc.speech.model_ids, *svc.transcription.model_ids])
    return [ModelCard(id=model_id, created=created, owned_by=owner) for model_id in ids]


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(svc: Services = Depends(services)) -> ModelList:
    """Every model id the server lists (chat and speech, with OpenAI aliases)."""
    return ModelList(data=_cards(svc))


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def retrieve_model(model_id: str, svc: Services = Depends(services)) -> ModelCard:
    """One listed model; 404 `model_not_found` for others (ids may contain `/`, raw or %2F)."""
    wanted = unquote(model_id)
    for card in _cards(svc):
        if card.id == wanted:
            return card
    raise model_not_found(wanted)
