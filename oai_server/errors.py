"""The OpenAI error envelope, in exactly one place (no web framework here).

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}``: an HTTP
status with that JSON body before a stream starts, one more SSE event inside a started stream,
or an `error` event on a WebSocket. Every layer raises `APIError` (or a constructor below) for
a client-visible failure; the edge (`routes/errors.py`) renders it.
"""

from __future__ import annotations

from typing import Any

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
"""Statuses the SDK may retry; every other error carries `x-should-retry: false`."""


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says how to fix it."""


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

    def response_headers(self) -> dict[str, str]:
        """HTTP headers of the error response: its own, plus `x-should-retry: false` when permanent."""
        headers = dict(self.headers)
        if self.status not in RETRYABLE_STATUSES:
            headers.setdefault("x-should-retry", "false")
        return headers


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
