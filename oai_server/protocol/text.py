"""Text that enters the server must be Unicode scalar values: lone surrogates are a 400, not a 5xx.

JSON can carry `"\\ud800"`, an unpaired UTF-16 surrogate; Python decodes it into a `str` that
cannot be encoded as UTF-8, so it breaks whatever touches it later (a tokenizer, an error message
echoing it, the response encoder). Every request field that carries text is annotated with
`ValidText` (or `TEXT_CHECK` on a union or container type): the raw value, with every string
nested in it (dict keys too), is checked before anything else, and a bad one fails validation at
that field, which the edge turns into a 400 envelope naming the parameter (`messages[0].content`).
NUL, control and combining characters are valid scalar values and pass.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

_SURROGATE = re.compile("[\ud800-\udfff]")

INVALID_TEXT_MESSAGE = (
    "The text is not valid Unicode: it contains a lone surrogate (an unpaired UTF-16 code unit), "
    "which cannot be encoded as UTF-8."
)


def is_valid_text(text: str) -> bool:
    """Whether `text` is all Unicode scalar values (encodable as UTF-8)."""
    return text.isascii() or _SURROGATE.search(text) is None


def has_invalid_text(value: Any) -> bool:
    """Whether `value` is, or contains (in lists, tuples and dicts, keys included), a string that is not valid."""
    # Per item, not per character: an ASCII string (a base64 audio part of megabytes too) is checked
    # in O(1), and bodies big enough to make the walk slow are refused first (`--max-json-values`).
    stack = [value]  # iterative: a deeply nested value must not hit the recursion limit
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not is_valid_text(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def reject_invalid_text(value: Any) -> Any:
    """Pydantic before-validator: the raw value unchanged, or a validation error `invalid_unicode`."""
    if has_invalid_text(value):
        raise PydanticCustomError("invalid_unicode", INVALID_TEXT_MESSAGE)
    return value


TEXT_CHECK = BeforeValidator(reject_invalid_text)
"""Annotate any text-carrying field type with it: `Annotated[str | VoiceId, TEXT_CHECK]`."""

ValidText = Annotated[str, TEXT_CHECK]
"""A request string that must be valid Unicode (a 400 naming the field otherwise)."""
