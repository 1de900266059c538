"""The live gauges of `metrics.Metrics`, computed at scrape time from the sources the app binds
(`Metrics.set_live_sources`): admission, the headroom gate, SNAC's decoders, the engines and the open connections.
A source that fails is logged and its series left out of that scrape."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


class AdmissionLike(Protocol):
    """What the queue gauges read (`admission.Admission` fits)."""

    @property
    def active(self) -> int:
        """Requests holding a slot."""
        ...

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        ...


class HeadroomLike(Protocol):
    """What the headroom gauges read (`serving.headroom.HeadroomGate` fits)."""

    @property
    def generating(self) -> int:
        """Speech requests generating now."""
        ...

    safe_streams: int
    refused: int

    @property
    def overloaded(self) -> bool:
        """Whether the gate admits at its overload margin now (it refused a stream lately)."""
        ...

    def step_slope(self) -> float | None:
        """Seconds one more stream adds to the engine's step, once learned."""
        ...


class SnacLike(Protocol):
    """What the SNAC counter reads (`codec.snac_stream.SnacDecoding` fits)."""

    def window_counts(self) -> tuple[int, int]:
        """(windows decoded, of them without a CUDA graph)."""
        ...

    def work_seconds(self) -> tuple[float, float]:
        """(seconds decoding rounds, seconds windows waited for their round)."""
        ...


class EngineLike(Protocol):
    """What the engine gauge reads (`engines.base.TokenEngine` fits)."""

    def active_requests(self) -> int:
        """Requests in flight inside the engine."""
        ...


AdmissionSource = Callable[[], "AdmissionLike | None"]
EngineSource = Callable[[], Mapping[str, EngineLike]]
CountSource = Callable[[], int]
HeadroomSource = Callable[[], "HeadroomLike | None"]
SnacSource = Callable[[], "SnacLike | None"]


def _no_admission() -> AdmissionLike | None:
    return None


def _no_headroom() -> HeadroomLike | None:
    return None


def _no_snac() -> SnacLike | None:
    return None


def _no_engines() -> Mapping[str, EngineLike]:
    return {}


def _no_count() -> int:
    return 0


class LiveCollector(Collector):
    """Gauges computed at scrape time from the bound sources."""

    def __init__(self) -> None:
        self.admission: AdmissionSource = _no_admission
        self.engines: EngineSource = _no_engines
        self.connections: CountSource = _no_count
        self.headroom: HeadroomSource = _no_headroom
        self.snac: SnacSource = _no_snac

    def _families(self) -> tuple[GaugeMetricFamily | CounterMetricFamily, ...]:
        return (
            GaugeMetricFamily("oai_active_streams", "Requests holding an admission slot."),
            GaugeMetricFamily("oai_queued_streams", "Requests waiting in the admission queue."),
            GaugeMetricFamily(
                "oai_engine_active_requests", "Requests in flight inside each engine.", labels=["engine"]
            ),
            GaugeMetricFamily("oai_open_connections", "Open HTTP and WebSocket connections."),
            GaugeMetricFamily("oai_headroom_generating", "Speech requests generating (the headroom gate's count)."),
            GaugeMetricFamily(
                "oai_headroom_safe_streams", "Speech streams the gate's last settled measurement keeps real time."
            ),
            GaugeMetricFamily(
                "oai_headroom_step_slope_seconds", "What one more speech stream adds to the engine step, once learned."
            ),
            CounterMetricFamily("oai_headroom_refused", "Speaking requests refused for lack of real-time headroom."),
            GaugeMetricFamily(
                "oai_headroom_overloaded", "1 while the gate admits at its overload margin (a 429 came lately)."
            ),
            CounterMetricFamily(
                "oai_snac_windows", "SNAC windows decoded, by path: a CUDA graph replay or eager.", labels=["path"]
            ),
            CounterMetricFamily("oai_snac_busy_seconds", "Seconds SNAC's decoding worker spent decoding rounds."),
            CounterMetricFamily(
                "oai_snac_queue_wait_seconds", "Seconds SNAC windows waited for their decoding round, summed."
            ),
        )

    def describe(self) -> Iterable[Metric]:
        """The families without samples (lets the registry check names without calling sources)."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """Read the sources now; a failing source drops its samples rather than the scrape."""
        families = self._families()
        (
            active,
            queued,
            engines,
            connections,
            generating,
            safe,
            step_slope,
            refused,
            overloaded,
            snac,
            busy,
            waited,
        ) = families
        try:
            admission = self.admission()
            active.add_metric([], admission.active if admission is not None else 0)
            queued.add_metric([], admission.queued if admission is not None else 0)
        except Exception:
            logger.exception("metrics: admission source failed")
        try:
            for name, engine in self.engines().items():
                engines.add_metric([name], engine.active_requests())
        except Exception:
            logger.exception("metrics: engine source failed")
        try:
            connections.add_metric([], self.connections())
        except Exception:
            logger.exception("metrics: connection source failed")
        try:
            headroom = self.headroom()
            if headroom is not None:
                slope = headroom.step_slope()
                generating.add_metric([], headroom.generating)
                safe.add_metric([], headroom.safe_streams)
                refused.add_metric([], headroom.refused)
                overloaded.add_metric([], int(headroom.overloaded))
                if slope is not None:
                    step_slope.add_metric([], slope)
        except Exception:
            logger.exception("metrics: headroom source failed")
        try:
            decoder = self.snac()
            if decoder is not None:
                decoded, eager = decoder.window_counts()
                snac.add_metric(["graph"], decoded - eager)
                snac.add_metric(["eager"], eager)
                busy_s, waited_s = decoder.work_seconds()
                busy.add_metric([], busy_s)
                waited.add_metric([], waited_s)
        except Exception:
            logger.exception("metrics: SNAC source failed")
        return families
