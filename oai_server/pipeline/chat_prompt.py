"""Gemma chat prompts: fold system text, merge and alternate roles, trim to the context.

Gemma's template has no system role and needs strictly alternating user/model turns that
start with a user turn. So system and developer texts (the configured voice-style prompt
first) are folded into the first user turn, consecutive messages of one role are merged, and
the oldest user/assistant pairs are dropped until the prompt fits, never the system text or
the last user turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..codec.tokenizer import TextTokenizer
from ..errors import APIError, invalid

_ROLE_MAP = {"user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Turn:
    """One history entry after text resolution: role is system, developer, user or assistant."""

    role: str
    text: str
    spoken: str = ""
    """The part of ``text`` transcribed from the user's audio (counted as audio input in usage)."""


@dataclass(frozen=True)
class ChatPrompt:
    """The token ids to send and how many turns were dropped to fit."""

    token_ids: list[int]
    dropped_turns: int


class ChatTemplateTokenizer(TextTokenizer):
    """A tokenizer with a chat template (Hugging Face's `apply_chat_template`)."""

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: object) -> object:
        """Render the conversation."""
        ...


def fold_turns(turns: Sequence[Turn], system_prompt: str) -> tuple[str, list[Turn]]:
    """Split into (system text, alternating user/assistant turns starting and ending with user)."""
    system_parts = [system_prompt.strip()] if system_prompt.strip() else []
    merged: list[Turn] = []
    for turn in turns:
        if turn.role in ("system", "developer"):
            if turn.text.strip():
                system_parts.append(turn.text.strip())
            continue
        role = _ROLE_MAP.get(turn.role)
        if role is None:
            raise invalid(f"Messages with role '{turn.role}' are not supported.", "messages", "unsupported_value")
        if merged and merged[-1].role == role:
            merged[-1] = Turn(role, f"{merged[-1].text}\n\n{turn.text}".strip())
        else:
            merged.append(Turn(role, turn.text))
    if not merged or merged[-1].role != "user":
        raise invalid("The last message must be a user message.", "messages", "invalid_value")
    if merged[0].role != "user":
        merged.insert(0, Turn("user", ""))
    return "\n\n".join(system_parts), merged


def render(tokenizer: ChatTemplateTokenizer, system: str, turns: Sequence[Turn]) -> list[int]:
    """Token ids of the conversation with the system text folded into the first user turn."""
    conversation = []
    for index, turn in enumerate(turns):
        text = turn.text
        if index == 0 and system:
            text = f"{system}\n\n{text}" if text.strip() else system
        conversation.append({"role": turn.role, "content": text})
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert isinstance(rendered, str)
    return tokenizer.encode(rendered, add_special_tokens=False)


def build_chat_prompt(
    tokenizer: ChatTemplateTokenizer,
    turns: Sequence[Turn],
    system_prompt: str,
    *,
    max_prompt_tokens: int,
) -> ChatPrompt:
    """Render the conversation, dropping the oldest user/assistant pairs until it fits."""
    system, alternating = fold_turns(turns, system_prompt)
    dropped = 0
    while True:
        ids = render(tokenizer, system, alternating)
        if len(ids) <= max_prompt_tokens:
            return ChatPrompt(ids, dropped)
        if len(alternating) <= 1:
            raise APIError(
                400,
                f"This model's maximum context length is {max_prompt_tokens} tokens for the prompt, "
                f"but your messages resulted in {len(ids)} tokens even after dropping the history. "
                "Please reduce the length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        alternating = alternating[2:] if len(alternating) > 2 else alternating[-1:]
        dropped += 2
