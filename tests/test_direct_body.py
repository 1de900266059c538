"""`routes/direct_body.DirectBodyRoute`: the speech and chat routes take their JSON body in without FastAPI's dependency
solving, answer every bad body exactly as FastAPI's handler does, and leave endpoints of any other shape to it."""

from __future__ import annotations

import json
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from oai_server.protocol.chat import ChatCompletionRequest, SpeechRequest
from oai_server.routes import audio_speech, chat_completions
from oai_server.routes.deps import services
from oai_server.routes.direct_body import DirectBodyRoute, is_json
from oai_server.routes.errors import install_error_handlers

SPEECH = {"model": "tts-1", "input": "Hello there.", "voice": "tara"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def _app(loaded: bool = True) -> FastAPI:
    """The same endpoints twice, under FastAPI's handler (/fastapi/...) and the direct one (/direct/...)."""
    app = FastAPI()
    install_error_handlers(app)
    if loaded:
        app.state.services = "the services"
    for prefix, route_class in (("fastapi", fastapi.routing.APIRoute), ("direct", DirectBodyRoute)):
        router = APIRouter(route_class=route_class)

        @router.post(f"/{prefix}/speech")
        async def speech(body: SpeechRequest, svc: Any = Depends(services)) -> JSONResponse:
            return JSONResponse({"input": body.input, "voice": body.voice, "svc": svc})

        @router.post(f"/{prefix}/chat", response_model=None)
        async def chat(body: ChatCompletionRequest, request: Request, svc: Any = Depends(services)) -> JSONResponse:
            return JSONResponse(
                {"messages": len(body.messages), "own path": request.url.path.endswith("/chat"), "svc": svc}
            )

        app.include_router(router)
    return app


async def _both(app: FastAPI, route: str, content: bytes, content_type: str | None) -> tuple[Any, Any]:
    headers = {"content-type": content_type} if content_type else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        replies = [await client.post(f"/{p}/{route}", content=content, headers=headers) for p in ("fastapi", "direct")]
    return tuple((reply.status_code, reply.json(), reply.headers.get("retry-after")) for reply in replies)


BAD_BODIES = [
    ("speech", b"", "application/json"),
    ("speech", b"{not json", "application/json"),
    ("speech", b"[1, 2]", "application/json"),
    ("speech", b'{"model": "tts-1", "voice": "tara"}', "application/json"),
    ("speech", b'{"model": "tts-1", "input": 5, "voice": "tara"}', "application/json"),
    ("speech", b'{"model": "tts-1", "input": "Hi", "voice": "tara", "speed": "fast"}', "application/json"),
    ("speech", b'{"model": "tts-1", "input": "Hi", "voice": "tara"}', "multipart/form-data; boundary=x"),
    ("speech", b'{"model": "tts-1", "input": "Hi", "voice": "tara"}', "application/octet-stream"),
    ("chat", b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "application/json"),
    ("speech", b'{"model": "tts-1", "input": "Hi", "voice": "tara"}', None),  # the app declares these JSON first
    ("chat", b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "application/json"),
    ("chat", b'{"model": "m", "messages": "hello"}', "application/json"),
    ("chat", b'{"model": "m"}', None),
]


@pytest.mark.parametrize(("route", "content", "content_type"), BAD_BODIES)
async def test_a_bad_body_gets_exactly_fastapis_answer(route: str, content: bytes, content_type: str | None) -> None:
    fastapi_reply, direct_reply = await _both(_app(), route, content, content_type)
    assert direct_reply == fastapi_reply
    assert fastapi_reply[0] == 400 and fastapi_reply[1]["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("route", "body", "content_type"),
    [("speech", SPEECH, "application/json"), ("chat", CHAT, "application/json"),
     ("speech", SPEECH, "application/json; charset=utf-8"), ("chat", CHAT, "application/vnd.api+json")],
)  # fmt: skip
async def test_a_good_body_reaches_the_endpoint_alike(
    route: str, body: dict[str, Any], content_type: str | None
) -> None:
    fastapi_reply, direct_reply = await _both(_app(), route, json.dumps(body).encode(), content_type)
    assert direct_reply == fastapi_reply and direct_reply[0] == 200
    assert direct_reply[1]["svc"] == "the services"


async def test_while_loading_a_valid_request_gets_the_503_with_retry_after_and_bad_json_still_its_400() -> None:
    fastapi_reply, direct_reply = await _both(
        _app(loaded=False), "speech", json.dumps(SPEECH).encode(), "application/json"
    )
    assert direct_reply == fastapi_reply
    assert direct_reply[0] == 503 and direct_reply[1]["error"]["code"] == "loading" and direct_reply[2] == "5"
    fastapi_reply, direct_reply = await _both(_app(loaded=False), "speech", b"{", "application/json")
    assert direct_reply == fastapi_reply and direct_reply[1]["error"]["code"] == "invalid_json"  # decoded first


async def test_the_speech_and_chat_routes_never_solve_dependencies(monkeypatch: pytest.MonkeyPatch) -> None:
    """With FastAPI's solver broken, the app's own speech and chat routes still reach their endpoints (the direct
    handler is built when the route is, so the routers' routes are rebuilt as the app builds them)."""

    async def broken(*_: Any, **__: Any) -> Any:
        raise AssertionError("FastAPI solved a dependency")

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", broken)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(audio_speech.router)
    app.include_router(chat_completions.router)  # no services: the endpoints answer the loading 503 before any work
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for path, body in (("/v1/audio/speech", SPEECH), ("/v1/chat/completions", CHAT)):
            reply = await client.post(path, json=body)
            assert reply.status_code == 503 and reply.json()["error"]["code"] == "loading"
        reply = await client.post("/v1/audio/speech", content=b"{", headers={"content-type": "application/json"})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"


async def test_an_endpoint_of_another_shape_keeps_fastapis_handler() -> None:
    """A query parameter (or a plain-function dependency) is beyond the direct handler: FastAPI's serves the route."""
    router = APIRouter(route_class=DirectBodyRoute)

    def plain(request: Request) -> str:
        return "plain"

    @router.post("/query")
    async def with_query(body: SpeechRequest, n: int = Query(1)) -> JSONResponse:
        return JSONResponse({"n": n})

    @router.post("/plain")
    async def with_plain_dependency(body: SpeechRequest, value: str = Depends(plain)) -> JSONResponse:
        return JSONResponse({"value": value})

    built = [route.get_route_handler() for route in router.routes if isinstance(route, DirectBodyRoute)]
    assert [handler.__qualname__.split(".")[0] for handler in built] == ["get_request_handler"] * 2
    app = FastAPI()
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.post("/query?n=3", json=SPEECH)).json() == {"n": 3}
        assert (await client.post("/plain", json=SPEECH)).json() == {"value": "plain"}


async def test_a_client_gone_mid_body_is_fastapis_400_not_a_server_error() -> None:
    app = _app()
    replies = []
    for prefix in ("fastapi", "direct"):
        sent: list[dict[str, Any]] = []
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": f"/{prefix}/speech", "raw_path": f"/{prefix}/speech".encode(), "root_path": "", "query_string": b"",
            "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("t", 80),
        }  # fmt: skip
        messages = iter([{"type": "http.request", "body": b'{"model"', "more_body": True}, {"type": "http.disconnect"}])

        async def receive(messages: Any = messages) -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        await app(scope, receive, send)
        replies.append((sent[0]["status"], sent[1]["body"]))
    assert replies[0] == replies[1] and replies[1][0] == 400


def test_json_is_what_fastapi_decodes_as_json() -> None:
    assert is_json("application/json; charset=utf-8") and is_json("application/x+json")
    assert not is_json("text/plain") and not is_json("multipart/form-data; boundary=x")
    assert not is_json(None) and not is_json("") and is_json(None, strict=False)  # FastAPI's strict_content_type


async def test_an_overridden_dependency_is_honoured_through_fastapis_handler() -> None:
    """`app.dependency_overrides[services]` (a test's stand-in) reaches the endpoint as under FastAPI's handler."""
    app = _app()

    async def stand_in() -> str:
        return "the stand-in"

    app.dependency_overrides[services] = stand_in
    fastapi_reply, direct_reply = await _both(app, "speech", json.dumps(SPEECH).encode(), "application/json")
    assert direct_reply == fastapi_reply and direct_reply[1]["svc"] == "the stand-in"
    del app.dependency_overrides[services]
    assert (await _both(app, "speech", json.dumps(SPEECH).encode(), "application/json"))[1][1]["svc"] == "the services"
