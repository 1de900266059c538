"""Pipecat's `OpenAIRealtimeLLMService` and `OpenAIRealtimeSTTService` in transport-less pipelines.

Pipecat is the strictest client: a known event that fails its model, or any `error` event but
three codes, ends its receive loop and the session goes silent. Frames are queued into a
`PipelineTask` (audio at real-time pace) and collected at both ends (error frames travel
upstream). The LLM session runs: context in -> audio out; a speech turn -> server VAD ->
transcript -> spoken reply; a barge-in mid-reply (pipecat truncates on `speech_started`); a
cancel (`response.cancel` through the service). The STT session transcribes a speech turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.services.openai.stt import OpenAIRealtimeSTTService
from pipecat.workers.runner import WorkerRunner

from .conftest import LogCapture, RealtimeServer, Wiretap
from .talk import RATE, paced, utterance


class Collect(FrameProcessor):
    """Keeps every frame passing through; `wait_for` a frame matching a predicate."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self._arrived = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        self.frames.append(frame)
        self._arrived.set()
        await self.push_frame(frame, direction)

    async def wait_for(self, match: Callable[[Frame], bool], start: int = 0, timeout: float = 60) -> int:
        """Index just past the first frame at or after `start` that matches."""
        async with asyncio.timeout(timeout):
            while True:
                for index in range(start, len(self.frames)):
                    if match(self.frames[index]):
                        return index + 1
                self._arrived.clear()
                await self._arrived.wait()


class Harness:
    """A pipeline `head -> service -> tail`, running."""

    def __init__(self, service: FrameProcessor) -> None:
        self.head, self.tail = Collect(), Collect()
        params = PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE)
        self.task = PipelineWorker(Pipeline([self.head, service, self.tail]), params=params, idle_timeout_secs=None)
        self.run: asyncio.Task[None] | None = None

    async def speak(self, text: str, lead: float = 0.3, tail: float = 1.2) -> None:
        async for chunk in paced(utterance(text, lead=lead, tail=tail)):
            await self.task.queue_frame(InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1))

    async def __aenter__(self) -> Harness:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.task)
        self.run = asyncio.create_task(runner.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        """End the pipeline (cancel it if it does not end: a failed test must not hang)."""
        assert self.run is not None
        if not self.run.done():
            await self.task.queue_frame(EndFrame())
        try:
            await asyncio.wait_for(asyncio.shield(self.run), 30)
        except TimeoutError:
            await self.task.cancel()
            await asyncio.wait_for(self.run, 30)

    def errors(self) -> list[Any]:
        return [f.error for f in self.head.frames + self.tail.frames if isinstance(f, ErrorFrame)]


def is_audio(frame: Frame) -> bool:
    return isinstance(frame, TTSAudioRawFrame)


def is_end(frame: Frame) -> bool:
    return isinstance(frame, LLMFullResponseEndFrame)


async def test_pipecat_realtime_llm(rt_server: RealtimeServer, wiretap: Wiretap, client_logs: LogCapture) -> None:
    mark = wiretap.mark()
    properties = events.SessionProperties(
        max_output_tokens=16,
        audio=events.AudioConfiguration(
            input=events.AudioInput(transcription=events.InputAudioTranscription(model="whisper-1"))
        ),
    )
    llm = OpenAIRealtimeLLMService(
        api_key="sk-test",
        base_url=rt_server.ws_url,
        settings=OpenAIRealtimeLLMService.Settings(model="gpt-realtime", session_properties=properties),
    )
    async with Harness(llm) as pipe:
        await llm_steps(rt_server, llm, pipe)
    assert not pipe.errors(), pipe.errors()
    assert not client_logs.problems(), client_logs.problems()
    (log,) = wiretap.since(mark)
    sent, received = Wiretap.sent(log), [e["type"] for e in Wiretap.received(log)]
    done = [e["response"] for e in sent if e["type"] == "response.done"]
    reasons = [d["status_details"]["reason"] for d in done if d["status"] == "cancelled"]
    assert reasons == ["turn_detected", "client_cancelled"]
    assert "conversation.item.truncate" in received
    assert not [e for e in sent if e["type"] == "error"]
    assert await rt_server.settled()


async def llm_steps(rt_server: RealtimeServer, llm: OpenAIRealtimeLLMService, pipe: Harness) -> None:
    """The four steps, in one session."""
    tail = pipe.tail
    # 1. context in -> audio out
    await pipe.task.queue_frame(LLMContextFrame(LLMContext(messages=[{"role": "user", "content": "Hi there!"}])))
    at = await tail.wait_for(is_audio)
    at = await tail.wait_for(is_end, at)

    # 2. a speech turn -> VAD -> transcript -> spoken reply
    await pipe.speak("Hello there, how are you today?")
    heard = await pipe.head.wait_for(lambda f: isinstance(f, TranscriptionFrame))  # transcripts go upstream
    at = await tail.wait_for(is_end, await tail.wait_for(is_audio, at))
    assert heard

    # 3. barge-in: the next turn's reply stalls while speaking; the user talks over it
    rt_server.tts.stall_next()
    await pipe.speak("Tell me a story.", tail=0.8)
    at = await tail.wait_for(is_audio, at)
    await pipe.speak("Wait, stop.", lead=0.1)
    at = await tail.wait_for(is_end, await tail.wait_for(is_audio, at))  # the reply to the interruption
    assert rt_server.tts.cancelled == 1

    # 4. cancel: another stalled reply, cancelled through the service
    rt_server.tts.stall_next()
    await pipe.speak("One more thing.")
    at = await tail.wait_for(is_audio, at)
    await llm.send_client_event(events.ResponseCancelEvent())
    await tail.wait_for(is_end, at)


async def test_pipecat_realtime_stt(rt_server: RealtimeServer, wiretap: Wiretap, client_logs: LogCapture) -> None:
    mark = wiretap.mark()
    stt = OpenAIRealtimeSTTService(api_key="sk-test", base_url=rt_server.ws_url, turn_detection={"type": "server_vad"})
    async with Harness(stt) as pipe:
        await pipe.speak("Hello there, how are you today?")
        found = await pipe.tail.wait_for(lambda f: isinstance(f, TranscriptionFrame))
        text = pipe.tail.frames[found - 1].text  # type: ignore[attr-defined]
    assert text and not pipe.errors(), pipe.errors()
    assert not client_logs.problems(), client_logs.problems()
    (log,) = wiretap.since(mark)
    sent = Wiretap.sent(log)
    assert sent[0]["session"]["type"] == "transcription"
    completed = [e for e in sent if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert [e["transcript"] for e in completed] == [text]
