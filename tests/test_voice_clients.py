"""Off-the-shelf voice clients against the demo server, configured with nothing but its base URL.

Each client keeps its own defaults (model, voice, format): Pipecat's `OpenAITTSService`
(`gpt-4o-mini-tts`, `alloy`, pcm), LiveKit's `openai.TTS` (`gpt-4o-mini-tts` over SSE, `ash`; here
also every container it decodes and `tts-1`'s raw audio stream) and `openai.LLM` (`gpt-4.1`, which this
server serves with its chat model), and the Agents SDK's `OpenAITTSModel` (`gpt-4o-mini-tts`, `ash`,
pcm). The API key comes from `OPENAI_API_KEY`, as it would for a user (the server has no keys set).
Each test asserts that real audio (samples at 24 kHz) or text came back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .conftest import LiveServer

TEXT = "Hello there! This is a test of the voice clients."


@pytest.fixture(autouse=True)
def api_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")


def run(coroutine: Any) -> Any:
    """Run a client's coroutine on a fresh event loop (the server runs on its own)."""
    return asyncio.run(asyncio.wait_for(coroutine, 120))


# --------------------------------------------------------------------------- Pipecat


async def pipecat_speech(base_url: str) -> tuple[list[Any], list[Any]]:
    from openai import DefaultAsyncHttpxClient
    from pipecat.frames.frames import EndFrame, ErrorFrame, Frame, TTSAudioRawFrame, TTSSpeakFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.openai.tts import OpenAITTSService
    from pipecat.workers.runner import WorkerRunner

    class Collect(FrameProcessor):
        def __init__(self, kind: type[Frame]) -> None:
            super().__init__()
            self.kind = kind
            self.frames: list[Any] = []

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, self.kind):
                self.frames.append(frame)
            await self.push_frame(frame, direction)

    errors, audio = Collect(ErrorFrame), Collect(TTSAudioRawFrame)
    # Only a base URL; the HTTP pool is ours so that it is closed inside this event loop (the service never
    # closes its client, which would be collected after the loop closed and log an error there).
    async with DefaultAsyncHttpxClient() as http:
        worker = PipelineWorker(Pipeline([errors, OpenAITTSService(base_url=base_url, http_client=http), audio]))
        await worker.queue_frames([TTSSpeakFrame(TEXT), EndFrame()])
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()
    return audio.frames, errors.frames


def test_pipecat_openai_tts_service(live_server: LiveServer) -> None:
    frames, errors = run(pipecat_speech(f"{live_server.url}/v1"))
    assert not errors, [frame.error for frame in errors]
    samples = sum(len(frame.audio) // 2 for frame in frames)
    assert frames and {frame.sample_rate for frame in frames} == {24000}
    assert samples >= 2048  # at least one SNAC frame of speech


# --------------------------------------------------------------------------- LiveKit


async def livekit_speech(base_url: str, **options: Any) -> list[Any]:
    from livekit.plugins import openai

    tts = openai.TTS(base_url=base_url, **options)
    try:
        return [event.frame async for event in tts.synthesize(TEXT)]
    finally:
        await tts.aclose()


@pytest.mark.parametrize("response_format", ["mp3", "pcm", "wav"])
@pytest.mark.parametrize("model", ["default", "tts-1"], ids=["sse", "audio-stream"])
def test_livekit_openai_tts(live_server: LiveServer, response_format: str, model: str) -> None:
    """The default model asks for `stream_format: sse`; `tts-1` for the raw audio stream."""
    options: dict[str, Any] = {"response_format": response_format}
    if model != "default":
        options["model"] = model
    frames = run(livekit_speech(f"{live_server.url}/v1", **options))
    assert {frame.sample_rate for frame in frames} == {24000}
    assert {frame.num_channels for frame in frames} == {1}
    samples = sum(frame.samples_per_channel for frame in frames)
    assert samples >= 2048, samples  # mp3 adds encoder padding; every format carries at least a frame


async def livekit_chat(base_url: str) -> tuple[str, str]:
    from livekit.agents import llm
    from livekit.plugins import openai

    model = openai.LLM(base_url=base_url)
    context = llm.ChatContext.empty()
    context.add_message(role="user", content="Tell me a short story.")
    text = []
    try:
        async with model.chat(chat_ctx=context) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    text.append(chunk.delta.content)
    finally:
        await model.aclose()
    return model.model, "".join(text)


def test_livekit_openai_llm_with_its_default_model(live_server: LiveServer) -> None:
    model, text = run(livekit_chat(f"{live_server.url}/v1"))
    assert model == "gpt-4.1"  # LiveKit's default, not an id this server lists
    assert text.strip() and "\ufffd" not in text


# --------------------------------------------------------------------------- OpenAI Agents SDK


async def agents_speech(base_url: str) -> bytes:
    from agents.voice import OpenAIVoiceModelProvider, TTSModelSettings
    from openai import AsyncOpenAI

    # Only a base URL, as a user would set it; the client is ours so that it is closed inside this
    # event loop (the provider's own would be collected after the loop closed and log an error there).
    async with AsyncOpenAI(base_url=base_url) as client:
        model = OpenAIVoiceModelProvider(openai_client=client).get_tts_model(None)
        return b"".join([chunk async for chunk in model.run(TEXT, TTSModelSettings())])


def test_agents_sdk_openai_tts_model(live_server: LiveServer) -> None:
    audio = run(agents_speech(f"{live_server.url}/v1"))
    assert len(audio) >= 2 * 2048 and len(audio) % 2 == 0  # pcm16: whole samples, at least one SNAC frame
