"""Real responses of the demo server, validated against OpenAI's published OpenAPI schemas and our own.

The schemas are the subset of github.com/openai/openai-openapi vendored in `tests/data/openai-openapi/`
(provenance and MIT license there). Every body a client can get is checked: chat completions whole and
streamed (text and audio, every chunk), `/v1/models` and `/v1/models/{id}`, error envelopes (validation,
bad JSON, unknown model card, unknown route, wrong method), and the speech SSE events. Each body is also
checked against the component this server's own `/openapi.json` documents for it (those models forbid
extra keys), so what is documented is what is sent.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from .conftest import LiveServer

SPEC = Path(__file__).parent / "data" / "openai-openapi" / "schemas.json"
CHAT = [{"role": "user", "content": "Tell me a short story."}]
AUDIO = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}


def openapi_3_0_nullable(node: Any) -> Any:
    """The schema with OpenAPI 3.0's `nullable: true` (still in places of the 3.1 document) as JSON Schema."""
    if isinstance(node, list):
        return [openapi_3_0_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: openapi_3_0_nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@cache
def openai_components() -> dict[str, Any]:
    return openapi_3_0_nullable(json.loads(SPEC.read_text())["components"])  # type: ignore[no-any-return]


def check(components: dict[str, Any], name: str, body: Any) -> None:
    """Validate `body` against `#/components/schemas/<name>` of a document with `components`."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": components}
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


@pytest.fixture(scope="module")
def ours(live_server: LiveServer) -> dict[str, Any]:
    """The components of this server's own OpenAPI document."""
    schema = httpx.get(f"{live_server.url}/openapi.json", timeout=30).json()
    return schema["components"]  # type: ignore[no-any-return]


def both(ours: dict[str, Any], openai_name: str, our_name: str, body: Any) -> None:
    check(openai_components(), openai_name, body)
    check(ours, our_name, body)


def post(server: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    response = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response


def sse_data(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON of every `data:` line (not `[DONE]`)."""
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("extra", [{}, {**AUDIO, "audio": {"voice": "alloy", "format": "wav"}}], ids=["text", "audio"])
def test_whole_chat_completion(live_server: LiveServer, ours: dict[str, Any], extra: dict[str, Any]) -> None:
    body = post(live_server, "/v1/chat/completions", {"model": "demo-gemma-2", "messages": CHAT, "seed": 1, **extra})
    completion = body.json()
    both(ours, "CreateChatCompletionResponse", "ChatCompletion", completion)
    assert "system_fingerprint" not in completion  # the spec types it as a string; there is none to report


@pytest.mark.parametrize("extra", [{}, AUDIO], ids=["text", "audio"])
def test_every_chunk_of_a_streamed_chat(live_server: LiveServer, ours: dict[str, Any], extra: dict[str, Any]) -> None:
    request = {"model": "demo-gemma-2", "messages": CHAT, "seed": 1, "max_tokens": 24, "stream": True, **extra}
    chunks = sse_data(post(live_server, "/v1/chat/completions", {**request, "stream_options": {"include_usage": True}}))
    assert len(chunks) > 3 and chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    for chunk in chunks:
        both(ours, "CreateChatCompletionStreamResponse", "ChatCompletionChunk", chunk)
    plain = sse_data(post(live_server, "/v1/chat/completions", request))
    assert all("usage" not in chunk for chunk in plain)
    for chunk in plain:
        both(ours, "CreateChatCompletionStreamResponse", "ChatCompletionChunk", chunk)


def test_models_list_and_card(live_server: LiveServer, ours: dict[str, Any]) -> None:
    listing = httpx.get(f"{live_server.url}/v1/models", timeout=30).json()
    both(ours, "ListModelsResponse", "ModelList", listing)
    for card in listing["data"]:
        retrieved = httpx.get(f"{live_server.url}/v1/models/{card['id']}", timeout=30).json()
        assert retrieved == card
        both(ours, "Model", "ModelCard", retrieved)


@pytest.mark.parametrize("fmt", ["pcm", "mp3"])
def test_speech_sse_events(live_server: LiveServer, ours: dict[str, Any], fmt: str) -> None:
    request = {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": fmt}
    events = sse_data(post(live_server, "/v1/audio/speech", {**request, "stream_format": "sse"}))
    assert [event["type"] for event in events][-1] == "speech.audio.done"
    for event in events:
        check(openai_components(), "CreateSpeechResponseStreamEvent", event)
        check(ours, "SpeechAudioDelta" if event["type"] == "speech.audio.delta" else "SpeechAudioDone", event)


ERRORS = [
    ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "input": "Hi", "voice": "nobody"}}, 400),
    ("POST", "/v1/audio/speech", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
    ("POST", "/v1/chat/completions", {"json": {"model": "tts-1", "messages": CHAT}}, 400),
    ("POST", "/v1/chat/completions", {"json": {"model": "demo-gemma-2", "messages": []}}, 400),
    ("GET", "/v1/models/org%2Fnope", {}, 404),
    ("GET", "/v1/nothing", {}, 404),
    ("GET", "/v1/audio/speech", {}, 405),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), ERRORS)
def test_error_envelopes(
    live_server: LiveServer, ours: dict[str, Any], method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = httpx.request(method, f"{live_server.url}{path}", timeout=30, **kwargs)
    assert response.status_code == status
    both(ours, "ErrorResponse", "ErrorResponse", response.json())


def test_our_schema_documents_the_models(ours: dict[str, Any], live_server: LiveServer) -> None:
    """The routes point at the model components (no hand-written copies)."""
    paths = httpx.get(f"{live_server.url}/openapi.json", timeout=30).json()["paths"]
    chat = paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert chat["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    item = chat["text/event-stream"]["itemSchema"]["properties"]["data"]["anyOf"][1]["contentSchema"]["anyOf"]
    assert {"$ref": "#/components/schemas/ChatCompletionChunk"} in item
    speech = paths["/v1/audio/speech"]["post"]["responses"]["200"]["content"]["text/event-stream"]["itemSchema"]
    refs = speech["properties"]["data"]["contentSchema"]["anyOf"]
    assert {"$ref": "#/components/schemas/SpeechAudioDelta"} in refs
    models = paths["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert models == {"$ref": "#/components/schemas/ModelList"}
    for name in ("ChatCompletionChunk", "SpeechAudioDelta", "SpeechAudioDone", "ModelCard", "ErrorResponse"):
        assert name in ours["schemas"], name
