"""The seed system's own endpoints, kept for its users: `/tts`, `/models`, `/chat`.

`/tts` (GET or POST) and `/chat` return streaming WAV (24 kHz, s16, mono); `/chat` with
`stream_text` returns the reply as a plain-text stream instead. `/models` keeps the seed's
JSON shape with the license fields, with true facts (`serving.model_facts`) and a `demo` flag.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from ..errors import check_length, invalid
from ..pipeline.chat_prompt import Turn
from ..pipeline.encode import make_encoder
from ..protocol.catalog import SeedModels
from ..protocol.chat import OpenAIModel, Seed
from ..serving.model_facts import describe_models
from ..serving.reply import Conversation, TextSampling
from ..serving.reply_events import AudioChunk, ReplyEvent, TextDelta
from .audio_speech import raw_audio
from .deps import services
from .docs import binary, streamed
from .errors import ERROR_RESPONSES
from .responses import AbortingStreamingResponse, stream_response

if TYPE_CHECKING:
    from ..serving.services import Services

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


async def _wav(events: AsyncIterator[ReplyEvent]) -> AsyncIterator[bytes]:
    """The spoken reply as one streaming WAV file."""
    encoder = make_encoder("wav", streaming=True)
    yield encoder.encode(b"")
    async for event in events:
        if isinstance(event, AudioChunk):
            yield encoder.encode(event.pcm)
    yield encoder.finish()


async def _text(events: AsyncIterator[ReplyEvent]) -> AsyncIterator[bytes]:
    """The reply's text as UTF-8, as it is generated."""
    async for event in events:
        if isinstance(event, TextDelta):
            yield event.text.encode()


async def _tts(body: SeedTTSRequest, svc: Services) -> AbortingStreamingResponse:
    options = svc.voices.options(
        body.voice,
        temperature=body.temperature,
        top_p=body.top_p,
        repetition_penalty=body.repetition_penalty,
        max_tokens=body.max_tokens,
        seed=body.seed,
    )
    job = svc.speech.job(body.prompt, options, "wav", 1.0, "prompt")
    return await stream_response(svc, svc.speech.stream(job), raw_audio, media_type="audio/wav")


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


@router.get("/models", response_model=SeedModels, responses=ERROR_RESPONSES)
async def seed_models(svc: Services = Depends(services)) -> SeedModels:
    """The seed's model description, with license fields; in the demo profile, what the demo models are."""
    return describe_models(svc.settings)


@router.post("/chat", response_class=AbortingStreamingResponse, responses=CHAT_RESPONSES)
async def seed_chat(body: SeedChatRequest, svc: Services = Depends(services)) -> AbortingStreamingResponse:
    """Seed `/chat`: the spoken reply as streaming WAV, or its text with `stream_text`."""
    check_length(body.message, svc.settings.max_input_chars, "message")
    turns = [Turn(item.role, item.content) for item in body.history]
    turns.append(Turn("user", body.message))
    voice = None if body.stream_text else svc.voices.options(body.voice, seed=body.seed)
    max_tokens = body.max_tokens or svc.settings.llm_max_tokens
    if max_tokens > svc.settings.llm_max_tokens:
        raise invalid(
            f"max_tokens is too large: {max_tokens}. The maximum is {svc.settings.llm_max_tokens}.", "max_tokens"
        )
    sampling = TextSampling(max_tokens=max_tokens, seed=body.seed)
    prepared = await svc.replies.prepare(Conversation(turns, sampling, voice))
    events = svc.replies.stream(prepared, "chat")
    if body.stream_text:
        return await stream_response(svc, events, _text, media_type="text/plain; charset=utf-8")
    return await stream_response(svc, events, _wav, media_type="audio/wav")
