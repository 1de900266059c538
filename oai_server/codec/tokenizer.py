"""The slice of a Hugging Face tokenizer that the engines and pipelines use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

PROBES = ("tara: Hello there, how are you? I'm fine.", "leo: 12 345 ümlaut café, 你好。 <laugh> ok\n  two  spaces")
"""Texts a tokenizer's Rust half must encode exactly as its Python wrapper before `direct_encoder` uses it."""


class TextTokenizer(Protocol):
    """The slice of a Hugging Face tokenizer the pipelines use."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`."""
        ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`."""
        ...


class DirectEncoder:
    """A Hugging Face fast tokenizer whose `encode` calls its Rust tokenizer directly. The wrapper sends one text
    through ``encode_batch`` and builds a ``BatchEncoding`` around it: ~49 µs against ~25 µs for a speech prompt,
    on the event loop of every request. `decode` stays the wrapper's."""

    def __init__(self, tokenizer: TextTokenizer, rust: Any) -> None:
        self.wrapped = tokenizer
        self._rust = rust

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, as the wrapper's `encode` gives them."""
        ids: list[int] = self._rust.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (the wrapper's)."""
        return self.wrapped.decode(ids, skip_special_tokens=skip_special_tokens)


def direct_encoder(tokenizer: TextTokenizer) -> TextTokenizer:
    """`tokenizer` as a `DirectEncoder` when it has a Rust tokenizer (``_tokenizer``) that encodes every probe as the
    wrapper does, with and without special tokens, and truncates and pads nothing (the wrapper turns a tokenizer.json's
    truncation and padding off for a plain `encode`; short probes would not show a truncation); else `tokenizer`."""
    rust = getattr(tokenizer, "_tokenizer", None)
    if rust is None or isinstance(tokenizer, DirectEncoder):
        return tokenizer
    if getattr(rust, "truncation", None) is not None or getattr(rust, "padding", None) is not None:
        return tokenizer
    direct = DirectEncoder(tokenizer, rust)
    try:
        same = all(
            direct.encode(text, special) == list(tokenizer.encode(text, add_special_tokens=special))
            for text in PROBES
            for special in (True, False)
        )
    except Exception:  # a tokenizer-like object whose `_tokenizer` is something else
        return tokenizer
    return direct if same else tokenizer
