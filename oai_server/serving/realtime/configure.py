"""Session configuration checks and response plans: what a `session.update` or `response.create` resolves to.

The protocol models (`protocol.realtime`) check shapes; this module checks what only the server
knows: voices (ours and OpenAI's names), transcription languages, tools (Gemma 2 has none), the
token cap, and which items a response reads (`input`, or the default conversation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...engines.asr import SpeechRecognizer, check_language
from ...errors import APIError
from ...pipeline.speech import VoiceOptions
from ...pipeline.voices import VoiceCatalog
from ...protocol.realtime import (
    AssistantMessage,
    ClientEventError,
    FunctionCall,
    FunctionCallOutput,
    Item,
    ItemReference,
    Response,
    ResponseCreateParams,
    ServerVAD,
    SessionConfig,
    SystemMessage,
    Transcription,
    UserMessage,
    voice_name,
)
from ...protocol.realtime.audio import AudioConfig, AudioInput
from ...protocol.realtime.items import InputImage
from ...protocol.realtime.responses import ResponseAudio, ResponseAudioOutput
from ...settings import Settings
from .conversation import ConversationItems, StoredItem
from .input_audio import TurnEvent
from .responder import ResponsePlan


def no_tools(param: str) -> ClientEventError:
    """The error for tools, function calls and their outputs: the chat model here has no tool calling."""
    return ClientEventError(
        "Tools are not supported: this server's chat model (Gemma 2) has no tool calling.", param, "unsupported_value"
    )


def initial_config(settings: Settings, kind: str, model: str | None) -> SessionConfig:
    """A new session: the server's VAD settings; a transcription session transcribes by default."""
    detection = ServerVAD(
        threshold=settings.vad_threshold,
        prefix_padding_ms=settings.vad_prefix_padding_ms,
        silence_duration_ms=settings.vad_silence_duration_ms,
    )
    if kind == "transcription":
        transcription = Transcription(model=model) if model else Transcription()
        audio = AudioConfig(input=AudioInput(transcription=transcription, turn_detection=detection))
        return SessionConfig(type="transcription", audio=audio)
    audio = AudioConfig(input=AudioInput(turn_detection=detection))
    return SessionConfig(type="realtime", model=model or "gpt-realtime", audio=audio)


@dataclass(frozen=True)
class Checker:
    """Server-side checks of session settings."""

    settings: Settings
    voices: VoiceCatalog
    asr: SpeechRecognizer | None

    def voice(self, config: SessionConfig, param: str = "session.audio.output.voice") -> VoiceOptions:
        """The session voice's options (400 naming `param` for an unknown voice)."""
        return self.voices.options(voice_name(config.audio.output.voice), param=param, seed=self.settings.realtime_seed)

    def language(self, config: SessionConfig) -> str | None:
        """The transcription language, normalised (400 for one the recognizer lacks)."""
        transcription = config.audio.input.transcription
        if transcription is None or self.asr is None:
            return None
        return check_language(transcription.language, self.asr.languages, "session.audio.input.transcription.language")

    def session(self, config: SessionConfig) -> None:
        """Raise `APIError` naming the parameter a merged config gets wrong."""
        if config.tools:
            raise no_tools("session.tools")
        self.voice(config)
        self.language(config)

    def max_tokens(self, requested: int | str) -> int:
        """`max_output_tokens` as a number, capped by the server's `llm_max_tokens`."""
        cap = self.settings.llm_max_tokens
        return cap if not isinstance(requested, int) else min(requested, cap)


def check_item(item: Item, param: str = "item") -> None:
    """Refuse items this server cannot use (tools, images)."""
    if isinstance(item, FunctionCall | FunctionCallOutput):
        raise no_tools(f"{param}.type")
    if isinstance(item, UserMessage):
        for index, part in enumerate(item.content):
            if isinstance(part, InputImage):
                raise ClientEventError(
                    "Images are not supported: this server's chat model (Gemma 2) has no vision.",
                    f"{param}.content[{index}].type",
                    "unsupported_value",
                )


def plan_response(
    checker: Checker,
    config: SessionConfig,
    params: ResponseCreateParams | None,
    items: ConversationItems,
    conversation_id: str,
    new_item: Callable[[Item, str], StoredItem],
    turn: TurnEvent | None = None,
) -> ResponsePlan:
    """Resolve a `response.create` against the session (raises `APIError` naming the bad parameter)."""
    p = params or ResponseCreateParams()
    if p.tools:
        raise no_tools("response.tools")
    modalities = p.output_modalities or config.output_modalities
    spoken = "audio" in modalities
    fmt, voice = config.audio.output.format, config.audio.output.voice
    if p.audio is not None and p.audio.output is not None:
        fmt = p.audio.output.format or fmt
        voice = p.audio.output.voice or voice
    options = None
    if spoken:
        options = checker.voices.options(
            voice_name(voice), param="response.audio.output.voice", seed=checker.settings.realtime_seed
        )
    requested = p.max_output_tokens or config.max_output_tokens
    in_conversation = p.conversation != "none"
    context: Sequence[StoredItem] = list(items.items)
    if p.input is not None:
        context = _input_items(p.input, items, new_item)
    response = Response(
        conversation_id=conversation_id if in_conversation else None,
        output_modalities=["audio"] if spoken else ["text"],
        max_output_tokens=requested,
        audio=ResponseAudio(output=ResponseAudioOutput(format=fmt, voice=voice_name(voice))),
        metadata=p.metadata,
    )
    return ResponsePlan(
        response=response,
        context=context,
        in_conversation=in_conversation,
        instructions=p.instructions if p.instructions is not None else config.instructions,
        voice=options,
        output_format=fmt,
        speed=config.audio.output.speed,
        max_tokens=checker.max_tokens(requested),
        seed=checker.settings.realtime_seed,
        turn=turn,
    )


def _input_items(
    given: Sequence[object], items: ConversationItems, new_item: Callable[[Item, str], StoredItem]
) -> list[StoredItem]:
    out: list[StoredItem] = []
    for index, entry in enumerate(given):
        param = f"response.input[{index}]"
        if isinstance(entry, ItemReference):
            stored = items.get(entry.id)
            if stored is None:
                raise ClientEventError(f"Item with id '{entry.id}' not found.", f"{param}.id", "invalid_value")
            out.append(stored)
        elif isinstance(entry, UserMessage | AssistantMessage | SystemMessage | FunctionCall | FunctionCallOutput):
            check_item(entry, param)
            out.append(new_item(entry, param))
        else:  # pragma: no cover (the protocol union has no other member)
            raise APIError(400, "Unsupported input item.", param=param, code="invalid_value")
    return out
