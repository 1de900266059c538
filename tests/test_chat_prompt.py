"""Chat prompts: folding, trimming, and the linear trim against the plain (quadratic) algorithm.

The plain algorithm renders the whole conversation, drops the oldest user/assistant pair and
renders again until it fits; `build_chat_prompt` must give the same token ids and the same
number of dropped turns on any history (random ones here, seeded), while rendering only what it keeps.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from transformers import AutoTokenizer

from oai_server.engines.demo import DemoModels
from oai_server.errors import APIError
from oai_server.pipeline.chat_prompt import ChatPrompt, Turn, _merge, build_chat_prompt, fold_turns, render

WORDS = [
    "the",
    "a",
    "train",
    "leaves",
    "at",
    "seven",
    "o'clock",
    "so",
    "we",
    "should",
    "pack",
    "our",
    "bags",
    "and",
    "go",
    "to",
    "bed",
    "early",
    "hello",
]
WHITESPACE = ["", " ", "\n", "\t ", "\u3000", "  \n\n "]


@pytest.fixture(scope="module")
def tokenizer(demo_models: DemoModels) -> Any:
    """The demo Gemma tokenizer (byte-level BPE with Gemma's chat template)."""
    return AutoTokenizer.from_pretrained(demo_models.llm_dir)


class CountingTokenizer:
    """Wraps a tokenizer and counts the characters it was asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.encoded_chars = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.encoded_chars += len(text)
        return list(self.inner.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self.inner.decode(ids, skip_special_tokens=skip_special_tokens))

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> object:
        return self.inner.apply_chat_template(conversation, **kwargs)


def plain_build(tokenizer: Any, turns: Sequence[Turn], system_prompt: str, max_prompt_tokens: int) -> ChatPrompt:
    """The algorithm before issue 20: render, drop the oldest pair, render again."""
    system, alternating = fold_turns(turns, system_prompt)
    dropped = 0
    while True:
        ids = render(tokenizer, system, alternating)
        if len(ids) <= max_prompt_tokens:
            return ChatPrompt(ids, dropped)
        if len(alternating) <= 1:
            raise APIError(400, f"{len(ids)} tokens", param="messages", code="context_length_exceeded")
        alternating = alternating[2:] if len(alternating) > 2 else alternating[-1:]
        dropped += 2


def plain_merge(texts: list[str]) -> str:
    merged = texts[0]
    for text in texts[1:]:
        merged = f"{merged}\n\n{text}".strip()
    return merged


def random_text(rng: random.Random, longest: int) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, longest)))
    return rng.choice(WHITESPACE) + words + rng.choice(WHITESPACE)


def random_history(rng: random.Random) -> list[Turn]:
    roles = ["user", "assistant", "system", "developer"]
    weights = [5, 5, 1, 1]
    turns = [Turn(rng.choices(roles, weights)[0], random_text(rng, rng.choice((3, 30, 120)))) for _ in range(40)]
    turns = turns[: rng.randint(1, 40)]
    turns.append(Turn("user", random_text(rng, 20)))
    return turns


def outcome(build: Any) -> tuple[str, Any]:
    try:
        prompt = build()
    except APIError as error:
        return "error", (error.status, error.code, error.param)
    return "ok", (prompt.token_ids, prompt.dropped_turns)


def test_merge_equals_the_stepwise_strip() -> None:
    rng = random.Random(20)
    for _ in range(2000):
        texts = [rng.choice(WHITESPACE) + rng.choice(["", "a", "b c"]) + rng.choice(WHITESPACE) for _ in range(5)]
        texts = texts[: rng.randint(1, 5)]
        assert _merge(texts) == plain_merge(texts), texts


def test_linear_trim_matches_the_plain_algorithm_on_random_histories(tokenizer: Any) -> None:
    rng = random.Random(2024)
    errors = trimmed = 0
    for _ in range(150):
        turns = random_history(rng)
        system = rng.choice(["", "Be brief.", " ".join(WORDS)])
        limit = rng.choice((40, 120, 400, 1500))
        new = outcome(lambda: build_chat_prompt(tokenizer, turns, system, max_prompt_tokens=limit))  # noqa: B023
        old = outcome(lambda: plain_build(tokenizer, turns, system, limit))  # noqa: B023
        if old[0] == "error":
            errors += 1
            assert new[0] == "error" and new[1] == (400, "context_length_exceeded", "messages")
        else:
            trimmed += old[1][1] > 0
            assert new == old
    assert errors > 5 and trimmed > 30  # the random histories exercise both outcomes


def test_a_long_history_is_tokenized_about_once(tokenizer: Any) -> None:
    """255 messages of 4,096 characters: the work is a small multiple of the kept text, not of the history."""
    rng = random.Random(5)
    turns = [
        Turn("user" if i % 2 == 0 else "assistant", " ".join(rng.choice(WORDS) for _ in range(900))[:4096])
        for i in range(255)
    ]
    counting = CountingTokenizer(tokenizer)
    prompt = build_chat_prompt(counting, turns, "Be brief.", max_prompt_tokens=6000)
    sent = sum(len(turn.text) for turn in turns)
    assert prompt.dropped_turns > 200
    assert len(prompt.token_ids) <= 6000
    assert counting.encoded_chars < sent / 10  # the plain algorithm encodes ~ 64 x sent characters here
    kept = turns[prompt.dropped_turns :]  # the same prompt as the plain algorithm on what it keeps
    assert prompt.token_ids == render(tokenizer, "Be brief.", kept)


def test_last_turn_too_long_is_context_length_exceeded(tokenizer: Any) -> None:
    turns = [Turn("user", "hi"), Turn("assistant", "hello"), Turn("user", "go to bed early " * 400)]
    with pytest.raises(APIError) as caught:
        build_chat_prompt(tokenizer, turns, "", max_prompt_tokens=100)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "context_length_exceeded", "messages")
    assert "even after dropping the history" in caught.value.message


def test_a_conversation_that_fits_is_rendered_once(tokenizer: Any) -> None:
    """The common case costs one render (a per-request cost on the event loop), and gives the plain result."""
    turns = [Turn("user", "hi"), Turn("assistant", "hello there"), Turn("user", "tell me about the sea")]
    counting = CountingTokenizer(tokenizer)
    prompt = build_chat_prompt(counting, turns, "Be brief.", max_prompt_tokens=1500)
    assert prompt == plain_build(tokenizer, turns, "Be brief.", 1500)
    assert counting.encoded_chars == len(render_text(tokenizer, "Be brief.", turns))


def render_text(tokenizer: Any, system: str, turns: Sequence[Turn]) -> str:
    """The rendered prompt text (what one render encodes)."""
    first = turns[0]
    conversation = [{"role": "user", "content": f"{system}\n\n{first.text}"}]
    conversation += [{"role": turn.role, "content": turn.text} for turn in turns[1:]]
    return str(tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True))
