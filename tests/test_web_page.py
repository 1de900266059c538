"""The browser page, driven in a real headless Chromium (Playwright) against the real demo server.

Playwright's own browser download cannot run here, so Debian's Chromium is launched
(`apt-get install -y chromium`); without it the browser tests skip, or fail under CI.
Every request the page sends is seeded on its way out (Playwright routing adds `seed`), so what
the page shows does not depend on the random demo model's luck.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from .helpers import LiveServer, chromium_path, demo_settings, start_server, wait_until

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
STREAM_TIMEOUT_MS = 120_000
GOOD_KEY = "sk-web-page-good"


@contextmanager
def chromium(*extra_args: str) -> Iterator[Any]:
    """A headless Chromium (Debian's, or $CHROMIUM_PATH) with the page tests' flags and ``extra_args``."""
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=path, headless=True, args=[*CHROMIUM_ARGS, *extra_args])
        yield launched
        launched.close()


def fake_microphone(wav: Path, *, loop: bool = True) -> list[str]:
    """Chromium flags that make ``wav`` its microphone, permission granted (played in a loop unless not ``loop``)."""
    capture = f"{wav}{'' if loop else '%noloop'}"
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={capture}",
    ]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own localStorage) that records console errors."""
    context = browser.new_context()
    new_page = context.new_page()
    new_page.console_errors = []  # type: ignore[attr-defined]
    new_page.on("console", lambda m: m.type == "error" and new_page.console_errors.append(m.text))
    new_page.on("pageerror", lambda e: new_page.console_errors.append(str(e)))
    yield new_page
    context.close()


@pytest.fixture(scope="module")
def keyed_server(demo_cache: Path, demo_models: Any) -> Iterator[LiveServer]:
    """A second demo server that requires an API key."""
    server = start_server(demo_settings(demo_cache, api_keys=[GOOD_KEY]))
    yield server
    server.stop()


def hooks(page: Any) -> dict[str, Any]:
    """The page's `window.__oai` test hooks."""
    return page.evaluate("() => JSON.parse(JSON.stringify(window.__oai))")  # type: ignore[no-any-return]


def wait_status(page: Any, *states: str, timeout: int = STREAM_TIMEOUT_MS) -> str:
    """Wait until the status pill shows one of `states`; returns it."""
    page.wait_for_function("(s) => s.includes(window.__oai.status)", arg=list(states), timeout=timeout)
    return hooks(page)["status"]  # type: ignore[no-any-return]


def wait_outcome(page: Any, requests: int = 1, timeout: int = STREAM_TIMEOUT_MS) -> str:
    """Wait until `requests` requests have ended; returns how the last one ended (done, stopped, error)."""
    page.wait_for_function(
        "(n) => window.__oai.completed + window.__oai.stopped + (window.__oai.lastError ? 1 : 0) >= n",
        arg=requests,
        timeout=timeout,
    )
    return hooks(page)["outcome"]  # type: ignore[no-any-return]


def seeded(page: Any, seed: int) -> None:
    """Add `seed` to every chat and speech request the page sends (they still go to the real server)."""

    def add_seed(route: Any) -> None:
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "seed": seed}))

    page.route("**/v1/chat/completions", add_seed)
    page.route("**/v1/audio/speech", add_seed)


def send(page: Any, text: str, max_tokens: int | None = 24) -> None:
    """Type a message and click Send."""
    page.fill("#max-tokens", "" if max_tokens is None else str(max_tokens))
    page.fill("#message", text)
    page.click("#send")


def test_page_and_assets_are_served_without_a_key(keyed_server: LiveServer) -> None:
    """`/` and `/static/*` pass the key check; unknown or escaping names are 404s; the API is not exempt."""
    with httpx.Client(base_url=keyed_server.url, timeout=10) as http:
        index = http.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert '<script src="/static/app.js">' in index.text
        script = http.get("/static/app.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert "window.__oai" in script.text
        assert http.get("/static/app.css").headers["content-type"].startswith("text/css")
        for bad in ("/static/nope.js", "/static/..%2Fapp.py", "/static/%2E%2E%2Fsettings.py", "/static/web.py"):
            missing = http.get(bad)
            assert missing.status_code == 404, bad
            assert missing.json()["error"]["code"] == "not_found"
        assert http.get("/models").status_code == 401


def test_chat_streams_speech_and_transcript_and_keeps_history(page: Any, live_server: LiveServer) -> None:
    """A message plays as scheduled audio buffers with its transcript; the next turn sends the audio id back."""
    seeded(page, 3)
    page.goto(live_server.url + "/")
    page.wait_for_function("() => window.__oai.voices.length > 0")
    assert "julia" in hooks(page)["voices"]
    page.select_option("#voice", "leo")
    send(page, "Hello there, who are you?")
    assert wait_outcome(page) == "done", hooks(page)["lastError"]
    first = hooks(page)
    assert first["scheduledBuffers"] > 0
    assert first["scheduledSeconds"] > 0.05
    assert first["transcript"].strip()
    assert first["audioId"].startswith("audio")
    assert page.inner_text("#log li.assistant").strip() == first["transcript"].strip()
    assert first["history"] == [
        {"role": "user", "content": "Hello there, who are you?"},
        {"role": "assistant", "audio": {"id": first["audioId"]}},
    ]
    # The second turn carries the assistant turn as its audio id: the server must resolve it (else a 400).
    send(page, "Tell me more.")
    assert wait_outcome(page, 2) == "done", hooks(page)["lastError"]
    second = hooks(page)
    assert len(second["history"]) == 4 and second["scheduledBuffers"] > first["scheduledBuffers"]
    assert page.locator("#log li").count() == 4
    assert page.is_hidden("#error")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
    assert page.console_errors == []


LONG_REPLY_SEED = 20


def test_stop_aborts_playback_and_the_server_request(page: Any, live_server: LiveServer) -> None:
    """Stop during a long reply: the page stops, and the server's stream ends (its engines are aborted)."""
    # The random demo model ends some replies after 2 tokens; with this seed it writes to its 512-token
    # cap, so the reply is still streaming when Stop is clicked.
    seeded(page, LONG_REPLY_SEED)
    page.goto(live_server.url + "/")
    send(page, "Tell me a very long story about the sea.", max_tokens=None)
    page.wait_for_function("() => window.__oai.scheduledBuffers > 0", timeout=STREAM_TIMEOUT_MS)
    assert hooks(page)["status"] == "streaming"
    assert live_server.services.admission.active >= 1
    page.click("#stop")
    assert wait_outcome(page, timeout=10_000) == "stopped"
    assert wait_status(page, "idle", timeout=10_000) == "idle"  # stopping silences the queued audio at once
    stopped = hooks(page)  # the page's read loop has ended: it plays nothing more
    assert wait_until(lambda: live_server.services.admission.active == 0, timeout=15)  # the server stream ended
    assert hooks(page)["scheduledBuffers"] == stopped["scheduledBuffers"]
    assert stopped["stopped"] == 1 and stopped["completed"] == 0
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    assert page.locator("#log li.assistant.stopped").count() == 1
    assert page.console_errors == []


def test_text_to_speech_box_plays(page: Any, live_server: LiveServer) -> None:
    """The speech box streams raw pcm from /v1/audio/speech into scheduled buffers."""
    seeded(page, 4)
    page.goto(live_server.url + "/")
    page.fill("#tts-input", "Streaming speech, frame by frame.")
    page.click("#speak")
    assert wait_outcome(page) == "done", hooks(page)["lastError"]
    state = hooks(page)
    assert state["ttsBuffers"] > 0
    assert state["ttsSeconds"] >= 2048 / 24000  # at least one SNAC frame
    assert state["scheduledBuffers"] == 0
    assert page.console_errors == []


def test_api_key_wrong_shows_401_and_right_key_works(page: Any, keyed_server: LiveServer) -> None:
    """With keys configured: a wrong key shows the 401 envelope; the right one (kept in localStorage) works."""
    seeded(page, 5)
    page.goto(keyed_server.url + "/")
    page.fill("#api-key", "sk-wrong")
    page.dispatch_event("#api-key", "change")
    send(page, "Hi!")
    assert wait_outcome(page) == "error"
    error = hooks(page)["lastError"]
    assert error["status"] == 401 and error["code"] == "invalid_api_key"
    assert "Incorrect API key provided." in page.inner_text("#error")
    assert page.is_visible("#error")

    page.fill("#api-key", GOOD_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("() => window.__oai.voices.length > 0")
    page.reload()  # the key survives a reload
    assert page.input_value("#api-key") == GOOD_KEY
    page.wait_for_function("() => window.__oai.voices.length > 0")
    send(page, "Hi again!")
    assert wait_outcome(page) == "done", hooks(page)["lastError"]
    state = hooks(page)
    assert state["scheduledBuffers"] > 0 and state["transcript"].strip()
    assert page.is_hidden("#error")


def test_demo_banner_says_the_weights_are_random(page: Any, live_server: LiveServer) -> None:
    page.goto(live_server.url + "/")
    page.wait_for_function("() => window.__oai.voices.length > 0")
    assert hooks(page)["demo"] is True
    assert page.is_visible("#demo-banner")
    banner = page.inner_text("#demo-banner")
    assert "random weights" in banner and "gibberish" in banner
    assert page.console_errors == []


def test_the_log_follows_a_streaming_reply_and_the_pill_returns_to_idle(page: Any, live_server: LiveServer) -> None:
    """With an earlier conversation filling the log, a reply that grows over several lines keeps its end in
    view while it streams; once its audio has played, the pill says idle."""
    page.goto(live_server.url + "/")
    page.route("**/v1/chat/completions", lambda route: route.continue_(post_data=json.dumps(
        {**json.loads(route.request.post_data or "{}"), "seed": LONG_REPLY_SEED})))  # fmt: skip
    page.evaluate("""() => {
        const log = document.getElementById("log");
        for (let i = 0; i < 30; i++) {
            const li = document.createElement("li");
            li.className = i % 2 ? "assistant" : "user";
            li.textContent = `earlier message ${i}`;
            log.appendChild(li);
        }
        log.scrollTop = log.scrollHeight;
    }""")
    send(page, "Tell me a long story.", max_tokens=60)
    page.wait_for_function(
        "() => document.querySelector('#log li:last-child').offsetHeight > 60", timeout=STREAM_TIMEOUT_MS
    )  # the reply has grown over several lines
    at_bottom = (
        "() => { const l = document.getElementById('log'); return l.scrollHeight - l.scrollTop - l.clientHeight; }"
    )
    assert page.evaluate(at_bottom) < 2
    assert wait_outcome(page) == "done", hooks(page)["lastError"]
    assert page.evaluate(at_bottom) < 2
    assert wait_status(page, "idle") == "idle"  # after "playing" while the queued audio ran out
    assert page.inner_text("#status") == "idle"
    assert page.console_errors == []
