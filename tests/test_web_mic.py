"""The page's push-to-talk button in a real headless Chromium whose microphone is a wav file.

Chromium's fake capture device plays an espeak-ng recording (`--use-fake-device-for-media-stream
--use-file-for-fake-audio-capture=...`); holding the button records it, releasing it sends it to
`/v1/chat/completions` as an `input_audio` part, and the spoken reply is played like a typed one.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.speech_audio import compose, to_pcm16

from .conftest import LiveServer
from .test_web_page import STREAM_TIMEOUT_MS, chromium, fake_microphone, hooks, wait_outcome

CAPTURE_RATE = 48000


@pytest.fixture(scope="module")
def capture_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spoken question with silence around it (Chromium loops the file)."""
    samples = compose([0.5, "What time does the museum open tomorrow?", 1.5], rate=CAPTURE_RATE)[0]
    path = tmp_path_factory.mktemp("mic") / "question.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(CAPTURE_RATE)
        out.writeframes(to_pcm16(samples))
    return path


@pytest.fixture(scope="module")
def mic_browser(capture_wav: Path) -> Iterator[Any]:
    with chromium(*fake_microphone(capture_wav)) as launched:
        yield launched


def test_push_to_talk_sends_speech_and_plays_the_spoken_reply(mic_browser: Any, live_server: LiveServer) -> None:
    context = mic_browser.new_context(permissions=["microphone"])
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    sent: list[dict[str, Any]] = []

    def record(route: Any) -> None:
        sent.append(json.loads(route.request.post_data or "{}"))
        route.continue_(post_data=json.dumps({**sent[-1], "max_completion_tokens": 24, "seed": 3}))

    page.route("**/v1/chat/completions", record)
    asr = live_server.services.engines.asr
    assert asr is not None
    batches = len(asr.batch_sizes)  # type: ignore[attr-defined]
    try:
        page.goto(live_server.url + "/")
        page.wait_for_function("() => window.__oaiMic && window.__oaiMic.state === 'idle'")
        page.hover("#mic")
        page.mouse.down()
        page.wait_for_function("() => window.__oaiMic.recordedSeconds >= 2.5", timeout=30_000)
        assert hooks(page)["status"] == "idle" and page.get_attribute("#mic", "data-state") == "recording"
        page.mouse.up()
        assert wait_outcome(page, timeout=STREAM_TIMEOUT_MS) == "done", hooks(page)["lastError"]
        state = hooks(page)
        assert state["scheduledBuffers"] > 0 and state["scheduledSeconds"] > 0.05 and state["transcript"].strip()
        mic = page.evaluate("() => ({...window.__oaiMic})")
        assert mic["sent"] == 1 and mic["state"] == "idle" and mic["lastError"] is None
        assert page.inner_text("#log li.user").startswith("🎤")
    finally:
        context.close()
    assert errors == []
    # What went over the wire: one user message, one input_audio part holding a 16 kHz mono wav.
    (request,) = sent
    (part,) = request["messages"][-1]["content"]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    data = base64.b64decode(part["input_audio"]["data"])
    assert len(data) == mic["lastWavBytes"]
    with wave.open(io.BytesIO(data)) as recording:
        assert (recording.getframerate(), recording.getnchannels(), recording.getsampwidth()) == (16000, 1, 2)
        samples = np.frombuffer(recording.readframes(recording.getnframes()), "<i2")
    assert len(samples) >= 2.5 * 16000 and np.abs(samples).max() > 1000  # the file's speech, not silence
    # The server's VAD found speech in it and Whisper transcribed it (silence would never reach the model).
    assert len(asr.batch_sizes) > batches  # type: ignore[attr-defined]
    assert state["history"][0]["content"] == request["messages"][-1]["content"]
