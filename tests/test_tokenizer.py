"""`codec/tokenizer.direct_encoder`: a speech prompt tokenized by the Rust tokenizer directly, only where it gives the
ids the Hugging Face wrapper gives; the speech synthesizer uses it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from oai_server.codec.orpheus import speech_prompt
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.tokenizer import DirectEncoder, direct_encoder
from oai_server.engines.demo import DemoModels
from oai_server.engines.loading import load_tokenizer
from oai_server.pipeline.speech import SpeechSynthesizer

TEXTS = [
    "Hello there!",
    "tara: <giggle> Well, 3.14 is π — isn't it?",
    "  leading and trailing  ",
    "日本語のテキストと English mixed.",
    "",
]


@pytest.mark.parametrize("model", ["tts_dir", "llm_dir"])
def test_the_demo_tokenizers_encode_directly_with_the_wrappers_ids(demo_models: DemoModels, model: str) -> None:
    tokenizer = load_tokenizer(getattr(demo_models, model))
    direct = direct_encoder(tokenizer)
    assert isinstance(direct, DirectEncoder) and direct.wrapped is tokenizer
    for text in TEXTS:
        for special in (True, False):
            assert direct.encode(text, add_special_tokens=special) == tokenizer.encode(text, add_special_tokens=special)
    ids = tokenizer.encode("Hello there!", add_special_tokens=False)
    assert direct.decode(ids) == tokenizer.decode(ids)
    assert speech_prompt(direct, "tara", TEXTS[1]) == speech_prompt(tokenizer, "tara", TEXTS[1])
    assert direct_encoder(direct) is direct  # not wrapped twice


class Wrapper:
    """A tokenizer-like object whose Rust half (`_tokenizer`) is given."""

    def __init__(self, rust: Any) -> None:
        self._tokenizer = rust

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [len(text), int(add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return ""


class Encoding:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


class Rust:
    """Encodes as `Wrapper` does, except (with `differ`) text with a digit in it."""

    def __init__(self, differ: bool) -> None:
        self.differ = differ

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoding:
        digit = self.differ and any(c.isdigit() for c in text)
        return Encoding([len(text) + digit, int(add_special_tokens)])


def test_a_rust_half_that_differs_anywhere_is_not_used() -> None:
    agreeing, differing = Wrapper(Rust(differ=False)), Wrapper(Rust(differ=True))
    assert isinstance(direct_encoder(agreeing), DirectEncoder)
    assert direct_encoder(differing) is differing  # a probe has digits: the wrapper stays
    no_rust = Wrapper(None)
    assert direct_encoder(no_rust) is no_rust
    broken = Wrapper(object())  # `_tokenizer` without `encode`
    assert direct_encoder(broken) is broken
    truncating = Rust(differ=False)
    truncating.truncation = {"max_length": 512}  # type: ignore[attr-defined]
    truncated = Wrapper(truncating)
    assert direct_encoder(truncated) is truncated  # the probes agree, but a long prompt would be cut


def test_the_speech_synthesizer_tokenizes_prompts_directly(demo_models: DemoModels) -> None:
    tokenizer = load_tokenizer(demo_models.tts_dir)
    synthesizer = SpeechSynthesizer(
        None,  # type: ignore[arg-type]
        tokenizer,
        None,  # type: ignore[arg-type]
        windows=WindowPolicy(),
        tokens_per_char=8.0,
        max_tokens=1024,
        max_model_len=2048,
    )
    assert isinstance(synthesizer.tokenizer, DirectEncoder)
    assert synthesizer.prompt_ids("Hello there!", "tara") == speech_prompt(tokenizer, "tara", "Hello there!")
