"""The ASGI middleware on a small app of its own: request ids, body limit, API keys, CORS, logs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from oai_server.routes import metrics as metrics_routes
from oai_server.routes.errors import install_error_handlers
from oai_server.routes.middleware import current_request_id, install_log_filter, install_middleware
from oai_server.settings import Settings

LIMIT = 2048
KEYS = ("sk-first-key-123", "sk-second-key-456")
BAD_KEY_ENVELOPE = {
    "error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


def make_app(**overrides: Any) -> FastAPI:
    """A tiny app with the real error handlers and middleware."""
    settings = Settings(max_body_bytes=LIMIT, **overrides)
    app = FastAPI()
    install_error_handlers(app)
    install_middleware(app, settings)
    app.include_router(metrics_routes.router)

    @app.post("/v1/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"n": len(await request.body())}

    @app.post("/v1/json")
    async def parse_json(payload: dict[str, Any]) -> dict[str, Any]:
        return {"n": len(payload)}

    @app.get("/v1/whoami")
    async def whoami() -> dict[str, Any]:
        logging.getLogger("oai_server.test").info("inside the handler")
        return {"request_id": current_request_id()}

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.get("/")
    async def index() -> dict[str, str]:
        return {"page": "index"}

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def chunks(total: int, size: int = 600) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


# --- request ids ---


async def test_request_id_generated_and_visible_to_handler() -> None:
    async with client(make_app()) as c:
        first = await c.get("/v1/whoami")
        second = await c.get("/v1/whoami")
    rid = first.headers["x-request-id"]
    assert rid.startswith("req_") and len(rid) == 36
    assert first.json() == {"request_id": rid}
    assert second.headers["x-request-id"] != rid
    assert current_request_id() is None  # reset after the request


async def test_sane_client_request_id_is_echoed() -> None:
    async with client(make_app()) as c:
        response = await c.get("/v1/whoami", headers={"x-request-id": "client.Id_42-x"})
    assert response.headers["x-request-id"] == "client.Id_42-x"
    assert response.json()["request_id"] == "client.Id_42-x"


@pytest.mark.parametrize("bad", ["has space", "semi;colon", "x" * 129, "ünïcode", "a/b"])
async def test_bad_client_request_id_is_replaced(bad: str) -> None:
    async with client(make_app()) as c:
        response = await c.get("/v1/whoami", headers={"x-request-id": bad.encode()})
    assert response.headers["x-request-id"].startswith("req_")


async def test_error_responses_carry_request_id() -> None:
    async with client(make_app(api_keys=list(KEYS))) as c:
        unauthorized = await c.get("/v1/whoami")
        missing = await c.get("/nope", headers={"authorization": f"Bearer {KEYS[0]}"})
        boom = await c.get("/v1/boom", headers={"authorization": f"Bearer {KEYS[0]}"})
    for response in (unauthorized, missing, boom):
        assert response.headers["x-request-id"].startswith("req_")
    assert boom.status_code == 500
    assert boom.json()["error"]["type"] == "server_error"


async def test_access_log_line_and_log_filter(caplog: pytest.LogCaptureFixture) -> None:
    install_log_filter([caplog.handler])
    caplog.set_level(logging.INFO)
    async with client(make_app()) as c:
        response = await c.get("/v1/whoami", headers={"x-request-id": "trace-1"})
    access = [r for r in caplog.records if r.name == "oai_server.access"]
    assert len(access) == 1
    record: Any = access[0]
    assert (record.method, record.path, record.status, record.request_id) == (
        "GET",
        "/v1/whoami",
        200,
        "trace-1",
    )
    assert record.duration_ms >= 0
    assert "GET /v1/whoami 200" in record.getMessage() and "id=trace-1" in record.getMessage()
    inner: Any = next(r for r in caplog.records if r.name == "oai_server.test")
    assert inner.request_id == "trace-1" == response.headers["x-request-id"]


# --- body size limit ---


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-should-retry"] == "false"
    assert response.json() == {
        "error": {
            "message": f"The request body is too large: the limit is {LIMIT} bytes.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }


@pytest.mark.parametrize("path", ["/v1/echo", "/v1/json", "/nope"])
async def test_oversized_body_by_content_length(path: str) -> None:
    async with client(make_app()) as c:
        response = await c.post(path, content=b"{" + b" " * LIMIT + b"}")
    assert_too_large(response)


@pytest.mark.parametrize("path", ["/v1/echo", "/v1/json"])
async def test_oversized_chunked_body_without_length(path: str) -> None:
    async with client(make_app()) as c:
        response = await c.post(path, content=chunks(LIMIT + 1))
    assert "content-length" not in response.request.headers
    assert_too_large(response)


async def test_body_at_the_limit_passes() -> None:
    async with client(make_app()) as c:
        exact = await c.post("/v1/echo", content=b"x" * LIMIT)
        streamed = await c.post("/v1/echo", content=chunks(LIMIT))
        parsed = await c.post("/v1/json", json={"a": 1, "b": 2})
    assert exact.json() == {"n": LIMIT}
    assert streamed.json() == {"n": LIMIT}
    assert parsed.json() == {"n": 2}


# --- API keys ---


async def test_no_keys_configured_means_no_auth() -> None:
    async with client(make_app()) as c:
        assert (await c.get("/v1/whoami")).status_code == 200


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer ", f"Basic {KEYS[0]}", KEYS[0],
                                           f"Bearer {KEYS[0]}x", f"Bearer {KEYS[0][:-1]}"])  # fmt: skip
async def test_missing_or_wrong_key_is_401(authorization: str | None) -> None:
    headers = {"authorization": authorization} if authorization is not None else {}
    async with client(make_app(api_keys=list(KEYS))) as c:
        response = await c.post("/v1/json", json={"a": 1}, headers=headers)
    assert response.status_code == 401
    assert response.json() == BAD_KEY_ENVELOPE
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-should-retry"] == "false"


async def test_any_key_from_list_or_file_is_accepted(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("sk-from-file-1\n\n  sk-from-file-2  \n")
    app = make_app(api_keys=list(KEYS), api_key_file=key_file)
    async with client(app) as c:
        for key in (*KEYS, "sk-from-file-1", "sk-from-file-2"):
            for scheme in ("Bearer", "bearer"):
                response = await c.get("/v1/whoami", headers={"authorization": f"{scheme} {key}"})
                assert response.status_code == 200, key
        assert (await c.get("/v1/whoami", headers={"authorization": "Bearer sk-from-file-3"})).status_code == 401


async def test_exempt_paths_need_no_key() -> None:
    async with client(make_app(api_keys=list(KEYS))) as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/healthz")).status_code == 401  # only /health and /health/*
        assert (await c.get("/v1/models")).status_code == 401  # unknown routes are not revealed


async def test_oversized_body_without_key_is_401_first() -> None:
    async with client(make_app(api_keys=list(KEYS))) as c:
        response = await c.post("/v1/echo", content=b"x" * (LIMIT + 1))
    assert response.status_code == 401


async def test_preflight_passes_without_key() -> None:
    app = make_app(api_keys=list(KEYS), cors_origins=["https://ui.example"])
    preflight = {"origin": "https://ui.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}  # fmt: skip
    async with client(app) as c:
        response = await c.options("/v1/json", headers=preflight)
        no_cors = await client(make_app(api_keys=list(KEYS))).options("/v1/json", headers=preflight)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://ui.example"
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    # Without CORS, an OPTIONS is an ordinary request: not refused for the missing key, but no route has it.
    assert no_cors.status_code == 405 and no_cors.json()["error"]["code"] == "method_not_allowed"
    assert "access-control-allow-origin" not in no_cors.headers


async def test_keys_never_logged(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("sk-file-secret-789\n")
    caplog.set_level(logging.DEBUG)
    app = make_app(api_keys=list(KEYS), api_key_file=key_file)
    async with client(app) as c:
        for key in (*KEYS, "sk-file-secret-789", "sk-wrong-secret-000"):
            await c.get("/v1/whoami", headers={"authorization": f"Bearer {key}"})
            await c.get("/v1/boom", headers={"authorization": f"Bearer {key}"})
    assert caplog.records, "the access log should have recorded the requests"
    text = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    for secret in (*KEYS, "sk-file-secret-789", "sk-wrong-secret-000"):
        assert secret not in text


# --- CORS ---


async def test_cors_headers_only_when_configured() -> None:
    origin = {"origin": "https://ui.example"}
    async with client(make_app()) as c:
        plain = await c.get("/v1/whoami", headers=origin)
    async with client(make_app(cors_origins=["https://ui.example"])) as c:
        allowed = await c.get("/v1/whoami", headers=origin)
        other = await c.get("/v1/whoami", headers={"origin": "https://evil.example"})
    async with client(make_app(cors_origins=["*"], api_keys=list(KEYS))) as c:
        star = await c.get("/v1/whoami", headers=origin)
    assert not any(name.startswith("access-control-") for name in plain.headers)
    assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
    assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
    assert star.status_code == 401  # the error itself is readable by the page
    assert star.headers["access-control-allow-origin"] == "*"
