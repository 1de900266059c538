"""`/v1/chat/completions`: text, or text + audio, streamed as chunks or returned whole.

Audio streams follow the contract's chunk order exactly: the role chunk; `delta.audio` with
`id` and the first transcript; further transcript and `data` deltas (base64 of 6-byte-aligned
pcm16, sent per SNAC frame); the `finish_reason` chunk; one chunk with `expires_at`; the usage
chunk (`choices: []`) when asked; `[DONE]`. The transcript of a segment is sent right before
its audio, so it is always the text actually spoken.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..audio_store import AudioStore
from ..engines.base import SamplingParams, TokenEngine
from ..errors import invalid, model_not_found
from ..models import ChatCompletionRequest, chunk, completion, now, usage, voice_name
from ..pipeline.assistant import ReplyStats, reply_text, spoken_segments
from ..pipeline.chat_prompt import ChatTemplateTokenizer, Turn, build_chat_prompt
from ..pipeline.encode import encode_all
from ..pipeline.speech import SpeechEvent, SpeechStats, SpeechSynthesizer, VoiceOptions, synthesize_segments
from ..settings import Settings
from ..sse import DONE, b64_pieces, data_event
from .streams import StreamMeter

if TYPE_CHECKING:
    from ..metrics import Metrics

CHAT_MODEL_ALIASES = ("gpt-4o-audio-preview", "gpt-4o-mini-audio-preview", "gpt-audio", "gpt-audio-mini")


@dataclass
class ChatJob:
    """A validated chat request, ready to run."""

    request: ChatCompletionRequest
    prompt_ids: list[int]
    params: SamplingParams
    voice: VoiceOptions | None
    completion_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=now)
    reply: ReplyStats = field(default_factory=ReplyStats)
    speech: SpeechStats = field(default_factory=SpeechStats)
    meter: StreamMeter = field(default_factory=lambda: StreamMeter(None, "chat"))

    @property
    def include_usage(self) -> bool:
        """`stream_options.include_usage`."""
        return bool(self.request.stream_options and self.request.stream_options.include_usage)

    def usage(self) -> dict[str, Any]:
        """`usage` of the finished reply."""
        return usage(self.reply.prompt_tokens, self.reply.text_tokens, self.speech.audio_tokens)


class ChatServing:
    """Chat requests on the LLM engine and, for audio, the speech synthesizer."""

    def __init__(
        self,
        settings: Settings,
        llm: TokenEngine,
        tokenizer: ChatTemplateTokenizer,
        stop_token_ids: tuple[int, ...],
        synthesizer: SpeechSynthesizer,
        audio_store: AudioStore,
        voice_options: Callable[..., VoiceOptions],
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.tokenizer = tokenizer
        self.stop_token_ids = stop_token_ids
        self.synthesizer = synthesizer
        self.audio_store = audio_store
        self.voice_options = voice_options
        self.metrics = metrics

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Model ids accepted for chat."""
        return (self.settings.chat_model_id, *CHAT_MODEL_ALIASES)

    async def turns(self, request: ChatCompletionRequest) -> list[Turn]:
        """Message texts, with assistant audio ids resolved to their transcripts."""
        turns = []
        total = 0
        for index, message in enumerate(request.messages):
            text = message.text(index)
            if message.role == "assistant" and message.audio is not None and not text.strip():
                transcript = await self.audio_store.get(message.audio.id)
                if transcript is None:
                    raise invalid(
                        f"Audio with id '{message.audio.id}' is unknown or has expired.",
                        f"messages[{index}].audio",
                        "invalid_value",
                    )
                text = transcript
            total += len(text)
            turns.append(Turn(message.role, text))
        if total > self.settings.max_input_chars * self.settings.max_messages:
            raise invalid("The messages are too long.", "messages", "string_above_max_length")
        return turns

    async def prepare(self, request: ChatCompletionRequest) -> ChatJob:
        """Validate and build the prompt (raises `APIError`) before anything is generated."""
        s = self.settings
        if request.model not in self.model_ids:
            raise model_not_found(request.model)
        request.check_supported()
        if len(request.messages) > s.max_messages:
            raise invalid(f"At most {s.max_messages} messages are allowed.", "messages", "array_above_max_length")
        max_tokens = request.max_completion_tokens or request.max_tokens or s.llm_max_tokens
        if max_tokens > s.llm_max_tokens:
            param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            raise invalid(f"max_tokens is too large: {max_tokens}. The maximum is {s.llm_max_tokens}.", param)
        voice = None
        if request.wants_audio and request.audio is not None:
            # A seeded request seeds its speech too, so the whole reply is reproducible.
            voice = self.voice_options(voice_name(request.audio.voice), param="audio.voice", seed=request.seed)
        reserve = min(max_tokens, s.llm_max_model_len // 2)
        prompt = build_chat_prompt(
            self.tokenizer,
            await self.turns(request),
            s.system_prompt,
            max_prompt_tokens=s.llm_max_model_len - reserve,
        )
        params = SamplingParams(
            max_tokens=min(max_tokens, s.llm_max_model_len - len(prompt.token_ids)),
            temperature=request.temperature,
            top_p=request.top_p,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            seed=request.seed,
            stop_token_ids=self.stop_token_ids,
        )
        return ChatJob(request, prompt.token_ids, params, voice, meter=StreamMeter(self.metrics, "chat"))

    async def _text(self, job: ChatJob) -> AsyncIterator[str]:
        text = reply_text(self.llm, self.tokenizer, job.prompt_ids, job.params, job.request.stop_list, job.reply)
        async with aclosing(text):  # type: ignore[type-var]
            async for delta in text:
                job.meter.first_token()
                yield delta

    def _speech(self, job: ChatJob) -> AsyncGenerator[SpeechEvent, None]:
        assert job.voice is not None
        segments = spoken_segments(
            self._text(job),
            max_chars=self.settings.tts_segment_chars,
            first_segment_words=self.settings.first_segment_words,
            first_segment_max_words=self.settings.first_segment_max_words,
        )
        return synthesize_segments(
            self.synthesizer, segments, job.voice, depth=self.settings.tts_pipeline_depth, stats=job.speech
        )

    def _chunk(self, job: ChatJob, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        body = chunk(job.completion_id, job.created, job.request.model, delta, finish_reason)
        if job.include_usage:
            body["usage"] = None
        return data_event(body)

    async def _finish(self, job: ChatJob, audio: dict[str, Any] | None) -> AsyncIterator[bytes]:
        yield self._chunk(job, {}, job.reply.finish_reason)
        if audio is not None:
            yield self._chunk(job, {"audio": audio})
        if job.include_usage:
            yield data_event(
                {**chunk(job.completion_id, job.created, job.request.model, {}), "choices": [], "usage": job.usage()}
            )
        yield DONE

    async def stream(self, job: ChatJob) -> AsyncIterator[bytes]:
        """SSE body of a streaming request."""
        body = self._stream_text(job) if job.voice is None else self._stream_audio(job)
        async for event in body:
            yield event

    async def _stream_text(self, job: ChatJob) -> AsyncIterator[bytes]:
        yield self._chunk(job, {"role": "assistant", "content": "", "refusal": None})
        try:
            async for text in self._text(job):
                yield self._chunk(job, {"content": text})
            job.meter.finish(0)
        finally:
            job.meter.close(("llm",))
        async for event in self._finish(job, None):
            yield event

    async def _stream_audio(self, job: ChatJob) -> AsyncIterator[bytes]:
        yield self._chunk(job, {"role": "assistant", "content": None, "refusal": None})
        audio_id = f"audio_{uuid.uuid4().hex}"
        transcript: list[str] = []
        carry = bytearray()
        events = self._speech(job)
        try:
            async for event in events:
                if event.text is not None:
                    if transcript:
                        yield self._chunk(job, {"audio": {"transcript": f" {event.text}"}})
                    else:  # the first audio delta carries the id, exactly once
                        yield self._chunk(job, {"content": None, "audio": {"id": audio_id, "transcript": event.text}})
                    transcript.append(event.text)
                for data in b64_pieces(event.pcm, carry, final=False):
                    job.meter.first_audio()
                    yield self._chunk(job, {"audio": {"data": data}})
            for data in b64_pieces(b"", carry, final=True):
                yield self._chunk(job, {"audio": {"data": data}})
            job.meter.finish(job.speech.frames)
        finally:
            job.meter.close(("llm", "tts"))
            await events.aclose()
        if not transcript:  # nothing was spoken: still announce the audio id once
            yield self._chunk(job, {"content": None, "audio": {"id": audio_id, "transcript": ""}})
        expires_at = now() + self.settings.audio_ttl_seconds
        await self.audio_store.put(audio_id, " ".join(transcript), expires_at)
        async for event_bytes in self._finish(job, {"expires_at": expires_at}):
            yield event_bytes

    async def text_bytes(self, job: ChatJob) -> AsyncIterator[bytes]:
        """The reply's text as UTF-8 bytes, as it is generated (seed `/chat` with `stream_text`)."""
        async for delta in self._text(job):
            yield delta.encode()

    async def pcm(self, job: ChatJob) -> AsyncIterator[bytes]:
        """The spoken reply as raw PCM, as it is produced (seed `/chat`)."""
        events = self._speech(job)
        try:
            async for event in events:
                if event.pcm:
                    yield event.pcm
        finally:
            await events.aclose()

    async def complete(self, job: ChatJob) -> dict[str, Any]:
        """The whole `chat.completion` of a non-streaming request."""
        if job.voice is None:
            parts = [delta async for delta in self._text(job)]
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(parts),
                "refusal": None,
                "annotations": [],
            }
            return completion(
                job.completion_id, job.created, job.request.model, message, job.reply.finish_reason, job.usage()
            )
        assert job.request.audio is not None
        transcript: list[str] = []
        pcm = bytearray()
        events = self._speech(job)
        try:
            async for event in events:
                if event.text is not None:
                    transcript.append(event.text)
                pcm.extend(event.pcm)
        finally:
            await events.aclose()
        data = await asyncio.to_thread(encode_all, bytes(pcm), job.request.audio.format)
        audio_id = f"audio_{uuid.uuid4().hex}"
        expires_at = now() + self.settings.audio_ttl_seconds
        spoken = " ".join(transcript)
        await self.audio_store.put(audio_id, spoken, expires_at)
        audio_message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
            "audio": {
                "id": audio_id,
                "data": base64.b64encode(data).decode("ascii"),
                "expires_at": expires_at,
                "transcript": spoken,
            },
        }
        return completion(
            job.completion_id, job.created, job.request.model, audio_message, job.reply.finish_reason, job.usage()
        )
