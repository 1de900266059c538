"""A request's way to its first byte stays on the event loop: no worker-thread hop for routine work.

On the GPU a hop to a worker thread waits for the GIL while the loop is busy with hundreds of streams, and a
burst of new requests takes those hops one after another (session 10: a sync FastAPI dependency sent every
request through anyio's thread pool). Work big enough to stall the loop (a long chat history, a compressed
format's encoder) still leaves it; that is tested where it happens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from oai_server.app import create_app
from oai_server.settings import Settings


@pytest.fixture(scope="module")
async def client(demo_cache: Path, demo_models: object) -> AsyncIterator[httpx.AsyncClient]:
    """The demo app in process, behind httpx's ASGI transport."""
    app = create_app(Settings(demo=True, cache_dir=demo_cache))
    transport = httpx.ASGITransport(app=app)
    async with (
        LifespanManager(app, startup_timeout=120),
        httpx.AsyncClient(transport=transport, base_url="http://a") as c,
    ):
        yield c


SPEECH = {"model": "tts-1", "input": "Hello there.", "voice": "tara", "response_format": "pcm"}
CHAT = {
    "model": "gpt-4o-audio-preview",
    "messages": [{"role": "user", "content": "Hi!"}],
    "modalities": ["text", "audio"],
    "audio": {"voice": "tara", "format": "pcm16"},
    "stream": True,
    "max_tokens": 8,
}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/audio/speech", SPEECH),
        ("POST", "/v1/chat/completions", CHAT),
        ("GET", "/v1/models", None),
        ("GET", "/health/ready", None),
    ],
)
async def test_routine_requests_take_no_thread_hop(
    client: httpx.AsyncClient, hops: list[str], method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = await client.request(method, path, json=body)
    assert response.status_code == 200, response.text
    assert response.content
    assert hops == []
