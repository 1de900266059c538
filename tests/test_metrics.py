"""Prometheus metrics: the `Metrics` API, live gauges, `/metrics` on the real demo app, isolation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import prometheus_client
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from oai_server.app import create_app
from oai_server.metrics import Metrics
from oai_server.settings import Settings

KEY = "sk-metrics-test-key"
METRIC_NAMES = (
    "oai_requests_total",
    "oai_request_duration_seconds",
    "oai_time_to_first_audio_seconds",
    "oai_time_to_first_token_seconds",
    "oai_time_to_first_segment_seconds",
    "oai_time_to_speech_stage_seconds",
    "oai_admission_wait_seconds",
    "oai_http_first_byte_seconds",
    "oai_real_time_factor",
    "oai_active_streams",
    "oai_queued_streams",
    "oai_engine_aborts_total",
    "oai_audio_frames_total",
    "oai_engine_active_requests",
    "oai_headroom_generating",
    "oai_headroom_safe_streams",
    "oai_headroom_refused_total",
    "oai_headroom_overloaded",
    "oai_snac_windows_total",
    "oai_snac_busy_seconds_total",
    "oai_snac_queue_wait_seconds_total",
)


def requests_count(metrics: Metrics, route: str, method: str = "GET", status: int = 200) -> float:
    value = metrics.registry.get_sample_value(
        "oai_requests_total", {"route": route, "method": method, "status": str(status)}
    )
    return value or 0.0


@pytest.fixture(scope="module")
def demo_settings(demo_cache: Path, demo_models: object) -> Settings:
    """The demo profile on the session's models (built once per run), with an API key."""
    return Settings(demo=True, cache_dir=demo_cache, api_keys=[KEY])


@pytest.fixture(scope="module")
async def demo_app(demo_settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(demo_settings)
    async with LifespanManager(app, startup_timeout=120):
        yield app


@pytest.fixture
async def demo_client(demo_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=demo_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def test_observation_api_records_values() -> None:
    m = Metrics()
    m.observe_ttfa("speech", 0.012)
    m.observe_ttfa("speech", 0.3)
    m.observe_ttft(0.04)
    m.observe_first_segment("chat", 0.07)
    m.observe_speech_stage("speech", "first_window", 0.05)
    m.observe_rtf("chat", 0.25)
    m.count_frames(3)
    m.count_frames(0)
    m.count_abort("tts")
    m.count_abort("tts")
    m.observe_request("/v1/audio/speech", "POST", 200, 1.5)
    get = m.registry.get_sample_value
    assert get("oai_time_to_first_audio_seconds_count", {"endpoint": "speech"}) == 2
    assert get("oai_time_to_first_audio_seconds_bucket", {"endpoint": "speech", "le": "0.01"}) == 0
    assert get("oai_time_to_first_audio_seconds_bucket", {"endpoint": "speech", "le": "0.02"}) == 1
    assert get("oai_time_to_first_audio_seconds_bucket", {"endpoint": "speech", "le": "10.0"}) == 2
    assert get("oai_time_to_first_token_seconds_sum") == pytest.approx(0.04)
    assert get("oai_time_to_first_segment_seconds_sum", {"endpoint": "chat"}) == pytest.approx(0.07)
    stage = {"endpoint": "speech", "stage": "first_window"}
    assert get("oai_time_to_speech_stage_seconds_sum", stage) == pytest.approx(0.05)
    assert get("oai_time_to_speech_stage_seconds_count", {"endpoint": "speech", "stage": "first_tokens"}) is None
    assert get("oai_real_time_factor_count", {"endpoint": "chat"}) == 1
    assert get("oai_audio_frames_total") == 3
    assert get("oai_engine_aborts_total", {"engine": "tts"}) == 2
    assert requests_count(m, "/v1/audio/speech", "POST") == 1
    assert get("oai_request_duration_seconds_sum", {"route": "/v1/audio/speech"}) == pytest.approx(1.5)


class FakeAdmission:
    def __init__(self) -> None:
        self.active = 3
        self.queued = 2


class FakeEngine:
    def __init__(self, n: int) -> None:
        self.n = n

    def active_requests(self) -> int:
        return self.n


class BrokenEngine:
    def active_requests(self) -> int:
        raise RuntimeError("engine gone")


def test_live_gauges_read_sources_at_scrape_time() -> None:
    m = Metrics()
    get = m.registry.get_sample_value
    assert get("oai_active_streams") == 0 and get("oai_queued_streams") == 0  # before startup
    admission = FakeAdmission()
    tts = FakeEngine(5)
    m.set_live_sources(admission=lambda: admission, engines=lambda: {"llm": FakeEngine(1), "tts": tts})
    assert (get("oai_active_streams"), get("oai_queued_streams")) == (3, 2)
    admission.active, tts.n = 7, 9
    assert get("oai_active_streams") == 7
    assert get("oai_engine_active_requests", {"engine": "tts"}) == 9
    assert get("oai_engine_active_requests", {"engine": "llm"}) == 1
    m.set_live_sources(engines=lambda: {"tts": BrokenEngine()})
    assert b"oai_active_streams 7.0" in m.render()  # a failing source does not break the scrape


def test_headroom_gauges_read_the_gate_and_its_learned_slope() -> None:
    from oai_server.serving.headroom import HeadroomGate

    m = Metrics()
    get = m.registry.get_sample_value
    assert get("oai_headroom_safe_streams") is None  # no gate bound (admission by headroom off)
    clock = [100.0]
    gate = HeadroomGate(min_streams=1, clock=lambda: clock[0])
    m.set_live_sources(headroom=lambda: gate)
    gauges = ("oai_headroom_generating", "oai_headroom_safe_streams", "oai_headroom_refused_total")
    assert [get(name) for name in gauges] == [0, 0, 0]
    assert get("oai_headroom_step_slope_seconds") is None  # nothing learned yet
    for streams in (40, 30, 20):  # three concurrencies, each settled: the step is 4 ms + 0.1 ms a stream
        while gate.generating < streams:
            gate.started()
        while gate.generating > streams:
            gate.finished()
        for _ in range(300):
            clock[0] += 0.01
            gate.record(round(streams * 0.01 / (0.004 + 0.0001 * streams)))
        gate.has_headroom()
    assert get("oai_headroom_generating") == 20 and get("oai_headroom_safe_streams") == gate.safe_streams > 20
    slope = get("oai_headroom_step_slope_seconds")
    assert slope is not None and slope == pytest.approx(0.0001, rel=0.2)
    assert get("oai_headroom_overloaded") == 0
    gate._refused_at = clock[0]  # a 429 now: the gate admits at its overload margin for the hold
    assert get("oai_headroom_overloaded") == 1
    clock[0] += gate.overload_hold_s
    assert get("oai_headroom_overloaded") == 0


def test_snac_windows_are_counted_by_path_from_the_decoder() -> None:
    m = Metrics()
    get = m.registry.get_sample_value
    assert get("oai_snac_windows_total", {"path": "eager"}) is None  # no decoder bound (before startup)
    counts, work = [(10, 3)], [(1.5, 0.25)]
    m.set_live_sources(snac=lambda: SimpleNamespace(window_counts=lambda: counts[0], work_seconds=lambda: work[0]))
    windows = {path: get("oai_snac_windows_total", {"path": path}) for path in ("graph", "eager")}
    assert windows == {"graph": 7, "eager": 3}
    assert (get("oai_snac_busy_seconds_total"), get("oai_snac_queue_wait_seconds_total")) == (1.5, 0.25)
    counts[0], work[0] = (25, 3), (2.0, 4.5)  # read at scrape time
    assert get("oai_snac_windows_total", {"path": "graph"}) == 22
    assert (get("oai_snac_busy_seconds_total"), get("oai_snac_queue_wait_seconds_total")) == (2.0, 4.5)
    m.set_live_sources(snac=lambda: SimpleNamespace())  # a decoder without counts: the scrape goes on
    assert get("oai_snac_windows_total", {"path": "graph"}) is None and get("oai_active_streams") == 0


def test_two_registries_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.count_frames(4)
    a.observe_request("/health", "GET", 200, 0.001)
    assert a.registry is not b.registry
    assert b.registry.get_sample_value("oai_audio_frames_total") == 0
    assert requests_count(b, "/health") == 0
    assert prometheus_client.REGISTRY.get_sample_value("oai_audio_frames_total") is None


async def test_metrics_endpoint_on_demo_app(demo_app: FastAPI, demo_client: httpx.AsyncClient) -> None:
    response = await demo_client.get("/metrics")  # no key needed
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for name in METRIC_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'oai_engine_active_requests{engine="llm"} 0.0' in text
    assert 'oai_engine_active_requests{engine="tts"} 0.0' in text
    decoded, eager = demo_app.state.services.engines.snac.window_counts()
    assert decoded == eager > 0  # the warm-up's windows, on the CPU: no CUDA graphs
    assert f'oai_snac_windows_total{{path="eager"}} {float(eager)}' in text
    assert 'oai_snac_windows_total{path="graph"} 0.0' in text
    scraped = float(
        next(line.split()[1] for line in text.splitlines() if line.startswith("oai_snac_busy_seconds_total "))
    )
    assert 0 < scraped <= demo_app.state.services.engines.snac.work_seconds()[0]  # the warm-up's rounds, live


async def test_request_counter_uses_route_template(demo_app: FastAPI, demo_client: httpx.AsyncClient) -> None:
    metrics: Metrics = demo_app.state.metrics
    route = "/v1/models/{model_id:path}"
    before_ok = requests_count(metrics, route, status=200)
    before_404 = requests_count(metrics, route, status=404)
    before_401 = requests_count(metrics, route, status=401)
    before_other = requests_count(metrics, "other", status=404)
    auth = {"authorization": f"Bearer {KEY}"}
    assert (await demo_client.get("/v1/models/demo-gemma-2", headers=auth)).status_code == 200
    assert (await demo_client.get("/v1/models/no-such-model", headers=auth)).status_code == 404
    assert (await demo_client.get("/v1/models/demo-gemma-2")).status_code == 401
    assert (await demo_client.get("/no/such/path/1", headers=auth)).status_code == 404
    assert (await demo_client.get("/no/such/path/2", headers=auth)).status_code == 404
    assert requests_count(metrics, route, status=200) == before_ok + 1
    assert requests_count(metrics, route, status=404) == before_404 + 1
    assert requests_count(metrics, route, status=401) == before_401 + 1
    assert requests_count(metrics, "other", status=404) == before_other + 2
    scraped = (await demo_client.get("/metrics")).text
    assert 'route="/v1/models/{model_id:path}"' in scraped
    assert "demo-gemma-2" not in scraped  # raw paths never become labels


async def test_demo_app_auth_and_admission_gauge(demo_app: FastAPI, demo_client: httpx.AsyncClient) -> None:
    assert (await demo_client.get("/health")).status_code == 200
    assert (await demo_client.get("/v1/models")).status_code == 401
    assert (await demo_client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"})).status_code == 200
    metrics: Metrics = demo_app.state.metrics
    ticket = await demo_app.state.services.admission.acquire()
    try:
        assert metrics.registry.get_sample_value("oai_active_streams") == 1
    finally:
        ticket.release()
    assert metrics.registry.get_sample_value("oai_active_streams") == 0


async def test_each_streamed_request_records_its_admission_wait(
    demo_app: FastAPI, demo_client: httpx.AsyncClient
) -> None:
    """A speaking request waits for headroom then a slot, a text reply only for a slot: one observation each,
    under its own label, so a burst's time to first audio can be split into waiting and speaking."""
    metrics: Metrics = demo_app.state.metrics

    def waits(speaks: str) -> float:
        return metrics.registry.get_sample_value("oai_admission_wait_seconds_count", {"speaks": speaks}) or 0.0

    before = waits("true"), waits("false")
    auth = {"authorization": f"Bearer {KEY}"}
    speech = {"model": "tts-1", "voice": "tara", "input": "Hi.", "response_format": "pcm", "seed": 1}
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "seed": 1}
    assert (await demo_client.post("/v1/audio/speech", json=speech, headers=auth)).status_code == 200
    assert (
        await demo_client.post("/v1/chat/completions", json={**chat, "stream": True}, headers=auth)
    ).status_code == 200
    assert (waits("true"), waits("false")) == (before[0] + 1, before[1] + 1)


async def test_a_spoken_reply_times_its_first_segment_between_first_token_and_first_audio(
    demo_app: FastAPI, demo_client: httpx.AsyncClient
) -> None:
    """One observation per spoken reply, none for a text reply; all three from the reply's start, so one reply's
    first token, first segment and first audio come in that order and split its TTFA into LLM, segmenter, TTS."""
    metrics: Metrics = demo_app.state.metrics
    get = metrics.registry.get_sample_value

    def totals() -> tuple[float, float, float, float]:
        chat = {"endpoint": "chat"}
        return (
            get("oai_time_to_first_segment_seconds_count", chat) or 0.0,
            get("oai_time_to_first_token_seconds_sum") or 0.0,
            get("oai_time_to_first_segment_seconds_sum", chat) or 0.0,
            get("oai_time_to_first_audio_seconds_sum", chat) or 0.0,
        )

    auth = {"authorization": f"Bearer {KEY}"}
    text = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "seed": 3}
    segments_before = totals()[0]
    assert (await demo_client.post("/v1/chat/completions", json=text, headers=auth)).status_code == 200
    before = totals()
    assert before[0] == segments_before  # no speech, no segment
    spoken = {**text, "modalities": ["text", "audio"], "audio": {"voice": "tara", "format": "wav"}, "max_tokens": 12}
    response = await demo_client.post("/v1/chat/completions", json=spoken, headers=auth)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["audio"]["data"]
    after = totals()
    assert after[0] == before[0] + 1
    first_token, first_segment, first_audio = (after[i] - before[i] for i in (1, 2, 3))
    assert 0 < first_token <= first_segment <= first_audio


@pytest.mark.parametrize("endpoint", ["speech", "chat"])
async def test_the_time_to_first_audio_splits_at_the_first_orpheus_tokens_and_the_first_snac_window(
    demo_app: FastAPI, demo_client: httpx.AsyncClient, endpoint: str
) -> None:
    """One observation of each stage per reply that speaks, from the reply's start like its TTFA, in order: the first
    Orpheus tokens (queue and prefill), the first SNAC window (the first chunk's tokens too), the first audio (SNAC and
    the write); a spoken chat reply's first text segment comes before its first Orpheus tokens."""
    get = demo_app.state.metrics.registry.get_sample_value

    def totals() -> list[float]:
        def value(name: str, labels: dict[str, str]) -> float:
            return get(name, labels) or 0.0

        stages = [{"endpoint": endpoint, "stage": stage} for stage in ("first_tokens", "first_window")]
        return [
            *(value("oai_time_to_speech_stage_seconds_count", labels) for labels in stages),
            value("oai_time_to_first_segment_seconds_sum", {"endpoint": endpoint}),
            *(value("oai_time_to_speech_stage_seconds_sum", labels) for labels in stages),
            value("oai_time_to_first_audio_seconds_sum", {"endpoint": endpoint}),
        ]

    auth = {"authorization": f"Bearer {KEY}"}
    if endpoint == "speech":
        path, body = "/v1/audio/speech", {"model": "tts-1", "voice": "tara", "input": "Hello there.", "seed": 2}
    else:
        path = "/v1/chat/completions"
        body = {
            "model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "seed": 3,
            "modalities": ["text", "audio"], "audio": {"voice": "tara", "format": "wav"},
        }  # fmt: skip
    before = totals()
    assert (await demo_client.post(path, json=body, headers=auth)).status_code == 200
    counts, (segment, first_tokens, first_window, first_audio) = (
        [after - was for after, was in zip(totals(), before, strict=True)][i:j] for i, j in ((0, 2), (2, 6))
    )
    assert counts == [1, 1]
    assert segment <= first_tokens <= first_window <= first_audio and first_tokens > 0
    assert (segment > 0) == (endpoint == "chat")


async def test_first_byte_is_timed_once_per_request_at_its_first_body_byte(
    demo_app: FastAPI, demo_client: httpx.AsyncClient
) -> None:
    """The app's whole time to a client's first byte: one observation per request by route template, taken
    when the first non-empty body chunk goes out (a streamed reply's later chunks add nothing)."""
    metrics: Metrics = demo_app.state.metrics

    def firsts(route: str) -> tuple[float, float]:
        count = metrics.registry.get_sample_value("oai_http_first_byte_seconds_count", {"route": route}) or 0.0
        total = metrics.registry.get_sample_value("oai_http_first_byte_seconds_sum", {"route": route}) or 0.0
        return count, total

    auth = {"authorization": f"Bearer {KEY}"}
    speech = {"model": "tts-1", "voice": "tara", "input": "Hello there.", "response_format": "pcm", "seed": 1}
    before = firsts("/v1/audio/speech")
    started = time.perf_counter()
    response = await demo_client.post("/v1/audio/speech", json=speech, headers=auth)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200 and len(response.content) > 2 * 2048  # several chunks
    count, total = firsts("/v1/audio/speech")
    assert count == before[0] + 1
    assert 0 < total - before[1] <= elapsed
    models = firsts("/v1/models")
    assert (await demo_client.get("/v1/models", headers=auth)).status_code == 200
    assert firsts("/v1/models")[0] == models[0] + 1


def test_two_apps_in_one_process(demo_settings: Settings) -> None:
    first = create_app(demo_settings)
    second = create_app(demo_settings)
    assert first.state.metrics.registry is not second.state.metrics.registry
    first.state.metrics.count_abort("llm")
    assert second.state.metrics.registry.get_sample_value("oai_engine_aborts_total", {"engine": "llm"}) is None
