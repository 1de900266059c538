"""Shared pieces of the Realtime wire types: ids, the two model bases, tagged unions, error mapping.

Client (input) models are strict (a string is not an int, `0` is not `false`) and ignore unknown
keys, so newer clients keep working; server (output) models forbid unknown keys so a typo in our
own code fails at construction. Nested unions use callable discriminators whose tags start with
`=`: pydantic puts the tag into an error's location, and `param_path` drops exactly those, so an
error names the parameter the client sent (`item.content[0].text`), never our union machinery.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Discriminator, ValidationError

from oai_server.errors import APIError

_TAG = "="
_UNION_ERROR = "invalid_union_member"
_KIND_ERROR = "invalid_kind"


def new_id(prefix: str) -> str:
    """An OpenAI-style id: `prefix_` + 20 hex digits (`event_…`, `item_…`, `resp_…`, `sess_…`)."""
    return f"{prefix}_{secrets.token_hex(10)}"


class ClientModel(BaseModel):
    """Base of everything parsed from a client: strict types, unknown keys ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class ServerModel(BaseModel):
    """Base of everything we send: unknown keys are a bug in our code."""

    model_config = ConfigDict(extra="forbid")


def tag(value: str) -> str:
    """The union tag for a discriminator value (see the module docstring)."""
    return _TAG + value


def discriminate(key: str, aliases: dict[str, str] | None = None) -> Discriminator:
    """A discriminator on `obj[key]` (dicts and models alike) with beta spellings mapped by `aliases`.

    An absent or unknown value gives `None`, which pydantic reports as `union_tag_not_found`
    (mapped to `missing_required_parameter` / `invalid_value` by `client_error`).
    """
    aliases = aliases or {}

    def pick(obj: Any) -> str | None:
        value = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
        if not isinstance(value, str):
            return None
        return tag(aliases.get(value, value))

    # the key travels in the error type (a context dict would make the type unhashable in unions)
    return Discriminator(
        pick,
        custom_error_type=f"{_UNION_ERROR}:{key}",
        custom_error_message=f"'{key}' is missing or not one of the accepted values",
    )


def _json_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return tag("boolean")
    if isinstance(value, int):
        return tag("integer")
    if isinstance(value, float):
        return tag("number")
    if isinstance(value, str):
        return tag("string")
    if isinstance(value, dict | BaseModel):
        return tag("object")
    if isinstance(value, list):
        return tag("array")
    return None


def by_kind(expected: str) -> Discriminator:
    """A discriminator on the JSON kind of the value (`integer`, `string`, `object`, …; tags via `tag`).

    For unions like `int | "inf"` or `"auto" | {…}`: without it pydantic's smart union puts
    member labels (`constrained-int`, `literal['inf']`) into error locations. A kind no member
    takes is an `invalid_type` error saying `expected`.
    """
    return Discriminator(_json_kind, custom_error_type=_KIND_ERROR, custom_error_message=f"expected {expected}")


def param_path(loc: Sequence[int | str]) -> str | None:
    """`('item', 'content', 0, 'text')` → `item.content[0].text`; union tags are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith(_TAG):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or None


_MISSING = frozenset({"missing"})
_WRONG_TYPE = frozenset(
    {
        "string_type",
        "int_type",
        "float_type",
        "bool_type",
        "list_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
        "int_from_float",
        "none_required",
        "is_instance_of",
    }
)


def client_error(exc: ValidationError, prefix: Sequence[str] = (), event_id: str | None = None) -> ClientEventError:
    """The first validation error as an OpenAI-style `invalid_request_error` naming its parameter."""
    first = exc.errors(include_url=False)[0]
    loc = (*prefix, *first["loc"])
    kind = first["type"]
    if kind.startswith(_UNION_ERROR + ":"):
        # the discriminator key is the one thing such a union can complain about: name it
        key = kind.split(":", 1)[1]
        path = param_path(loc)
        tag_param = f"{path}.{key}" if path else key
        value = first["input"].get(key) if isinstance(first.get("input"), dict) else None
        if value is None:
            return ClientEventError(
                f"Missing required parameter: '{tag_param}'.", tag_param, "missing_required_parameter", event_id
            )
        return ClientEventError(
            f"Invalid value for '{tag_param}': {value!r} is not one of the accepted values.",
            tag_param,
            "invalid_value",
            event_id,
        )
    param = param_path(loc)
    if kind == _KIND_ERROR:
        return ClientEventError(f"Invalid type for '{param}': {first['msg']}.", param, "invalid_type", event_id)
    if kind in _MISSING:
        return ClientEventError(
            f"Missing required parameter: '{param}'.", param, "missing_required_parameter", event_id
        )
    if kind in _WRONG_TYPE:
        return ClientEventError(f"Invalid type for '{param}': {first['msg']}.", param, "invalid_type", event_id)
    message = first["msg"].removeprefix("Value error, ")
    return ClientEventError(f"Invalid value for '{param}': {message}.", param, "invalid_value", event_id)


class ClientEventError(APIError):
    """A client event we cannot apply: the session answers it with an `error` event and goes on.

    `param` names the offending parameter (`session.audio.input.format.type`), `code` is
    OpenAI's (`invalid_value`, `invalid_type`, `missing_required_parameter`, `invalid_json`, …)
    and `event_id` is the client's own `event_id`, echoed in `error.event_id` so clients can
    match the error to what they sent (pipecat, LiveKit and the Agents SDK all do).
    """

    def __init__(self, message: str, param: str | None, code: str | None, event_id: str | None = None) -> None:
        super().__init__(400, message, param=param, code=code)
        self.event_id = event_id


class UnknownEventType(ClientEventError):
    """A client event whose `type` is not one we accept; `event_type` is the offending value."""

    def __init__(self, event_type: str, accepted: Sequence[str], event_id: str | None = None) -> None:
        names = ", ".join(f"'{t}'" for t in accepted)
        super().__init__(
            f"Invalid value: '{event_type}'. Supported values are: {names}.", "type", "invalid_value", event_id
        )
        self.event_type = event_type
