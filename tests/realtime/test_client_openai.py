"""The openai SDK's `client.realtime.connect` (openai[realtime]) against the real server.

One session runs the four conformance steps: text in -> audio out; speech in (4x real time,
then silence) -> server VAD -> transcript -> spoken reply; a barge-in mid-reply, answered with a
truncate of what was received; a cancel. The SDK does not validate events, so each is checked
against its own GA models here, and nothing logged may be an error.
"""

from __future__ import annotations

import base64
from typing import Any

from openai import AsyncOpenAI

from .client import SDK_EVENT
from .conftest import LogCapture, RealtimeServer, Wiretap
from .talk import BYTES_PER_MS, paced, utterance


async def until(conn: Any, kind: str, seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events (as validated dicts) up to one of type `kind`."""
    out = []
    async for event in conn:
        data = event.model_dump(mode="json", exclude_unset=True)
        SDK_EVENT.validate_python(data)
        out.append(data)
        seen.append(data)
        if data["type"] == kind:
            return out
    raise AssertionError(f"the connection ended before {kind}")


def audio_bytes(events: list[dict[str, Any]]) -> int:
    return sum(len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta")


async def test_openai_sdk_realtime(rt_server: RealtimeServer, wiretap: Wiretap, client_logs: LogCapture) -> None:
    mark = wiretap.mark()
    client = AsyncOpenAI(base_url=f"{rt_server.live.url}/v1", api_key="sk-test", max_retries=0)
    seen: list[dict[str, Any]] = []
    async with client, client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={"type": "realtime", "max_output_tokens": 16, "instructions": "Be brief.",
                     "audio": {"input": {"transcription": {"model": "whisper-1"}}, "output": {"voice": "marin"}}}
        )  # fmt: skip
        await until(conn, "session.updated", seen)

        # 1. text in -> audio out
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there!"}]}
        )
        await conn.response.create(response={"metadata": {"step": "text"}})
        events = await until(conn, "response.done", seen)
        assert events[-1]["response"]["metadata"] == {"step": "text"} and audio_bytes(events) > 0

        # 2. speech in, faster than real time -> VAD -> transcript -> spoken reply
        async for chunk in paced(utterance(), speed=4):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        events = await until(conn, "response.done", seen)
        kinds = [e["type"] for e in events]
        assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("response.created")
        transcript = next(e for e in events if e["type"].endswith("input_audio_transcription.completed"))
        assert transcript["transcript"] and audio_bytes(events) > 0

        # 3. barge-in: the reply is still speaking (stalled) when the user talks; the app truncates
        rt_server.tts.stall_next()
        await conn.response.create()
        received = await until(conn, "response.output_audio.delta", seen)
        async for chunk in paced(utterance("Wait, stop.", lead=0.1, tail=1.0), speed=4):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        received += await until(conn, "input_audio_buffer.speech_started", seen)
        item_id = next(e["item_id"] for e in received if "item_id" in e)
        await conn.conversation.item.truncate(
            item_id=item_id, content_index=0, audio_end_ms=audio_bytes(received) // BYTES_PER_MS
        )
        done = (await until(conn, "response.done", seen))[-1]["response"]
        assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
        await until(conn, "conversation.item.truncated", seen)
        answer = (await until(conn, "response.done", seen))[-1]["response"]
        assert answer["status"] in ("completed", "incomplete")

        # 4. cancel
        rt_server.tts.stall_next()
        await conn.response.create()
        await until(conn, "response.output_audio.delta", seen)
        await conn.response.cancel()
        done = (await until(conn, "response.done", seen))[-1]["response"]
        assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    assert not [e for e in seen if e["type"] == "error"]
    assert not client_logs.problems(), client_logs.problems()
    (log,) = wiretap.since(mark)
    assert [e["type"] for e in Wiretap.received(log)].count("conversation.item.truncate") == 1
    assert await rt_server.settled()
