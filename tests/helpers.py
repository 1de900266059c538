"""Helpers shared by the test modules (fixtures live in `conftest.py`; everything else lives here).

- waiting on conditions, never on time: `wait_until` (threads), `eventually` and `settle` (the event loop),
  `steady` (a value that must stop changing, watched for a window sized by the caller);
- servers on real loopback sockets in a thread: `ThreadedServer` (any ASGI app), `LiveServer` and
  `start_server` (the real app), `demo_settings`;
- the wire: `sse_data` / `sse_json` (SSE bodies), `metric_values` / `scrape` (Prometheus text);
- audio: `decode_audio` (PyAV), `read_streamed_wav` / `wav_samples` (WAV headers), `sine`,
  `expected_samples` (what a token count must decode to);
- `require_tool`: a system tool a test needs; a skip with the install hint locally, a failure under `CI`.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import os
import shutil
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from oai_server.codec.orpheus import SAMPLE_RATE, SAMPLES_PER_FRAME, TOKENS_PER_FRAME, slot_band
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import SeamStitcher, Window
from oai_server.pipeline.encode import WAV_UNKNOWN_SIZE
from oai_server.pipeline.speech import CROSSFADE_SAMPLES, SpeechSynthesizer
from oai_server.settings import Settings

IN_CI = bool(os.environ.get("CI"))
"""Under CI a missing tool fails the run instead of skipping the tests that need it."""


# --- system tools ---------------------------------------------------------------------------------------


def require_tool(name: str, hint: str, *candidates: str | None) -> str:
    """The path of executable `name` (or the first existing one of `candidates`); skip the test with `hint`
    when it is missing, or fail it under CI (`CI` set), where a skip would hide a test that never ran."""
    for path in (*candidates, shutil.which(name)):
        if path and os.access(path, os.X_OK):
            return path
    message = f"{name} is not installed: {hint}"
    if IN_CI:
        pytest.fail(f"{message} (CI is set: a missing tool fails the run)", pytrace=False)
    pytest.skip(message)


def chromium_path() -> str:
    """Debian's Chromium (or $CHROMIUM_PATH): a failure under CI, a skip with an install hint otherwise."""
    return require_tool(
        "chromium",
        "apt-get install -y chromium (or set CHROMIUM_PATH)",
        os.environ.get("CHROMIUM_PATH"),
        "/usr/bin/chromium",
        shutil.which("chromium-browser"),
    )


# --- waiting on conditions ------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll `predicate` from a thread until it holds (True) or `timeout` passes (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def answers_ready(url: str) -> bool:
    """Whether the server at `url` answers `/health/ready` with 200 now (False while it cannot be reached)."""
    import httpx

    try:
        return httpx.get(f"{url}/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


async def eventually(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """`wait_until` for coroutines: poll without blocking the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return bool(predicate())
        await asyncio.sleep(interval)
    return True


async def settle(rounds: int = 5) -> None:
    """Let the event loop run what is ready (tasks woken by the last step) without waiting on time."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def steady(read: Callable[[], Any], window: float, interval: float = 0.02) -> tuple[bool, Any, Any]:
    """Watch `read()` for `window` seconds: (unchanged, first value, last value).

    For "nothing happens any more" checks, where no event can say so: the caller sizes `window` from
    the measured speed of what would change (several steps of it), so a change cannot slip through.
    """
    first = read()
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        if now != first:
            return False, first, now
    return True, first, first


async def asteady(read: Callable[[], Any], window: float, interval: float = 0.01) -> tuple[bool, Any, Any]:
    """`steady` for coroutines: watch without blocking the event loop."""
    loop = asyncio.get_running_loop()
    first = read()
    deadline = loop.time() + window
    while loop.time() < deadline:
        await asyncio.sleep(interval)
        now = read()
        if now != first:
            return False, first, now
    return True, first, first


# --- servers in a thread --------------------------------------------------------------------------------


class ThreadedServer:
    """Any ASGI app under uvicorn on a free 127.0.0.1 port, in a daemon thread, ready when constructed."""

    def __init__(
        self,
        app: Any,
        *,
        lifespan: str = "on",
        startup_timeout: float = 120.0,
        name: str = "uvicorn",
        options: dict[str, Any] | None = None,
    ):
        """`options`: more `uvicorn.Config` arguments (the CLI's protocols: `runtime_limits.uvicorn_options`)."""
        import uvicorn

        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan, **(options or {})
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self.thread.start()
        if not wait_until(lambda: self.server.started or not self.thread.is_alive(), startup_timeout, 0.01):
            raise RuntimeError(f"{name} did not start within {startup_timeout} s")
        if not self.server.started:
            raise RuntimeError(f"{name} failed to start (see its log above)")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (in its own thread)."""
        return self.server.servers[0].get_loop()  # type: ignore[no-any-return]

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout=timeout)


class LiveServer(ThreadedServer):
    """The real app on loopback: its URL, the app (for looking at engine state) and its event loop."""

    def __init__(self, app: Any, options: dict[str, Any] | None = None) -> None:
        super().__init__(app, name="oai-server", options=options)
        self.app = app
        self.upstream_engines: dict[str, Any] = {}
        """For a server on remote engines: the engines behind its upstreams, by role (`llm`, `tts`)."""
        self.upstream_apps: dict[str, Any] = {}
        """For a server on remote engines: its upstream apps by role (their `state.faults` inject failures)."""

    @property
    def services(self) -> Any:
        """The app's `Services` (engines, admission, ...)."""
        return self.app.state.services

    def model_engines(self) -> dict[str, Any]:
        """The engines that run the models, by role: the server's own, or those behind its upstreams.
        They count their decode steps (`generated_tokens()`)."""
        engines = self.services.engines
        return self.upstream_engines or {"llm": engines.llm, "tts": engines.tts}

    def generated_tokens(self) -> int:
        """Decode steps of every model engine so far."""
        return sum(engine.generated_tokens() for engine in self.model_engines().values())

    def idle(self) -> bool:
        """Nothing in flight: no admitted or queued stream, no request in any engine (or upstream engine)."""
        svc = self.services
        engines = [svc.engines.llm, svc.engines.tts, *self.upstream_engines.values()]
        return (
            svc.admission.active == 0
            and svc.admission.queued == 0
            and all(engine.active_requests() == 0 for engine in engines)
        )

    def tasks(self) -> collections.Counter[str]:
        """The asyncio tasks alive on the server's loop, counted by coroutine name."""

        async def alive() -> collections.Counter[str]:
            me = asyncio.current_task()
            return collections.Counter(
                getattr(task.get_coro(), "__qualname__", repr(task.get_coro()))
                for task in asyncio.all_tasks()
                if task is not me
            )

        return asyncio.run_coroutine_threadsafe(alive(), self.loop).result(timeout=10)

    def scrape(self) -> dict[str, float]:
        """The server's `/metrics`, parsed."""
        return scrape(self.url)


def sdk_client(server: ThreadedServer) -> Any:
    """The official openai SDK pointed at a server (no retries: a failure must show)."""
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0, timeout=60)


def start_server(settings: Settings, engines: Any = None) -> LiveServer:
    """Start the real app (on `engines` if given) and wait until it is ready."""
    from oai_server.app import create_app
    from oai_server.runtime_limits import keep_alive_option

    # The CLI's keep-alive: with uvicorn's 5 s, a pooled connection of the suite's long-lived SDK clients (httpx's
    # 5 s expiry) could be reused just as the server closed it.
    return LiveServer(create_app(settings, engines=engines), options=keep_alive_option(settings))


def demo_settings(cache: Path, **overrides: Any) -> Settings:
    """Demo-profile settings for tests (CPU, small limits)."""
    base: dict[str, Any] = {
        "demo": True,
        "cache_dir": cache,
        "port": 0,
        "device": "cpu",
        "snac_device": "cpu",
        "max_concurrency": 4,
    }
    base.update(overrides)
    return Settings(**base)


# --- the wire -------------------------------------------------------------------------------------------


def sse_data(body: str | Iterable[str]) -> list[str]:
    """The `data:` payloads of an SSE body (text, or its lines), in order; comments and names dropped."""
    lines = body.splitlines() if isinstance(body, str) else body
    return [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]


def sse_json(body: str | Iterable[str]) -> list[Any]:
    """The JSON of every `data:` payload, the `[DONE]` terminator left out."""
    return [json.loads(data) for data in sse_data(body) if data != "[DONE]"]


def metric_values(text: str) -> dict[str, float]:
    """Prometheus exposition text -> {'name{labels}': value} (comments dropped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def scrape(url: str) -> dict[str, float]:
    """`GET {url}/metrics`, parsed."""
    import httpx

    response = httpx.get(f"{url}/metrics", timeout=10)
    response.raise_for_status()
    return metric_values(response.text)


# --- SNAC windows ---------------------------------------------------------------------------------------


def frames(n: int, start: int = 0) -> list[tuple[int, ...]]:
    """Distinct frames, so a window's content shows which frames it holds."""
    return [tuple(range(7 * i, 7 * i + 7)) for i in range(start, start + n)]


def emitted_frames(windows: list[Window]) -> list[tuple[int, ...]]:
    """The frames `windows` emit, in order."""
    return [f for w in windows for f in w.frames[w.emit : w.emit + w.count]]


class FrameEngine:
    """A speech engine that yields one frame of valid Orpheus audio tokens a delta, `frames` of them, one every
    `frame_s` seconds (0: all at once)."""

    def __init__(self, frames: int, frame_s: float = 0.0) -> None:
        self.frames, self.frame_s = frames, frame_s

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[list[int]]:
        for _ in range(self.frames):
            if self.frame_s:
                await asyncio.sleep(self.frame_s)
            yield [slot_band(slot).start + 5 for slot in range(TOKENS_PER_FRAME)]


class CountingDecoder:
    """A SNAC decoder stand-in that records each window's emitted frame count and returns silence of the right
    length (the window's lead, then 2048 samples a frame)."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def for_stream(self, request_id: str) -> Any:
        return self

    async def decode(self, window: Window) -> bytes:
        self.counts.append(window.count)
        return b"\0\0" * (window.lead + SAMPLES_PER_FRAME * window.count)


def stitched_snr(
    decoder: Any, codes: list[tuple[int, ...]], policy: WindowPolicy, lead_s: float | None = None
) -> tuple[float, int]:
    """(SNR in dB of `codes` streamed in `policy`'s windows, one at a time and stitched, against one decode of the
    whole utterance; the windows it took), `lead_s` the listener's lead at every frame. Every frame comes out as
    2048 samples."""
    whole = np.frombuffer(decoder.decode_sync([Window(tuple(codes), 0, len(codes))])[0], "<i2").astype(float)
    planner = policy.planner()
    windows = [w for code in codes for w in planner.add([code], lead_s=lead_s)] + planner.finish()
    stitcher = SeamStitcher()
    pcm = b"".join(stitcher.add(decoder.decode_sync([w])[0], w.lead) for w in windows) + stitcher.finish()
    got = np.frombuffer(pcm, "<i2").astype(float)
    assert len(got) == len(codes) * SAMPLES_PER_FRAME
    return float(10 * np.log10(np.sum(whole**2) / np.sum((got - whole) ** 2))), len(windows)


def frame_synthesizer(engine: Any, decoder: Any, windows: WindowPolicy) -> SpeechSynthesizer:
    """The real `SpeechSynthesizer` over a scripted engine and decoder (`FrameEngine`, `CountingDecoder`), with a
    stub tokenizer and a token budget that never cuts a test's frames short."""
    tokenizer = SimpleNamespace(encode=lambda text, add_special_tokens=False: [1, 2, 3])
    return SpeechSynthesizer(
        engine, tokenizer, decoder, windows=windows, tokens_per_char=100.0, max_tokens=1024, max_model_len=2048
    )


# --- audio ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedAudio:
    """An encoded file decoded with PyAV (ffmpeg): its rate, channels and channel 0's samples."""

    rate: int
    channels: int
    samples: np.ndarray

    @property
    def count(self) -> int:
        """Samples per channel."""
        return len(self.samples)


CONTAINER_HINTS = {"opus": "ogg", "aac": "aac"}
"""PyAV's demuxer for formats it cannot sniff from a stream (raw ADTS aac, Ogg opus)."""


def decode_audio(data: bytes, fmt: str | None = None) -> DecodedAudio:
    """Decode an encoded audio file (`fmt`: our response format name, for the demuxer hint)."""
    import av

    with av.open(io.BytesIO(data), format=CONTAINER_HINTS.get(fmt or "")) as container:
        stream = container.streams.audio[0]
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
        chunks = [frame.to_ndarray().reshape(channels, -1)[0] for frame in container.decode(stream)]
    return DecodedAudio(rate, channels, np.concatenate(chunks) if chunks else np.zeros(0))


def read_streamed_wav(data: bytes) -> tuple[int, int, int, bytes]:
    """(rate, channels, sample width, pcm) of a streamed WAV, whose sizes are unknown (0xFFFFFFFF)."""
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert int.from_bytes(data[40:44], "little") == WAV_UNKNOWN_SIZE  # size unknown while streaming
    channels = int.from_bytes(data[22:24], "little")
    rate = int.from_bytes(data[24:28], "little")
    width = int.from_bytes(data[34:36], "little") // 8
    assert data[36:40] == b"data"
    return rate, channels, width, data[44:]


def wav_samples(data: bytes, streamed: bool) -> int:
    """Samples of a 24 kHz mono s16 WAV; its RIFF and data sizes must match the body (or be unknown)."""
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    channels, rate = struct.unpack("<HI", data[22:28])
    bits = struct.unpack("<H", data[34:36])[0]
    assert (channels, rate, bits) == (1, SAMPLE_RATE, 16)
    assert data[36:40] == b"data"
    riff_size, data_size = struct.unpack("<I", data[4:8])[0], struct.unpack("<I", data[40:44])[0]
    body = len(data) - 44
    if streamed:
        assert riff_size == data_size == WAV_UNKNOWN_SIZE
    else:
        assert (riff_size, data_size) == (len(data) - 8, body)
    assert body % 2 == 0
    return body // 2


def quiet_snac(source: Path, target: Path) -> Path:
    """A copy of a SNAC model whose NoiseBlocks add nothing (their 1x1 convolution's weight-norm gain is 0),
    so a decode is a pure function of its codes."""
    import torch
    from snac import SNAC
    from snac.layers import NoiseBlock

    config = json.loads((source / "config.json").read_text())
    names = [name for name, module in SNAC(**config).named_modules() if isinstance(module, NoiseBlock)]
    state = torch.load(source / "pytorch_model.bin", map_location="cpu")
    for name in names:
        gain = f"{name}.linear.parametrizations.weight.original0"
        state[gain] = torch.zeros_like(state[gain])
    torch.save(state, target / "pytorch_model.bin")
    (target / "config.json").write_text(json.dumps(config))
    return target


def quiet_settings(cache: Path, models: Any, snac_dir: Path, **overrides: Any) -> Settings:
    """Settings for a server whose audio is a pure function of the request (a seeded one): the demo models
    by path, a `quiet_snac`, and every SNAC window decoded alone (a batched convolution differs from a
    single one in the last bit). Pin torch to one thread too: float sums depend on how they are split."""
    return demo_settings(
        cache,
        demo=False,
        engine="transformers",
        llm_model_name=str(models.llm_dir),
        tts_model_name=str(models.tts_dir),
        snac_model_name=str(snac_dir),
        llm_served_name="demo-gemma-2",
        tts_served_name="demo-orpheus",
        tts_max_tokens=168,
        warmup_batch_sizes=[1],
        snac_max_batch=1,
        **{"asr": False, **overrides},  # the demo Whisper comes only with demo=True
    )


def sine(seconds: float, freq: float = 440.0, amp: int = 10000, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A mono int16 sine wave."""
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * amp).astype(np.int16)


def expected_samples(audio_tokens: int, pieces: int) -> int:
    """Samples that `audio_tokens` Orpheus tokens spoken in `pieces` segments (each with audio) decode to:
    2048 per whole frame, minus one crossfade per join."""
    return audio_tokens // TOKENS_PER_FRAME * SAMPLES_PER_FRAME - CROSSFADE_SAMPLES * (pieces - 1)
