"""One Realtime response: a conversation through `ReplyService`, rendered as GA events in GA order.

    response.created
    response.output_item.added -> conversation.item.added -> response.content_part.added
    (response.output_audio_transcript.delta, response.output_audio.delta)*   (or response.output_text.delta*)
    response.output_audio.done -> response.output_audio_transcript.done      (or response.output_text.done)
    response.content_part.done -> response.output_item.done -> conversation.item.done
    response.done

`response.created` goes out at once; the response then waits for an admission slot and the
transcripts of its context (bounded by the request deadline: a wait that times out fails the
response), builds the prompt, and streams. Every response ends with
`response.done`: `completed`, `incomplete` (max_output_tokens), `failed` (with the error's type
and code), or `cancelled` (`turn_detected` or `client_cancelled`). Cancelling closes the reply
stream, which aborts its LLM and TTS requests, and then the `.done` events follow. A spoken item
keeps its sample -> text map (`SpokenTranscript`) for `conversation.item.truncate`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import APIError
from ...pipeline.speech import VoiceOptions
from ...protocol.realtime import AssistantMessage, AudioFormat, OutputAudio, OutputText, Response, Usage, new_id
from ...protocol.realtime.items import ContentPart
from ...protocol.realtime.responses import StatusDetails, StatusError
from ...protocol.realtime.server_events import (
    ConversationItemAddedEvent,
    ConversationItemDoneEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseDoneEvent,
    ResponseOutputAudioDeltaEvent,
    ResponseOutputAudioDoneEvent,
    ResponseOutputAudioTranscriptDeltaEvent,
    ResponseOutputAudioTranscriptDoneEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputTextDeltaEvent,
    ResponseOutputTextDoneEvent,
)
from ..admission import Admission
from ..lifecycle import StreamFailed, as_api_error, guarded
from ..reply import Conversation, ReplyService, TextSampling
from ..reply_events import (
    TRANSCRIPT_SEPARATOR,
    AudioChunk,
    ReplyEvent,
    ReplyFinished,
    SegmentStarted,
    SpokenTranscript,
    TextDelta,
)
from .audio_out import OutputEncoder
from .conversation import ConversationItems, StoredItem, turns_of
from .input_audio import TurnEvent
from .sink import EventSink

if TYPE_CHECKING:
    from ...metrics import Metrics

logger = logging.getLogger(__name__)

TEMPERATURE = 0.8
"""Sampling temperature of Realtime replies (the Realtime API's former default; GA has no setting)."""


@dataclass
class ResponsePlan:
    """A `response.create` resolved against the session: what to say, how, and where it goes."""

    response: Response
    context: Sequence[StoredItem]
    in_conversation: bool
    instructions: str
    voice: VoiceOptions | None
    output_format: AudioFormat
    speed: float
    max_tokens: int
    seed: int | None = None
    turn: TurnEvent | None = None
    """The VAD turn that created the response (for the voice-to-voice metric)."""


@dataclass
class ResponderDeps:
    """What a response runs on."""

    replies: ReplyService
    admission: Admission
    deadline_seconds: float
    metrics: Metrics | None = None


@dataclass
class ResponseRun:
    """One running response; `start` it, `cancel` it, await `task`."""

    plan: ResponsePlan
    deps: ResponderDeps
    sink: EventSink
    items: ConversationItems
    on_done: Callable[[ResponseRun], None]
    cancel_reason: str | None = None
    task: asyncio.Task[None] | None = None
    item: StoredItem | None = None
    failure: APIError | None = None
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    text: str = ""
    _work: asyncio.Task[None] | None = None
    _cancelled_at: float | None = None
    _first_audio: bool = False
    _encoder: OutputEncoder | None = None

    @property
    def id(self) -> str:
        """The response id."""
        return self.plan.response.id

    @property
    def spoken(self) -> bool:
        """Whether the response speaks."""
        return self.plan.voice is not None

    def start(self) -> asyncio.Task[None]:
        """Run the response in its own task."""
        self.task = asyncio.create_task(self._run(), name=f"realtime-response-{self.id}")
        return self.task

    def cancel(self, reason: str, decided_at: float | None = None) -> None:
        """End the response early (`turn_detected` or `client_cancelled`); its engines are aborted at once."""
        if self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        self._cancelled_at = decided_at if decided_at is not None else time.monotonic()
        if self._work is not None:
            self._work.cancel()

    async def _run(self) -> None:
        try:
            await self.sink.send(ResponseCreatedEvent(response=self.plan.response))
            if self.cancel_reason is None:
                self._work = asyncio.create_task(self._body())
                try:
                    await asyncio.wait([self._work])
                except asyncio.CancelledError:
                    self._work.cancel()
                    await asyncio.gather(self._work, return_exceptions=True)
                    raise
                exc = None if self._work.cancelled() else self._work.exception()
                if exc is not None:
                    self.failure = as_api_error(exc)
                    logger.error("realtime response failed: %s", exc, exc_info=exc)
                elif self.failure is not None:  # refused or rejected by the core: the client's error, logged once
                    logger.warning(
                        "realtime response %s failed: %s (%s)", self.id, self.failure.message, self.failure.code
                    )
                self._observe_barge_in()
            await self._finish()
        finally:
            self.on_done(self)

    def _observe_barge_in(self) -> None:
        metrics = self.deps.metrics
        if self.cancel_reason == "turn_detected" and self._cancelled_at is not None and metrics is not None:
            metrics.observe_barge_in(time.monotonic() - self._cancelled_at)

    async def _body(self) -> None:
        try:
            ticket = await self.deps.admission.acquire()
        except APIError as exc:
            self.failure = exc
            return
        try:
            plan = self.plan
            try:
                # The context's transcripts end on their own (session.TRANSCRIPTION_DEADLINE_SECONDS); this
                # bound is the response's own, so nothing it waits on before streaming can hold it forever.
                async with asyncio.timeout(self.deps.deadline_seconds):
                    conversation = Conversation(
                        turns=await turns_of(plan.context),
                        sampling=TextSampling(max_tokens=plan.max_tokens, temperature=TEMPERATURE, seed=plan.seed),
                        voice=plan.voice,
                        system_prompt=plan.instructions or None,
                        remember_audio=False,
                    )
                    prepared = await self.deps.replies.prepare(conversation)
            except APIError as exc:
                self.failure = exc
                return
            await self._open_item()
            stream = guarded(
                self.deps.replies.stream(prepared, "realtime"), deadline_seconds=self.deps.deadline_seconds
            )
            async with aclosing(stream):  # type: ignore[type-var]
                async for event in stream:
                    if isinstance(event, StreamFailed):
                        self.failure = event.error
                        return
                    await self._render(event)
        finally:
            ticket.release()

    def _part_ref(self) -> dict[str, object]:
        assert self.item is not None
        return {"response_id": self.id, "item_id": self.item.id, "output_index": 0, "content_index": 0}

    async def _open_item(self) -> None:
        wire = AssistantMessage(id=new_id("item"), status="in_progress", content=[])
        self.item = StoredItem(
            wire,
            spoken=SpokenTranscript() if self.spoken else None,
            done=False,
            response_id=self.id,
            speed=self.plan.speed,
        )
        if self.spoken:
            self._encoder = OutputEncoder(self.plan.output_format, self.plan.speed)
        await self.sink.send(ResponseOutputItemAddedEvent(response_id=self.id, output_index=0, item=wire))
        if self.plan.in_conversation:
            previous = self.items.last_id
            self.items.add(self.item)
            await self.sink.send(ConversationItemAddedEvent(previous_item_id=previous, item=wire))
        part = ContentPart(type="audio", transcript="") if self.spoken else ContentPart(type="text", text="")
        await self.sink.send(ResponseContentPartAddedEvent(**self._part_ref(), part=part))

    async def _render(self, event: ReplyEvent) -> None:
        ref = self._part_ref()
        if isinstance(event, TextDelta) and not self.spoken:
            self.text += event.text
            await self.sink.send(ResponseOutputTextDeltaEvent(**ref, delta=event.text))
        elif isinstance(event, SegmentStarted):
            assert self.item is not None and self.item.spoken is not None
            self.item.spoken.start_segment(event.text)
            delta = (TRANSCRIPT_SEPARATOR if self.text else "") + event.text
            self.text += delta
            await self.sink.send(ResponseOutputAudioTranscriptDeltaEvent(**ref, delta=delta))
        elif isinstance(event, AudioChunk):
            assert self.item is not None and self.item.spoken is not None and self._encoder is not None
            self.item.spoken.add_audio(event.pcm)
            encoded = self._encoder.encode(event.pcm)
            if encoded:
                await self.sink.send(ResponseOutputAudioDeltaEvent(**ref, delta=encoded))
                self._audio_sent()
        elif isinstance(event, ReplyFinished):
            self.finish_reason = event.finish_reason
            u = event.usage
            self.usage = Usage.of(input_text=u.prompt_tokens, output_text=u.text_tokens, output_audio=u.audio_tokens)

    def _audio_sent(self) -> None:
        if self._first_audio:
            return
        self._first_audio = True
        turn, metrics = self.plan.turn, self.deps.metrics
        if turn is None or metrics is None:
            return
        now = time.monotonic()
        metrics.observe_voice_to_voice("vad_decision", now - turn.decided_at)
        if turn.speech_end_at is not None:
            metrics.observe_voice_to_voice("speech_end", now - turn.speech_end_at)

    def _status(self) -> tuple[str, StatusDetails | None]:
        if self.cancel_reason is not None:
            return "cancelled", StatusDetails(type="cancelled", reason=self.cancel_reason)
        if self.failure is not None:
            error = StatusError(type=self.failure.type, code=self.failure.code)
            return "failed", StatusDetails(type="failed", error=error)
        if self.finish_reason == "length":
            return "incomplete", StatusDetails(type="incomplete", reason="max_output_tokens")
        return "completed", None

    async def _finish(self) -> None:
        status, details = self._status()
        output = []
        if self.item is not None:
            output.append(await self._close_item(status))
        response = self.plan.response.model_copy(
            update={"status": status, "status_details": details, "output": output, "usage": self.usage}
        )
        await self.sink.send(ResponseDoneEvent(response=response))

    async def _close_item(self, status: str) -> AssistantMessage:
        item = self.item
        assert item is not None
        ref = self._part_ref()
        if self.spoken:
            if self._encoder is not None and status != "cancelled":
                tail = self._encoder.flush()
                if tail:
                    await self.sink.send(ResponseOutputAudioDeltaEvent(**ref, delta=tail))
            transcript = self.text
            if item.heard_ms is not None and item.spoken is not None:  # truncated while it ran
                transcript = item.spoken.heard_text(item.heard_ms * item.speed)
            await self.sink.send(ResponseOutputAudioDoneEvent(**ref))
            await self.sink.send(ResponseOutputAudioTranscriptDoneEvent(**ref, transcript=transcript))
            part = ContentPart(type="audio", transcript=transcript)
            content: list[OutputAudio | OutputText] = [OutputAudio(transcript=transcript)]
        else:
            await self.sink.send(ResponseOutputTextDoneEvent(**ref, text=self.text))
            part = ContentPart(type="text", text=self.text)
            content = [OutputText(text=self.text)]
        await self.sink.send(ResponseContentPartDoneEvent(**ref, part=part))
        final = AssistantMessage(
            id=item.id, status="completed" if status == "completed" else "incomplete", content=content
        )
        item.item = final
        item.done = True
        await self.sink.send(ResponseOutputItemDoneEvent(response_id=self.id, output_index=0, item=final))
        if self.plan.in_conversation and self.items.get(item.id) is item:
            previous = self.items.previous_id(item)
            await self.sink.send(ConversationItemDoneEvent(previous_item_id=previous, item=final))
        return final
