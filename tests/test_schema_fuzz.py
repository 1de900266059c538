"""Property-based fuzzing of the app's whole OpenAPI schema with schemathesis, on a real server.

The schema is loaded from the running app (`/openapi.json` of `create_app` on the real demo
engines, served over loopback), and every operation in it gets positive (schema-valid) and
negative (schema-violating) cases from schemathesis' Hypothesis strategies. Every response
must pass:

- `not_a_server_error`: no 5xx, and no stream that breaks after its 200 (a cut body fails the call);
- `status_code_conformance`: only documented statuses (errors are declared with `ERROR_RESPONSES`);
- `content_type_conformance`: only documented content types (each audio format, SSE, JSON);
- `response_schema_conformance`: JSON bodies and every SSE event match the schema, including the
  JSON inside each event's `data` (`contentSchema`), and every error is the OpenAI envelope.

Each call has a 30 s timeout, so a hang fails the case instead of the suite. Half of the
generated bodies are "repaired" to name a served model and voice (and a `max_tokens` within
the server's bound), so the fuzzed text, speeds, temperatures, seeds, messages and stop lists
reach real generation and streaming, not only validation. Generation is derandomized, so the
case count is stable: the test prints it and asserts a floor.
"""

from __future__ import annotations

import collections
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from oai_server.engines.demo import DemoModels

from .conftest import LiveServer, demo_settings, start_server
from .speech_audio import compose, encode

EXAMPLES = int(os.environ.get("OAI_FUZZ_EXAMPLES", "50"))
"""Hypothesis examples per operation and generation mode (raise it for a longer local run)."""
MIN_CASES = 10 * EXAMPLES
"""Floor on the cases run: 8 operations with inputs x 2 modes x EXAMPLES, plus the fixed ones."""


def no_error_event(ctx: Any, response: Any, case: Any) -> None:
    """A 5xx after the 200: an SSE stream that ended with its `data: {"error": ...}` event."""
    content_type = ";".join(response.headers.get("content-type", []))
    if content_type.startswith("text/event-stream") and b'data: {"error"' in response.content:
        tail = response.content[-400:].decode(errors="replace")
        raise AssertionError(f"the stream failed after its 200:\n{tail}")


CHECKS = [
    not_a_server_error,
    no_error_event,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OPERATIONS = {
    "POST /v1/audio/speech",
    "POST /v1/audio/transcriptions",
    "POST /v1/audio/translations",
    "POST /v1/chat/completions",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "GET /health",
    "GET /health/ready",
    "GET /tts",
    "POST /tts",
    "GET /models",
    "POST /chat",
}


@functools.cache
def speech_wav() -> bytes:
    """Real speech for the repaired transcription cases (espeak-ng)."""
    return encode(compose([0.3, "Hello there.", 0.3])[0], 16000, "wav")


LLM_MAX_TOKENS = 16
MAX_MESSAGES = 8


@pytest.fixture(scope="module")
def fuzz_server(demo_cache: Path, demo_models: DemoModels) -> Iterator[LiveServer]:
    """A server with small bounds, so that any accepted request generates briefly."""
    server = start_server(
        demo_settings(
            demo_cache,
            max_input_chars=200,
            max_messages=MAX_MESSAGES,
            llm_max_tokens=LLM_MAX_TOKENS,
            tts_max_tokens=28,  # 4 SNAC frames per segment
            request_timeout_seconds=30,
        )
    )
    yield server
    server.stop()


def repair(label: str, case: Any) -> None:
    """Make a fuzzed request name a served model and voice, keeping every other fuzzed value."""
    if label == "GET /v1/models/{model_id}":
        case.path_parameters = {"model_id": "tts-1"}
    body = case.body
    if not isinstance(body, dict):
        return
    if label in ("POST /v1/audio/transcriptions", "POST /v1/audio/translations"):
        body["model"] = "whisper-1"
        body["file"] = speech_wav()
        body.pop("language", None)
    elif label == "POST /v1/audio/speech":
        body["model"] = "tts-1"
        body["voice"] = "alloy"
    elif label == "POST /v1/chat/completions":
        body["model"] = "gpt-4o-audio-preview"
        for refused in ("n", "tools", "logprobs", "top_logprobs", "response_format", "max_completion_tokens"):
            body.pop(refused, None)
        if isinstance(body.get("max_tokens"), int | float):
            body["max_tokens"] = max(1, min(int(body["max_tokens"]), LLM_MAX_TOKENS))
        fuzzed = body.get("messages")  # a negative case may send a number or a string here: keep it
        messages = [m for m in fuzzed if isinstance(m, dict)][-MAX_MESSAGES:] if isinstance(fuzzed, list) else []
        for message in messages:
            if message.get("role") in ("tool", "function"):  # refused roles
                message["role"] = "user"
            for part in message.get("content") if isinstance(message.get("content"), list) else []:
                if isinstance(part, dict):
                    part["type"] = "text"
        if messages:
            messages[-1]["role"] = "user"  # a reply needs a user turn to answer
            body["messages"] = messages
        if isinstance(body.get("stop"), list):
            body["stop"] = body["stop"][:4]
        if isinstance(body.get("modalities"), list) and "audio" in body["modalities"]:
            audio = body.get("audio") if isinstance(body.get("audio"), dict) else {}
            audio["voice"] = "alloy"
            if body.get("stream") or audio.get("format") not in ("wav", "mp3", "flac", "opus", "aac", "pcm16"):
                audio["format"] = "pcm16"
            body["audio"] = audio
    elif label in ("POST /tts", "POST /chat"):
        body["voice"] = "tara"


class Tally:
    """Cases run per operation, statuses seen, and the distinct failures."""

    def __init__(self) -> None:
        self.cases: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[tuple[str, int]] = collections.Counter()
        self.failures: dict[str, str] = {}


def fuzz(operation: Any, mode: GenerationMode, base_url: str, tally: Tally) -> None:
    """Run EXAMPLES cases of one operation in one generation mode, collecting every failure."""

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode), repaired=st.booleans())
    def run(case: Any, repaired: bool) -> None:
        if repaired:
            repair(operation.label, case)
        tally.cases[operation.label] += 1
        try:
            response = case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=30)
        except (Exception, BaseExceptionGroup) as exc:  # failed checks, a broken stream, a timeout: collect
            tally.failures.setdefault(f"{operation.label} ({mode.value}): {type(exc).__name__}", str(exc)[:3000])
        else:
            tally.statuses[(operation.label, response.status_code)] += 1

    run()


def test_openapi_schema_documents_errors_and_streams(fuzz_server: LiveServer) -> None:
    schema = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=30).json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ErrorResponse" in components
    speech = schema["paths"]["/v1/audio/speech"]["post"]["responses"]
    assert set(speech["200"]["content"]) == {
        "audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav", "audio/pcm", "text/event-stream"
    }  # fmt: skip
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)  # validation errors are 400 envelopes
            if path.startswith("/health"):
                continue
            for status in ("400", "404", "429", "500", "503"):
                ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorResponse", (method, path, status)


def test_fuzz_the_whole_schema(fuzz_server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.label for operation in operations} == OPERATIONS

    tally = Tally()
    started = time.monotonic()
    for operation in operations:
        for mode in GenerationMode:
            try:
                fuzz(operation, mode, fuzz_server.url, tally)
            except Unsatisfiable:  # no parameters to make invalid: nothing to fuzz negatively
                assert mode is GenerationMode.NEGATIVE and not operation.body and not operation.query
    cases, statuses, failures = tally.cases, tally.statuses, tally.failures

    seconds = time.monotonic() - started
    total = sum(cases.values())
    print(f"\nschemathesis: {total} cases over {len(operations)} operations in {seconds:.1f} s")
    for (label, status), count in sorted(statuses.items()):
        print(f"  {label}: {status} x {count}")
    assert not failures, "\n\n".join(f"{key}\n{text}" for key, text in failures.items())
    assert total >= MIN_CASES
    # The repaired half reaches real generation on every generating operation.
    for label in OPERATIONS - {"GET /v1/models", "GET /health", "GET /health/ready", "GET /models"}:
        assert statuses[(label, 200)] >= EXAMPLES // 10, label
    # Nothing is left running once the fuzzing is over.
    services = fuzz_server.services
    assert services.admission.active == 0 and services.admission.queued == 0
