"""The error envelope at the HTTP edge: JSON responses, exception handlers, OpenAPI docs.

Framework errors (routing 404/405, validation, bad JSON, oversize bodies) are mapped to the
envelope here too, so no `{"detail": ...}` body ever leaves. The OpenAPI schema documents the
same: routes declare `ERROR_RESPONSES`, and FastAPI's unused 422 `HTTPValidationError` is taken
out of it (validation errors are 400s here).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from ..errors import APIError, invalid, server_error
from ..protocol.errors import ErrorResponse

logger = logging.getLogger(__name__)


def error_response(error: APIError) -> JSONResponse:
    """The error as a JSON response with its retry headers."""
    return JSONResponse(error.body(), status_code=error.status, headers=error.response_headers())


WEBSOCKET_POLICY_VIOLATION = 1008
"""Close code of a WebSocket refused before its handshake completed, where no HTTP answer can be sent."""


async def reject_websocket(scope: Scope, receive: Receive, send: Send, error: APIError) -> None:
    """Refuse a WebSocket handshake: the HTTP error envelope where the server can send one, else a close.

    Servers with the ASGI `websocket.http.response` extension (uvicorn) answer the handshake with the
    error's status and envelope; others close with 1008 and the message as the reason.
    """
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        response = error_response(error)
        await send(
            {"type": "websocket.http.response.start", "status": response.status_code, "headers": response.raw_headers}
        )
        await send({"type": "websocket.http.response.body", "body": response.body})
        return
    await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION, "reason": error.message[:120]})


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("Invalid request: validation, malformed JSON, unsupported or too large values."),
    401: _documented("Missing or wrong API key (when keys are configured)."),
    404: _documented("Unknown model."),
    413: _documented("The body is larger than --max-body-bytes."),
    429: _documented("At capacity: the queue is full or the wait was too long (see retry-after)."),
    500: _documented("Server error before the response started."),
    503: _documented("The models are loading or the server is shutting down (see retry-after)."),
    504: _documented("The request exceeded its deadline."),
}
"""The error responses every API route declares in the OpenAPI schema (`responses=` of the route)."""


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    param = ""
    for part in parts:
        param += f"[{part}]" if part.isdigit() else (f".{part}" if param else part)
    return param or None


def validation_error(exc: RequestValidationError) -> APIError:
    """Map pydantic/FastAPI validation errors to one 400, naming the first offending param."""
    errors = exc.errors()
    first = errors[0] if errors else {"msg": "Invalid request", "loc": ()}
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return invalid("We could not parse the JSON body of your request.", None, "invalid_json")
    param = _loc_to_param(tuple(first.get("loc", ())))
    message = str(first.get("msg", "Invalid request"))
    if kind == "missing" and param is None:  # no body at all: not JSON, as OpenAI answers an empty body
        return invalid("We could not parse the JSON body of your request: it is empty.", None, "invalid_json")
    if kind == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    return invalid(f"Invalid value for '{param}': {message}" if param else message, param, "invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so every error leaves in the envelope."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 404:
            error = APIError(404, "Not found.", code="not_found")
        elif status == 405:
            error = APIError(405, "Method not allowed.", code="method_not_allowed")
        else:
            kind = "server_error" if status >= 500 else "invalid_request_error"
            error = APIError(status, str(exc.detail), type=kind)
        error.headers.update(exc.headers or {})
        return error_response(error)

    async def on_unhandled(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(server_error())

    _document_errors(app)
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unhandled)


def _document_errors(app: FastAPI) -> None:
    """Drop FastAPI's automatic 422 `HTTPValidationError` from the schema: it is never sent."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = build()  # FastAPI caches it in app.openapi_schema: the edit below is done once
        if fresh:
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
