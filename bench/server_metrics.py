"""The server's own view of a load level: its latency histograms on `/metrics`, scraped before and after.

A client's time to first audio mixes the server's work with the client's own (one Python process sending a
burst of N requests) and the wait for admission. The server's histograms split it: the time a speaking request
waited to be admitted (`oai_admission_wait_seconds`, real-time headroom then a slot), from then to its first
audio byte (`oai_time_to_first_audio_seconds`), and how late its event loop ran (`oai_event_loop_lag_seconds`);
a spoken chat reply's TTFA splits further at its first token (`oai_time_to_first_token_seconds`, the LLM) and
its first text segment handed to speech synthesis (`oai_time_to_first_segment_seconds`, the segmenter's wait);
a reply's wait for its audio splits at its first Orpheus tokens (`first_tokens_*`: the engine's queue and prefill)
and its first SNAC window (`first_window_*`: the first chunk's tokens; from there to `ttfa_*`, SNAC and the write,
`oai_time_to_speech_stage_seconds`);
`oai_http_first_byte_seconds` is all of it, from the request reaching the app to its first body byte, so
the client's TTFA minus it is what happens outside the app (the client, the socket, uvicorn's parsing).
Quantiles are interpolated inside buckets as Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx

SERIES = {
    "admission_wait_speaking": ("oai_admission_wait_seconds", 'speaks="true"'),
    "admission_wait_text": ("oai_admission_wait_seconds", 'speaks="false"'),
    "first_tokens_speech": ("oai_time_to_speech_stage_seconds", 'endpoint="speech",stage="first_tokens"'),
    "first_window_speech": ("oai_time_to_speech_stage_seconds", 'endpoint="speech",stage="first_window"'),
    "ttfa_speech": ("oai_time_to_first_audio_seconds", 'endpoint="speech"'),
    "ttfa_chat": ("oai_time_to_first_audio_seconds", 'endpoint="chat"'),
    "ttft_chat": ("oai_time_to_first_token_seconds", ""),
    "first_segment_chat": ("oai_time_to_first_segment_seconds", 'endpoint="chat"'),
    "first_tokens_chat": ("oai_time_to_speech_stage_seconds", 'endpoint="chat",stage="first_tokens"'),
    "first_window_chat": ("oai_time_to_speech_stage_seconds", 'endpoint="chat",stage="first_window"'),
    "loop_lag": ("oai_event_loop_lag_seconds", ""),
    "first_byte_speech": ("oai_http_first_byte_seconds", 'route="/v1/audio/speech"'),
    "first_byte_chat": ("oai_http_first_byte_seconds", 'route="/v1/chat/completions"'),
}
"""Name in the report -> (histogram family, label filter)."""
Series = dict[str, tuple[str, str]]
T = TypeVar("T")

GAUGES = {
    "headroom_safe_streams": "oai_headroom_safe_streams",
    "headroom_step_slope_s": "oai_headroom_step_slope_seconds",
    "headroom_refused_total": "oai_headroom_refused_total",
    "headroom_overloaded": "oai_headroom_overloaded",
}
"""Name in the report -> the headroom gate's gauge, read after the level (what the gate had learned by then)."""

COUNTERS = {
    "snac_busy_s": "oai_snac_busy_seconds_total",
    "snac_queue_wait_s": "oai_snac_queue_wait_seconds_total",
    "snac_windows": "oai_snac_windows_total",
}
"""Name in the report -> a counter (summed over its labels) whose increase over the level is reported: with the SNAC
worker's busy seconds against the level's wall time, and each window's mean wait for its round, a level shows
whether its streams waited on SNAC rather than on the engine."""


def scrape(url: str, series: Series = SERIES) -> dict[str, float]:
    """Every histogram sample (`name{labels}` -> value) of the families in `series`; {} if unreachable."""
    families = tuple({family for family, _ in series.values()} | set(GAUGES.values()) | set(COUNTERS.values()))
    try:
        text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(families):
            key, _, value = line.rpartition(" ")
            try:
                samples[key] = float(value)
            except ValueError:
                continue
    return samples


def scrape_all(urls: list[str], series: Series = SERIES) -> dict[str, float]:
    """`scrape` of every server, summed sample by sample: one histogram for servers sharing a load."""
    total: dict[str, float] = {}
    for url in urls:
        for key, value in scrape(url, series).items():
            total[key] = total.get(key, 0.0) + value
    return total


def _matches(key: str, family: str, suffix: str, label: str) -> bool:
    """Whether sample `key` is `family`'s `suffix` series and carries every `name="value"` of `label` (comma-separated;
    the exposition sorts a bucket's `le` among the labels, so they are matched one by one)."""
    name, _, labels = key.partition("{")
    have = set(labels.rstrip("}").split(","))
    return name == f"{family}_{suffix}" and all(part in have for part in label.split(",") if part)


def _delta(before: dict[str, float], after: dict[str, float], family: str, suffix: str, label: str) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if _matches(key, family, suffix, label)}


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """`histogram_quantile(q)` over cumulative (upper bound, count) buckets sorted by bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # past the largest finite bucket: its bound is all that is known
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def level_view(before: dict[str, float], after: dict[str, float], series: Series = SERIES) -> dict[str, Any]:
    """Per series in `series` observed during the level: observations, mean, p50, p95 and p99 (ms)."""
    view: dict[str, Any] = {}
    for name, (family, label) in series.items():
        counts = _delta(before, after, family, "count", label)
        count = sum(counts.values())
        if count <= 0:
            continue
        total = sum(_delta(before, after, family, "sum", label).values())
        buckets: dict[float, float] = {}
        for key, value in _delta(before, after, family, "bucket", label).items():
            bound = float(key.split('le="', 1)[1].split('"', 1)[0])
            buckets[bound] = buckets.get(bound, 0.0) + value
        ordered = sorted(buckets.items())
        view[name] = {
            "count": count,
            "mean_ms": total / count * 1000,
            **{f"p{int(q * 100)}_ms": _ms(quantile(q, ordered)) for q in (0.5, 0.95, 0.99)},
        }
    gauges = {name: after[gauge] for name, gauge in GAUGES.items() if gauge in after}
    if gauges:
        view["gauges"] = gauges
    counters = {
        name: sum(value - before.get(key, 0.0) for key, value in after.items() if key.split("{", 1)[0] == counter)
        for name, counter in COUNTERS.items()
        if any(key.split("{", 1)[0] == counter for key in after)
    }
    if counters.get("snac_windows"):
        counters["snac_queue_wait_ms_per_window"] = (
            1000 * counters.get("snac_queue_wait_s", 0.0) / counters["snac_windows"]
        )
    if counters:
        view["counters"] = counters
    return view


async def around(urls: list[str], work: Awaitable[T]) -> tuple[T, dict[str, Any]]:
    """`work`'s result and the servers' view of it: `level_view` of a scrape of `urls` before and after."""
    before = await asyncio.to_thread(scrape_all, urls)
    result = await work
    after = await asyncio.to_thread(scrape_all, urls)
    return result, level_view(before, after)


def snac_note(level: dict[str, Any]) -> str:
    """`SNAC busy X%, window wait Y ms` of a level's server view and wall time ('' where SNAC's counters are absent):
    whether its streams waited on SNAC rather than on the engine."""
    counters = (level.get("server") or {}).get("counters") or {}
    if not counters.get("snac_windows") or not level.get("wall_s"):
        return ""
    busy = counters.get("snac_busy_s", 0.0) / level["wall_s"]
    return f"SNAC busy {busy:.0%}, window wait {counters['snac_queue_wait_ms_per_window']:.0f} ms"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
