"""Responses over a real WebSocket: GA event order, audio formats, cancel, one response at a time, truncate.

Every event received is validated against the openai SDK's GA models (`client.RawClient`).
Replies are seeded, so each is the same on every run; a stalled speech engine keeps a reply
running for as long as a test needs (`RealtimeServer.armed`).
"""

from __future__ import annotations

import base64
import logging
import math
import re
from typing import Any

import pytest

from oai_server.serving.reply_events import SpokenTranscript

from ..fault_engine import Fault
from .client import RawClient, pcm_of, types
from .conftest import RealtimeServer

GA_SPOKEN = re.compile(
    r"response\.created response\.output_item\.added conversation\.item\.added response\.content_part\.added"
    r"( response\.output_audio_transcript\.delta( response\.output_audio\.delta)+)+"
    r" response\.output_audio\.done response\.output_audio_transcript\.done response\.content_part\.done"
    r" response\.output_item\.done conversation\.item\.done response\.done"
)
GA_TEXT = re.compile(
    r"response\.created response\.output_item\.added conversation\.item\.added response\.content_part\.added"
    r"( response\.output_text\.delta)+ response\.output_text\.done response\.content_part\.done"
    r" response\.output_item\.done conversation\.item\.done response\.done"
)


async def spoken_reply(server: RealtimeServer, **session: Any) -> tuple[RawClient, list[dict[str, Any]]]:
    """A fresh session answering one user message with audio (40 tokens at most)."""
    client = await RawClient.connect(f"{server.ws_url}?model=gpt-realtime")
    await client.update(type="realtime", max_output_tokens=40, **session)
    await client.say("Tell me about the weather today.")
    await client.send({"type": "response.create", "event_id": "evt_1", "response": {"metadata": {"topic": "weather"}}})
    return client, await client.until("response.done")


def transcript_map(events: list[dict[str, Any]]) -> SpokenTranscript:
    """The sample -> text map rebuilt from what the client received (segment text first, then its audio)."""
    spoken = SpokenTranscript()
    for event in events:
        if event["type"] == "response.output_audio_transcript.delta":
            spoken.start_segment(event["delta"].strip())
        elif event["type"] == "response.output_audio.delta":
            spoken.add_audio(base64.b64decode(event["delta"]))
    return spoken


async def test_text_in_audio_out_in_ga_order(rt_server: RealtimeServer) -> None:
    client, events = await spoken_reply(rt_server)
    await client.close()
    assert GA_SPOKEN.fullmatch(" ".join(types(events))), types(events)
    created, done = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["metadata"] == {"topic": "weather"}
    assert done["id"] == created["id"] and done["metadata"] == {"topic": "weather"}
    assert done["status"] in ("completed", "incomplete")
    if done["status"] == "incomplete":
        assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens", "error": None}
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    audio = pcm_of(events)
    assert transcript and len(audio) > 0 and len(audio) % 2 == 0
    (item,) = done["output"]
    assert item["role"] == "assistant" and item["content"] == [
        {"type": "output_audio", "audio": None, "transcript": transcript}
    ]
    assert next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"] == transcript
    ids = {e.get("item_id") for e in events if "item_id" in e} | {e["item"]["id"] for e in events if "item" in e}
    assert ids == {item["id"]}
    usage = done["usage"]
    assert usage["output_token_details"]["audio_tokens"] > 0 and usage["output_token_details"]["text_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] and usage["input_tokens"] > 0
    assert len({e["event_id"] for e in client.events}) == len(client.events)


async def test_text_only_response(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(type="realtime", output_modalities=["text"], max_output_tokens=12)
    await client.say("Hello there.")
    await client.send({"type": "response.create"})
    events = await client.until("response.done")
    await client.close()
    assert GA_TEXT.fullmatch(" ".join(types(events))), types(events)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert events[-1]["response"]["output"][0]["content"] == [{"type": "output_text", "text": text}]
    assert events[-1]["response"]["output_modalities"] == ["text"]


@pytest.mark.parametrize("law", ["audio/pcmu", "audio/pcma"])
async def test_g711_output_is_the_same_reply_at_8khz(rt_server: RealtimeServer, law: str) -> None:
    client, pcm_events = await spoken_reply(rt_server)
    await client.close()
    samples = len(pcm_of(pcm_events)) // 2
    client, g711_events = await spoken_reply(rt_server, audio={"output": {"format": {"type": law}}})
    await client.close()
    assert g711_events[-1]["response"]["audio"]["output"]["format"] == {"type": law}
    assert len(pcm_of(g711_events)) == math.ceil(samples / 3)  # one byte per 8 kHz sample
    assert transcript_map(pcm_events).text == "".join(
        e["delta"] for e in g711_events if e["type"] == "response.output_audio_transcript.delta"
    ).replace("  ", " ")


async def test_cancel_ends_with_cancelled_done_and_aborts_the_engines(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(type="realtime", max_output_tokens=40)
    await client.say("Tell me a story.")
    with rt_server.armed(rt_server.tts, Fault(after_tokens=14, stall=True)):
        await client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        await client.send({"type": "response.create", "event_id": "evt_again"})
        error = (await client.until("error"))[-1]["error"]
        assert error["code"] == "conversation_already_has_active_response" and error["event_id"] == "evt_again"
        await client.send({"type": "response.cancel", "event_id": "evt_cancel"})
        events = await client.until("response.done")
        assert await rt_server.settled() and rt_server.tts.cancelled == 1
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    tail = types(events)[types(events).index("response.output_audio.done") :]
    assert tail == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert done["output"][0]["status"] == "incomplete"
    await client.send({"type": "response.cancel", "event_id": "evt_nothing"})
    error = (await client.until("error"))[-1]["error"]
    assert error["code"] == "response_cancel_not_active" and error["event_id"] == "evt_nothing"
    assert error["message"].startswith("Cancellation failed")
    await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    assert (await client.until("response.done"))[-1]["response"]["status"] in ("completed", "incomplete")
    await client.close()


async def test_truncate_keeps_only_the_heard_text_for_later_turns(rt_server: RealtimeServer) -> None:
    client, events = await spoken_reply(rt_server)
    spoken = transcript_map(events)
    assert len(spoken.texts) >= 2, spoken.texts  # the cut below falls inside the first segment
    item_id = events[-1]["response"]["output"][0]["id"]
    cut_ms = int(spoken.starts[1] * 1000 / 24000 * 0.5)
    heard = spoken.heard_text(cut_ms)
    assert heard and heard != spoken.text

    await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                       "audio_end_ms": cut_ms})  # fmt: skip
    truncated = (await client.until(("conversation.item.truncated", "error")))[-1]
    assert truncated == {**truncated, "type": "conversation.item.truncated", "item_id": item_id, "audio_end_ms": cut_ms}
    await client.send({"type": "conversation.item.retrieve", "item_id": item_id})
    item = (await client.until("conversation.item.retrieved"))[-1]["item"]
    assert item["content"][0]["transcript"] == heard

    too_far = cut_ms + 1  # the item now ends at cut_ms
    await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                       "audio_end_ms": too_far, "event_id": "evt_far"})  # fmt: skip
    error = (await client.until("error"))[-1]["error"]
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "audio_end_ms", "evt_far")

    prompts = len(rt_server.llm.prompts)
    await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    await client.until("response.done")
    await client.close()
    assert len(rt_server.llm.prompts) == prompts + 1
    prompt = rt_server.prompt_text()
    assert heard in prompt and spoken.text not in prompt


async def test_truncate_past_the_items_audio_is_an_error_and_the_session_goes_on(rt_server: RealtimeServer) -> None:
    client, events = await spoken_reply(rt_server)
    item_id = events[-1]["response"]["output"][0]["id"]
    audio_ms = len(pcm_of(events)) // 2 * 1000 / 24000
    await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                       "audio_end_ms": math.ceil(audio_ms) + 1})  # fmt: skip
    error = (await client.until("error"))[-1]["error"]
    assert error["code"] == "invalid_value" and error["param"] == "audio_end_ms"
    assert error["message"].startswith("Audio content of")
    await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                       "audio_end_ms": math.floor(audio_ms)})  # fmt: skip
    assert (await client.until(("conversation.item.truncated", "error")))[-1]["type"] == "conversation.item.truncated"
    await client.close()


async def test_item_create_retrieve_delete(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(rt_server.ws_url)
    message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]}
    await client.send({"type": "conversation.item.create", "item": {**message, "id": "item_one"}})
    first = await client.until("conversation.item.done")
    assert first[0]["type"] == "conversation.item.added" and first[0]["previous_item_id"] is None
    await client.send(
        {"type": "conversation.item.create", "previous_item_id": "root", "item": {**message, "id": "item_zero"}}
    )
    added = (await client.until("conversation.item.done"))[0]
    assert added["previous_item_id"] is None and added["item"]["id"] == "item_zero"
    await client.send({"type": "conversation.item.create", "item": {**message, "id": "item_one"}, "event_id": "e1"})
    assert (await client.until("error"))[-1]["error"]["event_id"] == "e1"
    await client.send({"type": "conversation.item.retrieve", "item_id": "item_one"})
    assert (await client.until("conversation.item.retrieved"))[-1]["item"]["content"][0]["text"] == "one"
    await client.send({"type": "conversation.item.delete", "item_id": "item_one"})
    assert (await client.until("conversation.item.deleted"))[-1]["item_id"] == "item_one"
    await client.send({"type": "conversation.item.retrieve", "item_id": "item_one", "event_id": "rci_item_one"})
    error = (await client.until("error"))[-1]["error"]
    assert (error["code"], error["event_id"]) == ("item_retrieve_invalid_item_id", "rci_item_one")
    tool = {"type": "function_call_output", "call_id": "c1", "output": "{}"}
    await client.send({"type": "conversation.item.create", "item": tool})
    assert (await client.until("error"))[-1]["error"]["code"] == "unsupported_value"
    await client.send({"type": "session.update", "session": {"tools": [{"type": "function", "name": "f"}]}})
    assert (await client.until("error"))[-1]["error"]["param"] == "session.tools"
    await client.close()


async def test_engine_failure_mid_reply_ends_it_failed_and_the_session_goes_on(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(type="realtime", max_output_tokens=40)
    await client.say("Tell me a story.")
    with rt_server.armed(rt_server.llm, Fault(after_tokens=3)):
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
    done = events[-1]["response"]
    assert done["status"] == "failed" and done["status_details"]["error"]["type"] == "server_error"
    assert "error" not in types(events)  # a failed reply is reported in response.done, not as a fatal error event
    await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    assert (await client.until("response.done"))[-1]["response"]["status"] in ("completed", "incomplete")
    await client.close()
    assert await rt_server.settled()


async def test_a_turn_past_the_context_fails_its_response_with_the_code_and_a_log_line(
    rt_server: RealtimeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Three user items in a row are one user turn: past Gemma's context even with no history to drop. The
    response ends `failed` with `context_length_exceeded` (what a random-weight Whisper's 448-token turns hit on
    the GPU, seen there only as a bare `failed`), the operator's log says why, and the session goes on."""
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(type="realtime", output_modalities=["text"], max_output_tokens=4)
    words = " ".join(f"w{i}" for i in range(1000))  # ~3000 characters, about a thousand tokens or more
    for _ in range(3):
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": words}]}
        await client.send({"type": "conversation.item.create", "item": item})
        await client.until("conversation.item.done")
    with caplog.at_level(logging.WARNING, logger="oai_server.serving.realtime.responder"):
        await client.send({"type": "response.create"})
        done = (await client.until("response.done"))[-1]["response"]
    assert done["status"] == "failed"
    assert done["status_details"]["error"] == {"type": "invalid_request_error", "code": "context_length_exceeded"}
    assert any("failed" in r.getMessage() and "context_length_exceeded" in r.getMessage() for r in caplog.records)
    await client.send({"type": "response.create", "response": {"conversation": "none", "input": []}})
    assert (await client.until("response.done"))[-1]["response"]["status"] in ("completed", "incomplete")
    await client.close()
    assert await rt_server.settled()


async def test_out_of_band_response_reads_only_its_input(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(type="realtime", output_modalities=["text"], max_output_tokens=4)
    message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "zebra crossing"}]}
    await client.send({"type": "conversation.item.create", "item": {**message, "id": "item_kept"}})
    await client.until("conversation.item.done")
    await client.say("giraffe neck")
    extra = {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Answer in one word."}]}
    request = {"conversation": "none", "metadata": {"kind": "classify"},
               "input": [extra, {"type": "item_reference", "id": "item_kept"}]}  # fmt: skip
    await client.send({"type": "response.create", "response": request})
    events = await client.until("response.done")
    await client.close()
    assert "conversation.item.added" not in types(events) and "conversation.item.done" not in types(events)
    done = events[-1]["response"]
    assert done["conversation_id"] is None and done["metadata"] == {"kind": "classify"}
    prompt = rt_server.prompt_text()
    assert "zebra crossing" in prompt and "Answer in one word." in prompt and "giraffe" not in prompt
