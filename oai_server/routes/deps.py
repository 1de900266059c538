"""Accessors for the objects the lifespan put on `app.state`."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from fastapi import Request

from ..errors import APIError

if TYPE_CHECKING:
    from ..serving.services import Services


async def services(request: Request) -> Services:
    """The running server's services; 503 while the engines are still loading.

    A coroutine on purpose: FastAPI runs a plain-function dependency in its thread pool, a thread hop per
    request that waits for the GIL while the event loop is busy (at a burst of 288 streams that hop queued
    behind the loop's own work, request after request)."""
    svc = getattr(request.app.state, "services", None)
    if svc is None:
        raise APIError(
            503, "The models are still loading.", type="server_error", code="loading", headers={"retry-after": "5"}
        )
    return cast("Services", svc)
