"""Accessors for the objects the lifespan put on `app.state`."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from fastapi import Request

from ..errors import APIError

if TYPE_CHECKING:
    from ..serving.services import Services


def services(request: Request) -> Services:
    """The running server's services; 503 while the engines are still loading."""
    svc = getattr(request.app.state, "services", None)
    if svc is None:
        raise APIError(
            503, "The models are still loading.", type="server_error", code="loading", headers={"retry-after": "5"}
        )
    return cast("Services", svc)
