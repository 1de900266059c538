"""Golden responses: seeded requests give byte-identical bodies across refactors.

`tests/data/golden.json` holds, per request, the SHA-256 of its response body with the parts
that are random by design (completion and audio ids, `created`, `expires_at`, Ogg serial
numbers) replaced by fixed placeholders. Record it again (only when a change of output is
intended) with `OAI_GOLDEN_RECORD=1 pytest tests/test_golden.py`.

Each request may have several recorded bodies, one per kind of machine: on the host of 2026-12-01 (an
AVX-512 EPYC) every audio request gave other bodies than the records, at the commit that had passed on them the
day before, with one thread and with transformers 5.17 or 5.24 alike; a seeded draw over Orpheus's 156 940
logits turns a last-bit difference of a float sum into other tokens. A body must match one of the records;
recording on a new kind of machine adds its bodies beside the others (a refactor that changes output changes
it on every machine, so it matches none).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from oai_server.engines.demo import DemoModels

from .helpers import LiveServer, quiet_settings, quiet_snac, start_server

GOLDEN = Path(__file__).parent / "data" / "golden.json"
RECORD = os.environ.get("OAI_GOLDEN_RECORD") == "1"
TEXT = "Hello there. This is a golden sentence, spoken twice? No, once."
CHAT = [{"role": "user", "content": "Tell me a short story."}]
AUDIO_CHAT = {"model": "gpt-4o-audio-preview", "messages": CHAT, "max_tokens": 24, "seed": 5}
SPEECH = {"model": "tts-1", "input": TEXT, "voice": "alloy", "seed": 3}

_IDS = [
    (re.compile(rb"chatcmpl-[0-9a-f]{32}"), b"chatcmpl-X"),
    (re.compile(rb"audio_[0-9a-f]{32}"), b"audio_X"),
    (re.compile(rb'"created":\s?\d+'), b'"created":0'),
    (re.compile(rb'"expires_at":\s?\d+'), b'"expires_at":0'),
]

# (name, method, path, json body or query)
CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    *[
        (f"speech-{fmt}", "POST", "/v1/audio/speech", {**SPEECH, "response_format": fmt})
        for fmt in ("mp3", "opus", "aac", "flac", "wav", "pcm")
    ],
    ("speech-sse-pcm", "POST", "/v1/audio/speech", {**SPEECH, "response_format": "pcm", "stream_format": "sse"}),
    ("speech-sse-mp3", "POST", "/v1/audio/speech", {**SPEECH, "response_format": "mp3", "stream_format": "sse"}),
    ("speech-speed", "POST", "/v1/audio/speech", {**SPEECH, "response_format": "pcm", "speed": 1.5}),
    ("chat-text-whole", "POST", "/v1/chat/completions", {**AUDIO_CHAT, "model": "demo-gemma-2"}),
    (
        "chat-text-stream",
        "POST",
        "/v1/chat/completions",
        {**AUDIO_CHAT, "stream": True, "stream_options": {"include_usage": True}},
    ),
    (
        "chat-audio-stream",
        "POST",
        "/v1/chat/completions",
        {
            **AUDIO_CHAT,
            "stream": True,
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"},
            "stream_options": {"include_usage": True},
        },
    ),
    *[
        (
            f"chat-audio-whole-{fmt}",
            "POST",
            "/v1/chat/completions",
            {**AUDIO_CHAT, "modalities": ["text", "audio"], "audio": {"voice": "nova", "format": fmt}},
        )
        for fmt in ("wav", "pcm16", "mp3", "flac", "opus", "aac")
    ],
    ("seed-tts-get", "GET", "/tts", {"prompt": "Hello seed world.", "voice": "zoe", "max_tokens": 140, "seed": 4}),
    ("seed-tts-post", "POST", "/tts", {"prompt": "Hello seed world.", "voice": "zoe", "max_tokens": 140, "seed": 4}),
    ("seed-chat-wav", "POST", "/chat", {"message": "Hi there.", "voice": "zoe", "max_tokens": 20, "seed": 6}),
    ("seed-chat-text", "POST", "/chat", {"message": "Hi there.", "stream_text": True, "max_tokens": 20, "seed": 6}),
]


def normalized(body: bytes, content_type: str) -> bytes:
    """The body with its random-by-design parts replaced."""
    for pattern, replacement in _IDS:
        body = pattern.sub(replacement, body)
    if content_type.startswith("audio/ogg"):
        body = _zero_ogg_serials(body)
    if content_type.startswith("text/event-stream"):
        body = _merge_text_deltas(body)
    return body


def _merge_text_deltas(body: bytes) -> bytes:
    """Streamed text arrives in as many chunks as the engine's deltas held tokens (timing): merge runs of
    content-only chunks, so only the text, not its cut into chunks, is compared."""
    events = body.split(b"\n\n")
    out: list[bytes] = []
    text: list[str] = []
    template: dict[str, Any] | None = None

    def flush() -> None:
        nonlocal template
        if template is not None:
            template["choices"][0]["delta"]["content"] = "".join(text)
            out.append(b"data: " + json.dumps(template).encode())
            text.clear()
            template = None

    for event in events:
        doc = None
        if event.startswith(b"data: {"):
            doc = json.loads(event[6:])
        choices = doc.get("choices") if isinstance(doc, dict) else None
        delta = choices[0].get("delta") if choices else None
        if isinstance(delta, dict) and set(delta) == {"content"} and choices[0].get("finish_reason") is None:
            template = template or doc
            text.append(delta["content"])
            continue
        flush()
        out.append(event)
    flush()
    return b"\n\n".join(out)


def _zero_ogg_serials(body: bytes) -> bytes:
    """Ogg pages carry a random stream serial (and a CRC over it): blank both."""
    out = bytearray(body)
    start = 0
    while (at := out.find(b"OggS", start)) >= 0 and at + 27 <= len(out):
        out[at + 14 : at + 18] = b"\0\0\0\0"
        out[at + 22 : at + 26] = b"\0\0\0\0"
        start = at + 4
    return bytes(out)


def _b64_audio_in_json(body: bytes) -> bytes:
    """Whole chat completions: the audio data may be a random-serial Ogg file inside JSON."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    audio = (doc.get("choices") or [{}])[0].get("message", {}).get("audio") if isinstance(doc, dict) else None
    if isinstance(audio, dict) and isinstance(audio.get("data"), str):
        import base64

        raw = base64.b64decode(audio["data"])
        if raw.startswith(b"OggS"):
            audio["data"] = base64.b64encode(_zero_ogg_serials(raw)).decode()
            return json.dumps(doc, sort_keys=True).encode()
    return body


@pytest.fixture(scope="module")
def golden_server(demo_cache: Path, demo_models: DemoModels, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo models by explicit paths, with SNAC's NoiseBlocks off (they add fresh noise to every decode)
    and every window decoded alone, so the audio does not depend on which windows shared a batch."""
    import torch

    # Float sums depend on how torch splits them over threads: pin the count (the demo profile's 1).
    torch.set_num_threads(1)
    snac = quiet_snac(demo_models.snac_dir, tmp_path_factory.mktemp("snac-quiet"))
    # Without SNAC's seams (`--snac-seam-samples 0`: the bytes of before them), so the records of every kind of
    # machine stay valid; the seams' own bytes are tested where they are made (tests/test_snac_stream.py).
    # Likewise the chunks' ramp the records were made with (`--snac-ramp double`): the default's own bytes are
    # tested in tests/test_snac_stream.py, and a change of output cannot be recorded on every kind of machine here.
    settings = quiet_settings(demo_cache, demo_models, snac, snac_seam_samples=0, snac_ramp="double")
    server = start_server(settings)
    yield server
    server.stop()


def fetch(url: str, method: str, path: str, payload: dict[str, Any]) -> tuple[int, str, bytes]:
    """One request, the whole body read."""
    with httpx.Client(base_url=url, timeout=120) as http:
        response = http.get(path, params=payload) if method == "GET" else http.post(path, json=payload)
    content_type = response.headers.get("content-type", "")
    return response.status_code, content_type, response.content


def digest(url: str, method: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Status, content type and the normalized body's hash of one request."""
    status, content_type, body = fetch(url, method, path, payload)
    body = _b64_audio_in_json(normalized(body, content_type))
    return {"status": status, "content_type": content_type, "sha256": hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize(("name", "method", "path", "payload"), CASES, ids=[case[0] for case in CASES])
def test_golden_response(golden_server: LiveServer, name: str, method: str, path: str, payload: dict[str, Any]) -> None:
    got = digest(golden_server.url, method, path, payload)
    again = digest(golden_server.url, method, path, payload)
    assert got == again, f"{name} is not deterministic"
    golden: dict[str, Any] = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if RECORD:
        known = golden.get(name, {}).get("sha256", [])
        golden[name] = {**got, "sha256": sorted({*([known] if isinstance(known, str) else known), got["sha256"]})}
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    assert name in golden, f"no golden record for {name}: run with OAI_GOLDEN_RECORD=1"
    expected = golden[name]
    assert (got["status"], got["content_type"]) == (expected["status"], expected["content_type"])
    assert got["sha256"] in expected["sha256"], f"{name}: {got['sha256']} is none of the recorded bodies"
