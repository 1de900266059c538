"""The seed system's own endpoints, kept for its users: `/tts`, `/models`, `/chat`.

`/tts` (GET or POST) and `/chat` return streaming WAV (24 kHz, s16, mono); `/chat` with
`stream_text` returns the reply as a plain-text stream instead. `/models` keeps the seed's
JSON shape with the license fields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from ..admission import HeldBody
from ..errors import ERROR_RESPONSES, check_length
from ..models import AudioOutput, ChatCompletionRequest, ChatMessage, OpenAIModel, Seed
from ..pipeline.encode import make_encoder
from ..responses import AbortingStreamingResponse
from ..serving.speech import SpeechJob
from ..serving.streams import guarded
from .deps import services
from .docs import binary, streamed

if TYPE_CHECKING:
    from ..app import Services

router = APIRouter(tags=["seed"])


class SeedTTSRequest(OpenAIModel):
    """The seed's `/tts` parameters and defaults."""

    prompt: str = Field(min_length=1)  # at most --max-input-chars, checked against the settings
    voice: str = "tara"
    temperature: float = Field(0.4, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    max_tokens: int = Field(2000, ge=7, le=8192)
    repetition_penalty: float = Field(1.1, ge=1, le=2)
    seed: Seed | None = None
    """Not in the seed system: makes the audio reproducible."""


class SeedHistoryItem(OpenAIModel):
    """One `history` entry of `/chat`."""

    role: Literal["user", "assistant", "system"]
    content: str


class SeedChatRequest(OpenAIModel):
    """The seed's `/chat` body."""

    message: str = Field(min_length=1)  # at most --max-input-chars, checked against the settings
    voice: str = "tara"
    history: list[SeedHistoryItem] = Field(default_factory=list, max_length=256)
    stream_text: bool = False
    max_tokens: int | None = Field(None, ge=1)
    seed: Seed | None = None
    """Not in the seed system: makes the reply (text and audio) reproducible."""


async def _wav(pcm: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    encoder = make_encoder("wav", streaming=True)
    try:
        yield encoder.encode(b"")
        async for chunk in pcm:
            yield encoder.encode(chunk)
        yield encoder.finish()
    finally:
        close = getattr(pcm, "aclose", None)
        if close is not None:
            await close()


async def _tts(body: SeedTTSRequest, svc: Services) -> AbortingStreamingResponse:
    from ..pipeline.segmenter import split_text
    from ..pipeline.speech import SpeechStats

    check_length(body.prompt, svc.settings.max_input_chars, "prompt")
    options = svc.speech.voice_options(
        body.voice,
        temperature=body.temperature,
        top_p=body.top_p,
        repetition_penalty=body.repetition_penalty,
        max_tokens=body.max_tokens,
        seed=body.seed,
    )
    text = " ".join(body.prompt.split())
    job = SpeechJob(split_text(text, svc.settings.tts_segment_chars), options, "wav", 1.0, False)
    ticket = await svc.admission.acquire()
    body_stream = guarded(
        _wav(svc.speech.pcm(job, SpeechStats())),
        deadline_seconds=svc.settings.request_timeout_seconds,
        sse=False,
        send_done=False,
    )
    return AbortingStreamingResponse(HeldBody(body_stream, ticket), media_type="audio/wav")


TTS_RESPONSES = streamed("Streaming WAV (24 kHz, s16, mono).", binary("audio/wav"))
CHAT_RESPONSES = streamed(
    "The spoken reply as streaming WAV, or its text with `stream_text`.", binary("audio/wav", "text/plain")
)


@router.get("/tts", response_class=AbortingStreamingResponse, responses=TTS_RESPONSES)
async def tts_get(params: SeedTTSRequest = Query(), svc: Services = Depends(services)) -> AbortingStreamingResponse:
    """Seed `/tts` with query parameters: streaming WAV."""
    return await _tts(params, svc)


@router.post("/tts", response_class=AbortingStreamingResponse, responses=TTS_RESPONSES)
async def tts_post(body: SeedTTSRequest, svc: Services = Depends(services)) -> AbortingStreamingResponse:
    """Seed `/tts` with a JSON body: streaming WAV."""
    return await _tts(body, svc)


@router.get("/models", responses=ERROR_RESPONSES)
async def seed_models(svc: Services = Depends(services)) -> dict[str, Any]:
    """The seed's model description, with license fields."""
    return {
        "llm": {
            "name": "Gemma 2 2B Instruct",
            "id": svc.settings.chat_model_id,
            "provider": "Google",
            "parameters": "2B",
            "license": "Gemma Terms of Use (Commercial use allowed)",
            "license_url": "https://ai.google.dev/gemma/terms",
            "capabilities": ["conversational_ai", "streaming", "instruction_following"],
            "loaded": True,
        },
        "tts": {
            "name": "Orpheus TTS",
            "id": svc.settings.speech_model_id,
            "provider": "Canopy Labs",
            "parameters": "3B",
            "license": "Apache 2.0",
            "license_url": "https://www.apache.org/licenses/LICENSE-2.0",
            "capabilities": ["text_to_speech", "streaming", "emotion_control"],
            "voices": list(svc.settings.voices),
            "loaded": True,
        },
    }


@router.post("/chat", response_class=AbortingStreamingResponse, responses=CHAT_RESPONSES)
async def seed_chat(body: SeedChatRequest, svc: Services = Depends(services)) -> AbortingStreamingResponse:
    """Seed `/chat`: the spoken reply as streaming WAV, or its text with `stream_text`."""
    check_length(body.message, svc.settings.max_input_chars, "message")
    messages = [ChatMessage(role=item.role, content=item.content) for item in body.history]
    messages.append(ChatMessage(role="user", content=body.message))
    request = ChatCompletionRequest(
        model=svc.settings.chat_model_id,
        messages=messages,
        modalities=["text"] if body.stream_text else ["text", "audio"],
        audio=None if body.stream_text else AudioOutput(voice=body.voice, format="pcm16"),
        max_tokens=body.max_tokens,
        seed=body.seed,
    )
    job = await svc.chat.prepare(request)
    ticket = await svc.admission.acquire()
    deadline = svc.settings.request_timeout_seconds
    if body.stream_text:
        text = guarded(svc.chat.text_bytes(job), deadline_seconds=deadline, sse=False, send_done=False)
        return AbortingStreamingResponse(HeldBody(text, ticket), media_type="text/plain; charset=utf-8")
    audio = guarded(_wav(svc.chat.pcm(job)), deadline_seconds=deadline, sse=False, send_done=False)
    return AbortingStreamingResponse(HeldBody(audio, ticket), media_type="audio/wav")
