"""Re-extract `schemas.json` from a checkout of github.com/openai/openai-openapi (see README.md).

Usage: python extract.py /path/to/openai-openapi/openapi.json > schemas.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "CreateSpeechResponseStreamEvent",
)


def refs(node: Any) -> Iterator[str]:
    """Every `$ref` below `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def closure(schemas: dict[str, Any]) -> dict[str, Any]:
    """The roots and every schema they refer to, transitively."""
    seen: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen[name] = schemas[name]
            todo.extend(ref.rsplit("/", 1)[-1] for ref in refs(schemas[name]))
    return dict(sorted(seen.items()))


if __name__ == "__main__":
    spec = json.load(open(sys.argv[1]))  # noqa: SIM115
    subset = {
        "openapi": spec["openapi"],
        "info": spec["info"],
        "components": {"schemas": closure(spec["components"]["schemas"])},
    }
    json.dump(subset, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")
