"""The browser page: `GET /` serves `static/index.html`, `GET /static/{name}` its assets.

Both are exempt from API keys (`middleware.EXEMPT_PATHS`); the page sends the key it is given
as `Authorization: Bearer` on its own API calls. Only files that ship in `oai_server/static`
are served, by exact name, so no path can escape the folder.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from ..errors import APIError

router = APIRouter()

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
"""The folder of the page and its assets (shipped as package data)."""

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
"""Content types of the asset kinds the page uses; anything else is not served."""


def static_file(name: str) -> FileResponse:
    """A file of the static folder by its plain name, or a 404 in the OpenAI envelope."""
    path = STATIC_DIR / name
    media_type = MEDIA_TYPES.get(path.suffix.lower())
    if "/" in name or "\\" in name or name.startswith(".") or media_type is None or not path.is_file():
        raise APIError(404, f"No static file named '{name}'.", code="not_found")
    # no-cache: the browser revalidates (ETag), so an upgraded server never pairs old JS with new HTML.
    return FileResponse(path, media_type=media_type, headers={"cache-control": "no-cache"})


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The voice-assistant page."""
    return static_file("index.html")


@router.get("/static/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    """A script, stylesheet or image of the page."""
    return static_file(name)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    """No icon: an empty 204 keeps browsers from logging a 404 on every load."""
    return Response(status_code=204)
