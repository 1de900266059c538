"""Audio in over a real WebSocket: server-VAD turns, transcription, barge-in, transcription sessions.

Speech is espeak-ng's (`tests.speech_audio`), sent as 40 ms appends as fast as the socket takes
them; `audio_start_ms` / `audio_end_ms` are audio time, so they do not depend on that pace.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from oai_server.serving.realtime import session as realtime_session

from ..fault_engine import Fault
from ..speech_audio import compose
from .client import RawClient, b64, types
from .conftest import RealtimeServer
from .talk import paced
from .talk import utterance as talk_utterance

RATE = 24000
CHUNK = RATE * 40 // 1000


def utterance(text: str = "Hello there, how are you today?", lead: float = 0.6, tail: float = 1.2) -> Any:
    """Silence, the sentence, silence: samples at 24 kHz and where the sentence is."""
    samples, placed = compose([lead, text, tail], rate=RATE)
    return samples, placed[0]


async def stream(client: RawClient, samples: np.ndarray) -> None:
    """Append audio in 40 ms chunks."""
    for start in range(0, len(samples), CHUNK):
        await client.send({"type": "input_audio_buffer.append", "audio": b64(samples[start : start + CHUNK])})


def metric(server: RealtimeServer, name: str) -> float:
    """The value of one series on `/metrics` (0 when absent)."""
    for line in httpx.get(f"{server.live.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[-1])
    return 0.0


async def test_vad_turn_is_committed_transcribed_and_answered(rt_server: RealtimeServer) -> None:
    turns = metric(rt_server, 'oai_realtime_turns_total{source="vad"}')
    v2v = metric(rt_server, 'oai_realtime_voice_to_voice_seconds_count{since="vad_decision"}')
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(
        type="realtime",
        max_output_tokens=16,
        audio={"input": {"transcription": {"model": "whisper-1", "language": "en"}}},
    )
    samples, placed = utterance()
    await stream(client, samples)
    events = await client.until("response.done")
    await client.close()
    kinds = types(events)
    started = events[kinds.index("input_audio_buffer.speech_started")]
    stopped = events[kinds.index("input_audio_buffer.speech_stopped")]
    committed = events[kinds.index("input_audio_buffer.committed")]
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    # Silero decides per 32 ms frame: the start is reported prefix_padding_ms (300) before the first speech frame
    assert placed.start * 1000 - 300 - 64 <= started["audio_start_ms"] <= placed.start * 1000 - 300 + 128
    # ... and the end silence_duration_ms (500) after the last one
    assert placed.end * 1000 + 500 - 64 <= stopped["audio_end_ms"] <= placed.end * 1000 + 500 + 200
    order = [k for k in kinds if not k.startswith(("conversation.item.input_audio", "response.output"))]
    assert order[:5] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    added = events[kinds.index("conversation.item.added")]["item"]
    assert (
        added["id"] == committed["item_id"] and added["role"] == "user" and added["content"][0]["type"] == "input_audio"
    )
    completed = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    deltas = "".join(e["delta"] for e in events if e["type"] == "conversation.item.input_audio_transcription.delta")
    assert completed["item_id"] == committed["item_id"] and completed["transcript"] == deltas.strip()
    assert completed["transcript"] and completed["usage"]["seconds"] > 0
    assert "response.created" in kinds and events[-1]["response"]["status"] in ("completed", "incomplete")
    assert any(e["type"] == "response.output_audio.delta" for e in events)
    assert metric(rt_server, 'oai_realtime_turns_total{source="vad"}') == turns + 1
    assert metric(rt_server, 'oai_realtime_voice_to_voice_seconds_count{since="vad_decision"}') == v2v + 1
    assert completed["transcript"] in rt_server.prompt_text()


async def test_barge_in_cancels_the_reply_at_once_and_the_turn_is_answered(rt_server: RealtimeServer) -> None:
    barge_ins = metric(rt_server, "oai_realtime_barge_ins_total")
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(type="realtime", max_output_tokens=16)
    await client.say("Tell me a long story.")
    samples, _ = utterance("Stop, please.", lead=0.2, tail=1.0)
    with rt_server.armed(rt_server.tts, Fault(after_tokens=14, stall=True)):
        await client.send({"type": "response.create"})
        before = await client.until("response.output_audio.delta")
        first = before[0]["response"]["id"]
        await stream(client, samples)
        during = await client.until("input_audio_buffer.speech_started")
        after = await client.until("response.done")
        assert after[-1]["response"]["id"] == first
    done = after[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
    assert not [e for e in after if e["type"] == "response.output_audio.delta"]  # nothing after speech_started
    assert rt_server.tts.cancelled == 1
    heard_ms = sum(len(base64.b64decode(e["delta"])) for e in before + during if "audio.delta" in e["type"]) // 48
    item_id = done["output"][0]["id"]
    await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                       "audio_end_ms": heard_ms})  # fmt: skip
    assert (await client.until(("conversation.item.truncated", "error")))[-1]["type"] == "conversation.item.truncated"
    answer = await client.until("response.done")  # the interrupting turn gets its own reply
    assert answer[-1]["response"]["id"] != first and answer[-1]["response"]["status"] in ("completed", "incomplete")
    assert "input_audio_buffer.committed" in types(client.events[client.events.index(during[-1]) :])
    await client.close()
    assert await rt_server.settled()
    assert metric(rt_server, "oai_realtime_barge_ins_total") == barge_ins + 1


async def test_manual_commit_and_clear_without_turn_detection(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(type="realtime", audio={"input": {"turn_detection": None, "format": {"type": "audio/pcmu"}}})
    await client.send({"type": "input_audio_buffer.commit", "event_id": "c0"})
    error = (await client.until("error"))[-1]["error"]
    assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "c0")
    await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\xff" * 800).decode()})
    await client.send({"type": "input_audio_buffer.clear"})
    assert (await client.until("input_audio_buffer.cleared"))[-1]["type"] == "input_audio_buffer.cleared"
    await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\xff" * 800).decode()})
    await client.send({"type": "input_audio_buffer.commit"})
    events = await client.until("conversation.item.done")
    assert types(events) == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    await client.close()


async def test_transcription_session(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(f"{rt_server.ws_url}?intent=transcription&model=gpt-4o-mini-transcribe")
    assert client.events[0]["session"]["type"] == "transcription"
    session = await client.update(
        type="transcription",
        audio={"input": {"transcription": {"model": "gpt-realtime-whisper", "language": "en"},
                         "turn_detection": {"type": "server_vad", "silence_duration_ms": 350}}},
    )  # fmt: skip
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 350
    samples, _ = utterance(tail=0.8)
    await stream(client, samples)
    events = await client.until("conversation.item.input_audio_transcription.completed")
    assert [k for k in types(events) if "delta" not in k] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert events[-1]["transcript"]
    await client.send({"type": "response.create", "event_id": "r"})
    assert (await client.until("error"))[-1]["error"]["event_id"] == "r"
    await client.close()


async def test_idle_timeout_commits_the_silence_and_answers(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(
        type="realtime",
        max_output_tokens=8,
        audio={"input": {"turn_detection": {"idle_timeout_ms": 5000}, "transcription": {"model": "whisper-1"}}},
    )
    await stream(client, np.zeros(int(RATE * 5.2), np.float32))
    events = await client.until("response.done")  # the reply waits for the transcript: it came first
    await client.close()
    kinds = types(events)
    timeout = events[kinds.index("input_audio_buffer.timeout_triggered")]
    assert timeout["audio_end_ms"] - timeout["audio_start_ms"] >= 5000
    committed = events[kinds.index("input_audio_buffer.committed")]
    assert committed["item_id"] == timeout["item_id"] and "input_audio_buffer.speech_started" not in kinds
    assert kinds.index("input_audio_buffer.committed") < kinds.index("response.created")
    completed = events[kinds.index("conversation.item.input_audio_transcription.completed")]
    assert completed["item_id"] == timeout["item_id"] and completed["transcript"] == ""  # silence never reaches ASR


async def test_a_user_audio_item_is_transcribed_and_answered_from_its_text(rt_server: RealtimeServer) -> None:
    client = await RawClient.connect(rt_server.ws_url)
    await client.update(type="realtime", output_modalities=["text"], max_output_tokens=4,
                        audio={"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}})  # fmt: skip
    samples, _ = utterance(lead=0.1, tail=0.2)
    item = {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": b64(samples)}]}
    await client.send({"type": "conversation.item.create", "item": item})
    added = (await client.until("conversation.item.added"))[-1]["item"]
    assert added["content"] == [{"type": "input_audio", "audio": None, "transcript": None}]  # audio not echoed
    completed = (await client.until("conversation.item.input_audio_transcription.completed"))[-1]
    assert completed["item_id"] == added["id"] and completed["transcript"]
    await client.send({"type": "conversation.item.retrieve", "item_id": added["id"]})
    item_now = (await client.until("conversation.item.retrieved"))[-1]["item"]
    assert item_now["content"][0]["transcript"] == completed["transcript"]
    await client.send({"type": "response.create"})
    await client.until("response.done")
    await client.close()
    assert completed["transcript"] in rt_server.prompt_text()


class SilentRecognizer:
    """The demo recognizer, except that a transcription never answers (an engine request that never yields)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.languages = inner.languages
        self.waiting = 0

    async def transcribe(self, audio: np.ndarray, params: Any, request_id: str) -> AsyncIterator[Any]:
        self.waiting += 1
        await asyncio.Event().wait()  # forever
        yield  # pragma: no cover

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("transcribed", [False, True], ids=["bench-session", "transcription-events"])
async def test_a_transcription_that_never_answers_fails_and_the_turn_is_still_answered(
    rt_server: RealtimeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, transcribed: bool
) -> None:
    silent = SilentRecognizer(rt_server.live.services.transcription.asr)
    monkeypatch.setattr(rt_server.live.services.transcription, "asr", silent)
    monkeypatch.setattr(realtime_session, "TRANSCRIPTION_DEADLINE_SECONDS", 1.0)
    client = await RawClient.connect(rt_server.ws_url)
    # The bench's session (no transcription settings: the transcript only feeds the reply), or one that asks for it.
    session: dict[str, Any] = {"type": "realtime", "max_output_tokens": 8}
    if transcribed:
        session["audio"] = {"input": {"transcription": {"model": "whisper-1"}}}
    await client.update(**session)
    samples, _ = utterance()
    with caplog.at_level(logging.ERROR, logger="oai_server.serving.realtime.session"):
        await stream(client, samples)
        events = await client.until("response.done", timeout=20)  # before: the response waited for the transcript
    await client.close()
    kinds = types(events)
    # one request per pause of the utterance (early transcription; those of pauses speech resumed after are dropped)
    assert silent.waiting >= 1 and "input_audio_buffer.speech_stopped" in kinds
    assert events[-1]["response"]["status"] in ("completed", "incomplete")
    if transcribed:
        (failed,) = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.failed"]
        assert failed["error"]["type"] == "server_error" and failed["error"]["code"] == "timeout"
        assert kinds.index("conversation.item.input_audio_transcription.failed") < kinds.index(
            "response.output_item.added"
        )
    else:
        assert not [kind for kind in kinds if kind.startswith("conversation.item.input_audio_transcription")]
    assert any("realtime transcription of" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
    assert await rt_server.settled()


async def test_a_session_task_that_dies_is_logged(rt_server: RealtimeServer, caplog: pytest.LogCaptureFixture) -> None:
    class Sink:
        async def send(self, event: Any) -> None:
            pass

        def discard_audio(self, response_id: str) -> None:
            pass

    session = rt_server.live.services.realtime.session(Sink())

    async def dies() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="oai_server.serving.realtime.session"):
        await asyncio.gather(session._spawn(dies(), "realtime-test-task"), return_exceptions=True)
    assert any(r.getMessage() == "realtime: task realtime-test-task failed: boom" for r in caplog.records)
    assert not session._tasks


class TimedRecognizer:
    """The demo recognizer, recording when each transcription request reached it (`time.monotonic()`)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.languages = inner.languages
        self.started: list[float] = []

    def transcribe(self, audio: np.ndarray, params: Any, request_id: str) -> AsyncIterator[Any]:
        self.started.append(time.monotonic())
        return self.inner.transcribe(audio, params, request_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("early", [True, False], ids=["early", "at-the-decision"])
async def test_a_turn_is_transcribed_from_its_pause_while_the_vad_waits(
    rt_server: RealtimeServer, monkeypatch: pytest.MonkeyPatch, early: bool
) -> None:
    """Spoken at real-time pace, a turn's silence begins silence_duration_ms (500) before the VAD decides it
    ended. With early transcription the request the turn's transcript comes from was made at that pause, and
    none after the decision; without, it is made at the decision. Either way the transcript and reply follow."""
    timed = TimedRecognizer(rt_server.live.services.transcription.asr)
    monkeypatch.setattr(rt_server.live.services.transcription, "asr", timed)
    monkeypatch.setattr(rt_server.live.services.settings, "realtime_early_transcription", early)
    client = await RawClient.connect(rt_server.ws_url)
    transcription = {"transcription": {"model": "whisper-1"}}
    await client.update(type="realtime", max_output_tokens=4, audio={"input": transcription})

    async def stopped() -> tuple[list[dict[str, Any]], float]:
        return await client.until("input_audio_buffer.speech_stopped"), time.monotonic()

    reading = asyncio.create_task(stopped())
    async for chunk in paced(talk_utterance(tail=0.9)):
        if reading.done():
            break
        await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
    before, stopped_at = await reading
    events = before + await client.until("response.done")
    await client.close()
    completed = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert len(completed) == 1 and timed.started
    if early:
        assert all(at < stopped_at - 0.25 for at in timed.started)  # all before the decision: none re-done after
    else:
        assert len(timed.started) == 1 and timed.started[0] > stopped_at - 0.1
    assert events[-1]["response"]["status"] in ("completed", "incomplete")
    assert await rt_server.settled()
