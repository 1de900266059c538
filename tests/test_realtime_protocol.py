"""Realtime (GA) wire types: client events parsed (and refused with a named param), server events
checked against the openai SDK's own GA models, and `session.update` merge semantics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import pytest
from openai._models import BaseModel as SDKModel
from openai.types.realtime import RealtimeServerEvent as SDKServerEvent
from openai.types.realtime import RealtimeSessionCreateRequest, RealtimeTranscriptionSessionCreateRequest
from pydantic import Field, TypeAdapter, ValidationError

from oai_server.protocol.realtime import (
    CLIENT_EVENT_TYPES,
    SERVER_EVENT_TYPES,
    AssistantMessage,
    ClientEventError,
    ContentPart,
    ErrorEvent,
    InputAudio,
    InputText,
    OutputAudio,
    PCMAFormat,
    PCMUFormat,
    Response,
    SemanticVAD,
    ServerVAD,
    SessionConfig,
    SessionUpdate,
    StatusDetails,
    Transcription,
    UnknownEventType,
    Usage,
    UserMessage,
    VoiceId,
    parse_client_event,
    server_event_adapter,
    voice_name,
)
from oai_server.protocol.realtime import server_events as se
from oai_server.protocol.realtime.responses import ResponseAudio, ResponseAudioOutput

SDK_SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[SDKServerEvent, Field(discriminator="type")])
CLIENT_PAYLOADS = json.loads((Path(__file__).parent / "data" / "realtime_client_events.json").read_text())

ACCEPTED = [
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
    "conversation.item.create", "conversation.item.retrieve", "conversation.item.truncate", "conversation.item.delete",
    "response.create", "response.cancel", "output_audio_buffer.clear",
]  # fmt: skip
EMITTED = [
    "session.created", "session.updated",
    "input_audio_buffer.committed", "input_audio_buffer.cleared", "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped", "input_audio_buffer.timeout_triggered",
    "conversation.item.added", "conversation.item.done", "conversation.item.retrieved",
    "conversation.item.truncated", "conversation.item.deleted",
    "conversation.item.input_audio_transcription.delta", "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
    "response.created", "response.done", "response.output_item.added", "response.output_item.done",
    "response.content_part.added", "response.content_part.done",
    "response.output_audio.delta", "response.output_audio.done",
    "response.output_audio_transcript.delta", "response.output_audio_transcript.done",
    "response.output_text.delta", "response.output_text.done",
    "rate_limits.updated", "error",
]  # fmt: skip


def test_the_event_sets_are_the_ga_ones() -> None:
    assert sorted(CLIENT_EVENT_TYPES) == sorted(ACCEPTED)
    assert sorted(SERVER_EVENT_TYPES) == sorted(EMITTED)
    assert not [t for t in EMITTED if t.startswith(("response.audio", "response.text", "conversation.item.created"))]


# --- server events: every one validates against the SDK's GA models ----------------------------------------------


def _response(status: str = "completed") -> Response:
    item = AssistantMessage(id="item_a", status="completed", content=[OutputAudio(transcript="Hello there.")])
    return Response(
        id="resp_1",
        status=status,  # type: ignore[arg-type]
        status_details=StatusDetails(type="cancelled", reason="turn_detected") if status == "cancelled" else None,
        output=[item],
        conversation_id="conv_1",
        audio=ResponseAudio(output=ResponseAudioOutput(format=PCMUFormat(), voice="marin")),
        usage=Usage.of(input_text=12, output_text=5, output_audio=70),
        metadata={"client_event_id": "response_create_1"},
    )


def _samples() -> list[se.ServerEvent]:
    user = UserMessage(id="item_u", status="completed", content=[InputAudio(transcript=None), InputText(text="hi")])
    assistant = AssistantMessage(id="item_a", status="in_progress", content=[])
    part = {"response_id": "resp_1", "item_id": "item_a", "output_index": 0, "content_index": 0}
    voice_session = SessionConfig().merge(
        SessionUpdate.model_validate({"audio": {"output": {"voice": {"id": "tara"}}}, "tracing": "auto"})
    )
    return [
        se.SessionCreatedEvent(session=SessionConfig(instructions="Be brief.")),
        se.SessionUpdatedEvent(session=voice_session),
        se.SessionUpdatedEvent(session=SessionConfig(type="transcription")),
        se.InputAudioBufferCommittedEvent(item_id="item_u", previous_item_id=None),
        se.InputAudioBufferClearedEvent(),
        se.InputAudioBufferSpeechStartedEvent(audio_start_ms=320, item_id="item_u"),
        se.InputAudioBufferSpeechStoppedEvent(audio_end_ms=1800, item_id="item_u"),
        se.InputAudioBufferTimeoutTriggeredEvent(audio_start_ms=1800, audio_end_ms=7800, item_id="item_t"),
        se.ConversationItemAddedEvent(item=user, previous_item_id="item_0"),
        se.ConversationItemDoneEvent(item=user),
        se.ConversationItemRetrievedEvent(item=assistant),
        se.ConversationItemTruncatedEvent(item_id="item_a", content_index=0, audio_end_ms=1500),
        se.ConversationItemDeletedEvent(item_id="item_a"),
        se.TranscriptionDeltaEvent(item_id="item_u", delta="Hel"),
        se.TranscriptionCompletedEvent(item_id="item_u", transcript="Hello.", usage=se.TranscriptionUsage(seconds=1.5)),
        se.TranscriptionFailedEvent(
            item_id="item_u", error=se.TranscriptionError(code="transcription_failed", message="x")
        ),
        se.ResponseCreatedEvent(response=Response(id="resp_1", metadata={"k": "v"})),
        se.ResponseDoneEvent(response=_response()),
        se.ResponseDoneEvent(response=_response("cancelled")),
        se.ResponseOutputItemAddedEvent(response_id="resp_1", output_index=0, item=assistant),
        se.ResponseOutputItemDoneEvent(response_id="resp_1", output_index=0, item=_response().output[0]),
        se.ResponseContentPartAddedEvent(**part, part=ContentPart(type="audio", transcript="")),
        se.ResponseContentPartDoneEvent(**part, part=ContentPart(type="audio", transcript="Hello there.")),
        se.ResponseOutputAudioDeltaEvent(**part, delta="AAAA"),
        se.ResponseOutputAudioDoneEvent(**part),
        se.ResponseOutputAudioTranscriptDeltaEvent(**part, delta="Hello"),
        se.ResponseOutputAudioTranscriptDoneEvent(**part, transcript="Hello there."),
        se.ResponseOutputTextDeltaEvent(**part, delta="Hello"),
        se.ResponseOutputTextDoneEvent(**part, text="Hello there."),
        se.RateLimitsUpdatedEvent(
            rate_limits=[se.RateLimit(name="requests", limit=100, remaining=99, reset_seconds=1.0)]
        ),
        se.ErrorEvent(error=se.ErrorDetail(code="invalid_value", message="bad", param="session.type", event_id="c1")),
    ]


SAMPLES = _samples()
_SESSION_EXTRAS = {"id", "object", "expires_at"}  # sent by OpenAI's servers in session.* too; not in the SDK model


def _unknown_keys(obj: Any, path: str = "") -> list[str]:
    """Keys the SDK model did not recognise (its models keep them in `model_extra`)."""
    out: list[str] = []
    if isinstance(obj, SDKModel):
        extra = set(obj.model_extra or {})
        if isinstance(obj, RealtimeSessionCreateRequest | RealtimeTranscriptionSessionCreateRequest):
            extra -= _SESSION_EXTRAS
        out += [f"{path}.{k}" for k in sorted(extra)]
        for name in type(obj).model_fields:
            out += _unknown_keys(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _unknown_keys(v, f"{path}[{i}]")
    return out


def test_every_emitted_type_has_a_sample() -> None:
    assert {e.type for e in SAMPLES} == set(EMITTED)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_server_event_validates_against_the_sdk(event: se.ServerEvent) -> None:
    frame = event.to_json()
    parsed = SDK_SERVER_EVENT.validate_json(frame)
    assert parsed.type == event.type
    assert parsed.event_id == event.event_id and event.event_id.startswith("event_")
    assert _unknown_keys(parsed) == []
    # and our own union reads it back unchanged
    assert server_event_adapter().validate_json(frame).model_dump() == event.model_dump()


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_the_sdk_check_catches_a_missing_required_field(event: se.ServerEvent) -> None:
    data = json.loads(event.to_json())
    sdk_cls = type(SDK_SERVER_EVENT.validate_python(data))
    required = [name for name, f in sdk_cls.model_fields.items() if f.is_required() and name != "type"]
    assert "event_id" in required
    for name in required:
        broken = {k: v for k, v in data.items() if k != name}
        with pytest.raises(ValidationError):
            SDK_SERVER_EVENT.validate_python(broken)


def test_event_ids_are_generated_unique_hex() -> None:
    ids = {se.InputAudioBufferClearedEvent().event_id for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == len("event_") + 20 and int(i[6:], 16) >= 0 for i in ids)


def test_transcription_session_renders_only_transcription_fields() -> None:
    data = json.loads(se.SessionCreatedEvent(session=SessionConfig(type="transcription")).to_json())["session"]
    assert set(data) == {"type", "object", "id", "audio", "include", "expires_at"}
    assert set(data["audio"]) == {"input"} and data["object"] == "realtime.transcription_session"
    parsed = SDK_SERVER_EVENT.validate_python({"type": "session.created", "event_id": "e", "session": data})
    assert isinstance(parsed.session, RealtimeTranscriptionSessionCreateRequest)


def test_usage_always_carries_both_detail_objects() -> None:
    usage = json.loads(Usage().model_dump_json())
    assert usage["input_token_details"]["cached_tokens_details"] == {"text_tokens": 0, "audio_tokens": 0,
                                                                     "image_tokens": 0}  # fmt: skip
    assert usage["output_token_details"] == {"text_tokens": 0, "audio_tokens": 0}
    assert Usage.of(input_text=3, input_audio=4, output_text=5, output_audio=6).model_dump()["total_tokens"] == 18


def test_server_models_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        se.ConversationItemDeletedEvent(item_id="x", itemid="typo")  # type: ignore[call-arg]


def test_error_event_echoes_the_client_event_id() -> None:
    with pytest.raises(ClientEventError) as info:
        parse_client_event(json.dumps({"type": "conversation.item.retrieve", "event_id": "rci_1"}))
    frame = ErrorEvent.of(info.value).to_json()
    error = SDK_SERVER_EVENT.validate_json(frame).error
    assert (error.type, error.code, error.param, error.event_id) == (
        "invalid_request_error", "missing_required_parameter", "item_id", "rci_1"
    )  # fmt: skip


# --- client events ---------------------------------------------------------------------------------------------

VALID = {
    "session.update": {"session": {"type": "realtime", "instructions": "Be brief."}},
    "input_audio_buffer.append": {"audio": "AAAA"},
    "input_audio_buffer.commit": {},
    "input_audio_buffer.clear": {},
    "conversation.item.create": {
        "previous_item_id": "root",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    },
    "conversation.item.retrieve": {"item_id": "item_1"},
    "conversation.item.truncate": {"item_id": "item_1", "content_index": 0, "audio_end_ms": 1500},
    "conversation.item.delete": {"item_id": "item_1"},
    "response.create": {
        "response": {
            "conversation": "none",
            "instructions": "Say hi.",
            "output_modalities": ["text"],
            "max_output_tokens": 200,
            "metadata": {"client_event_id": "rc_1"},
            "audio": {"output": {"voice": "cedar", "format": {"type": "audio/pcma"}}},
            "input": [
                {"type": "item_reference", "id": "item_1"},
                {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be kind."}]},
            ],
        }
    },
    "response.cancel": {"response_id": "resp_1"},
    "output_audio_buffer.clear": {},
}


@pytest.mark.parametrize("kind", ACCEPTED)
def test_every_client_event_parses(kind: str) -> None:
    event = parse_client_event(json.dumps({"type": kind, "event_id": "evt_client", **VALID[kind]}))
    assert type(event) is CLIENT_EVENT_TYPES[kind]
    assert (event.type, event.event_id) == (kind, "evt_client")


def test_parsed_fields_are_typed() -> None:
    create = parse_client_event(json.dumps({"type": "response.create", **VALID["response.create"]}))
    assert create.type == "response.create" and create.response is not None
    params = create.response
    assert (params.conversation, params.output_modalities, params.max_output_tokens) == ("none", ["text"], 200)
    assert params.audio is not None and params.audio.output is not None
    assert isinstance(params.audio.output.format, PCMAFormat) and params.audio.output.voice == "cedar"
    assert params.input is not None and [i.type for i in params.input] == ["item_reference", "message"]
    truncate = parse_client_event(json.dumps({"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": 9}))
    assert truncate.type == "conversation.item.truncate" and truncate.content_index == 0  # defaults to 0


@pytest.mark.parametrize("client", [k for k in CLIENT_PAYLOADS if not k.startswith("_")])
def test_what_the_real_clients_send_parses(client: str) -> None:
    session = SessionConfig()
    for payload in CLIENT_PAYLOADS[client]:
        event = parse_client_event(json.dumps(payload))
        if event.type == "session.update":
            session = session.merge(event.session)
            SDK_SERVER_EVENT.validate_json(se.SessionUpdatedEvent(session=session).to_json())


def test_real_clients_session_updates_land_where_they_should() -> None:
    def merged(client: str, index: int) -> SessionConfig:
        event = parse_client_event(json.dumps(CLIENT_PAYLOADS[client][index]))
        assert event.type == "session.update"
        return SessionConfig().merge(event.session)

    agents = merged("openai-agents 0.24.0", 0)
    assert agents.audio.input.turn_detection == SemanticVAD(interrupt_response=True)
    assert agents.audio.input.transcription == Transcription(model="gpt-4o-mini-transcribe")
    assert (agents.instructions, voice_name(agents.audio.output.voice)) == ("Be brief.", "marin")
    pipecat_stt = merged("pipecat-ai 1.14.0", 4)
    assert pipecat_stt.type == "transcription"
    assert pipecat_stt.audio.input.transcription == Transcription(model="gpt-realtime-whisper", language="en")
    assert pipecat_stt.audio.input.turn_detection == ServerVAD()
    livekit_stt = merged("livekit-plugins-openai 1.8.9", 3)
    assert livekit_stt.audio.input.turn_detection == ServerVAD(prefix_padding_ms=600, silence_duration_ms=350)


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        ('"session.update"', "invalid_json", None),
        ("{}", "missing_required_parameter", "type"),
        ('{"type": 5}', "invalid_type", "type"),
    ],
)
def test_unusable_frames_are_named_errors(frame: str, code: str, param: str | None) -> None:
    with pytest.raises(ClientEventError) as info:
        parse_client_event(frame)
    assert (info.value.code, info.value.param, info.value.status) == (code, param, 400)


@pytest.mark.parametrize("kind", ["response.audio.delta", "session.updatee", "transcription_session.update", ""])
def test_unknown_event_type_carries_the_type(kind: str) -> None:
    with pytest.raises(UnknownEventType) as info:
        parse_client_event(json.dumps({"type": kind, "event_id": "evt_9"}))
    err = info.value
    assert (err.event_type, err.param, err.code, err.event_id) == (kind, "type", "invalid_value", "evt_9")
    assert repr(kind) in err.message and "'session.update'" in err.message


BAD_FIELDS = [
    ({"type": "input_audio_buffer.append"}, "missing_required_parameter", "audio"),
    ({"type": "input_audio_buffer.append", "audio": 123}, "invalid_type", "audio"),
    ({"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": "900"}, "invalid_type", "audio_end_ms"),
    ({"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": True}, "invalid_type", "audio_end_ms"),
    ({"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": -5}, "invalid_value", "audio_end_ms"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
      "content": [{"type": "input_text", "text": 7}]}}, "invalid_type", "item.content[0].text"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "narrator", "content": []}},
     "invalid_value", "item.role"),
    ({"type": "conversation.item.create", "item": {"role": "user", "content": []}},
     "missing_required_parameter", "item.type"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
      "content": [{"type": "output_text", "text": "x"}]}}, "invalid_value", "item.content[0].type"),
    # a list is unhashable: the beta-spelling lookup of a part's type once crashed the session on it (the fuzz found it)
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": []}]}},
     "invalid_value", "item.content[0].type"),
    ({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"threshold": "high"}}}}},
     "invalid_type", "session.audio.input.turn_detection.threshold"),
    ({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"threshold": 1.5}}}}},
     "invalid_value", "session.audio.input.turn_detection.threshold"),
    ({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "magic_vad"}}}}},
     "invalid_value", "session.audio.input.turn_detection.type"),
    ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}},
     "invalid_value", "session.audio.input.format.rate"),
    ({"type": "session.update", "session": {"audio": {"output": {"format": {"type": "audio/opus"}}}}},
     "invalid_value", "session.audio.output.format.type"),
    ({"type": "session.update", "session": {"audio": {"output": {"speed": 3.0}}}},
     "invalid_value", "session.audio.output.speed"),
    ({"type": "session.update", "session": {"output_modalities": []}}, "invalid_value", "session.output_modalities"),
    ({"type": "session.update", "session": {"max_output_tokens": 5000}}, "invalid_value", "session.max_output_tokens"),
    ({"type": "session.update", "session": {"type": "translation"}}, "invalid_value", "session.type"),
    ({"type": "session.update", "session": {"max_output_tokens": "lots"}}, "invalid_value",
     "session.max_output_tokens"),
    ({"type": "session.update", "session": {"max_output_tokens": 1.5}}, "invalid_type", "session.max_output_tokens"),
    ({"type": "session.update", "session": {"audio": {"output": {"voice": 5}}}}, "invalid_type",
     "session.audio.output.voice"),
    ({"type": "session.update", "session": {"audio": {"output": {"voice": {"name": "x"}}}}},
     "missing_required_parameter", "session.audio.output.voice.id"),
    ({"type": "session.update", "session": {"tool_choice": "sometimes"}}, "invalid_value", "session.tool_choice"),
    ({"type": "session.update", "session": {"tracing": ["auto"]}}, "invalid_type", "session.tracing"),
    ({"type": "session.update", "session": {"tools": [{"type": "mcp", "server_label": "x"}]}}, "invalid_value",
     "session.tools[0].type"),
    ({"type": "session.update", "session": "realtime"}, "invalid_type", "session"),
    ({"type": "response.create", "response": {"metadata": {"k": 1}}}, "invalid_type", "response.metadata.k"),
    ({"type": "response.create", "response": {"metadata": {f"k{i}": "v" for i in range(17)}}},
     "invalid_value", "response.metadata"),
    ({"type": "response.create", "response": {"conversation": "conv_9"}}, "invalid_value", "response.conversation"),
    ({"type": "response.create", "response": {"input": [{"type": "item_reference"}]}},
     "missing_required_parameter", "response.input[0].id"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "code", "param"), BAD_FIELDS, ids=lambda v: v if isinstance(v, str) else "")
def test_bad_fields_name_their_param(payload: dict[str, Any], code: str, param: str) -> None:
    with pytest.raises(ClientEventError) as info:
        parse_client_event(json.dumps({**payload, "event_id": "evt_bad"}))
    err = info.value
    assert (err.code, err.param, err.event_id) == (code, param, "evt_bad")
    assert f"'{param}'" in err.message
    assert not isinstance(err, UnknownEventType)


def test_unknown_keys_are_ignored() -> None:
    event = parse_client_event(json.dumps({"type": "input_audio_buffer.commit", "future_field": {"x": 1}}))
    assert event.type == "input_audio_buffer.commit"


def test_beta_spellings_are_read_as_ga() -> None:
    event = parse_client_event(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
            }
        )
    )
    assert event.type == "conversation.item.create"
    assert isinstance(event.item, AssistantMessage) and event.item.content[0].type == "output_text"
    create = parse_client_event(json.dumps({"type": "response.create", "response": {"modalities": ["text"],
                                                                                   "voice": "ash"}}))  # fmt: skip
    assert create.type == "response.create" and create.response is not None
    assert create.response.output_modalities == ["text"]
    assert create.response.audio is not None and create.response.audio.output is not None
    assert create.response.audio.output.voice == "ash"


# --- session.update merging --------------------------------------------------------------------------------------


def _merge(session: SessionConfig, update: dict[str, Any]) -> SessionConfig:
    event = parse_client_event(json.dumps({"type": "session.update", "session": update}))
    assert event.type == "session.update"
    return session.merge(event.session)


def _td(session: SessionConfig) -> Any:
    return session.audio.input.turn_detection


def test_partial_turn_detection_keeps_its_type_and_other_fields() -> None:
    s = _merge(SessionConfig(), {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}}}})
    s = _merge(s, {"audio": {"input": {"turn_detection": {"silence_duration_ms": 800}}}})
    assert _td(s) == ServerVAD(threshold=0.7, silence_duration_ms=800)
    s = _merge(s, {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}})
    s = _merge(s, {"audio": {"input": {"turn_detection": {"interrupt_response": False}}}})
    assert _td(s) == SemanticVAD(eagerness="low", interrupt_response=False)
    assert _td(s).max_wait_ms == 8000


def test_changing_the_detector_type_starts_from_its_defaults() -> None:
    s = _merge(SessionConfig(), {"audio": {"input": {"turn_detection": {"threshold": 0.9, "create_response": False}}}})
    s = _merge(s, {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})
    s = _merge(s, {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}})
    assert _td(s) == ServerVAD()


def test_null_turn_detection_means_client_commits_and_a_partial_restarts_server_vad() -> None:
    s = _merge(SessionConfig(), {"audio": {"input": {"turn_detection": None}}})
    assert _td(s) is None
    s = _merge(s, {"audio": {"input": {"turn_detection": {"silence_duration_ms": 700}}}})
    assert _td(s) == ServerVAD(silence_duration_ms=700)


def test_a_null_field_takes_the_default_and_a_foreign_field_is_refused() -> None:
    s = _merge(SessionConfig(), {"audio": {"input": {"turn_detection": {"idle_timeout_ms": 6000}}}})
    assert _td(s).idle_timeout_ms == 6000
    s = _merge(s, {"audio": {"input": {"turn_detection": {"idle_timeout_ms": None}}}})
    assert _td(s) == ServerVAD()
    with pytest.raises(ClientEventError) as info:
        _merge(s, {"audio": {"input": {"turn_detection": {"eagerness": "high"}}}})
    assert (info.value.code, info.value.param) == ("unknown_parameter", "session.audio.input.turn_detection.eagerness")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"modalities": ["text"]}, ["text"]),
        ({"modalities": ["text", "audio"]}, ["audio"]),  # beta default: audio with its transcript
        ({"output_modalities": ["text"], "modalities": ["audio"]}, ["text"]),  # the GA key wins
        ({"output_modalities": ["audio"]}, ["audio"]),
    ],
)
def test_modalities_alias_and_normalisation(given: dict[str, Any], expected: list[str]) -> None:
    start = SessionConfig(output_modalities=["audio"] if expected == ["text"] else ["text"])
    assert _merge(start, given).output_modalities == expected


def test_absent_fields_are_kept_and_the_original_is_untouched() -> None:
    base = _merge(SessionConfig(), {"instructions": "Be brief.", "tracing": "auto",
                                    "audio": {"output": {"voice": "cedar", "speed": 1.2}}})  # fmt: skip
    s = _merge(base, {"audio": {"output": {"speed": 0.8}}})
    assert (s.instructions, s.tracing, s.audio.output.voice, s.audio.output.speed) == (
        "Be brief.",
        "auto",
        "cedar",
        0.8,
    )
    assert base.audio.output.speed == 1.2
    assert _merge(s, {}).model_dump() == s.model_dump()
    assert _merge(s, {"tracing": None}).tracing is None


def test_transcription_merges_field_by_field_and_null_turns_it_off() -> None:
    s = _merge(SessionConfig(), {"audio": {"input": {"transcription": {"language": "fr"}}}})
    assert s.audio.input.transcription == Transcription(language="fr")
    s = _merge(s, {"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    assert s.audio.input.transcription == Transcription(model="whisper-1", language="fr")
    assert _merge(s, {"audio": {"input": {"transcription": None}}}).audio.input.transcription is None


def test_formats_voices_and_beta_flat_keys() -> None:
    s = _merge(
        SessionConfig(), {"audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"voice": {"id": "tara"}}}}
    )
    assert isinstance(s.audio.input.format, PCMUFormat) and s.audio.output.voice == VoiceId(id="tara")
    assert voice_name(s.audio.output.voice) == "tara"
    s = _merge(SessionConfig(), {"input_audio_format": "g711_alaw", "output_audio_format": "pcm16", "voice": "ash",
                                 "turn_detection": {"type": "semantic_vad"}, "max_response_output_tokens": 300,
                                 "input_audio_transcription": {"model": "whisper-1"}})  # fmt: skip
    assert isinstance(s.audio.input.format, PCMAFormat) and s.audio.output.format.type == "audio/pcm"
    assert (s.audio.output.voice, s.max_output_tokens) == ("ash", 300)
    assert _td(s) == SemanticVAD() and s.audio.input.transcription == Transcription(model="whisper-1")


def test_switching_to_a_transcription_session() -> None:
    s = _merge(SessionConfig(instructions="x"), {"type": "transcription"})
    assert s.type == "transcription" and s.instructions == "x"  # kept, just not rendered
    assert "instructions" not in json.loads(se.SessionUpdatedEvent(session=s).to_json())["session"]
