"""`RealtimeSession`: one Realtime conversation, driven by client events, speaking through an `EventSink`.

`handle` routes a parsed client event by its type; a mistake of the client (`APIError`) becomes
an `error` event carrying the client's `event_id`, and the session goes on. The session owns
its tasks (the running response, the transcriptions) and `close` cancels them all, which aborts
every engine request of the session. Server VAD turns are committed, transcribed, and answered
(`create_response`); speech starting during a default-conversation response cancels it at once
(`interrupt_response`, reason `turn_detected`) and its queued audio is dropped before
`speech_started` goes out.
"""

from __future__ import annotations

import asyncio
import logging
import math
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...engines.asr import SpeechRecognizer
from ...engines.vad_stream import StreamingVad
from ...errors import APIError, server_error
from ...pipeline.voices import VoiceCatalog
from ...protocol.realtime import ClientEvent, ErrorEvent, InputAudio, Item, UserMessage, new_id
from ...protocol.realtime import client_events as ce
from ...protocol.realtime import server_events as se
from ...settings import Settings
from ..admission import Admission
from ..lifecycle import as_api_error
from ..reply import ReplyService
from ..transcript_events import TranscriptionOptions
from ..transcription import TranscriptionService
from .configure import Checker, check_item, initial_config, plan_response
from .conversation import ROOT, StoredItem
from .conversation import ConversationItems as Items
from .input_audio import InputAudio as InputSide
from .input_audio import InputDecoder, TurnEvent, vad_params
from .responder import ResponderDeps, ResponsePlan, ResponseRun
from .sink import EventSink
from .transcribe import EarlyTranscriber, turn_deltas

if TYPE_CHECKING:
    from ...metrics import Metrics

logger = logging.getLogger(__name__)


def _unknown_item(item_id: str, action: str) -> APIError:
    """The `error` of a ``conversation.item.<action>`` naming an item the conversation does not hold."""
    message = f"Item with item_id not found: {item_id}"
    return APIError(400, message, param="item_id", code=f"item_{action}_invalid_item_id")


TRANSCRIPTION_DEADLINE_SECONDS = 30.0
"""A turn's transcription ends failed after this long (or the server's request deadline, if shorter), so a
response waiting for the transcript goes on without it instead of waiting for an engine that never answers."""


@dataclass(frozen=True)
class SessionDeps:
    """What every session of a server runs on."""

    settings: Settings
    replies: ReplyService
    voices: VoiceCatalog
    admission: Admission
    asr: SpeechRecognizer | None
    vad: StreamingVad | None
    transcription: TranscriptionService
    metrics: Metrics | None = None


class RealtimeSession:
    """The state and behaviour of one session (no transport in here)."""

    def __init__(
        self, serving: SessionDeps, sink: EventSink, *, kind: str = "realtime", model: str | None = None
    ) -> None:
        self.serving = serving
        self.sink = sink
        settings = serving.settings
        self.checker = Checker(settings, serving.voices, serving.asr)
        self.config = initial_config(settings, kind, model)
        self.items = Items(settings.realtime_max_items)
        self.input = InputSide(serving.vad, settings.realtime_max_input_audio_seconds)
        self.input.configure(self.config.audio.input.format, self.config.audio.input.turn_detection)
        self.conversation_id = new_id("conv")
        self.response: ResponseRun | None = None
        self._deps = ResponderDeps(
            serving.replies, serving.admission, settings.request_timeout_seconds, serving.metrics
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        early = settings.realtime_early_transcription and serving.asr is not None
        self._early = EarlyTranscriber(serving.transcription, self._spawn) if early else None
        self._handlers = {
            ce.SessionUpdateEvent: self._session_update,
            ce.InputAudioBufferAppendEvent: self._append,
            ce.InputAudioBufferCommitEvent: self._commit,
            ce.InputAudioBufferClearEvent: self._clear,
            ce.ConversationItemCreateEvent: self._item_create,
            ce.ConversationItemRetrieveEvent: self._item_retrieve,
            ce.ConversationItemTruncateEvent: self._item_truncate,
            ce.ConversationItemDeleteEvent: self._item_delete,
            ce.ResponseCreateEvent: self._response_create,
            ce.ResponseCancelEvent: self._response_cancel,
            ce.OutputAudioBufferClearEvent: self._output_clear,
        }

    async def start(self) -> None:
        """Send `session.created` (the first event of every session)."""
        await self.sink.send(se.SessionCreatedEvent(session=self.config))

    async def error(self, exc: APIError, event_id: str | None = None) -> None:
        """Send an `error` event for `exc` (answering the client event `event_id`)."""
        await self.sink.send(ErrorEvent.of(exc, event_id))

    async def handle(self, event: ClientEvent) -> None:
        """Apply one client event; its errors are sent as `error` events."""
        try:
            await self._handlers[type(event)](event)  # type: ignore[operator]
        except APIError as exc:
            await self.error(exc, event.event_id)
        except Exception:
            logger.exception("realtime: %s failed", event.type)
            await self.error(server_error(), event.event_id)

    async def close(self) -> None:
        """Cancel everything the session runs (responses, transcriptions) and forget its items."""
        tasks = list(self._tasks)
        if self.response is not None and self.response.task is not None:
            tasks.append(self.response.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.items.clear()
        self.input.clear()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """Forget a finished task; one that died of an exception is logged (nothing else would see it)."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("realtime: task %s failed: %s", task.get_name(), exc, exc_info=exc)

    # --- session -------------------------------------------------------------------------------------

    async def _session_update(self, event: ce.SessionUpdateEvent) -> None:
        update = event.session
        merged = self.config.merge(update)
        if merged.type != self.config.type and self.response is not None:
            raise APIError(400, "The session type cannot change while a response runs.", param="session.type")
        self.checker.session(merged)
        self.config = merged
        self.input.configure(merged.audio.input.format, merged.audio.input.turn_detection)
        await self.sink.send(se.SessionUpdatedEvent(session=self.config))

    # --- input audio ---------------------------------------------------------------------------------

    async def _append(self, event: ce.InputAudioBufferAppendEvent) -> None:
        for turn in await self.input.append(event.audio, responding=self.response is not None):
            if turn.kind == "paused":
                if self._early is not None and turn.audio is not None:
                    self._early.paused(turn.item_id, turn.audio_end_ms, turn.audio, self._transcription_options())
            elif turn.kind == "started":
                if self._early is not None:
                    self._early.cancel()
                self._interrupt(turn)
                await self.sink.send(
                    se.InputAudioBufferSpeechStartedEvent(audio_start_ms=turn.audio_start_ms, item_id=turn.item_id)
                )
            elif turn.kind == "stopped":
                await self.sink.send(
                    se.InputAudioBufferSpeechStoppedEvent(audio_end_ms=turn.audio_end_ms, item_id=turn.item_id)
                )
                await self._turn(turn, "vad")
            else:
                await self.sink.send(
                    se.InputAudioBufferTimeoutTriggeredEvent(
                        audio_start_ms=turn.audio_start_ms, audio_end_ms=turn.audio_end_ms, item_id=turn.item_id
                    )
                )
                await self._turn(turn, "timeout")

    def _interrupt(self, turn: TurnEvent) -> None:
        detection = self.config.audio.input.turn_detection
        run = self.response
        if run is None or detection is None or not detection.interrupt_response or not run.plan.in_conversation:
            return
        run.cancel("turn_detected", turn.decided_at)
        self.sink.discard_audio(run.id)

    async def _turn(self, turn: TurnEvent, source: str) -> None:
        assert turn.audio is not None
        early = None
        detection = self.config.audio.input.turn_detection
        if self._early is not None and detection is not None:  # stopped at the pause it was transcribed from?
            early = self._early.take(turn.item_id, turn.audio_end_ms - vad_params(detection).silence_duration_ms)
        await self._commit_audio(turn.audio, turn.item_id, source, early)
        if self.config.type != "realtime" or detection is None or not detection.create_response:
            return
        running = self.response
        if running is not None:
            if running.cancel_reason is None:
                return  # a response still runs (no interrupt_response): the turn waits for the next one
            assert running.task is not None
            await asyncio.wait([running.task])
        plan = plan_response(
            self.checker, self.config, None, self.items, self.conversation_id, self._input_item, turn=turn
        )
        self._start(plan)

    async def _commit(self, event: ce.InputAudioBufferCommitEvent) -> None:
        await self._commit_audio(self.input.commit(), new_id("item"), "commit")

    async def _clear(self, event: ce.InputAudioBufferClearEvent) -> None:
        self.input.clear()
        await self.sink.send(se.InputAudioBufferClearedEvent())

    async def _commit_audio(
        self, audio: np.ndarray, item_id: str, source: str, early: asyncio.Task[str | None] | None = None
    ) -> None:
        previous = self.items.last_id
        stored = StoredItem(UserMessage(id=item_id, status="completed", content=[InputAudio()]), audio=audio)
        self.items.add(stored)
        if self.serving.metrics is not None:
            self.serving.metrics.count_realtime_turn(source)
        await self.sink.send(se.InputAudioBufferCommittedEvent(item_id=item_id, previous_item_id=previous))
        await self.sink.send(se.ConversationItemAddedEvent(previous_item_id=previous, item=stored.item))
        await self.sink.send(se.ConversationItemDoneEvent(previous_item_id=previous, item=stored.item))
        self._transcribe(stored, early)

    # --- transcription -------------------------------------------------------------------------------

    def _transcribe(self, stored: StoredItem, early: asyncio.Task[str | None] | None = None) -> None:
        stored.transcript = asyncio.get_running_loop().create_future()
        self._spawn(self._transcription(stored, early), f"realtime-transcribe-{stored.id}")

    def _transcription_options(self) -> TranscriptionOptions:
        settings = self.config.audio.input.transcription
        return self.serving.transcription.options(
            language=self.checker.language(self.config), prompt=settings.prompt if settings else None
        )

    async def _transcription(self, stored: StoredItem, early: asyncio.Task[str | None] | None) -> None:
        future = stored.transcript
        assert future is not None and stored.audio is not None
        audio = stored.audio
        emit = self.config.type == "transcription" or self.config.audio.input.transcription is not None
        text = ""
        deadline = min(TRANSCRIPTION_DEADLINE_SECONDS, self.serving.settings.request_timeout_seconds)
        try:
            options = self._transcription_options()
            async with asyncio.timeout(deadline):  # an engine that never answers fails the transcription
                deltas = turn_deltas(self.serving.transcription, audio, options, early)
                async with aclosing(deltas):  # type: ignore[type-var]
                    async for delta in deltas:
                        text += delta
                        if emit:
                            await self.sink.send(se.TranscriptionDeltaEvent(item_id=stored.id, delta=delta))
            text = text.strip()
            stored.set_transcript(text)
            if emit:
                usage = se.TranscriptionUsage(seconds=round(len(audio) / 24000, 3))
                await self.sink.send(se.TranscriptionCompletedEvent(item_id=stored.id, transcript=text, usage=usage))
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            error = as_api_error(exc)
            text = ""
            if error.status >= 500 and not isinstance(exc, APIError):
                logger.error("realtime transcription of %s failed: %s", stored.id, exc or error.message, exc_info=exc)
            if emit:
                detail = se.TranscriptionError(type=error.type, code=error.code, message=error.message)
                await self.sink.send(se.TranscriptionFailedEvent(item_id=stored.id, error=detail))
        finally:
            stored.audio = None
            if not future.done():
                future.set_result(text)

    # --- conversation items --------------------------------------------------------------------------

    def _input_item(self, item: Item, param: str) -> StoredItem:
        """A stored copy of a client's item: an id, status completed, audio decoded and sent to transcription."""
        update: dict[str, Any] = {"id": item.id or new_id("item"), "status": "completed"}
        audio: list[np.ndarray] = []
        if isinstance(item, UserMessage):
            decoder = InputDecoder(self.config.audio.input.format)
            content = []
            for index, part in enumerate(item.content):
                if isinstance(part, InputAudio) and part.audio is not None:
                    if part.transcript is None:
                        audio.append(decoder.decode(part.audio, f"{param}.content[{index}].audio"))
                    part = InputAudio(transcript=part.transcript)
                content.append(part)
            update["content"] = content
        stored = StoredItem(item.model_copy(update=update))
        if audio:
            stored.audio = np.concatenate(audio)
            self._transcribe(stored)
        return stored

    async def _item_create(self, event: ce.ConversationItemCreateEvent) -> None:
        check_item(event.item)
        after = event.previous_item_id
        if after is not None and after != ROOT and self.items.get(after) is None:
            raise APIError(400, f"Item with id '{after}' not found.", param="previous_item_id", code="invalid_value")
        if event.item.id is not None and self.items.get(event.item.id) is not None:
            raise APIError(
                400, f"Item with id '{event.item.id}' already exists.", param="item.id", code="invalid_value"
            )
        stored = self._input_item(event.item, "item")
        self.items.add(stored, after)
        previous = self.items.previous_id(stored)
        await self.sink.send(se.ConversationItemAddedEvent(previous_item_id=previous, item=stored.item))
        await self.sink.send(se.ConversationItemDoneEvent(previous_item_id=previous, item=stored.item))

    async def _item_retrieve(self, event: ce.ConversationItemRetrieveEvent) -> None:
        stored = self.items.get(event.item_id)
        if stored is None:
            raise _unknown_item(event.item_id, "retrieve")
        await self.sink.send(se.ConversationItemRetrievedEvent(item=stored.item))

    async def _item_delete(self, event: ce.ConversationItemDeleteEvent) -> None:
        if self.items.delete(event.item_id) is None:
            raise _unknown_item(event.item_id, "delete")
        await self.sink.send(se.ConversationItemDeletedEvent(item_id=event.item_id))

    async def _item_truncate(self, event: ce.ConversationItemTruncateEvent) -> None:
        stored = self.items.get(event.item_id)
        if stored is None:
            raise _unknown_item(event.item_id, "truncate")
        if stored.spoken is None:
            raise APIError(400, "Only assistant messages with audio can be truncated.", param="item_id")
        if event.content_index != 0:
            raise APIError(
                400,
                f"Invalid content_index {event.content_index}: the item's audio is content 0.",
                param="content_index",
            )
        length = stored.audio_ms
        if event.audio_end_ms > math.ceil(length):  # clients round the ms they played up or down
            raise APIError(
                400,
                f"Audio content of {length:.0f}ms is already shorter than {event.audio_end_ms}ms",
                param="audio_end_ms",
                code="invalid_value",
            )
        stored.truncate(event.audio_end_ms)
        await self.sink.send(
            se.ConversationItemTruncatedEvent(
                item_id=stored.id, content_index=event.content_index, audio_end_ms=event.audio_end_ms
            )
        )

    # --- responses -----------------------------------------------------------------------------------

    async def _response_create(self, event: ce.ResponseCreateEvent) -> None:
        if self.config.type != "realtime":
            raise APIError(400, "A transcription session does not create responses.", param="type")
        if self.response is not None:
            raise APIError(
                400,
                f"Conversation already has an active response in progress: {self.response.id}. Wait until the "
                "response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        plan = plan_response(
            self.checker, self.config, event.response, self.items, self.conversation_id, self._input_item
        )
        self._start(plan)

    def _start(self, plan: ResponsePlan) -> None:
        run = ResponseRun(plan, self._deps, self.sink, self.items, self._response_finished)
        self.response = run
        run.start()

    def _response_finished(self, run: ResponseRun) -> None:
        if self.response is run:
            self.response = None
        self.input.mark_activity()

    async def _response_cancel(self, event: ce.ResponseCancelEvent) -> None:
        run = self.response
        if run is None or event.response_id not in (None, run.id):
            raise APIError(400, "Cancellation failed: no active response found", code="response_cancel_not_active")
        run.cancel("client_cancelled")
        self.sink.discard_audio(run.id)

    async def _output_clear(self, event: ce.OutputAudioBufferClearEvent) -> None:
        if self.response is not None:
            self.sink.discard_audio(self.response.id)
