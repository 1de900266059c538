"""The base of every response body: a pydantic model that builds the JSON and documents it.

A field whose default is `MISSING` is an optional key: it leaves the JSON unless it was given
(`delta.audio.id` only in the first audio delta, `usage` only with `include_usage`), and the
OpenAPI schema lists it as not required. Every other field is always sent, and required.
"""

from __future__ import annotations

from typing import Any

from pydantic import MISSING, BaseModel, ConfigDict


def _sent_fields_are_required(schema: dict[str, Any], model: type[BaseModel]) -> None:
    required = [field.alias or name for name, field in model.model_fields.items() if field.default is not MISSING]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)


class WireModel(BaseModel):
    """A response body (or part of one)."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, json_schema_extra=_sent_fields_are_required
    )

    def wire(self) -> dict[str, Any]:
        """The JSON object as sent (optional keys only when given)."""
        return self.model_dump(mode="json")
