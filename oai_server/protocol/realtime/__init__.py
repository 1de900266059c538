"""The OpenAI Realtime API (GA) over WebSocket: client events parsed, server events built, session config.

Modules: `base` (ids, model bases, errors), `audio` (formats, turn detection, transcription,
voice), `session` (`SessionConfig` and partial `session.update` merging), `items`
(conversation items), `responses` (`response.create` params, the response object, usage),
`client_events` (`parse_client_event`), `server_events` (every event we send).
"""

from .audio import (
    AudioFormat,
    PCMAFormat,
    PCMFormat,
    PCMUFormat,
    SemanticVAD,
    ServerVAD,
    Transcription,
    TurnDetection,
    VoiceId,
    voice_name,
)
from .base import ClientEventError, UnknownEventType, new_id
from .client_events import CLIENT_EVENT_TYPES, ClientEvent, client_event_from_dict, parse_client_event
from .items import (
    AssistantMessage,
    ContentPart,
    ConversationItem,
    FunctionCall,
    FunctionCallOutput,
    InputAudio,
    InputText,
    Item,
    ItemReference,
    OutputAudio,
    OutputText,
    SystemMessage,
    UserMessage,
)
from .responses import Response, ResponseCreateParams, StatusDetails, Usage
from .server_events import SERVER_EVENT_TYPES, ErrorDetail, ErrorEvent, ServerEvent, server_event_adapter
from .session import SessionConfig, SessionUpdate, merge_turn_detection

__all__ = [
    "CLIENT_EVENT_TYPES",
    "SERVER_EVENT_TYPES",
    "AssistantMessage",
    "AudioFormat",
    "ClientEvent",
    "ClientEventError",
    "ContentPart",
    "ConversationItem",
    "ErrorDetail",
    "ErrorEvent",
    "FunctionCall",
    "FunctionCallOutput",
    "InputAudio",
    "InputText",
    "Item",
    "ItemReference",
    "OutputAudio",
    "OutputText",
    "PCMAFormat",
    "PCMFormat",
    "PCMUFormat",
    "Response",
    "ResponseCreateParams",
    "SemanticVAD",
    "ServerEvent",
    "ServerVAD",
    "SessionConfig",
    "SessionUpdate",
    "StatusDetails",
    "SystemMessage",
    "Transcription",
    "TurnDetection",
    "UnknownEventType",
    "Usage",
    "UserMessage",
    "VoiceId",
    "client_event_from_dict",
    "merge_turn_detection",
    "new_id",
    "parse_client_event",
    "server_event_adapter",
    "voice_name",
]
