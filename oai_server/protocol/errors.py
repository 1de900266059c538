"""The error envelope's shape, for the OpenAPI schema (OpenAI's `ErrorResponse`).

`oai_server.errors.APIError.body()` builds it (that module imports nothing of ours);
`tests/test_openapi_conformance.py` checks real error bodies against OpenAI's published schema.
"""

from __future__ import annotations

from .wire import WireModel


class ErrorDetail(WireModel):
    """The inside of the envelope."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(WireModel):
    """`{"error": {...}}`: the body of every error response, and of an error event inside a stream."""

    error: ErrorDetail
