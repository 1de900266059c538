"""The OpenAI error envelope, in exactly one place.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with
`application/json`, before a stream starts (a status code) and inside a started stream (one
more SSE event, see `sse.error_event`). Framework errors (routing 404/405, validation, bad
JSON, oversize bodies) are mapped here too, so no `{"detail": ...}` body ever leaves. The
OpenAPI schema documents the same: routes declare `ERROR_RESPONSES`, and FastAPI's unused
422 `HTTPValidationError` is taken out of it (validation errors are 400s here).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

# Permanent client errors: the SDK must not retry them (`x-should-retry: false`).
_RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class ErrorDetail(BaseModel):
    """The inside of the envelope."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """`{"error": {...}}`: the body of every error response (OpenAPI schema only)."""

    error: ErrorDetail


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


class APIError(Exception):
    """An error with an HTTP status and an OpenAI envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The envelope as a dict."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The error as a JSON response with retry headers."""
        headers = dict(self.headers)
        if self.status not in _RETRYABLE_STATUSES:
            headers.setdefault("x-should-retry", "false")
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    """A 400 invalid_request_error."""
    return APIError(400, message, param=param, code=code)


def check_length(text: str, limit: int, param: str) -> None:
    """Raise the 400 ``string_above_max_length`` error if ``text`` is longer than ``limit`` characters."""
    if len(text) > limit:
        raise invalid(
            f"The {param} is {len(text)} characters; the maximum is {limit}.", param, "string_above_max_length"
        )


def model_not_found(model: str) -> APIError:
    """The 404 OpenAI returns for an unknown model id."""
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def rate_limited(message: str, retry_after: float) -> APIError:
    """A 429 with Retry-After (the SDK retries it)."""
    return APIError(
        429,
        message,
        type="requests",
        code="rate_limit_exceeded",
        headers={"retry-after": str(max(1, round(retry_after)))},
    )


def server_error(message: str = "The server had an error while processing your request.") -> APIError:
    """A 500 server_error."""
    return APIError(500, message, type="server_error", code=None)


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
    if kind == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    return invalid(f"Invalid value for '{param}': {message}" if param else message, param, "invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so every error leaves in the envelope."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response()

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error(exc).response()

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
        return error.response()

    async def on_unhandled(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return server_error().response()

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
