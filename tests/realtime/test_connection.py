"""The WebSocket edge: hostile input never ends a session, limits, keys, admission, idle timeout, disconnect.

Every malformed frame gets an `error` event naming the problem (its `code`, its `param`, the
client's `event_id` when it sent one) and the session keeps answering. A second server on the
same engines has API keys, room for one session and a 1 s idle timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..conftest import LiveServer, start_server
from ..fault_engine import Fault
from .client import RawClient
from .conftest import RealtimeServer, eventually, realtime_settings

KEY = "sk-realtime-test"


async def error_for(client: RawClient, frame: dict[str, Any] | str | bytes) -> dict[str, Any]:
    await client.send(frame)
    event = await client.recv()
    assert event["type"] == "error", event
    return event["error"]  # type: ignore[no-any-return]


async def test_hostile_frames_get_error_events_and_the_session_goes_on(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(rt_server.ws_url)
    append = "input_audio_buffer.append"
    cases: list[tuple[Any, tuple[str | None, str | None]]] = [
        ("{not json", ("invalid_json", None)),
        ("[1, 2]", ("invalid_json", None)),
        ({"type": "response.dance", "event_id": "e1"}, ("invalid_value", "type")),
        ({"event_id": "e2"}, ("missing_required_parameter", "type")),
        ({"type": append, "audio": 123}, ("invalid_type", "audio")),
        ({"type": append, "audio": "!!!not base64!!!"}, ("invalid_value", "audio")),
        ({"type": append, "audio": base64.b64encode(b"\x01\x02\x03").decode()}, ("invalid_value", "audio")),
        (b"\x00\x01binary", ("invalid_frame", None)),
        ({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"threshold": 2}}}}},
         ("invalid_value", "session.audio.input.turn_detection.threshold")),
        ({"type": "session.update", "session": {"audio": {"output": {"voice": "nobody"}}}},
         ("invalid_value", "session.audio.output.voice")),
        ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/opus"}}}}},
         ("invalid_value", "session.audio.input.format.type")),
        ({"type": "conversation.item.truncate", "item_id": "item_x", "audio_end_ms": -5},
         ("invalid_value", "audio_end_ms")),
        ({"type": "conversation.item.truncate", "item_id": "item_x", "audio_end_ms": 5},
         ("item_truncate_invalid_item_id", "item_id")),
        ({"type": "conversation.item.delete", "item_id": "item_x"}, ("item_delete_invalid_item_id", "item_id")),
        ("x" * (4 * 1024 * 1024 + 1), ("message_too_large", None)),
    ]  # fmt: skip
    for frame, (code, param) in cases:
        error = await error_for(client, frame)
        assert (error["code"], error["param"]) == (code, param), (frame if len(str(frame)) < 200 else "big", error)
        if isinstance(frame, dict) and "event_id" in frame:
            assert error["event_id"] == frame["event_id"]
    session = await client.update(audio={"output": {"voice": "cedar"}})
    assert session["audio"]["output"]["voice"] == "cedar"
    await client.close()


async def test_too_many_events_per_second_get_one_error_and_the_session_goes_on(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(rt_server.ws_url)
    frame = json.dumps({"type": "output_audio_buffer.clear"})  # answered by nothing
    flooded = time.monotonic()
    for _ in range(3000):  # the bucket holds 400 and refills 200 a second
        await client.ws.send(frame)
    error = (await client.until("error"))[-1]["error"]
    assert error["code"] == "rate_limit_exceeded"
    # The server may still be working through the flood (seconds on a slow machine, where it says so once a second
    # while it drops events): ask until an update gets through, and check that nothing else came meanwhile.
    updated: dict[str, Any] | None = None
    for attempt in range(40):
        await asyncio.sleep(0.5)
        await client.send({"type": "session.update", "session": {"instructions": f"Be brief, {attempt}."}})
        with contextlib.suppress(TimeoutError):
            while updated is None:
                event = await client.recv(timeout=0.5)
                if event["type"] == "session.updated":
                    updated = event["session"]
                else:
                    assert event["type"] == "error" and event["error"]["code"] == "rate_limit_exceeded", event
        if updated is not None:
            break
    assert updated is not None and updated["instructions"].startswith("Be brief, ")
    errors = [e for e in client.events if e["type"] == "error"]
    assert 1 <= len(errors) <= 1 + time.monotonic() - flooded  # one a second at most
    await client.close()


async def test_client_leaving_mid_reply_aborts_everything(rt_server: RealtimeServer) -> None:
    assert await rt_server.settled()
    before = rt_server.live.tasks()
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(max_output_tokens=40)
    await client.say("Tell me a story.")
    with rt_server.armed(rt_server.tts, Fault(after_tokens=14, stall=True)):
        await client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        client.ws.transport.abort()  # no close frame: the socket just goes away
        assert await rt_server.settled() and rt_server.tts.cancelled == 1
    assert rt_server.live.services.realtime.open == 0
    assert await eventually(lambda: not rt_server.live.tasks() - before), rt_server.live.tasks() - before


@pytest.fixture(scope="module")
def keyed_server(rt_server: RealtimeServer, demo_cache: Any) -> Iterator[LiveServer]:
    """A second app on the same engines (without VAD: its batcher belongs to the first server's loop)."""
    settings = realtime_settings(demo_cache, api_keys=[KEY], realtime_max_sessions=1, realtime_idle_timeout_seconds=1.0)
    live = start_server(settings, engines=replace(rt_server.engines, vad=None))
    yield live
    live.stop()


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"


async def refused(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url, **kwargs)
    response = info.value.response
    return response.status_code, json.loads(response.body)


async def handshakes(server: LiveServer) -> dict[str, float]:
    """The middleware's count of `/v1/realtime` handshakes by status."""
    async with httpx.AsyncClient() as http:
        scraped = (await http.get(f"{server.url}/metrics", timeout=10)).text
    prefix = 'oai_requests_total{method="WEBSOCKET",route="/v1/realtime",status="'
    return {line[len(prefix) : len(prefix) + 3]: float(line.split()[-1]) for line in scraped.splitlines()
            if line.startswith(prefix)}  # fmt: skip


async def test_keys_subprotocol_and_session_limit(keyed_server: LiveServer) -> None:
    assert await eventually(lambda: keyed_server.services.realtime.open == 0)
    before = await handshakes(keyed_server)
    status, body = await refused(ws_url(keyed_server))
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = await refused(ws_url(keyed_server), additional_headers={"Authorization": "Bearer wrong"})
    assert status == 401

    browser = ["realtime", f"openai-insecure-api-key.{KEY}", "openai-beta.realtime-v1"]
    first = await RawClient.connect(ws_url(keyed_server), subprotocols=browser)  # type: ignore[arg-type]
    assert first.ws.subprotocol == "realtime"
    status, body = await refused(ws_url(keyed_server), additional_headers={"Authorization": f"Bearer {KEY}"})
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    await first.close()
    assert await eventually(lambda: keyed_server.services.realtime.open == 0)
    headers = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "realtime=v1"}
    second = await RawClient.connect(ws_url(keyed_server), additional_headers=headers)
    await second.close()
    assert await eventually(lambda: keyed_server.services.realtime.open == 0)
    expected = {"401": 2.0, "429": 1.0, "101": 2.0}
    for _ in range(100):  # the middleware counts a handshake once its session has ended
        counted = {k: v - before.get(k, 0.0) for k, v in (await handshakes(keyed_server)).items()}
        if counted == expected:
            break
        await asyncio.sleep(0.05)
    assert counted == expected


async def test_idle_session_gets_an_error_and_is_closed(keyed_server: LiveServer) -> None:
    assert await eventually(lambda: keyed_server.services.realtime.open == 0)
    client = await RawClient.connect(ws_url(keyed_server), additional_headers={"Authorization": f"Bearer {KEY}"})
    error = (await client.until("error", timeout=10))[-1]["error"]
    assert error["code"] == "idle_timeout"
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
