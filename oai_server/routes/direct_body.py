"""A route class that takes a JSON body in straight to the endpoint, without FastAPI's per-request dependency solving.

FastAPI solves an endpoint's dependencies on every request: it reads and decodes the body, builds a validation
field's errors, walks each sub-dependency, and only then calls the endpoint. On the routes a burst of speech
arrives on, `DirectBodyRoute` takes 42-72 µs less of the event loop a request than that, of ~0.7 ms of intake in all
(2 CPU cores, `bench/intake_cost.py`). It does the same work in a few lines for the endpoints that fit its shape: one
pydantic model as the JSON body, the `Request` if asked for, and dependencies that are coroutines of the request
alone (`deps.services`). The OpenAPI schema is FastAPI's own, built from the same signature, and a bad body raises
the `RequestValidationError` FastAPI would, with the same `loc`, so it leaves in the same error envelope
(`errors.validation_error`). An endpoint of any other shape keeps FastAPI's handler, and so does a request while
one of its dependencies is overridden (`app.dependency_overrides`).
"""

from __future__ import annotations

import email.message
import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def is_json(content_type: str | None, strict: bool = True) -> bool:
    """Whether FastAPI decodes a body of this declared type as JSON (no type at all: only where the route is not
    `strict_content_type`)."""
    if not content_type:
        return not strict
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


async def decode_body(request: Request, strict: bool = True) -> tuple[bytes, Any]:
    """The request's body, and what FastAPI's handler validates of it: the decoded JSON where it declares JSON (see
    `is_json`), else the bytes. Its `RequestValidationError` for JSON that does not parse, and its 400 for a body that
    could not be read, come before the endpoint's dependencies run, as there."""
    try:
        raw = await request.body()
        return raw, json.loads(raw) if raw and is_json(request.headers.get("content-type"), strict) else raw
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}], body=exc.doc) from exc
    except Exception as exc:  # a client gone mid-body
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc


def validate_body(model: type[BaseModel], raw: bytes, content: Any) -> Any:
    """`content` as `model`, or FastAPI's `RequestValidationError` for it (locations under `body`; an empty body is
    the missing body)."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return model.model_validate(content, from_attributes=True)  # as FastAPI's field validates it
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors], body=content) from None


_BEYOND = (
    "path_params", "query_params", "header_params", "cookie_params", "http_connection_param_name",
    "websocket_param_name", "response_param_name", "background_tasks_param_name", "security_scopes_param_name",
)  # fmt: skip


def _beyond_shape(dependant: Dependant, *more: str) -> bool:
    """Whether FastAPI would give `dependant` anything but its body, its request and its dependencies (or `more`)."""
    return any(getattr(dependant, name, None) for name in (*_BEYOND, *more))


class DirectBodyRoute(APIRoute):
    """An `APIRoute` whose handler validates its one JSON body model and calls the endpoint directly (module doc)."""

    def get_route_handler(self) -> Handler:
        """The direct handler where the endpoint has the shape it serves, else FastAPI's."""
        fastapis = super().get_route_handler()
        direct = self._direct_handler(fastapis)
        return direct if direct is not None else fastapis

    def _direct_handler(self, fastapis: Handler) -> Handler | None:
        dependant = self.dependant
        coroutine = inspect.iscoroutinefunction(dependant.call)
        if _beyond_shape(dependant) or len(dependant.body_params) != 1 or not coroutine:
            return None
        field = dependant.body_params[0]
        model = field.field_info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or getattr(field.field_info, "embed", None):
            return None
        injected: list[tuple[str, Callable[[Request], Awaitable[Any]]]] = []
        for sub in dependant.dependencies:
            takes_request_alone = sub.request_param_name and not _beyond_shape(sub, "dependencies", "body_params")
            if not (takes_request_alone and sub.name and inspect.iscoroutinefunction(sub.call)):
                return None
            injected.append((sub.name, sub.call))
        endpoint, body_name, request_name = dependant.call, field.name, dependant.request_param_name
        assert endpoint is not None  # a coroutine function, checked above
        strict = self.strict_content_type
        strict = bool(strict.value if isinstance(strict, DefaultPlaceholder) else strict)

        provider = self.dependency_overrides_provider
        calls = [call for _, call in injected]

        async def handler(request: Request) -> Response:
            overrides = getattr(provider, "dependency_overrides", None)
            if overrides and any(call in overrides for call in calls):  # a test's stand-in: FastAPI resolves it
                return await fastapis(request)
            raw, content = await decode_body(request, strict)
            values: dict[str, Any] = {name: await call(request) for name, call in injected}
            values[body_name] = validate_body(model, raw, content)
            if request_name:
                values[request_name] = request
            response = await endpoint(**values)
            if not isinstance(response, Response):
                raise TypeError(f"{endpoint.__name__} must return a Response under DirectBodyRoute")
            return response

        return handler
