"""The OpenAI Agents SDK: `RealtimeAgent` + `RealtimeRunner` over its WebSocket model, pointed at us by URL.

The SDK validates every server event against the GA models (a failure is an ERROR log and the
event is dropped), sends a full `session.update` with `semantic_vad` on connect, a
`conversation.item.retrieve` after every transcript and truncate, and a truncate of its own on
`speech_started`. The steps: text in -> audio out; speech at real-time pace -> VAD -> transcript ->
spoken reply; a barge-in mid-reply (the SDK truncates); a cancel (forced interrupt).
"""

from __future__ import annotations

import asyncio
from typing import Any

from agents.realtime import RealtimeAgent, RealtimeRunner
from agents.realtime.model_inputs import RealtimeModelSendInterrupt

from .conftest import LogCapture, RealtimeServer, Wiretap
from .talk import paced, utterance


async def turn(events: Any, out: list[Any]) -> list[Any]:
    """Session events up to the next `agent_end` (one response)."""
    mine = []
    async for event in events:
        mine.append(event)
        out.append(event)
        if event.type == "agent_end":
            return mine
    raise AssertionError("the session ended")


async def first(events: Any, kind: str, out: list[Any]) -> list[Any]:
    mine = []
    async for event in events:
        mine.append(event)
        out.append(event)
        if event.type == kind:
            return mine
    raise AssertionError("the session ended")


def audio(events: list[Any]) -> int:
    return sum(len(e.audio.data) for e in events if e.type == "audio")


async def test_agents_sdk_realtime(rt_server: RealtimeServer, wiretap: Wiretap, client_logs: LogCapture) -> None:
    mark = wiretap.mark()
    agent = RealtimeAgent(name="assistant", instructions="Be brief.")
    settings = {"model_name": "gpt-realtime", "voice": "marin", "max_output_tokens": 16}
    runner = RealtimeRunner(agent, config={"model_settings": settings})  # type: ignore[arg-type]
    url = f"{rt_server.ws_url}?model=gpt-realtime"
    session = await runner.run(model_config={"url": url, "api_key": "sk-test"})
    seen: list[Any] = []
    async with session:
        events = aiter(session)
        # 1. text in -> audio out
        await session.send_message("Hi there!")
        assert audio(await turn(events, seen)) > 0

        # 2. speech at real-time pace, then silence -> VAD (semantic_vad, the SDK's default) -> reply
        async def speak(text: str, lead: float = 0.3) -> None:
            async for chunk in paced(utterance(text, lead=lead)):
                await session.send_audio(chunk)

        sender = asyncio.create_task(speak("Hello there, how are you today?"))
        reply = await turn(events, seen)
        await sender
        assert audio(reply) > 0

        # 3. barge-in mid-reply: the server cancels, the SDK truncates what it played
        rt_server.tts.stall_next()
        await session.send_message("Tell me a story.")
        await first(events, "audio", seen)
        sender = asyncio.create_task(speak("Wait, stop.", lead=0.1))
        interrupted = await first(events, "audio_interrupted", seen)
        assert interrupted
        await turn(events, seen)  # the interrupted response's end
        assert audio(await turn(events, seen)) > 0  # the answer to the interruption
        await sender

        # 4. cancel
        rt_server.tts.stall_next()
        await session.send_message("Tell me another story.")
        await first(events, "audio", seen)
        await session.model.send_event(RealtimeModelSendInterrupt(force_response_cancel=True))
        await turn(events, seen)
    errors = [e for e in seen if e.type == "error" or (e.type == "raw_model_event" and e.data.type == "error")]
    assert not errors, errors
    assert not client_logs.problems(), client_logs.problems()
    (log,) = wiretap.since(mark)
    sent, received = Wiretap.sent(log), [e["type"] for e in Wiretap.received(log)]
    done = [e["response"] for e in sent if e["type"] == "response.done"]
    assert [d["status_details"] and d["status_details"]["reason"] for d in done if d["status"] == "cancelled"] == [
        "turn_detected",
        "client_cancelled",
    ]
    assert "conversation.item.truncate" in received and "conversation.item.retrieve" in received
    assert not [e for e in sent if e["type"] == "error"]
    assert await rt_server.settled()
