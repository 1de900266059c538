"""`GET /metrics`: the app's Prometheus series in the text exposition format (0.0.4).

Served without an API key (see `middleware.EXEMPT_PATHS`), like `/health`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..errors import APIError
from ..metrics import CONTENT_TYPE, Metrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Every series of this app's own registry."""
    found = getattr(request.app.state, "metrics", None)
    if not isinstance(found, Metrics):
        raise APIError(404, "Metrics are not enabled.", code="not_found")
    return Response(found.render(), media_type=CONTENT_TYPE)
