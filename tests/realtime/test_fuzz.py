"""Hypothesis fuzz of client events: nothing a client sends kills a session or the server.

Each example opens a session, sends a few frames drawn from: well-formed events of every type
with arbitrary JSON in their fields, nested session and item shapes with wrong kinds and
out-of-range values, bad base64 and odd byte counts, unknown types, non-objects, raw text and
binary frames. Afterwards the same session must still answer a `session.update`, every event
it sent must validate against the GA SDK's models, and the server must have logged no error.
Derandomized (a fixed seed), on a second app sharing the test engines (no VAD, 8-token replies).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oai_server.protocol.realtime import CLIENT_EVENT_TYPES

from ..conftest import LiveServer, start_server
from .client import RawClient
from .conftest import LogCapture, RealtimeServer, realtime_settings

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def maybe(strategy: Any) -> Any:
    """Mostly `strategy`, one time in four any JSON value (a wrong kind)."""
    return st.integers(0, 3).flatmap(lambda pick: strategy if pick else json_values)


formats = st.sampled_from(["audio/pcm", "audio/pcmu", "audio/pcma", "pcm16", "g711_ulaw", "audio/opus", ""])
turn_detection = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "type": maybe(st.sampled_from(["server_vad", "semantic_vad", "nope"])),
        "threshold": maybe(st.floats(-1, 2)),
        "silence_duration_ms": maybe(st.integers(-100, 20_000)),
        "prefix_padding_ms": maybe(st.integers(-100, 20_000)),
        "idle_timeout_ms": maybe(st.integers(0, 40_000)),
        "eagerness": maybe(st.sampled_from(["low", "medium", "high", "auto"])),
        "create_response": maybe(st.booleans()),
        "interrupt_response": maybe(st.booleans()),
    },
)
session = st.fixed_dictionaries(
    {},
    optional={
        "type": maybe(st.sampled_from(["realtime", "transcription"])),
        "instructions": maybe(st.text(max_size=40)),
        "output_modalities": maybe(st.lists(st.sampled_from(["text", "audio", "video"]), max_size=3)),
        "modalities": maybe(st.lists(st.sampled_from(["text", "audio"]), max_size=2)),
        "max_output_tokens": maybe(st.one_of(st.integers(-5, 5000), st.just("inf"))),
        "tools": maybe(st.lists(st.fixed_dictionaries({"type": st.just("function"), "name": st.text(max_size=8)}))),
        "audio": st.fixed_dictionaries(
            {},
            optional={
                "input": st.fixed_dictionaries(
                    {},
                    optional={
                        "format": maybe(st.fixed_dictionaries({"type": formats})),
                        "turn_detection": turn_detection,
                        "transcription": maybe(
                            st.fixed_dictionaries({}, optional={"language": maybe(st.sampled_from(["en", "xx"]))})
                        ),
                    },
                ),
                "output": st.fixed_dictionaries(
                    {},
                    optional={
                        "voice": maybe(st.sampled_from(["marin", "cedar", "tara", "nobody"])),
                        "speed": maybe(st.floats(0, 3)),
                        "format": maybe(st.fixed_dictionaries({"type": formats})),
                    },
                ),
            },
        ),
    },
)
audio_b64 = st.one_of(
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=20),
)
part = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": st.text(max_size=20)}),
    st.fixed_dictionaries({"type": st.just("input_audio"), "audio": audio_b64}),
    st.fixed_dictionaries({"type": st.just("output_text"), "text": st.text(max_size=20)}),
    st.fixed_dictionaries({"type": st.just("output_audio")}, optional={"transcript": st.text(max_size=20)}),
    st.fixed_dictionaries({"type": st.just("input_image")}, optional={"image_url": st.text(max_size=10)}),
    st.dictionaries(st.sampled_from(["type", "text", "audio", "transcript"]), json_values),
)
content = st.lists(part, max_size=3)
ids = st.sampled_from(["item_a", "item_b", "item_c"]) | st.text(max_size=8)
item = st.fixed_dictionaries(
    {
        "type": maybe(st.sampled_from(["message", "message", "function_call", "function_call_output"])),
        "role": maybe(st.sampled_from(["user", "assistant", "system"])),
        "content": maybe(content),
    },
    optional={"id": ids, "name": st.text(max_size=5), "arguments": st.text(max_size=5), "call_id": ids},
)
response = st.fixed_dictionaries(
    {},
    optional={
        "output_modalities": maybe(st.lists(st.sampled_from(["text", "audio"]), max_size=2)),
        "conversation": maybe(st.sampled_from(["auto", "none"])),
        "max_output_tokens": maybe(st.integers(-2, 9)),
        "metadata": maybe(st.dictionaries(st.text(max_size=70), st.text(max_size=20), max_size=3)),
        "input": maybe(st.lists(item | st.fixed_dictionaries({"type": st.just("item_reference"), "id": ids}))),
        "instructions": maybe(st.text(max_size=20)),
    },
)
event_id = {"event_id": maybe(st.text(max_size=16))}


def event(kind: str, required: dict[str, Any] | None = None, optional: dict[str, Any] | None = None) -> Any:
    """One event type: its required fields usually there, its optional ones sometimes."""
    return st.fixed_dictionaries({"type": st.just(kind), **(required or {})}, optional={**event_id, **(optional or {})})


well_formed = st.one_of(
    event("session.update", {"session": session}),
    event("input_audio_buffer.append", {"audio": audio_b64}),
    event("input_audio_buffer.commit"),
    event("input_audio_buffer.clear"),
    event("conversation.item.create", {"item": item}, {"previous_item_id": maybe(st.sampled_from(["root", "item_a"]))}),
    event("conversation.item.retrieve", {"item_id": ids}),
    event("conversation.item.delete", {"item_id": ids}),
    event(
        "conversation.item.truncate",
        {"item_id": ids, "audio_end_ms": maybe(st.integers(-10, 10**6))},
        {"content_index": maybe(st.integers(-2, 3))},
    ),
    event("response.create", {}, {"response": response}),
    event("response.cancel", {}, {"response_id": maybe(ids)}),
    event("output_audio_buffer.clear"),
)
anything = st.builds(
    lambda kind, extra: {"type": kind, **extra},
    st.sampled_from([*CLIENT_EVENT_TYPES, "session.updatex", "response.audio.delta"]) | json_values,
    st.dictionaries(st.sampled_from(["session", "audio", "item", "item_id", "audio_end_ms", "response"]), json_values),
)
garbage = st.one_of(
    anything.map(json.dumps),
    well_formed.map(json.dumps).map(lambda s: s[: len(s) // 2]),  # cut in half: not JSON
    json_values.map(json.dumps),
    st.text(max_size=40),
    st.binary(max_size=40),
)
frames = st.integers(0, 3).flatmap(lambda pick: well_formed.map(json.dumps) if pick else garbage)


@pytest.fixture(scope="module")
def fuzz_server(rt_server: RealtimeServer, demo_cache: Any) -> Iterator[LiveServer]:
    """A second app on the shared engines: no VAD (its batcher is the first server's), 8-token replies."""
    live = start_server(
        realtime_settings(demo_cache, llm_max_tokens=8, tts_max_tokens=28),
        engines=replace(rt_server.engines, vad=None),
    )
    yield live
    live.stop()


async def one_session(url: str, sent: list[str | bytes]) -> None:
    client = await RawClient.connect(url)
    try:
        for frame in sent:
            await client.send(frame)
        # `include` is in both session types' wire forms (a transcription session sends no `instructions`)
        # and no fuzzed frame sets it, so only the probe's answer carries it
        include = ["item.input_audio_transcription.logprobs"]
        await client.send({"type": "session.update", "event_id": "probe", "session": {"include": include}})
        while True:  # every event on the way validates against the SDK (RawClient.recv)
            event = await client.recv(timeout=60)
            if event["type"] == "session.updated" and event["session"].get("include") == include:
                break
            if event["type"] == "error" and event["error"]["event_id"] == "probe":
                raise AssertionError(f"the probe was refused: {event}")
    finally:
        await client.close()


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sent=st.lists(frames, min_size=1, max_size=5))
def test_no_client_event_kills_a_session(fuzz_server: LiveServer, client_logs: LogCapture, sent: list[Any]) -> None:
    url = fuzz_server.url.replace("http://", "ws://") + "/v1/realtime"
    asyncio.run(one_session(url, sent))
    errors = [line for line in client_logs.lines if line.startswith(("ERROR", "CRITICAL")) and "oai_server" in line]
    assert not errors, errors
