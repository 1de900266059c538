"""Chat completion responses: the whole `chat.completion` and the streamed `chat.completion.chunk`.

Shapes and field order follow OpenAI's reference (`CreateChatCompletionResponse`,
`CreateChatCompletionStreamResponse`: https://platform.openai.com/docs/api-reference/chat/object);
`tests/test_openapi_conformance.py` validates real responses against OpenAI's published schema.
`system_fingerprint` is not sent: the spec types it as a string, and this server has no backend
fingerprint to report.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import MISSING, Field

from .wire import WireModel

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class PromptTokensDetails(WireModel):
    """Breakdown of the prompt's tokens (all text here)."""

    cached_tokens: int = 0
    audio_tokens: int = 0
    text_tokens: int


class CompletionTokensDetails(WireModel):
    """Breakdown of the generated tokens: text (the LLM) and audio (Orpheus)."""

    reasoning_tokens: int = 0
    audio_tokens: int
    text_tokens: int
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class CompletionUsage(WireModel):
    """`usage`: completion tokens are text + audio tokens."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails

    @classmethod
    def of(
        cls, prompt_tokens: int, text_tokens: int, audio_tokens: int, audio_prompt_tokens: int = 0
    ) -> CompletionUsage:
        """The usage of a reply; `audio_prompt_tokens` of the prompt came from spoken messages."""
        completion = text_tokens + audio_tokens
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            total_tokens=prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(
                audio_tokens=audio_prompt_tokens, text_tokens=prompt_tokens - audio_prompt_tokens
            ),
            completion_tokens_details=CompletionTokensDetails(audio_tokens=audio_tokens, text_tokens=text_tokens),
        )


class MessageAudio(WireModel):
    """`message.audio` of a spoken reply: the whole file in the requested format, base64."""

    id: str
    data: str
    expires_at: int
    """Unix seconds until which `id` can stand for this reply in later turns."""
    transcript: str


class AssistantMessage(WireModel):
    """`choices[0].message`. A spoken reply has `content: null` and its text in `audio.transcript`."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    annotations: list[Any] = Field(default_factory=list)
    audio: MessageAudio | MISSING = MISSING


class Choice(WireModel):
    """The one choice of a completion (`n` is always 1)."""

    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(WireModel):
    """A non-streamed chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    """The id of the model that answered (the served id, whatever id the request named)."""
    choices: list[Choice]
    usage: CompletionUsage


class DeltaAudio(WireModel):
    """`delta.audio` (not in OpenAI's published schema, but sent by its API): each key only when it changes.

    The first audio delta carries `id` (exactly once), later ones `transcript` pieces or `data` (base64 of
    whole 16-bit samples, decodable on its own), and the last one only `expires_at`.
    """

    id: str | MISSING = MISSING
    data: str | MISSING = MISSING
    expires_at: int | MISSING = MISSING
    transcript: str | MISSING = MISSING


class ChoiceDelta(WireModel):
    """`choices[0].delta`: only the keys that changed."""

    role: Literal["assistant"] | MISSING = MISSING
    content: str | MISSING | None = MISSING
    refusal: str | MISSING | None = MISSING
    audio: DeltaAudio | MISSING = MISSING


class ChunkChoice(WireModel):
    """The one choice of a chunk."""

    index: int = 0
    delta: ChoiceDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(WireModel):
    """One streamed chunk. With `stream_options.include_usage`, every chunk has `usage: null` but the
    last, which has empty `choices` and the whole usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | MISSING | None = MISSING
