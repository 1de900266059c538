"""Which model ids each endpoint answers to, and what an id nobody serves gets.

Each endpoint serves one model under its own id (`--llm-served-name`, `--tts-served-name`) and
OpenAI's names as aliases (listed by `/v1/models`). Off-the-shelf clients send their own defaults
(LiveKit's `openai.LLM` `gpt-4.1`, the Agents SDK its newest GPT, Orpheus-FastAPI clients
`orpheus`), so by default any other id is served too, by the endpoint's model, and a response
that names a model names the one that served it. `--strict-model-names` answers those ids with
OpenAI's 404 `model_not_found` instead. An id of the other endpoint (`tts-1` on chat) is always a
400 that lists the ids this endpoint serves: the client picked the wrong endpoint, not a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import APIError, model_not_found
from ..settings import Settings

CHAT_MODEL_ALIASES = ("gpt-4o-audio-preview", "gpt-4o-mini-audio-preview", "gpt-audio", "gpt-audio-mini")
SPEECH_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")

Endpoint = Literal["chat", "speech"]
PATHS: dict[Endpoint, str] = {"chat": "/v1/chat/completions", "speech": "/v1/audio/speech"}


@dataclass(frozen=True)
class ModelNames:
    """The ids of both endpoints and the policy for the rest."""

    chat: tuple[str, ...]
    """The chat model's id first, then its aliases."""
    speech: tuple[str, ...]
    """The speech model's id first, then its aliases."""
    strict: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelNames:
        """The ids a server with `settings` serves."""
        chat = tuple(dict.fromkeys((settings.chat_model_id, *CHAT_MODEL_ALIASES)))
        speech = tuple(dict.fromkeys((settings.speech_model_id, *SPEECH_MODEL_ALIASES)))
        return cls(chat, speech, settings.strict_model_names)

    def ids(self, endpoint: Endpoint) -> tuple[str, ...]:
        """The ids `endpoint` lists."""
        return self.chat if endpoint == "chat" else self.speech

    def resolve(self, requested: str, endpoint: Endpoint) -> str:
        """The id of the model that serves `requested` on `endpoint` (raises the 400 or, strict, the 404)."""
        own = self.ids(endpoint)
        if requested in own:
            return own[0]
        other: Endpoint = "speech" if endpoint == "chat" else "chat"
        if requested in self.ids(other):
            raise APIError(
                400,
                f"The model `{requested}` is a {other} model: use it with {PATHS[other]}. {PATHS[endpoint]} "
                f"serves {', '.join(own)}" + ("." if self.strict else " (and any other id, with its own model)."),
                param="model",
                code="unsupported_value",
            )
        if self.strict:
            raise model_not_found(requested)
        return own[0]
