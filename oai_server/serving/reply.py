"""The conversation core: a conversation in, a typed stream of reply events out.

`ReplyService` knows nothing of HTTP, SSE or WebSockets. A transport turns its request into a
`Conversation` (turns, sampling, a voice or none), calls `prepare` (validation and the prompt,
before anything is generated or any status is sent) and renders the events of `stream`
(`reply_events`). Closing the stream aborts the LLM request and every TTS request of the reply.
The reply's bookkeeping lives here once: its audio id, `expires_at`, the audio-id store entry,
usage, and the latency metrics.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..engines.base import SamplingParams, TokenEngine
from ..pipeline.assistant import ReplyStats, reply_text, spoken_segments
from ..pipeline.chat_prompt import ChatPrompt, ChatTemplateTokenizer, Turn, build_chat_prompt
from ..pipeline.speech import SpeechEvent, SpeechStats, SpeechSynthesizer, VoiceOptions, synthesize_segments
from ..settings import Settings
from .audio_store import AudioStore
from .meter import StreamMeter
from .reply_events import ReplyEvent, ReplyFinished, ReplyStarted, ReplyUsage, SpokenTranscript, TextDelta

if TYPE_CHECKING:
    from ..metrics import Metrics

INLINE_PROMPT_CHARS = 4000
"""Conversations up to this many characters (system text included) are rendered on the event loop (about 0.3 ms
for a short one); longer ones in a worker thread, so a long history never stalls other streams."""


@dataclass(frozen=True)
class TextSampling:
    """How the LLM samples the reply's text."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conversation:
    """What to answer: the turns so far (text resolved), how to sample, and the voice (None: text only)."""

    turns: Sequence[Turn]
    sampling: TextSampling
    voice: VoiceOptions | None = None
    system_prompt: str | None = None
    """Replaces the server's voice-style system prompt when set (a Realtime session's instructions)."""
    remember_audio: bool = True
    """Keep the spoken transcript under the reply's audio id until it expires (chat history by id)."""


@dataclass(frozen=True)
class PreparedReply:
    """A validated conversation with its prompt built: ready to stream."""

    conversation: Conversation
    prompt_ids: list[int]
    params: SamplingParams
    reply_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    audio_prompt_tokens: int = 0
    """Prompt tokens of the turns' spoken (transcribed) text (`Turn.spoken`)."""


def now() -> int:
    """Unix seconds."""
    return int(time.time())


class ReplyService:
    """Answers conversations with the LLM and, for spoken replies, the speech synthesizer."""

    def __init__(
        self,
        settings: Settings,
        llm: TokenEngine,
        tokenizer: ChatTemplateTokenizer,
        stop_token_ids: tuple[int, ...],
        synthesizer: SpeechSynthesizer,
        audio_store: AudioStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.tokenizer = tokenizer
        self.stop_token_ids = stop_token_ids
        self.synthesizer = synthesizer
        self.audio_store = audio_store
        self.metrics = metrics

    async def prepare(self, conversation: Conversation) -> PreparedReply:
        """Build the prompt, trimming old turns to fit the context (raises `APIError`)."""
        s = self.settings
        max_tokens = conversation.sampling.max_tokens
        reserve = min(max_tokens, s.llm_max_model_len // 2)
        system = s.system_prompt if conversation.system_prompt is None else conversation.system_prompt
        size = len(system) + sum(len(turn.text) for turn in conversation.turns)

        def render() -> tuple[ChatPrompt, int]:
            prompt = build_chat_prompt(
                self.tokenizer, conversation.turns, system, max_prompt_tokens=s.llm_max_model_len - reserve
            )
            spoken = [turn.spoken for turn in conversation.turns if turn.spoken.strip()]
            # Counted apart from the rendered prompt (a token may straddle a seam); at most the whole prompt.
            return prompt, self._count_tokens(spoken) if spoken else 0

        # A short conversation renders in well under a millisecond; a thread hop would cost more than that while
        # the loop is busy (the worker waits for the GIL). A long history renders off the loop.
        prompt, audio_tokens = render() if size <= INLINE_PROMPT_CHARS else await asyncio.to_thread(render)
        sampling = conversation.sampling
        params = SamplingParams(
            max_tokens=min(max_tokens, s.llm_max_model_len - len(prompt.token_ids)),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            seed=sampling.seed,
            stop_token_ids=self.stop_token_ids,
        )
        audio_prompt_tokens = min(audio_tokens, len(prompt.token_ids))
        return PreparedReply(conversation, prompt.token_ids, params, audio_prompt_tokens=audio_prompt_tokens)

    def _count_tokens(self, texts: list[str]) -> int:
        return sum(len(self.tokenizer.encode(text, add_special_tokens=False)) for text in texts)

    async def _text(self, prepared: PreparedReply, stats: ReplyStats, meter: StreamMeter) -> AsyncIterator[str]:
        stops = prepared.conversation.sampling.stop
        text = reply_text(self.llm, self.tokenizer, prepared.prompt_ids, prepared.params, stops, stats)
        async with aclosing(text):  # type: ignore[type-var]
            async for delta in text:
                meter.first_token()
                yield delta

    async def stream(self, prepared: PreparedReply, endpoint: str = "chat") -> AsyncGenerator[ReplyEvent, None]:
        """The reply's events (see `reply_events`); `endpoint` labels its metrics."""
        voice = prepared.conversation.voice
        meter = StreamMeter(self.metrics, endpoint)
        stats = ReplyStats()
        audio_id = f"audio_{uuid.uuid4().hex}" if voice is not None else None
        yield ReplyStarted(prepared.reply_id, audio_id)
        if voice is None:
            try:
                async for delta in self._text(prepared, stats, meter):
                    yield TextDelta(delta)
                meter.finish(0)
            finally:
                meter.close(("llm",))
            usage = ReplyUsage(stats.prompt_tokens, stats.text_tokens, 0, 0, prepared.audio_prompt_tokens)
            yield ReplyFinished(stats.finish_reason, usage, "", None)
            return
        speech = SpeechStats()
        transcript = SpokenTranscript()
        events = self._speech(prepared, voice, stats, speech, meter)
        try:
            async for event in events:
                if event.text is not None:
                    yield transcript.start_segment(event.text)
                if event.pcm:
                    meter.first_audio(speech)
                    yield transcript.add_audio(event.pcm)
            meter.finish(speech.frames)
        finally:
            meter.close(("llm", "tts"))
            await events.aclose()
        expires_at = now() + self.settings.audio_ttl_seconds
        if prepared.conversation.remember_audio and audio_id is not None:
            await self.audio_store.put(audio_id, transcript.text, expires_at)
        usage = ReplyUsage(
            stats.prompt_tokens, stats.text_tokens, speech.audio_tokens, speech.frames, prepared.audio_prompt_tokens
        )
        yield ReplyFinished(stats.finish_reason, usage, transcript.text, expires_at)

    def _speech(
        self, prepared: PreparedReply, voice: VoiceOptions, stats: ReplyStats, speech: SpeechStats, meter: StreamMeter
    ) -> AsyncGenerator[SpeechEvent, None]:
        s = self.settings
        segments = spoken_segments(
            self._text(prepared, stats, meter),
            max_chars=s.tts_segment_chars,
            first_segment_words=s.first_segment_words,
            first_segment_max_words=s.first_segment_max_words,
        )
        return synthesize_segments(
            self.synthesizer, _timed_first(segments, meter), voice, depth=s.tts_pipeline_depth, stats=speech
        )


async def _timed_first(segments: AsyncIterator[str], meter: StreamMeter) -> AsyncIterator[str]:
    """`segments`, telling the meter when the first one goes to speech synthesis."""
    async with aclosing(segments):  # type: ignore[type-var]
        async for segment in segments:
            meter.first_segment()
            yield segment
