"""What a newcomer meets in the first hour (issue 13): start-up failures, logs, model names, curl bodies,
whole-sample audio deltas, an honest demo, clean transcripts, and a bounded first segment.

Start-up failures and logging run the real CLI (`python -m oai_server serve ...`) as a subprocess;
everything else talks to the shared demo server over loopback.
"""

from __future__ import annotations

import base64
import json
import random
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from oai_server.engines.demo import DemoModels
from oai_server.pipeline.detokenize import IncrementalDetokenizer
from oai_server.pipeline.segmenter import SentenceSegmenter

from .conftest import LiveServer, demo_settings, start_server, wait_until

CHAT = [{"role": "user", "content": "Tell me a short story."}]


def cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m oai_server ...` run to its end."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "oai_server", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single `oai-server: error:` line of a failed start, with no traceback anywhere."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("oai-server: error: "), result.stderr
    return errors[0]


# --------------------------------------------------------------------------- item 3: start-up failures


def test_vllm_engine_without_vllm_fails_before_loading_anything() -> None:
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    result = cli("serve", "--engine", "vllm", "--llm-model-name", "google/gemma-2-2b-it")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "--engine vllm needs the vllm package" in line and "--engine transformers" in line and "--demo" in line
    assert "loading engines" not in result.stderr and "tokenizer" not in result.stderr  # nothing was fetched


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--port", "70000"], {}, "--port '70000'"),
        ([], {"OAI_SERVER_TTS_TOP_P": "abc"}, "OAI_SERVER_TTS_TOP_P='abc'"),
        (["--log-level", "loud"], {}, "--log-level 'loud'"),
        (["--default-voice", "nobody"], {}, "default_voice 'nobody' is not in voices"),
        (["--api-key-file", "/no/such/keys.txt"], {}, "--api-key-file '/no/such/keys.txt' cannot be read"),
    ],
)
def test_bad_setting_is_one_line_naming_it(args: list[str], env: dict[str, str], named: str) -> None:
    result = cli("serve", *args, **env)
    assert result.returncode == 2
    assert named in one_error_line(result)


def test_port_in_use_fails_before_loading(demo_cache: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--demo", "--cache-dir", str(demo_cache), "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 3
    line = one_error_line(result)
    assert f"port {port} is already in use" in line and "--port" in line
    assert "loading engines" not in result.stderr


def test_model_that_cannot_load_is_one_line_and_debug_adds_the_traceback(tmp_path: Path) -> None:
    args = ["serve", "--engine", "transformers", "--llm-model-name", str(tmp_path / "missing-model")]
    args += ["--host", "127.0.0.1", "--port", "0", "--warmup-batch-sizes", ""]
    result = cli(*args)
    assert result.returncode == 3
    line = one_error_line(result)
    assert "could not load the tokenizer" in line and "--demo" in line
    debug = cli(*args, "--log-level", "debug")
    assert debug.returncode == 3 and "Traceback" in debug.stderr and "ModelLoadError" in debug.stderr


def test_a_cause_with_line_breaks_still_fails_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The Hub's errors carry line breaks (offline: "We couldn't connect ...\nCheck your internet connection ...");
    printed as they were, the advice after them (--demo) fell off the one error line."""
    from oai_server.cli import StartupError, _fail
    from oai_server.engines.loading import _load_error

    cause = OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your internet connection.")
    with pytest.raises(SystemExit) as exited:
        _fail(StartupError(str(_load_error("org/model", "tokenizer", cause))), debug=False)
    assert exited.value.code == 3
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("oai-server: error: could not load the tokenizer") and "--demo" in line


# --------------------------------------------------------------------------- items 8, 9: what a running server logs


@pytest.fixture(scope="module")
def cli_server(demo_cache: Path, demo_models: DemoModels) -> Iterator[tuple[str, list[str]]]:
    """`python -m oai_server serve --demo` on all interfaces, an OS-chosen port: its loopback URL and its log."""
    command = [sys.executable, "-m", "oai_server", "serve", "--demo", "--cache-dir", str(demo_cache)]
    command += ["--host", "0.0.0.0", "--port", "0", "--log-level", "info"]
    popen = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log: list[str] = []
    urls: list[str] = []

    def pump() -> None:
        assert popen.stderr is not None
        for line in popen.stderr:
            log.append(line)
            found = re.search(r"Ready: open (http://127\.0\.0\.1:\d+/) in a browser", line)
            if found:
                urls.append(found.group(1))

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert wait_until(lambda: bool(urls) or popen.poll() is not None, 180, 0.1), "".join(log)
        assert urls, "".join(log)
        yield urls[0], log
    finally:
        popen.terminate()
        popen.wait(60)


def test_ready_line_has_a_loopback_url_of_the_page(cli_server: tuple[str, list[str]]) -> None:
    url, log = cli_server
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    ready = next(line for line in log if "Ready: open" in line)
    assert f"point OpenAI clients at {url}v1" in ready and "random-weight" in ready  # the demo says so


def test_one_log_line_per_request_with_its_id(cli_server: tuple[str, list[str]]) -> None:
    url, log = cli_server
    response = httpx.get(f"{url}v1/models", headers={"x-request-id": "first-hour-1"}, timeout=30)
    assert response.status_code == 200 and response.headers["x-request-id"] == "first-hour-1"
    assert wait_until(lambda: any("first-hour-1" in line for line in log), 10)
    lines = [line for line in log if "/v1/models" in line]
    assert len(lines) == 1, lines  # ours only: uvicorn's access log is off
    assert "GET /v1/models 200" in lines[0] and "id=first-hour-1" in lines[0]


# --------------------------------------------------------------------------- item 4: model names


def test_unknown_model_ids_are_served_and_named_by_what_served_them(client: Any, live_server: LiveServer) -> None:
    reply = client.chat.completions.create(model="gpt-4.1", messages=CHAT, max_tokens=8, seed=1)
    assert reply.model == "demo-gemma-2" and reply.choices[0].message.content is not None
    stream = client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=8, seed=1, stream=True)
    assert {chunk.model for chunk in stream} == {"demo-gemma-2"}
    alias = client.chat.completions.create(model="gpt-4o-audio-preview", messages=CHAT, max_tokens=4, seed=1)
    assert alias.model == "demo-gemma-2"
    speech = httpx.post(
        f"{live_server.url}/v1/audio/speech",
        json={"model": "orpheus", "input": "Hello.", "voice": "tara", "response_format": "pcm", "seed": 1},
        timeout=60,
    )
    assert speech.status_code == 200 and len(speech.content) > 0


def test_the_other_endpoints_model_is_a_400_naming_this_endpoints_ids(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as chat_error:
        client.chat.completions.create(model="tts-1", messages=CHAT)
    assert chat_error.value.param == "model"
    message = chat_error.value.message
    assert "`tts-1` is a speech model" in message and "/v1/audio/speech" in message
    assert "demo-gemma-2" in message and "gpt-4o-audio-preview" in message
    with pytest.raises(openai.BadRequestError) as speech_error:
        client.audio.speech.create(model="demo-gemma-2", voice="alloy", input="Hi")
    assert "is a chat model" in speech_error.value.message and "tts-1" in speech_error.value.message


def test_strict_model_names_restores_404(demo_cache: Path, demo_models: DemoModels) -> None:
    server = start_server(demo_settings(demo_cache, strict_model_names=True))
    try:
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
        with pytest.raises(openai.NotFoundError) as chat:
            sdk.chat.completions.create(model="gpt-4.1", messages=CHAT)
        assert chat.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError) as speech:
            sdk.audio.speech.create(model="orpheus", voice="alloy", input="Hi")
        assert speech.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError):
            sdk.chat.completions.create(model="tts-1", messages=CHAT)
        assert sdk.chat.completions.create(model="gpt-4o-audio-preview", messages=CHAT, max_tokens=2).choices
    finally:
        server.stop()


# --------------------------------------------------------------------------- item 7: JSON without its Content-Type


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_json_body_without_its_content_type(live_server: LiveServer, content_type: str | None) -> None:
    """`curl -d '{...}'` (form-urlencoded), plain text, or no type at all: the body is still JSON."""
    body = json.dumps({"model": "tts-1", "input": "Hello.", "voice": "alloy", "response_format": "pcm", "seed": 2})
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(f"{live_server.url}/v1/audio/speech", content=body.encode(), headers=headers, timeout=60)
    assert response.request.headers.get("content-type") == content_type
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/pcm" and response.content
    broken = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        content=b"model=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"


# --------------------------------------------------------------------------- item 6: whole samples in every delta


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_speech_sse_deltas_hold_whole_samples(live_server: LiveServer, fmt: str) -> None:
    request = {"model": "tts-1", "input": "Hello there, how are you today?", "voice": "leo", "seed": 4}
    raw = httpx.post(f"{live_server.url}/v1/audio/speech", json={**request, "response_format": fmt}, timeout=60)
    sse = httpx.post(
        f"{live_server.url}/v1/audio/speech",
        json={**request, "response_format": fmt, "stream_format": "sse"},
        timeout=60,
    )
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    pieces = [base64.b64decode(event["audio"]) for event in events if event["type"] == "speech.audio.delta"]
    assert len(pieces) > 2
    assert all(len(piece) % 2 == 0 for piece in pieces), [len(piece) for piece in pieces]
    audio = b"".join(pieces)
    assert len(audio) == len(raw.content)  # as long as the raw stream
    assert audio.startswith(b"RIFF") == (fmt == "wav")


def test_chat_audio_deltas_hold_whole_samples(client: Any) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-audio-preview",
        messages=CHAT,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        stream=True,
        seed=3,
        max_tokens=24,
    )
    pieces = [
        base64.b64decode(chunk.choices[0].delta.audio.data)
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta.audio and chunk.choices[0].delta.audio.data
    ]
    assert pieces and all(len(piece) % 2 == 0 for piece in pieces)


# --------------------------------------------------------------------------- item 9: the demo says it is a demo


def test_demo_model_facts_are_honest(live_server: LiveServer) -> None:
    seed = httpx.get(f"{live_server.url}/models", timeout=30).json()
    assert seed["demo"] is True and "random weights" in seed["note"]
    for role in ("llm", "tts"):
        info = seed[role]
        assert "random weights" in info["name"] and info["parameters"].endswith("(random weights)")
        assert "Gemma 2 2B" not in info["name"] and info["parameters"] not in ("2B", "3B")
        assert re.match(r"\d+(\.\d+)?[KM] ", info["parameters"]), info["parameters"]
    assert seed["tts"]["voices"] and seed["llm"]["id"] == "demo-gemma-2"
    cards = httpx.get(f"{live_server.url}/v1/models", timeout=30).json()["data"]
    assert {card["owned_by"] for card in cards} == {"oai-server-demo"}


def test_no_replacement_character_reaches_a_reply(client: Any) -> None:
    """The random demo model writes byte sequences that are not UTF-8 (seed 5 did, before): none shows."""
    for seed in (5, 6, 7):
        text = client.chat.completions.create(model="demo-gemma-2", messages=CHAT, max_tokens=24, seed=seed)
        content = text.choices[0].message.content
        assert content and "\ufffd" not in content
    spoken = client.chat.completions.create(
        model="demo-gemma-2",
        messages=CHAT,
        max_tokens=24,
        seed=5,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
    )
    transcript = spoken.choices[0].message.audio.transcript
    assert transcript and "\ufffd" not in transcript


def test_detokenizer_drops_bytes_that_never_form_a_character(demo_models: DemoModels) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_models.llm_dir)
    euro = tokenizer.encode("€", add_special_tokens=False)
    hello = tokenizer.encode(" hello", add_special_tokens=False)
    assert len(euro) > 1  # a character split over byte tokens
    whole = IncrementalDetokenizer(tokenizer)
    assert "".join(whole.feed([token]) for token in [*euro, *hello]) == "€ hello"
    broken = IncrementalDetokenizer(tokenizer)
    assert "".join(broken.feed([token]) for token in [*euro[:-1], *hello, *euro[1:], *hello]) == " hello hello"


# --------------------------------------------------------------------------- item 12: the first segment's word cap


def test_first_segment_never_exceeds_its_word_cap() -> None:
    """Words ending in "." (abbreviations) used to push the first segment past the cap."""
    segmenter = SentenceSegmenter(max_chars=300, first_segment_words=4, first_segment_max_words=10)
    words = [
        "robot.",
        "tea",
        "the",
        "Dr.",
        "slowly",
        "morning",
        "am",
        "sev",
        "bed",
        "jum",
        "brown",
        "wandered",
        "smiled",
        "e.g.",
        "St.",
    ]
    rng = random.Random(12)
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
        cut = rng.randint(1, 9)
        pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
        segments = [segment for piece in pieces for segment in segmenter.push(piece)] + segmenter.flush()
        assert len(segments[0].split()) <= 10, (text, segments[0])
        assert " ".join(segments).split() == text.split()
    first = SentenceSegmenter(first_segment_words=None, first_segment_max_words=10)
    text = "one two three four five six seven eight nine Dr. Smith went home and slept."
    assert first.push(text) + first.flush() == [
        "one two three four five six seven eight nine",
        "Dr. Smith went home and slept.",
    ]


# --------------------------------------------------------------------------- the README's examples, verbatim

README = Path(__file__).resolve().parent.parent / "README.md"


def using_it() -> str:
    text = README.read_text()
    return text[text.index("## Using it") : text.index("\n## ", text.index("## Using it") + 5)]


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_readme_using_it_examples_work_verbatim(live_server: LiveServer, tmp_path: Path) -> None:
    """Every curl and Python example of "Using it", run as written (only the host and port are the test server's)."""
    section = using_it()
    host = live_server.url.removeprefix("http://")

    def local(code: str) -> str:
        return code.replace("http://localhost:8080", live_server.url).replace("localhost:8080", host)

    shell = blocks(section, "bash")
    shell += [f"{command}\n" for command in re.findall(r"`(curl [^`]*localhost[^`]+)`", section)]  # the seed one-liners
    assert len(shell) >= 3
    for code in shell:
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + local(code).replace("curl ", "curl --fail-with-body ")],
            cwd=tmp_path,
            capture_output=True,
            timeout=300,
        )
        assert result.returncode == 0, (code, result.stderr.decode()[-2000:], result.stdout[-2000:])
        if "stream_format" in code:
            assert b"speech.audio.done" in result.stdout
        if '"stream":true' in code:
            assert result.stdout.rstrip().endswith(b"data: [DONE]")
    for name in ("hello.wav", "reply.wav"):
        assert (tmp_path / name).read_bytes()[:4] == b"RIFF", name
    python = blocks(section, "python")
    assert len(python) == 2
    for code in python:
        exec(compile(local(code), "README.md", "exec"), {"__name__": "readme"})
