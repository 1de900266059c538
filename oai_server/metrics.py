"""Prometheus metrics of one app, in the app's own registry.

`Metrics` owns a private `CollectorRegistry`, so several apps in one process (tests) never
share or collide on series. The request counter and duration histogram are recorded by the
middleware (`middleware.RequestContextMiddleware`); the pipelines record latency and audio
through the `observe_*` / `count_*` methods. Gauges of live state (admission slots and queue,
engine requests in flight) are read at scrape time from sources bound with `set_live_sources`.

Series (all names prefixed `oai_`):

- `requests_total{route,method,status}`: route is the matched route template ("other" if none).
- `request_duration_seconds{route}`: until the last body byte (whole stream for streamed replies).
- `http_first_byte_seconds{route}`: from the request reaching the app to its first body byte handed to the
  server, all of the app's own time before a client sees anything (admission and first audio included).
- `time_to_first_audio_seconds{endpoint}`, `time_to_first_token_seconds`: 10 ms .. 10 s buckets.
- `time_to_first_segment_seconds{endpoint}`: to a spoken reply's first text segment handed to speech synthesis;
  with the first token's and first audio's times it splits a reply's TTFA into the LLM, the segmenter and TTS.
- `time_to_speech_stage_seconds{endpoint,stage}`: to a stage of a reply's first audio, from the same start:
  `first_tokens` (its first Orpheus tokens: admission, the engine's queue and prefill), `first_window` (its first
  SNAC window handed to the decoder: the first chunk's tokens too); the time to first audio minus `first_window` is
  SNAC's wait and decode and the write.
- `real_time_factor{endpoint}`: synthesis time / audio duration (< 1 is faster than real time).
- `active_streams`, `queued_streams`: live from the admission object.
- `headroom_generating`, `headroom_safe_streams`, `headroom_step_slope_seconds`, `headroom_refused_total`,
  `headroom_overloaded`: live from the real-time headroom gate (speech requests generating; the concurrency its last
  settled measurement said keeps real time; what one more stream adds to the engine's step, once learned; requests
  refused; 1 while it admits at its overload margin after a refusal).
- `engine_active_requests{engine}`: live from each engine's `active_requests()`.
- `snac_windows_total{path}`: SNAC windows decoded, live from the decoder: `graph` (a CUDA graph replay) or `eager`
  (a shape without a graph, or no CUDA). On a GPU nearly all should be `graph`: an eager window is a few hundred
  kernel launches holding the GIL of the process that decodes (with SNAC in the Orpheus engine, its scheduler's).
- `snac_busy_seconds_total`, `snac_queue_wait_seconds_total`: live from the decoder, the seconds its worker spent
  decoding rounds and the seconds windows waited for their round (summed over windows). A busy rate near 1 per
  decoder, or a mean wait (its rate over `snac_windows_total`'s) near a stream's buffered audio, means streams wait on
  SNAC rather than on the engine.
- `engine_aborts_total{engine}`, `audio_frames_total`.
- `event_loop_lag_seconds`: how late the event loop ran a timer (sampled all the time; anything
  CPU-bound on the loop shows here, and every other request waits that long).
- `open_connections`: live HTTP and WebSocket connections (against `--max-connections`).
- `connections_closed_total{reason}`: connections the server closed or refused on its own:
  `write_stall` (the client stopped reading), `header_timeout`, `body_timeout`,
  `headers_too_large`, `bad_request` (unparsable HTTP), `over_capacity` (past the connection cap).
- Realtime: `realtime_sessions_open`, `realtime_sessions_total`, `realtime_turns_total{source}`
  (vad, commit, timeout), `realtime_barge_ins_total`, `realtime_voice_to_voice_seconds{since}` (from the
  end of the user's speech, and from the VAD's speech-stopped decision, to the first reply audio sent),
  `realtime_barge_in_seconds` (VAD speech-start decision to the reply's engines aborted).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from .metrics_live import AdmissionSource, CountSource, EngineSource, HeadroomSource, LiveCollector, SnacSource

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""Content type of the text exposition format served at `/metrics`."""

OTHER_ROUTE = "other"
"""Route label of requests that matched no route (bounds the label's cardinality)."""

LATENCY_BUCKETS = (
    0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75,
    1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
)  # fmt: skip
"""Buckets of the first-audio / first-token histograms: fine-grained from 10 ms to 10 s."""

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Buckets of the request duration (streamed replies can last minutes)."""

LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Buckets of the event-loop lag (healthy: nearly everything under 10 ms)."""

RTF_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
"""Buckets of the real-time factor (synthesis seconds per audio second)."""


class Metrics:
    """All series of one app, in a registry of its own (never the global default registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "oai_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=reg,
        )
        self.request_duration = Histogram(
            "oai_request_duration_seconds",
            "HTTP request duration until the last body byte.",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.first_byte = Histogram(
            "oai_http_first_byte_seconds",
            "HTTP request reaching the app to its first body byte handed to the server.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttfa = Histogram(
            "oai_time_to_first_audio_seconds",
            "Time from request to the first audio byte.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.admission_wait = Histogram(
            "oai_admission_wait_seconds",
            "Time a streamed request waited to be admitted (real-time headroom, then a slot); 429s included.",
            ["speaks"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "oai_time_to_first_token_seconds",
            "Time from request to the first chat token.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.first_segment = Histogram(
            "oai_time_to_first_segment_seconds",
            "Time from request to a spoken reply's first text segment handed to speech synthesis.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.speech_stage = Histogram(
            "oai_time_to_speech_stage_seconds",
            "Time from request to a stage of its first audio: first Orpheus tokens, first SNAC window.",
            ["endpoint", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.rtf = Histogram(
            "oai_real_time_factor",
            "Synthesis time divided by audio duration.",
            ["endpoint"],
            buckets=RTF_BUCKETS,
            registry=reg,
        )
        self.aborts = Counter(
            "oai_engine_aborts",
            "Engine requests aborted (disconnect, deadline, error).",
            ["engine"],
            registry=reg,
        )
        self.frames = Counter("oai_audio_frames", "SNAC audio frames decoded and sent.", registry=reg)
        self.loop_lag = Histogram(
            "oai_event_loop_lag_seconds",
            "How late the event loop ran a timer (time every request waited for the loop).",
            buckets=LOOP_LAG_BUCKETS,
            registry=reg,
        )
        self.connections_closed = Counter(
            "oai_connections_closed",
            "Connections closed or refused by the server: write_stall, header_timeout, body_timeout, "
            "headers_too_large, bad_request, over_capacity.",
            ["reason"],
            registry=reg,
        )
        self._live = LiveCollector()
        reg.register(self._live)
        self._realtime_metrics(reg)

    def _realtime_metrics(self, reg: CollectorRegistry) -> None:
        self.realtime_open = Gauge("oai_realtime_sessions_open", "Realtime WebSocket sessions open now.", registry=reg)
        self.realtime_sessions = Counter("oai_realtime_sessions", "Realtime sessions opened.", registry=reg)
        self.realtime_turns = Counter(
            "oai_realtime_turns", "User turns committed in Realtime sessions.", ["source"], registry=reg
        )
        self.realtime_barge_ins = Counter(
            "oai_realtime_barge_ins", "Realtime responses cancelled because the user started speaking.", registry=reg
        )
        self.realtime_voice_to_voice = Histogram(
            "oai_realtime_voice_to_voice_seconds",
            "From the end of the user's speech (since=speech_end) or the VAD's end-of-turn decision "
            "(since=vad_decision) to the first reply audio sent.",
            ["since"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.realtime_barge_in = Histogram(
            "oai_realtime_barge_in_seconds",
            "From the VAD's speech-start decision to the interrupted reply's engines aborted.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )

    def set_live_sources(
        self,
        *,
        admission: AdmissionSource | None = None,
        engines: EngineSource | None = None,
        connections: CountSource | None = None,
        headroom: HeadroomSource | None = None,
        snac: SnacSource | None = None,
    ) -> None:
        """Bind the callables the gauges read at scrape time.

        `admission()` returns the admission object (or None before startup: gauges read 0);
        `engines()` maps an engine label (e.g. "llm", "tts") to an object with `active_requests()`;
        `connections()` counts the open connections (bound by the server's connection guard); `headroom()` returns
        the real-time headroom gate (None when admission by headroom is off); `snac()` the SNAC decoding (None
        before startup).
        """
        if admission is not None:
            self._live.admission = admission
        if engines is not None:
            self._live.engines = engines
        if connections is not None:
            self._live.connections = connections
        if headroom is not None:
            self._live.headroom = headroom
        if snac is not None:
            self._live.snac = snac

    def _labeled(self, metric: MetricWrapperBase, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once: prometheus_client validates and converts the labels on every
        call, and these run for every request and stream (label values here come from small fixed sets)."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished HTTP request (called by the middleware)."""
        self._labeled(self.requests, route, method, str(status)).inc()
        self._labeled(self.request_duration, route).observe(seconds)

    def observe_first_byte(self, route: str, seconds: float) -> None:
        """Time from one HTTP request reaching the app to its first body byte (called by the middleware)."""
        self._labeled(self.first_byte, route).observe(seconds)

    def observe_ttfa(self, endpoint: str, seconds: float) -> None:
        """Time to first audio of one reply; `endpoint` is e.g. "speech", "chat", "seed_tts"."""
        self._labeled(self.ttfa, endpoint).observe(seconds)

    def observe_admission_wait(self, speaks: bool, seconds: float) -> None:
        """How long one request waited for admission (`speaks`: it also waited for real-time headroom)."""
        self._labeled(self.admission_wait, "true" if speaks else "false").observe(seconds)

    def observe_ttft(self, seconds: float) -> None:
        """Time to the first chat token of one reply."""
        self.ttft.observe(seconds)

    def observe_first_segment(self, endpoint: str, seconds: float) -> None:
        """Time to the first text segment of one spoken reply that went to speech synthesis."""
        self._labeled(self.first_segment, endpoint).observe(seconds)

    def observe_speech_stage(self, endpoint: str, stage: str, seconds: float) -> None:
        """Time to a stage ("first_tokens", "first_window") of one reply's first audio."""
        self._labeled(self.speech_stage, endpoint, stage).observe(seconds)

    def observe_rtf(self, endpoint: str, value: float) -> None:
        """Real-time factor (synthesis seconds / audio seconds) of one finished reply."""
        self._labeled(self.rtf, endpoint).observe(value)

    def count_frames(self, n: int = 1) -> None:
        """Count `n` audio frames sent to clients."""
        if n > 0:
            self.frames.inc(n)

    def count_abort(self, engine: str) -> None:
        """Count one engine request aborted before it finished; `engine` is "llm" or "tts"."""
        self._labeled(self.aborts, engine).inc()

    def observe_loop_lag(self, seconds: float) -> None:
        """One sample of the event loop's lag (see `serving.loop_monitor`)."""
        self.loop_lag.observe(max(0.0, seconds))

    def count_connection_closed(self, reason: str) -> None:
        """Count one connection the server closed or refused itself (`reason` as in the module docstring)."""
        self._labeled(self.connections_closed, reason).inc()

    def realtime_session(self, opened: bool) -> None:
        """A Realtime session opened (True) or closed (False)."""
        if opened:
            self.realtime_sessions.inc()
            self.realtime_open.inc()
        else:
            self.realtime_open.dec()

    def count_realtime_turn(self, source: str) -> None:
        """One user turn committed: `source` is "vad", "commit" or "timeout"."""
        self._labeled(self.realtime_turns, source).inc()

    def observe_barge_in(self, seconds: float) -> None:
        """One barge-in: speech-start decision to the reply's engines aborted."""
        self.realtime_barge_ins.inc()
        self.realtime_barge_in.observe(seconds)

    def observe_voice_to_voice(self, since: str, seconds: float) -> None:
        """First reply audio of a VAD turn; `since` is "speech_end" or "vad_decision"."""
        self._labeled(self.realtime_voice_to_voice, since).observe(seconds)

    def render(self) -> bytes:
        """The text exposition (format 0.0.4) of every series, for `GET /metrics`."""
        return generate_latest(self.registry)
