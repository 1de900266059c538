"""`/v1/chat/completions` requests -> conversations for the core (`reply.ReplyService`).

This module validates a wire request (model, options we refuse rather than ignore, limits,
the voice) and resolves its history (assistant audio ids -> the transcripts they stand for).
Rendering the reply's events as SSE chunks or a whole completion happens at the edge.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from ..errors import invalid
from ..pipeline.chat_prompt import Turn
from ..pipeline.voices import VoiceCatalog
from ..protocol.chat import ChatCompletionRequest, voice_name
from ..protocol.content_parts import audio_parts
from ..settings import Settings
from .audio_store import AudioStore
from .model_names import ModelNames
from .reply import Conversation, PreparedReply, ReplyService, TextSampling, now
from .reply_events import ReplyEvent
from .transcription import TranscriptionService


@dataclass
class ChatJob:
    """A validated chat request with its reply prepared."""

    request: ChatCompletionRequest
    prepared: PreparedReply
    model: str
    """The id of the model that answers (what responses name), whatever id the request gave."""
    completion_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=now)

    @property
    def include_usage(self) -> bool:
        """`stream_options.include_usage`."""
        return bool(self.request.stream_options and self.request.stream_options.include_usage)

    @property
    def spoken(self) -> bool:
        """Whether the reply has audio."""
        return self.prepared.conversation.voice is not None


class ChatServing:
    """Chat requests, answered by the reply service."""

    def __init__(
        self,
        settings: Settings,
        replies: ReplyService,
        audio_store: AudioStore,
        voices: VoiceCatalog,
        transcription: TranscriptionService | None = None,
    ) -> None:
        self.settings = settings
        self.replies = replies
        self.audio_store = audio_store
        self.voices = voices
        self.transcription = transcription
        """Transcribes `input_audio` parts of user messages (None: audio input is refused)."""
        self.names = ModelNames.from_settings(settings)

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Model ids listed for chat (others are served too, unless `strict_model_names`)."""
        return self.names.chat

    async def turns(self, request: ChatCompletionRequest) -> list[Turn]:
        """Message texts, with assistant audio ids resolved to their transcripts and user audio transcribed."""
        spoken: dict[tuple[int, int], str] = {}
        parts = [(i, j, part) for i, message in enumerate(request.messages) for j, part in audio_parts(message.content)]
        if parts:
            for i, j, _ in parts:
                if request.messages[i].role != "user":
                    raise invalid(
                        "Audio content parts are only allowed in user messages.",
                        f"messages[{i}].content[{j}].type",
                        "unsupported_value",
                    )
            if self.transcription is None or self.transcription.asr is None:
                raise invalid(
                    "Audio input is not available: this server runs without speech recognition (--no-asr).",
                    f"messages[{parts[0][0]}].content[{parts[0][1]}]",
                    "unsupported_value",
                )
            audio = [(part.check(f"messages[{i}].content[{j}]"), f"messages[{i}].content[{j}].input_audio.data")
                     for i, j, part in parts]  # fmt: skip
            done = await self.transcription.transcribe_parts(audio)
            spoken = {(i, j): result.text for (i, j, _), result in zip(parts, done, strict=True)}
        turns = []
        total = 0
        for index, message in enumerate(request.messages):
            transcripts = {j: text for (i, j), text in spoken.items() if i == index}
            text = message.text(index, transcripts)
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
            turns.append(Turn(message.role, text, " ".join(t.strip() for t in transcripts.values() if t.strip())))
        if total > self.settings.max_input_chars * self.settings.max_messages:
            raise invalid("The messages are too long.", "messages", "string_above_max_length")
        return turns

    async def prepare(self, request: ChatCompletionRequest) -> ChatJob:
        """Validate and build the prompt (raises `APIError`) before anything is generated."""
        s = self.settings
        model = self.names.resolve(request.model, "chat")
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
            voice = self.voices.options(voice_name(request.audio.voice), param="audio.voice", seed=request.seed)
        sampling = TextSampling(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            seed=request.seed,
            stop=tuple(request.stop_list),
        )
        conversation = Conversation(await self.turns(request), sampling, voice)
        return ChatJob(request, await self.replies.prepare(conversation), model)

    def stream(self, job: ChatJob) -> AsyncGenerator[ReplyEvent, None]:
        """The reply's events."""
        return self.replies.stream(job.prepared, "chat")
