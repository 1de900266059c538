"""LiveKit Agents' OpenAI plugin: `openai.realtime.RealtimeModel` and `openai.STT`, with no room.

LiveKit's `generate_reply` waits for `response.created` to echo `metadata.client_event_id`, it
asserts that `response.created` comes before a response's other events, logs every `error`
event at ERROR, and sends `semantic_vad` by default. The realtime session runs: text
(`generate_reply`) -> audio out; speech pushed at real-time pace -> server VAD -> transcript ->
spoken reply; a barge-in mid-reply, truncated by the app on `input_speech_started`; a cancel
(`interrupt`). The STT stream (`use_realtime=True`) transcribes a speech turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import stt as lk_stt
from livekit.agents import utils
from livekit.agents.llm import GenerationCreatedEvent
from livekit.plugins import openai
from openai.types.realtime import AudioTranscription

from .conftest import LogCapture, RealtimeServer, Wiretap
from .talk import RATE, paced, utterance


async def play(
    generation: GenerationCreatedEvent, first_audio: asyncio.Event | None = None, ids: list[str] | None = None
) -> tuple[int, str]:
    """Audio samples and transcript of one generation, read to its end (its message ids go to `ids`)."""
    samples, text = 0, ""

    async def audio(stream: Any) -> None:
        nonlocal samples
        async for frame in stream:
            samples += frame.samples_per_channel
            if first_audio is not None:
                first_audio.set()

    async def transcript(stream: Any) -> None:
        nonlocal text
        async for delta in stream:
            text += delta

    async for message in generation.message_stream:
        if ids is not None:
            ids.append(message.message_id)
        await asyncio.gather(audio(message.audio_stream), transcript(message.text_stream))
    return samples, text


class DoneFutures:
    """LiveKit 1.8.9 sets a `RealtimeError` on a generation's private `_done_fut` when its response ends
    `incomplete` (here: max_output_tokens, which our small limit hits) and never awaits it, so asyncio
    logs "Future exception was never retrieved" when it is collected, in a real agent too. We keep each
    generation's future and retrieve its outcome, asserting it is only ever that."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.futures: list[asyncio.Future[None]] = []

    def created(self, _: object) -> None:
        generation = getattr(self.session, "_current_generation", None)
        if generation is not None:
            self.futures.append(generation._done_fut)

    def outcomes(self) -> set[str]:
        return {
            str(future.exception()) if future.exception() is not None else "done"
            for future in self.futures
            if future.done() and not future.cancelled()
        }


async def push(session: Any, text: str, lead: float = 0.3) -> None:
    async for chunk in paced(utterance(text, lead=lead)):
        session.push_audio(rtc.AudioFrame(chunk, RATE, 1, len(chunk) // 2))


async def test_livekit_realtime_model(rt_server: RealtimeServer, wiretap: Wiretap, client_logs: LogCapture) -> None:
    mark = wiretap.mark()
    async with aiohttp.ClientSession() as http:
        model = openai.realtime.RealtimeModel(
            base_url=f"{rt_server.live.url}/v1", api_key="sk-test", model="gpt-realtime", voice="marin",
            input_audio_transcription=AudioTranscription(model="whisper-1"), http_session=http,
        )  # fmt: skip
        session = model.session()
        session.update_options(max_response_output_tokens=16)
        errors: list[Any] = []
        generations: asyncio.Queue[GenerationCreatedEvent] = asyncio.Queue()
        transcripts: list[str] = []
        speech_started = asyncio.Event()
        done_futures = DoneFutures(session)
        session.on("generation_created", done_futures.created)
        session.on("error", errors.append)
        session.on("generation_created", lambda g: None if g.user_initiated else generations.put_nowait(g))
        session.on("input_audio_transcription_completed", lambda e: transcripts.append(e.transcript))
        session.on("input_speech_started", lambda _: speech_started.set())
        try:
            # 1. text in -> audio out (generate_reply waits for its metadata.client_event_id echo)
            samples, text = await play(await session.generate_reply(instructions="Say hello."))
            assert samples > 0 and text

            # 2. speech at real-time pace -> VAD -> transcript -> spoken reply
            await push(session, "Hello there, how are you today?")
            samples, _ = await play(await asyncio.wait_for(generations.get(), 60))
            assert samples > 0 and transcripts and transcripts[-1]

            # 3. barge-in: the reply stalls while speaking; on speech start the app truncates what it played
            rt_server.tts.stall_next()
            reply = await session.generate_reply(instructions="Tell a story.")
            first_audio, message_ids = asyncio.Event(), []
            playing = asyncio.create_task(play(reply, first_audio, message_ids))
            await asyncio.wait_for(first_audio.wait(), 60)
            speech_started.clear()
            talking = asyncio.create_task(push(session, "Wait, stop.", lead=0.1))
            await asyncio.wait_for(speech_started.wait(), 60)
            heard, _ = await asyncio.wait_for(playing, 60)
            session.truncate(message_id=message_ids[0], modalities=["audio"], audio_end_ms=heard * 1000 // RATE)
            await talking
            samples, _ = await play(await asyncio.wait_for(generations.get(), 60))
            assert samples > 0

            # 4. cancel
            rt_server.tts.stall_next()
            reply = await session.generate_reply(instructions="Tell another story.")
            first_audio = asyncio.Event()
            playing = asyncio.create_task(play(reply, first_audio))
            await asyncio.wait_for(first_audio.wait(), 60)
            session.interrupt()
            await asyncio.wait_for(playing, 60)
        finally:
            await session.aclose()
            await model.aclose()
    assert done_futures.outcomes() <= {"done", "response incomplete: max_output_tokens"}, done_futures.outcomes()
    assert not errors, errors
    assert not client_logs.problems(), client_logs.problems()
    (log,) = wiretap.since(mark)
    sent, received = Wiretap.sent(log), [e["type"] for e in Wiretap.received(log)]
    done = [e["response"] for e in sent if e["type"] == "response.done"]
    reasons = [d["status_details"]["reason"] for d in done if d["status"] == "cancelled"]
    assert reasons == ["turn_detected", "client_cancelled"]
    assert received.count("conversation.item.truncate") >= 1
    assert "conversation.item.truncated" in [e["type"] for e in sent]
    assert not [e for e in sent if e["type"] == "error"]
    assert await rt_server.settled()


async def test_livekit_stt(rt_server: RealtimeServer, wiretap: Wiretap, client_logs: LogCapture) -> None:
    mark = wiretap.mark()
    finals: list[str] = []
    async with utils.http_context.open():
        recognizer = openai.STT(
            base_url=f"{rt_server.live.url}/v1", api_key="sk-test", model="gpt-4o-mini-transcribe", use_realtime=True
        )
        stream = recognizer.stream()

        async def feed() -> None:
            async for chunk in paced(utterance("Hello there, how are you today?")):
                stream.push_frame(rtc.AudioFrame(chunk, RATE, 1, len(chunk) // 2))

        feeding = asyncio.create_task(feed())
        async for event in stream:
            if event.type == lk_stt.SpeechEventType.FINAL_TRANSCRIPT:
                finals.append(event.alternatives[0].text)
                break
        await feeding
        await stream.aclose()
        await recognizer.aclose()
    assert finals and finals[0]
    assert not client_logs.problems(), client_logs.problems()
    (log,) = wiretap.since(mark)
    sent = Wiretap.sent(log)
    assert sent[0]["session"]["type"] == "transcription"
    completed = [e["transcript"] for e in sent if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert completed[:1] == finals
