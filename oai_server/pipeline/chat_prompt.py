"""Gemma chat prompts: fold system text, merge and alternate roles, trim to the context.

Gemma's template has no system role and needs strictly alternating user/model turns that
start with a user turn. So system and developer texts (the configured voice-style prompt
first) are folded into the first user turn, consecutive messages of one role are merged, and
the oldest user/assistant pairs are dropped until the prompt fits, never the system text or
the last user turn.

The work is linear in the history: a conversation short enough is rendered whole once, and kept
when it fits (most do); otherwise which pairs to drop is estimated from token counts of the turns
(each tokenized once, newest first, stopping once the context is full), then confirmed by
rendering only the kept turns. The result is the one of the plain algorithm (render, drop the
oldest pair, render again, ...): the fewest pairs dropped for the prompt to fit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ..codec.tokenizer import TextTokenizer
from ..errors import APIError, invalid

_ROLE_MAP = {"user": "user", "assistant": "assistant"}

WHOLE_RENDER_CHARS_PER_TOKEN = 4
"""A conversation of at most this many characters per prompt token of context is rendered whole first: most
conversations fit, and one render is a third of the estimate's three (each ~80 us with the Gemma template), while
a render of everything still costs at most a few times what fits."""


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
    runs: list[tuple[str, list[str]]] = []  # consecutive messages of one role, merged below
    for turn in turns:
        if turn.role in ("system", "developer"):
            if turn.text.strip():
                system_parts.append(turn.text.strip())
            continue
        role = _ROLE_MAP.get(turn.role)
        if role is None:
            raise invalid(f"Messages with role '{turn.role}' are not supported.", "messages", "unsupported_value")
        if runs and runs[-1][0] == role:
            runs[-1][1].append(turn.text)
        else:
            runs.append((role, [turn.text]))
    merged = [Turn(role, _merge(texts)) for role, texts in runs]
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


def _merge(texts: list[str]) -> str:
    """`texts` merged as `strip(strip(t0 + "\\n\\n" + t1) + "\\n\\n" + t2)...`, in linear time.

    Only the ends of the running text change at each step, so it is kept as a deque of pieces
    whose ends are stripped in place; a piece's whitespace is scanned once from each side.
    """
    if len(texts) == 1:
        return texts[0]  # a lone message is not stripped (the template trims it)
    pieces = deque([texts[0]])
    for text in texts[1:]:
        pieces.append("\n\n")
        pieces.append(text)
        while pieces and (not pieces[0] or pieces[0][0].isspace()):
            head = pieces[0].lstrip()
            if head:
                pieces[0] = head
                break
            pieces.popleft()
        while pieces and (not pieces[-1] or pieces[-1][-1].isspace()):
            tail = pieces[-1].rstrip()
            if tail:
                pieces[-1] = tail
                break
            pieces.pop()
    return "".join(pieces)


def _count(tokenizer: ChatTemplateTokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def _estimate_dropped_pairs(
    tokenizer: ChatTemplateTokenizer, system: str, turns: Sequence[Turn], max_prompt_tokens: int
) -> int:
    """How many of the oldest user/assistant pairs to drop, from per-turn token counts.

    Turns are counted newest first and counting stops once the context is full, so a long history
    costs what fits in the context, not what was sent. Only an estimate: the caller confirms it.
    """
    last = len(turns) - 1
    fixed = len(render(tokenizer, system, [Turn("user", "")]))
    pair_overhead = len(render(tokenizer, system, [Turn("user", ""), Turn("assistant", ""), Turn("user", "")])) - fixed
    total = fixed + _count(tokenizer, turns[last].text.strip())
    dropped = last // 2
    while dropped > 0:
        user, assistant = turns[2 * dropped - 2], turns[2 * dropped - 1]
        total += pair_overhead + _count(tokenizer, user.text.strip()) + _count(tokenizer, assistant.text.strip())
        if total > max_prompt_tokens:
            break
        dropped -= 1
    return dropped


def build_chat_prompt(
    tokenizer: ChatTemplateTokenizer,
    turns: Sequence[Turn],
    system_prompt: str,
    *,
    max_prompt_tokens: int,
) -> ChatPrompt:
    """Render the conversation without its oldest user/assistant pairs, as few dropped as fit.

    Same result as rendering, dropping the oldest pair and rendering again until the prompt fits
    (assuming a shorter history never renders longer), but the renders cover only kept turns.
    """
    system, alternating = fold_turns(turns, system_prompt)
    most = (len(alternating) - 1) // 2

    def kept(pairs_dropped: int) -> list[int]:
        return render(tokenizer, system, alternating[2 * pairs_dropped :])

    size = len(system) + sum(len(turn.text) for turn in alternating)
    if size <= WHOLE_RENDER_CHARS_PER_TOKEN * max_prompt_tokens:  # costs about what fits: try the whole first
        ids = kept(0)
        if len(ids) <= max_prompt_tokens:
            return ChatPrompt(ids, 0)
    dropped = _estimate_dropped_pairs(tokenizer, system, alternating, max_prompt_tokens)
    ids = kept(dropped)
    while len(ids) > max_prompt_tokens and dropped < most:
        dropped += 1
        ids = kept(dropped)
    if len(ids) > max_prompt_tokens:
        raise APIError(
            400,
            f"This model's maximum context length is {max_prompt_tokens} tokens for the prompt, "
            f"but your messages resulted in {len(ids)} tokens even after dropping the history. "
            "Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    while dropped > 0:  # the estimate may have dropped more than needed
        longer = kept(dropped - 1)
        if len(longer) > max_prompt_tokens:
            break
        dropped, ids = dropped - 1, longer
    return ChatPrompt(ids, 2 * dropped)
