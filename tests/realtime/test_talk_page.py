"""The page's "talk" mode in a real headless Chromium, with a fake microphone file, against the real server.

Chromium reads the microphone from a WAV file (`--use-file-for-fake-audio-capture`): a second of
silence, one espeak-ng sentence, then silence. The page captures it with an AudioWorklet at
24 kHz and streams it; the server's VAD ends the turn, transcribes it and answers. The reply is
kept running (its speech stalls after a second of audio), and while the page is playing it the
test speaks again through the page's own append path (`__talk.inject`): on `speech_started` the
page must stop playback at once and truncate the reply at the milliseconds it actually played.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..speech_audio import compose, encode
from ..test_web_page import chromium, fake_microphone
from .conftest import RealtimeServer, Wiretap
from .talk import utterance

TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake microphone: 1 s of silence, a sentence, 60 s of silence (48 kHz WAV)."""
    samples, _ = compose([1.0, "Hello there, how are you today?", 60.0], rate=48000)
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    path.write_bytes(encode(samples, 48000, "wav"))
    return path


@pytest.fixture(scope="module")
def browser(microphone: Path) -> Iterator[Any]:
    with chromium(*fake_microphone(microphone, loop=False)) as launched:
        yield launched


SNAPSHOT_JS = "({...JSON.parse(JSON.stringify(window.__talk)), played: window.__talk.playedMs()})"


def talk(page: Any) -> dict[str, Any]:
    """The page's `window.__talk` hooks (functions left out) and the ms played so far."""
    return page.evaluate(f"() => {SNAPSHOT_JS}")  # type: ignore[no-any-return]


def talk_once(page: Any, condition: str) -> dict[str, Any]:
    """`talk`'s snapshot taken in the same evaluation that finds `condition` true: the player may go idle between
    two of the reply's chunks, so a snapshot evaluated after the wait can miss what the wait saw."""
    handle = page.wait_for_function(f"() => ({condition}) ? {SNAPSHOT_JS} : null", timeout=TIMEOUT_MS)
    return handle.json_value()  # type: ignore[no-any-return]


def test_talk_mode_streams_the_microphone_and_truncates_on_barge_in(
    browser: Any, rt_server: RealtimeServer, wiretap: Wiretap
) -> None:
    mark = wiretap.mark()
    context = browser.new_context()
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    try:
        page.goto(rt_server.live.url + "/")
        page.fill("#max-tokens", "24")
        rt_server.tts.stall_next(after_tokens=7 * 12)  # ~1 s of the first reply, then it hangs until cancelled
        page.click("#talk-start")
        page.wait_for_function("() => window.__talk.user.length > 0", timeout=TIMEOUT_MS)
        # playing now, not only played: on a loaded machine the reply's chunks can come with gaps, and the player
        # is idle in between (a snapshot after `playedMs() > 150` alone caught one such gap, and a snapshot taken
        # after the wait for both, in a second evaluation, another)
        before = talk_once(page, "window.__talk.playing && window.__talk.playedMs() > 150")
        assert before["playing"] and before["appends"] > 0 and before["user"][0]

        speech = base64.b64encode(utterance("Wait, stop please.", lead=0.1, tail=1.0)).decode()
        page.evaluate("(audio) => window.__talk.inject(audio)", speech)
        page.wait_for_function("() => window.__talk.truncates.length > 0", timeout=TIMEOUT_MS)
        after = talk(page)
        assert after["stoppedOnSpeech"] == 1 and not after["playing"]
        (truncate,) = after["truncates"]
        assert before["played"] <= truncate["audio_end_ms"] < after["receivedMs"]

        page.wait_for_function("() => (window.__talk.received['response.done'] || 0) >= 2", timeout=TIMEOUT_MS)
        page.click("#talk-stop")
        page.wait_for_function("() => window.__talk.state === 'off'")
        assert page.locator("#talk-log li.user").count() >= 1 and page.locator("#talk-log li.assistant").count() >= 1
        assert console_errors == []
    finally:
        context.close()
    (log,) = wiretap.since(mark)
    received = [e for e in Wiretap.received(log) if e["type"] == "conversation.item.truncate"]
    assert [(e["item_id"], e["audio_end_ms"]) for e in received] == [(truncate["item_id"], truncate["audio_end_ms"])]
    sent = Wiretap.sent(log)
    cancelled = [e["response"] for e in sent if e["type"] == "response.done" and e["response"]["status"] == "cancelled"]
    assert [c["status_details"]["reason"] for c in cancelled] == ["turn_detected"]
    assert any(e["type"] == "conversation.item.truncated" for e in sent)
    assert not [e for e in sent if e["type"] == "error"]
