"""Pure ASGI middleware: request ids and access logs, metrics, CORS, API keys, body size limit.

Pure ASGI (not `BaseHTTPMiddleware`) so streamed bodies and disconnect detection pass through
untouched. `install_middleware` stacks them, outermost first:

1. `RequestContextMiddleware`: `x-request-id` on every response (a sane client id is echoed,
   else `req_<hex>`), the id in a contextvar for log records (`RequestIdFilter`), one access log
   line and the request metrics per request, and a 500 envelope (with the id) for an unhandled error.
2. CORS (Starlette's `CORSMiddleware`) when `settings.cors_origins` is set; outside the key
   check so preflights pass without a key and a 401 still carries CORS headers.
3. `ApiKeyMiddleware` when keys are configured: `Authorization: Bearer <key>` everywhere except
   `/`, `/health`, `/health/*`, `/metrics` (scraped without auth inside a cluster; keep the port
   private if that matters), `/static/*`, `/favicon.ico`, and OPTIONS requests.
4. `BodyLimitMiddleware`: 413 past `settings.max_body_bytes` (the upload routes: 25 MB plus the form), from
   Content-Length or by counting. Inside it, `json_body.JsonBodyMiddleware` (form, plain-text and
   untyped bodies are JSON), then `json_guard.JsonValueLimitMiddleware`: 400 past
   `settings.max_json_values` values in a JSON body, counted in a worker thread before the framework
   parses the body on the loop.
5. `loop_lag.LoopLagMiddleware`: runs the event-loop lag monitor (`app.state.loop_monitor`) for the
   lifetime of the app (its ASGI lifespan); requests pass straight through.

Connection-level limits (header size, slow or stalled clients, the connection cap) sit below
the ASGI app, in `connections.py`.

Errors are answered with `errors.APIError`, so the envelope stays in one place.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import APIError, server_error
from ..metrics import OTHER_ROUTE, Metrics
from ..serving.loop_monitor import LoopLagMonitor
from .errors import error_response, reject_websocket
from .json_body import JsonBodyMiddleware
from .json_guard import JsonValueLimitMiddleware
from .loop_lag import LoopLagMiddleware

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..settings import Settings

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("oai_server.access")

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("oai_request_id", default=None)

EXEMPT_PATHS = frozenset({"/", "/health", "/metrics", "/favicon.ico"})
"""Paths served without an API key (besides `/health/*` and `/static/*`)."""
EXEMPT_PREFIXES = ("/health/", "/static/")
INSECURE_KEY_SUBPROTOCOL = "openai-insecure-api-key."
"""WebSocket subprotocol prefix carrying an API key (the Realtime API's browser form)."""


def current_request_id() -> str | None:
    """The id of the request being served in this context, or None outside a request."""
    return _request_id.get()


def new_request_id() -> str:
    """A fresh request id, `req_<32 hex>`."""
    return f"req_{secrets.token_hex(16)}"


def choose_request_id(client_value: str | None) -> str:
    """Echo a client's id if it is <= 128 chars of [A-Za-z0-9._-], else a fresh one."""
    if client_value and _SANE_ID.fullmatch(client_value):
        return client_value
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Adds `request_id` ("-" outside a request) to every record, for `%(request_id)s` formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Set the attribute unless the record already has one; never drops a record."""
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get() or "-"
        return True


def install_log_filter(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Add one `RequestIdFilter` to each handler (default: the root logger's); idempotent."""
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())


def route_template(scope: Scope) -> str:
    """The route template of a request (`/v1/models/{model_id:path}`), or "other".

    After routing, Starlette leaves the route in `scope["route"]`; a request answered before
    routing (401, 413) is matched against the app's routes here.
    """
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            try:
                match, _ = candidate.matches(scope)
            except Exception:
                continue
            if match is Match.FULL:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else OTHER_ROUTE


class RequestContextMiddleware:
    """Request id, access log, request metrics, and the last-resort 500 for one request."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI call (HTTP or WebSocket; the lifespan passes through)."""
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = choose_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        token = _request_id.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False
        first_byte = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started, first_byte
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
            elif not first_byte and message["type"] == "http.response.body" and message.get("body"):
                first_byte = True
                if self.metrics is not None:
                    self.metrics.observe_first_byte(route_template(scope), time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if response_started:
                raise  # the status is out; the server closes the connection
            logger.exception("unhandled error")
            await error_response(server_error())(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"]
            path = scope.get("path", "")
            ms = round(seconds * 1000, 3)
            fields = {"method": method, "path": path, "status": status, "duration_ms": ms}
            access_logger.info("%s %s %d %.1fms id=%s", method, path, status, ms, request_id, extra=fields)
            if self.metrics is not None:
                self.metrics.observe_request(route_template(scope), method, status, seconds)
            _request_id.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket session: its request id (echoed on the accept), one log line and the metrics at its end.

        The status recorded is 101 once accepted, the HTTP status of a refused handshake, or 403 for a
        close before accepting (what the server sends then).
        """
        request_id = choose_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        token = _request_id.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 403

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "websocket.accept":
                status = 101
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "websocket.http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            path = scope.get("path", "")
            fields = {"method": "WEBSOCKET", "path": path, "status": status, "duration_ms": round(seconds * 1000, 3)}
            access_logger.info("WEBSOCKET %s %d %.1fms id=%s", path, status, seconds * 1000, request_id, extra=fields)
            if self.metrics is not None:
                self.metrics.observe_request(route_template(scope), "WEBSOCKET", status, seconds)
            _request_id.reset(token)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def invalid_api_key() -> APIError:
    """The 401 OpenAI answers for a missing or wrong key (the SDK does not retry it)."""
    return APIError(401, "Incorrect API key provided.", code="invalid_api_key", headers={"www-authenticate": "Bearer"})


def is_exempt(method: str, path: str) -> bool:
    """Whether a request is served without an API key (health, metrics, web page, preflight)."""
    return method == "OPTIONS" or path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


class ApiKeyMiddleware:
    """Requires `Authorization: Bearer <key>` matching one of `keys` (constant-time check).

    Every configured key is compared (SHA-256 digests with `hmac.compare_digest`), so timing
    reveals neither which key matched nor how much of a key was right.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self._digests = [_digest(key) for key in keys]
        if not self._digests:
            raise ValueError("ApiKeyMiddleware needs at least one key")

    def authorized(self, authorization: str | None) -> bool:
        """Whether an Authorization header value carries an accepted key."""
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return False
        candidate = _digest(presented.strip())
        ok = False
        for digest in self._digests:
            ok |= hmac.compare_digest(digest, candidate)
        return ok

    def websocket_authorized(self, scope: Scope) -> bool:
        """A WebSocket's key: the Authorization header, or the browser form, a subprotocol
        `openai-insecure-api-key.<key>` (browsers cannot set headers on a WebSocket)."""
        if self.authorized(Headers(scope=scope).get("authorization")):
            return True
        for protocol in scope.get("subprotocols", ()):
            if protocol.startswith(INSECURE_KEY_SUBPROTOCOL) and self.authorized(
                f"Bearer {protocol[len(INSECURE_KEY_SUBPROTOCOL) :]}"
            ):
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 unless the request is exempt or carries an accepted key."""
        if scope["type"] == "websocket":
            if self.websocket_authorized(scope):
                await self.app(scope, receive, send)
            else:
                await reject_websocket(scope, receive, send, invalid_api_key())
            return
        if scope["type"] != "http" or is_exempt(scope["method"], scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if not self.authorized(Headers(scope=scope).get("authorization")):
            await error_response(invalid_api_key())(scope, receive, send)
            return
        await self.app(scope, receive, send)


def request_too_large(limit: int) -> APIError:
    """The 413 for a body over `limit` bytes."""
    return APIError(413, f"The request body is too large: the limit is {limit} bytes.", code="request_too_large")


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: by Content-Length up front, else by counting received bytes.

    When a streamed body crosses the limit, `receive` raises and whatever the app answers (it
    can no longer have a valid body) is replaced by the 413, as long as no status was sent.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, route_limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.route_limits = dict(route_limits or {})
        """Paths with a limit of their own (the upload routes: 25 MB files), never below `max_bytes`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request with its body bounded."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = max(self.route_limits.get(scope["path"], self.max_bytes), self.max_bytes)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await error_response(request_too_large(limit))(scope, receive, send)
            return
        state: dict[str, Any] = {"received": 0, "exceeded": False, "started": False, "replaced": False}

        async def counting_receive() -> Message:
            if state["exceeded"]:
                raise HTTPException(413)
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise HTTPException(413)
            return message

        async def guarded_send(message: Message) -> None:
            if state["replaced"]:
                return  # the app's own answer to the broken body is dropped
            if message["type"] == "http.response.start" and state["exceeded"] and not state["started"]:
                state["replaced"] = True
                await self._reject(scope, send, state, limit)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not state["exceeded"]:
                raise
            if not state["started"] and not state["replaced"]:
                await self._reject(scope, send, state, limit)

    async def _reject(self, scope: Scope, send: Send, state: dict[str, Any], limit: int) -> None:
        state["started"] = True

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await error_response(request_too_large(limit))(scope, no_body, send)


def install_middleware(app: FastAPI, settings: Settings) -> Metrics:
    """Stack the middleware on `app`, create `app.state.metrics` (live gauges bound) and `app.state.loop_monitor`."""
    metrics = Metrics()
    app.state.metrics = metrics
    monitor = LoopLagMonitor(metrics.observe_loop_lag)
    app.state.loop_monitor = monitor

    def services() -> Any:
        return getattr(app.state, "services", None)

    def engines() -> dict[str, Any]:
        found = getattr(services(), "engines", None)
        return {} if found is None else dict(found.roles())

    metrics.set_live_sources(
        admission=lambda: getattr(services(), "admission", None),
        engines=engines,
        headroom=lambda: getattr(services(), "headroom", None),
        snac=lambda: getattr(getattr(services(), "engines", None), "snac", None),
    )
    install_log_filter()
    # add_middleware inserts at the front: the last one added runs first.
    from .audio_transcriptions import UPLOAD_ROUTES

    app.add_middleware(LoopLagMiddleware, monitor=monitor, gc_young_threshold=settings.gc_young_threshold)
    app.add_middleware(JsonValueLimitMiddleware, max_values=settings.max_json_values)
    app.add_middleware(JsonBodyMiddleware, form_paths=UPLOAD_ROUTES)  # routes/json_body.py: curl -d bodies are JSON
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, route_limits=UPLOAD_ROUTES)
    keys = settings.all_api_keys()
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER, "retry-after", "x-should-retry"],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return metrics
