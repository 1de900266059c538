"""Request bodies are read as JSON whatever their Content-Type says, as OpenAI's API reads them.

`curl -d '{...}'` sends `Content-Type: application/x-www-form-urlencoded`, some clients send
`text/plain` or no type at all; FastAPI would hand those bodies to validation as raw bytes ("Input
should be a valid dictionary", `param: null`). No route here takes a form, so the body of a POST,
PUT or PATCH with one of those types (or none) is declared JSON before routing; a body that is not
JSON then gets the usual 400 `invalid_json`. Multipart and every other declared type pass untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

READ_AS_JSON = frozenset({b"application/x-www-form-urlencoded", b"text/plain"})
"""Declared types whose bodies are JSON in practice (curl's default for `-d`, plain text)."""
_METHODS = frozenset({"POST", "PUT", "PATCH"})


class JsonBodyMiddleware:
    """Declares form, plain-text and untyped request bodies `application/json` (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite the request's Content-Type where it is one of `READ_AS_JSON` or missing."""
        if scope["type"] == "http" and scope["method"] in _METHODS:
            headers = scope["headers"]
            declared = [value for key, value in headers if key == b"content-type"]
            media_type = declared[0].split(b";")[0].strip().lower() if declared else None
            if media_type is None or media_type in READ_AS_JSON:
                rest = [(key, value) for key, value in headers if key != b"content-type"]
                scope = {**scope, "headers": [*rest, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
