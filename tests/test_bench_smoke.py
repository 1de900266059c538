"""CI smoke test of the bench scripts on the CPU demo profile (no timing assertions).

`bench/load.py --demo` starts its own demo server and drives it over real sockets (bursts with
their capacity block, a short Poisson run, an overload burst against a server admitting two);
`bench/baselines.py --demo` runs the raw-engine, seed-style and our pipeline in process;
`bench/snac_decode.py` times SNAC and reports precision and streaming SNRs. The playback
simulator, the capacity verdicts and search, and the arrival model are checked on exact inputs.
Every demo request is seeded (`load.py --demo` derives one seed per request from a base seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import server_metrics  # noqa: E402
from _common import StreamResult, simulate_playback, summarize  # noqa: E402
from arrivals import LengthMix, concurrency_reached, poisson_plan  # noqa: E402
from capacity import Criteria, _timings, capacity_block, evaluate, ladder, search  # noqa: E402
from clients import Seeds, chat_max_tokens, speech_text  # noqa: E402
from server_metrics import level_view, quantile  # noqa: E402
from snac_fidelity import snr_db  # noqa: E402

from oai_server.pipeline.segmenter import SentenceSegmenter  # noqa: E402

LEVEL_KEYS = {
    "concurrency",
    "requests",
    "ok",
    "errors",
    "ttfa_ms",
    "rtf",
    "rtf_after_first_audio",
    "audio_s",
    "underruns",
    "stall_ms",
    "streams_zero_underruns",
    "zero_underrun_fraction",
    "audio_s_total",
    "aggregate_audio_tokens_per_s",
    "refused_429",
    "time_to_429_ms",
    "retry_after_s",
    "hung",
}
CRITERIA_ORDER = ("success", "zero_underruns", "rtf_p99", "ttfa_p95_ms")
CRITERIA = set(CRITERIA_ORDER)
FRAME = 2048  # samples = 85.33 ms at 24 kHz


def test_server_histogram_quantiles_interpolate_like_prometheus() -> None:
    buckets = [(0.1, 2.0), (0.2, 6.0), (0.5, 10.0), (float("inf"), 10.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.175)  # rank 5: 3/4 of the way through (0.1, 0.2]
    assert quantile(0.1, buckets) == pytest.approx(0.05)
    assert quantile(1.0, buckets) == pytest.approx(0.5)
    assert quantile(0.99, [(0.1, 0.0), (float("inf"), 4.0)]) == 0.1  # past the last finite bound
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_server_level_view_is_the_difference_between_two_scrapes() -> None:
    def scrape(counts: tuple[float, float, float], total: float) -> dict[str, float]:
        name = "oai_time_to_first_audio_seconds"
        bounds = ("0.1", "0.5", "+Inf")
        buckets = {f'{name}_bucket{{endpoint="speech",le="{le}"}}': c for le, c in zip(bounds, counts, strict=True)}
        chat = {f'{name}_count{{endpoint="chat"}}': 7.0}  # another label: not this series
        return (
            buckets
            | chat
            | {f'{name}_count{{endpoint="speech"}}': counts[-1], f'{name}_sum{{endpoint="speech"}}': total}
        )

    view = level_view(scrape((1, 1, 1), 0.05), scrape((1, 5, 5), 1.25))  # the level: four first audios, 0.3 s each
    assert set(view) == {"ttfa_speech"}  # the chat series did not move; unknown series are left out
    assert view["ttfa_speech"]["count"] == 4 and view["ttfa_speech"]["mean_ms"] == pytest.approx(300)
    assert view["ttfa_speech"]["p50_ms"] == pytest.approx(300)  # rank 2 of 4 in (0.1, 0.5]: half way
    gauges = {"oai_headroom_safe_streams": 180.0, "oai_headroom_step_slope_seconds": 4e-5}
    view = level_view(scrape((1, 1, 1), 0.05) | {"oai_headroom_safe_streams": 90.0}, scrape((1, 5, 5), 1.25) | gauges)
    assert view["gauges"] == {"headroom_safe_streams": 180.0, "headroom_step_slope_s": 4e-5}  # as after the level
    snac = {'oai_snac_windows_total{path="graph"}': 90.0, 'oai_snac_windows_total{path="eager"}': 2.0}
    more = {'oai_snac_windows_total{path="graph"}': 140.0, 'oai_snac_windows_total{path="eager"}': 2.0}
    before = (
        scrape((1, 1, 1), 0.05) | snac | {"oai_snac_busy_seconds_total": 3.0, "oai_snac_queue_wait_seconds_total": 1.0}
    )
    after = (
        scrape((1, 5, 5), 1.25) | more | {"oai_snac_busy_seconds_total": 4.5, "oai_snac_queue_wait_seconds_total": 2.0}
    )
    counters = level_view(before, after)["counters"]  # increases over the level, summed over labels
    assert counters == {
        "snac_busy_s": 1.5, "snac_queue_wait_s": 1.0, "snac_windows": 50.0, "snac_queue_wait_ms_per_window": 20.0
    }  # fmt: skip
    line = _timings({"ttfa_ms": {"p95": 586.4}, "wall_s": 3.0, "server": level_view(before, after)})
    assert line == "; TTFA p95 586 ms, server: ttfa_speech p95 480 ms, SNAC busy 50%, window wait 20 ms"


def test_playback_starts_after_prebuffer_and_counts_underruns() -> None:
    # 3 frames at t=0 (256 ms buffered >= 250 ms: play from 0), the 4th at 0.5 s: dry at 0.256 s.
    arrivals = [(0.0, FRAME), (0.0, 2 * FRAME), (0.0, 3 * FRAME), (0.5, 4 * FRAME)]
    underruns, stall = simulate_playback(arrivals, end_s=0.5, prebuffer_s=0.25)
    assert underruns == 1
    assert stall == pytest.approx(0.5 - 3 * FRAME / 24000)
    result = StreamResult(ok=True, arrivals=arrivals).finish(0.5, 250)
    assert result.first_stall_audio_s == pytest.approx(3 * FRAME / 24000)  # dry after the 3 frames it had
    assert result.underruns == 1 and result.stall_ms == pytest.approx(stall * 1000)


def test_a_short_streams_rtf_counts_its_ttfa_and_its_rtf_after_the_first_audio_does_not() -> None:
    """A 4-frame stream whose first frame came at 0.5 s and the rest at real time: its RTF is past 1 on the TTFA alone,
    its RTF after the first audio is what it ran at once started; the level's line says both and the shortest stream."""
    frame_s = FRAME / 24000
    arrivals = [(0.5 + i * frame_s * 0.9, (i + 1) * FRAME) for i in range(4)]
    result = StreamResult(ok=True, arrivals=arrivals).finish(arrivals[-1][0], 250)
    assert result.underruns == 0 and result.rtf == pytest.approx(arrivals[-1][0] / (4 * frame_s))
    assert result.rtf > 1 and result.rtf_after_first_audio == pytest.approx(0.9)
    long = StreamResult(ok=True, arrivals=[(0.1 + i * frame_s, (i + 1) * FRAME) for i in range(40)]).finish(3.5, 250)
    level = summarize(2, [result, long], wall_s=3.5)
    assert level["audio_s"]["min"] == pytest.approx(4 * frame_s)
    assert level["audio_s"]["max"] == pytest.approx(40 * frame_s)
    assert level["rtf_after_first_audio"]["max"] == pytest.approx(max(0.9, (3.5 - 0.1) / (39 * frame_s)))
    line = _timings(level)
    assert line.startswith(f"; TTFA p95 {level['ttfa_ms']['p95']:.0f} ms, RTF p99 {level['rtf']['p99']:.3f} (")
    assert "after the first audio), shortest stream 0.34 s" in line
    lone = StreamResult(ok=True, arrivals=arrivals[:1]).finish(0.5, 250)  # one chunk: nothing after the first audio
    assert lone.rtf_after_first_audio is None


def test_playback_real_time_arrivals_never_stall() -> None:
    arrivals = [(i * 0.08, (i + 1) * FRAME) for i in range(20)]  # faster than 85.3 ms per frame
    assert simulate_playback(arrivals, end_s=1.6, prebuffer_s=0.25) == (0, 0.0)


def test_playback_short_stream_starts_at_end() -> None:
    # Never reaches 250 ms: the player starts at the end of the stream, so nothing can run dry.
    assert simulate_playback([(0.1, FRAME), (2.0, 2 * FRAME)], end_s=2.0, prebuffer_s=0.25) == (0, 0.0)


def _level(n: int, *, ok: int | None = None, clean: int | None = None, rtf: float = 0.5, ttfa: float = 100.0) -> Any:
    """A level summary with only what the verdicts read."""
    ok = n if ok is None else ok
    return {
        "concurrency": n,
        "requests": n,
        "ok": ok,
        "streams_zero_underruns": ok if clean is None else clean,
        "rtf": {"p99": rtf},
        "ttfa_ms": {"p95": ttfa},
    }


def test_capacity_verdict_names_each_failed_criterion() -> None:
    criteria = Criteria(ttfa_p95_ms=500)
    good = evaluate(_level(8), criteria)
    assert (good["passed"], good["failed"], good["clear_fail"]) == (True, [], False)
    assert set(good["criteria"]) == CRITERIA
    slow = evaluate(_level(8, ttfa=600), criteria)  # 20 % over: marginal
    assert (slow["passed"], slow["failed"], slow["clear_fail"]) == (False, ["ttfa_p95_ms"], False)
    bad = evaluate(_level(8, clean=6, rtf=1.3, ttfa=900), criteria)
    assert bad["failed"] == ["zero_underruns", "rtf_p99", "ttfa_p95_ms"] and bad["clear_fail"]
    assert bad["criteria"]["zero_underruns"] == {"value": 2, "limit": 0, "held": False}
    assert bad["criteria"]["rtf_p99"] == {"value": 1.3, "limit": 1.0, "held": False}
    refused = evaluate(_level(8, ok=7), criteria)
    assert refused["failed"] == ["success", "zero_underruns"]
    assert refused["criteria"]["success"]["value"] == 7 / 8


def test_capacity_block_is_the_largest_passing_level() -> None:
    levels = [_level(1), _level(2, ttfa=600), _level(4), _level(8, clean=7)]
    block = capacity_block(levels, Criteria(ttfa_p95_ms=500))
    assert [v["failed"] for v in block["levels"]] == [[], ["ttfa_p95_ms"], [], ["zero_underruns"]]
    assert block["capacity"] == 4
    assert block["first_failed_n"] == 2 and block["non_monotonic"]
    assert block["largest_n_zero_underruns"] == 4
    assert capacity_block([_level(1, ttfa=900)], Criteria(ttfa_p95_ms=500))["capacity"] == 0


def test_level_counts_429_apart_from_failures() -> None:
    clean = StreamResult(ok=True, status=200, arrivals=[(0.05 + i * 0.08, (i + 1) * FRAME) for i in range(6)])
    dry = StreamResult(ok=True, status=200, arrivals=[(0.05, 3 * FRAME), (0.6, 4 * FRAME)])
    refused = StreamResult(status=429, headers_s=0.01, retry_after_s=1.0, error="HTTP 429: at capacity")
    broken = StreamResult(status=200, error="no audio")
    level = summarize(4, [clean.finish(0.6, 250), dry.finish(0.6, 250), refused, broken], wall_s=1.0)
    assert (level["ok"], level["errors"], level["refused_429"], level["hung"]) == (2, 1, 1, 0)
    assert level["retry_after_s"] == [1.0]
    assert level["time_to_429_ms"]["max"] == pytest.approx(10.0)
    verdict = evaluate(level, Criteria(ttfa_p95_ms=500, rtf_p99_max=10))
    assert verdict["failed"] == ["success", "zero_underruns"]
    assert verdict["criteria"]["zero_underruns"]["value"] == 3  # the underrun, the refusal, the failure


def test_capacity_search_ladders_up_then_bisects() -> None:
    async def run(n: int) -> Any:
        return _level(n) if n <= 200 else _level(n, clean=n // 2)  # past 200 half the streams underrun

    found = asyncio.run(search(run, Criteria(ttfa_p95_ms=500), start=8, maximum=512, resolution=16))
    assert found["levels_run"] == [8, 16, 32, 64, 128, 256, 192, 224, 208]
    assert found["capacity"] == 192
    assert found["bracket"] == {"pass": 192, "fail": 208}
    assert [r["phase"] for r in found["runs"]].count("ladder") == 6  # 512 never ran after a clear failure
    assert ladder(48, 100, 1.5) == [48, 72, 100]


def test_capacity_search_steps_past_one_marginal_failure_not_two() -> None:
    def find(special: dict[int, Any]) -> dict[str, Any]:
        async def run(n: int) -> Any:
            return special.get(n, _level(n))

        return asyncio.run(search(run, Criteria(ttfa_p95_ms=500), start=8, maximum=512, resolution=16))

    # 64 misses TTFA by 10 % (noise?), 128 passes, 256 fails clearly.
    once = find({64: _level(64, ttfa=550), 256: _level(256, clean=0)})
    assert once["levels_run"] == [8, 16, 32, 64, 128, 256, 192, 224, 240]
    assert once["capacity"] == 240
    # Two marginal failures in a row stop the ladder; the bisection runs below the first.
    twice = find({64: _level(64, ttfa=550), 128: _level(128, ttfa=550)})
    assert twice["levels_run"] == [8, 16, 32, 64, 128, 48]
    assert twice["capacity"] == 48


def test_poisson_plan_is_seeded_and_inside_its_window() -> None:
    plan = poisson_plan(2.0, 30.0, LengthMix(), seed=7)
    assert plan == poisson_plan(2.0, 30.0, LengthMix(), seed=7)
    assert plan != poisson_plan(2.0, 30.0, LengthMix(), seed=8)
    times = [t for t, _ in plan]
    assert times == sorted(times) and times[0] > 0 and times[-1] < 30.0
    assert all(1.0 <= s <= 20.0 for _, s in plan)
    faster = poisson_plan(4.0, 30.0, LengthMix(), seed=7)  # the same lengths in the same order at any rate
    shared = min(len(plan), len(faster))
    assert [s for _, s in faster][:shared] == [s for _, s in plan][:shared]


def test_length_mix_is_the_documented_lognormal() -> None:
    mix = LengthMix()
    rng = random.Random(1)
    draws = sorted(mix.draw(rng) for _ in range(20001))
    assert 4.8 < draws[10000] < 5.2  # the median
    assert (draws[0], draws[-1]) == (1.0, 20.0)  # clipped at both ends
    assert 5.5 < mix.mean_s() < 6.5


def test_concurrency_reached_counts_admitted_streams() -> None:
    results = [
        StreamResult(status=200, sent_at_s=0.0, headers_s=0.1, wall_s=2.1),  # in flight 0.1 .. 2.1
        StreamResult(status=200, sent_at_s=1.0, headers_s=0.0, wall_s=2.0),  # 1.0 .. 3.0
        StreamResult(status=429, sent_at_s=0.5, headers_s=0.05, wall_s=0.05),  # never admitted
    ]
    assert concurrency_reached(results, until_s=4.0) == {"max": 2, "mean": pytest.approx(1.0)}


def test_request_knobs_ask_for_the_length() -> None:
    seeds = Seeds(10)
    assert [seeds.take() for _ in range(3)] == [10, 11, 12]
    assert Seeds(None).take() is None
    for seconds in (1.0, 5.0, 20.0):
        text = speech_text(seconds, tokens_per_char=8.0)
        assert abs(len(text) - seconds * 82.03 / 8.0) <= 12  # cut at the space nearest the target
        assert text == text.strip()
    assert chat_max_tokens(5.0, tokens_per_s=3.0) == 15
    assert chat_max_tokens(0.1, tokens_per_s=3.0) == 1


def test_snr_db() -> None:
    x = np.sin(np.arange(1000) / 7.0)
    assert snr_db(x, x) is None
    assert snr_db(x, 1.1 * x) == pytest.approx(20.0)


def follows_first_segment_rule(transcript: str, max_words: int = 10) -> bool:
    """The segmenter ends the first segment after `max_words` words, or before the last one when it ends
    in "." or "…" (perhaps an abbreviation); where that would cut at the start of a sentence it waits for
    the next space instead: so past the limit, every word but the last ends in one."""
    words = transcript.split()
    return bool(words) and all(w.endswith((".", "…")) for w in words[max_words - 1 : -1])


def test_first_segment_rule_is_the_segmenters() -> None:
    def first(text: str) -> str:
        segmenter = SentenceSegmenter(max_chars=300, first_segment_words=4, first_segment_max_words=10)
        return [*segmenter.push(text), *segmenter.flush()][0]

    words = [f"word{i}" for i in range(1, 14)]
    assert first(" ".join(words)) == " ".join(words[:10])
    abbreviated = [*words[:9], "approx.", "eleven", "twelve"]
    # the 10th word ends in ".": the cut goes before it, so it opens the next segment (at most 10 words)
    assert first(" ".join(abbreviated)) == " ".join(abbreviated[:9])
    for text in (" ".join(words), " ".join(abbreviated)):
        assert follows_first_segment_rule(first(text))
    assert not follows_first_segment_rule(" ".join(words[:11]))


def _run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _check_capacity_block(block: dict[str, Any], levels: list[dict[str, Any]], ttfa_limit: float) -> None:
    assert block["criteria"] == {"ttfa_p95_ms": ttfa_limit, "rtf_p99_max": 1.0, "prebuffer_ms": 250.0, "parts": []}
    assert [v["n"] for v in block["levels"]] == [lv["concurrency"] for lv in levels]
    for level, verdict in zip(levels, block["levels"], strict=True):
        checks = verdict["criteria"]
        assert set(checks) == CRITERIA
        assert checks["success"]["held"] is (level["ok"] == level["requests"])
        assert checks["zero_underruns"]["value"] == level["requests"] - level["streams_zero_underruns"]
        assert checks["rtf_p99"]["value"] == level["rtf"]["p99"]
        assert checks["rtf_p99"]["held"] is (level["rtf"]["p99"] <= 1.0)
        assert checks["ttfa_p95_ms"]["value"] == level["ttfa_ms"]["p95"]
        assert checks["ttfa_p95_ms"]["held"] is (level["ttfa_ms"]["p95"] <= ttfa_limit)
        assert verdict["failed"] == [k for k in CRITERIA_ORDER if not checks[k]["held"]]
        assert verdict["passed"] is (not verdict["failed"])
    assert block["capacity"] == max((v["n"] for v in block["levels"] if v["passed"]), default=0)


@pytest.mark.slow
def test_load_demo_writes_results(tmp_path: Path, demo_cache: Path) -> None:
    out = tmp_path / "load"
    proc = _run(
        "load.py", "--demo", "--cache-dir", str(demo_cache), "--out", str(out), "--concurrency", "1,2,2",
        "--arrival-rates", "1", "--arrival-duration-s", "3", "--overload", "2", "--overload-arrivals", "burst",
        "--server-args", "--max-concurrent-streams 2 --max-queued 0", "--client-procs", "2",
    )  # fmt: skip
    report = json.loads((out / "results.json").read_text())
    assert set(report["modes"]) == {"speech", "chat"} and report["config"]["client_procs"] == 2
    seeds = [s["seed"] for runs in report["streams"].values() for run in runs.values() for s in run]
    assert None not in seeds and len(set(seeds)) == len(seeds)  # one seed per request, from the base seed
    plan = poisson_plan(1.0, 3.0, LengthMix(), seed=0)
    assert plan  # the demo's Poisson run sends something
    for mode, levels in report["modes"].items():
        assert [lv["concurrency"] for lv in levels] == [1, 2, 2]  # a level run again (an A/B's fixed levels)
        for level in levels:
            assert set(level) >= LEVEL_KEYS
            assert level["ok"] == level["requests"], level["error_samples"]  # seeded: no empty reply
            server = level["server"]  # the server's own view of the level: one first audio per stream
            assert server[f"ttfa_{mode}"]["count"] == server["admission_wait_speaking"]["count"] == level["requests"]
            assert server[f"first_byte_{mode}"]["count"] == level["requests"]  # the app's whole time, once each
            if mode == "speech":  # its first byte is audio; a chat reply's is the SSE role chunk, before any audio
                assert server["first_byte_speech"]["p50_ms"] >= server["ttfa_speech"]["p50_ms"] - 10  # bucket slack
            else:  # a spoken reply's TTFA split at its first token and its first segment: one of each per reply
                assert server["ttft_chat"]["count"] == server["first_segment_chat"]["count"] == level["requests"]
                assert server["ttft_chat"]["mean_ms"] <= server["first_segment_chat"]["mean_ms"]
                assert server["first_segment_chat"]["mean_ms"] <= server["ttfa_chat"]["mean_ms"]
            phases = level["client_phases_ms"]  # each stream: connected, then sent, then headers, then audio
            assert phases["connected"]["max"] <= phases["sent"]["max"] <= phases["headers"]["max"]
            assert 0 < phases["sent"]["p50"] <= phases["headers"]["p50"] <= level["ttfa_ms"]["p50"]
        _check_capacity_block(report["capacity"][mode], levels, 500.0 if mode == "speech" else 800.0)
        assert [len(report["streams"][mode][key]) for key in ("1", "2", "2 #2")] == [1, 2, 2]  # each run's own

        (rate,) = report["arrivals"][mode]
        assert rate["offered_requests"] == rate["requests"] == len(plan)
        assert rate["ok"] == rate["requests"], rate["error_samples"]  # at most 2 at once: all admitted
        assert (rate["errors"], rate["refused_429"], rate["hung"]) == (0, 0, 0)
        assert rate["offered_load_streams"] == pytest.approx(LengthMix().mean_s())
        assert [s["target_audio_s"] for s in report["streams"][mode]["rate=1"]] == [s for _, s in plan]
        assert 1 <= rate["concurrency_reached"]["max"] <= 2
        assert set(rate["criteria"]["criteria"]) == CRITERIA
        served = rate["server"][f"ttfa_{mode}"]["count"]  # the server's view of the arrivals too
        assert served == rate["ok"] and rate["server"]["counters"]["snac_windows"] > 0

        # 3 sent at once against a server admitting 2 and queueing none: the third is refused, since
        # an admitted stream runs for hundreds of ms before it could free its slot.
        over = report["overload"][mode]
        assert (over["offered_requests"], over["admitted"], over["refused_429"]) == (3, 2, 1)
        assert over["retry_after_s"] == [1.0]
        assert (over["errors"], over["hung"], over["verdict"]["nothing_hung"]) == (0, 0, True)
        assert len(over["admitted_underruns"]) == 2
        assert over["server"][f"ttfa_{mode}"]["count"] == 2 and over["server"]["counters"]["snac_busy_s"] > 0
    for level in report["modes"]["chat"]:  # the transcript of a segment is sent before its audio
        assert level["first_text_ms"]["p50"] <= level["ttfa_ms"]["p50"]
    transcripts = [s["first_text"] for run in ("1", "2", "rate=1") for s in report["streams"]["chat"][run]]
    assert all(follows_first_segment_rule(t) for t in transcripts), transcripts
    assert all("first_text_ms" not in level for level in report["modes"]["speech"])
    for name in ("results.png", "capacity.png", "arrivals.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "capacity: " in proc.stdout and "Poisson arrivals" in proc.stdout
    assert "[speech] arrivals 1/s: " in proc.stdout and "SNAC busy " in proc.stdout


@contextlib.contextmanager
def frontend_server(demo_cache: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """`bench/frontend.py` on a free port (140 Orpheus tokens a stream), stopped on leaving."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OAI_SERVER_CACHE_DIR": str(demo_cache)}
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "frontend.py"), "--port", str(port), "--tts-max-tokens", "140"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield port, server
    finally:
        server.terminate()
        server.wait(10)


def _speech_first_bytes(port: int) -> float:
    """How many speech requests the server at `port` has started answering (its own histogram's count)."""
    samples = server_metrics.scrape(f"http://127.0.0.1:{port}")
    return sum(v for k, v in samples.items() if k.startswith("oai_http_first_byte_seconds_count") and "speech" in k)


def test_load_deals_streams_out_to_several_servers(tmp_path: Path, demo_cache: Path) -> None:
    """`--url a,b`: stream i goes to server i mod 2, and the level's server view sums both servers' histograms."""
    with frontend_server(demo_cache) as (first, _), frontend_server(demo_cache) as (second, _):
        out = tmp_path / "two"
        urls = f"http://127.0.0.1:{first},http://127.0.0.1:{second}/"
        _run(
            "load.py", "--url", urls, "--mode", "speech", "--concurrency", "5", "--warmup", "0",
            "--server-timeout", "60", "--out", str(out),
        )  # fmt: skip
        (level,) = json.loads((out / "results.json").read_text())["modes"]["speech"]
        assert (level["ok"], level["streams_zero_underruns"]) == (5, 5), level["error_samples"]
        assert level["server"]["first_byte_speech"]["count"] == 5
        stages = [level["server"][name] for name in ("first_tokens_speech", "first_window_speech", "ttfa_speech")]
        assert [stage["count"] for stage in stages] == [5, 5, 5]
        assert stages[0]["mean_ms"] <= stages[1]["mean_ms"] <= stages[2]["mean_ms"]
        assert (_speech_first_bytes(first), _speech_first_bytes(second)) == (3, 2)


def test_preconnect_opens_every_connection_before_the_timed_requests(tmp_path: Path, demo_cache: Path) -> None:
    """`--preconnect`: no timed request pays a TCP connect (one process or several); else each worker's first does."""
    with frontend_server(demo_cache) as (port, _):
        runs = {"cold": [], "warm": ["--preconnect"], "warm_procs": ["--preconnect", "--client-procs", "2"]}
        for name, flags in runs.items():
            _run(
                "load.py", "--url", f"http://127.0.0.1:{port}", "--mode", "speech", "--concurrency", "3",
                "--requests-per-stream", "2", "--warmup", "0", "--server-timeout", "60", "--out", str(tmp_path / name),
                *flags,
            )  # fmt: skip
        for name in runs:
            report = json.loads((tmp_path / name / "results.json").read_text())
            streams = report["streams"]["speech"]["3"]
            assert [s["ok"] for s in streams] == [True] * 6, name
            connects = sum(s["connected_s"] is not None for s in streams)
            assert connects == (3 if name == "cold" else 0), name  # a worker's second request reuses its connection
            assert report["modes"]["speech"][0]["wall_s"] > 0


def test_poisson_arrivals_are_sent_at_their_planned_times_from_one_process_or_several(
    tmp_path: Path, demo_cache: Path
) -> None:
    """`--arrival-rates` in the load generator's own process and dealt out to `--client-procs 2`: every planned
    request goes out once, at its time after the run's start, in the plan's order in the report."""
    plan = poisson_plan(4.0, 2.0, LengthMix(3.0, 0.3, 1.0, 3.0), seed=0)
    assert len(plan) >= 4
    with frontend_server(demo_cache) as (port, _):
        for name, flags in {"one": [], "procs": ["--client-procs", "2"]}.items():
            _run(
                "load.py", "--url", f"http://127.0.0.1:{port}", "--mode", "speech", "--concurrency", "",
                "--arrival-rates", "4", "--arrival-duration-s", "2", "--length-median-s", "3", "--length-sigma", "0.3",
                "--length-max-s", "3", "--warmup", "0", "--server-timeout", "60", "--out", str(tmp_path / name), *flags,
            )  # fmt: skip
            report = json.loads((tmp_path / name / "results.json").read_text())
            (rate,) = report["arrivals"]["speech"]
            streams = report["streams"]["speech"]["rate=4"]
            assert rate["offered_requests"] == rate["ok"] == len(plan), (name, rate["error_samples"])
            assert [s["target_audio_s"] for s in streams] == [seconds for _, seconds in plan]
            lateness = [s["sent_at_s"] - at for s, (at, _) in zip(streams, plan, strict=True)]
            assert all(-0.01 <= late < 0.5 for late in lateness), (name, lateness)


def test_paced_engine_shares_an_aggregate_rate_and_holds_every_stream_for_each_arrival() -> None:
    from frontend import PacedEngine

    from oai_server.engines.base import SamplingParams

    engine = PacedEngine("paced-orpheus", None, 100.0, 7, aggregate_token_rate=350.0, arrival_pause_ms=20)
    intervals = []
    for active in (0, 1, 3, 5, 7):
        engine._active = active
        intervals.append(engine._interval())
    # each stream at most 100 tokens/s; past 3.5 streams they share 350
    assert intervals == pytest.approx([0.07, 0.07, 0.07, 0.1, 0.14])
    engine._active = 0

    async def arrive(count: int) -> tuple[float, float]:
        started = time.monotonic()
        streams = [engine.generate([1], SamplingParams(max_tokens=7), f"r{i}") for i in range(count)]
        firsts = [asyncio.ensure_future(anext(stream)) for stream in streams]
        await asyncio.sleep(0)  # every generator has taken its request in
        held = engine.held_s
        await asyncio.gather(*firsts)
        for stream in streams:
            await stream.aclose()
        return held, time.monotonic() - started

    held, took = asyncio.run(arrive(3))
    assert held == pytest.approx(0.06)  # three prefills
    assert took >= 0.07 + 0.04 - 0.005  # the first stream's first frame: its interval, then the two later prefills


def test_paced_engine_with_an_arrival_window_pauses_once_for_a_group() -> None:
    """`frontend.py --arrival-window-ms`: arrivals into the busy engine wait for their group, whose prefills share
    one pause; arrivals into an idle one enter at once, each with its pause."""
    from frontend import PacedEngine

    from oai_server.engines.base import SamplingParams

    async def arrive(engine: PacedEngine, count: int) -> tuple[float, float]:
        started = time.monotonic()
        streams = [engine.generate([1], SamplingParams(max_tokens=7), f"r{i}") for i in range(count)]
        await asyncio.gather(*(anext(stream) for stream in streams))
        for stream in streams:
            await stream.aclose()
        return engine.held_s, time.monotonic() - started

    busy = PacedEngine("paced-orpheus", None, 1000.0, 7, arrival_pause_ms=20, arrival_window_ms=50)
    busy.arrivals.busy_from = 0
    held, took = asyncio.run(arrive(busy, 3))
    assert held == pytest.approx(0.02) and took >= 0.05  # one pause, after the window
    assert (busy.arrivals.groups, busy.arrivals.held) == (1, 3)
    idle = PacedEngine("paced-orpheus", None, 1000.0, 7, arrival_pause_ms=20, arrival_window_ms=50)
    held, _ = asyncio.run(arrive(idle, 3))
    assert held == pytest.approx(0.06) and idle.arrivals.held == 0  # under 16 in flight: each at once


def test_frontend_serves_the_real_app_over_paced_engines(tmp_path: Path, demo_cache: Path) -> None:
    """`bench/frontend.py`: real routes and pipeline, engines that cost nothing; every stream keeps real time."""
    with frontend_server(demo_cache) as (port, server):
        out = tmp_path / "frontend"
        _run(
            "load.py", "--url", f"http://127.0.0.1:{port}", "--mode", "speech", "--concurrency", "4",
            "--server-timeout", "60", "--out", str(out),
        )  # fmt: skip
        (level,) = json.loads((out / "results.json").read_text())["modes"]["speech"]
        assert (level["ok"], level["streams_zero_underruns"]) == (4, 4), level["error_samples"]
        assert level["audio_s_total"] == pytest.approx(4 * 20 * FRAME / 24000, rel=0.01)  # 140 tokens: 20 frames
        assert level["server"]["first_byte_speech"]["count"] == 4
        probe = tmp_path / "probe.json"  # the same server under a burst of plain sockets
        _run(
            "burst_probe.py", "--port", str(port), "--server-pid", str(server.pid), "--n", "3", "--repeats", "1",
            "--pause-s", "0", "--out", str(probe),
        )  # fmt: skip
        (burst,) = json.loads(probe.read_text())["runs"]
        assert (burst["n"], burst["ok"], burst["statuses"]) == (3, 3, [200])
        assert 0 < burst["headers_ms"]["max"] <= burst["first_audio_ms"]["max"]  # headers, then audio
        assert burst["accept_queue_peak"] >= 0 and burst["server_cpu_s"] is not None  # 10 ms ticks: may read 0
        steady = tmp_path / "steady.json"  # the steady mode: two streams read for a second, past their intake
        _run(
            "burst_probe.py", "--port", str(port), "--server-pid", str(server.pid), "--n", "2", "--repeats", "1",
            "--pause-s", "0", "--hold-s", "1.0", "--settle-s", "0.15", "--out", str(steady),
        )  # fmt: skip
        (held,) = json.loads(steady.read_text())["runs"]
        assert (held["n"], held["streams_ended_early"], held["statuses"]) == (2, 0, {"200": 2})  # each outlasts it
        assert 0.7 < held["audio_s_per_s_per_stream"] < 2.0  # 110 tokens/s is 1.34 s of audio a second, in chunks
        assert held["server_cpu_core_fraction"] >= 0 and held["hold_s"] >= 1.0
        watched = _run("burst_probe.py", "--port", str(port), "--watch-queue-s", "0.05").stdout.split("\n")
        samples = [line.split() for line in watched if line]  # gpu_load.sh's sampler: `unix-time queued` lines
        assert samples and all(float(t) > 1e9 and int(q) == 0 for t, q in samples)


@pytest.mark.slow
def test_baselines_demo_writes_json(tmp_path: Path, demo_cache: Path) -> None:
    out = tmp_path / "baselines.json"
    modes = ("raw", "raw_band", "raw_band_draw", "seed", "ours", "ours_in_engine", "silent")
    _run(
        "baselines.py", "--demo", "--cache-dir", str(demo_cache), "--out", str(out), "--concurrency", "1,2",
        "--modes", ",".join(modes), "--no-prefix-caching", "--snac-low-priority", "--snac-first-lookahead-frames", "0",
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report["modes"]) == set(modes)
    assert report["config"]["prefix_caching"] == "False" and report["config"]["engines"] == "1"
    assert report["config"]["snac_low_priority"] == "True" and report["config"]["snac_first_lookahead_frames"] == "0"
    (service,) = report["snac_services"]  # the one engine's; on the CPU no stream has a priority
    assert service["device"] == "cpu" and service["engine_stream_priority"] is None
    for mode, levels in report["modes"].items():
        assert all(set(lv) >= LEVEL_KEYS for lv in levels)
        # The seed's pipeline plays nothing of an utterance shorter than 4 frames, and the demo
        # Orpheus sometimes stops that early: only our pipeline and the raw engine must never miss.
        if mode != "seed":
            assert all(lv["ok"] == lv["requests"] for lv in levels), levels
        assert [v["n"] for v in report["capacity"][mode]["levels"]] == [1, 2]
    raw = report["modes"]["raw"][0]
    assert raw["engine_tokens_total"] > 0 and "first_token_ms" in raw
    assert "ratio_ours_over_seed_real_time_streams" in report
    ratios = report["ratios_over_raw"]
    assert set(ratios) == set(modes) - {"raw"} and all(set(r) == {"1", "2"} for r in ratios.values())
    script = str(ROOT / "bench" / "baselines.py")
    several = subprocess.run(
        [sys.executable, script, "--demo", "--cache-dir", str(demo_cache), "--engines", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert several.returncode == 2 and "--engines: 1, or more with --engine vllm" in several.stderr
    levels = {mode: {lv["concurrency"]: lv for lv in report["modes"][mode]} for mode in modes}
    assert ratios["ours"]["2"] == pytest.approx(
        levels["ours"][2]["aggregate_audio_tokens_per_s"] / levels["raw"][2]["aggregate_audio_tokens_per_s"]
    )


def test_snac_decode_bench_compares_schemes_and_fidelity(tmp_path: Path) -> None:
    out = tmp_path / "snac.json"
    _run(
        "snac_decode.py", "--batch", "1", "--frames-per-decode", "2", "--repeats", "1", "--precisions", "fp32,bf16",
        "--snr-frames", "8", "--threads", "1", "--fusions", "off,decoder", "--out", str(out),
        timeout=360,  # torch.compile's first build, and bf16 where the CPU has no bf16 units (an AVX2 EPYC: ~100 s)
    )  # fmt: skip
    report = json.loads(out.read_text())
    rows = report["rows"]
    shapes = [(r["scheme"], r["precision"], r["window_frames"], r["emitted_frames"]) for r in rows]
    assert shapes == [
        ("seed", "fp32", 4, 1),
        ("eager-K2", "fp32", 5, 2),
        ("eager-K2-crop", "fp32", 5, 2),
        ("eager-K2-decoder", "fp32", 5, 2),
        ("eager-K2-decoder-crop", "fp32", 5, 2),
        ("eager-K2-bf16", "bf16", 5, 2),
        ("eager-K2-bf16-crop", "bf16", 5, 2),
        ("eager-K2-bf16-decoder", "bf16", 5, 2),
        ("eager-K2-bf16-decoder-crop", "bf16", 5, 2),
    ]
    decoded = {r["scheme"]: r["decoded_samples"] for r in rows if "decoded_samples" in r}
    assert decoded["eager-K2"] == 5 * 2048 and decoded["eager-K2-crop"] == 240 + 3 * 2048  # from the context's end
    assert report["fusion_vs_eager_max_abs_diff_int16"]["decoder"] <= 1
    assert all(r["us_per_emitted_frame"] > 0 for r in rows)
    assert report["precisions_ran"] == ["fp32", "bf16"]
    assert report["precision"]["fp32"] == {"ran": True, "reference": True}
    bf16 = report["precision"]["bf16"]
    # bf16 keeps 8 mantissa bits: audibly the same audio, yet not bit-identical to fp32.
    assert bf16["ran"] and 30 < bf16["snr_db"] < 90 and 30 < bf16["snr_db_pcm16"] < 90
    (streamed,) = report["streamed_vs_whole"]
    shape = tuple(streamed[k] for k in ("context_frames", "lookahead_frames", "frames_per_decode", "frames", "windows"))
    assert shape == (2, 1, 2, 8, 5)  # chunks of 1, 2, 2, 2, then the last frame at the end
    assert not streamed["identical"]
    assert streamed["snr_db"] >= 50 and streamed["meets_target"]


def test_snac_decode_bench_times_the_triton_depthwise_kernel_beside_aten_s(tmp_path: Path) -> None:
    out = tmp_path / "snac.json"
    _run(
        "snac_decode.py", "--batch", "1", "--frames-per-decode", "2", "--repeats", "1", "--precisions", "fp32",
        "--snr-frames", "8", "--threads", "1", "--crops", "off", "--depthwise", "aten,triton", "--out", str(out),
        timeout=240,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert [r["scheme"] for r in report["rows"]] == ["seed", "eager-K2", "eager-K2-triton"]
    # off CUDA the swapped modules run ATen's convolution through the custom operator: the same samples
    assert report["fusion_vs_eager_max_abs_diff_int16"]["off-triton"] == 0


def test_depthwise_kernel_bench_records_the_real_decoders_thirteen_layers(tmp_path: Path) -> None:
    out = tmp_path / "depthwise.json"
    _run("depthwise_kernel.py", "--batch", "2", "--frames", "3", "--repeats", "1", "--out", str(out), timeout=120)
    report = json.loads(out.read_text())
    layers = [(r["channels"], r["dilation"], r["length"]) for r in report["rows"]]
    # the input's convolution at the codes' rate (4 a frame), then each block's three residual units after its
    # upsampling by 8, 8, 4 and 2 (2048 samples a frame at the last)
    assert layers == [(768, 1, 12)] + [
        (channels, dilation, length)
        for channels, length in ((512, 96), (256, 768), (128, 3072), (64, 6144))
        for dilation in (1, 3, 9)
    ]
    assert all(r["batch"] == 2 and r["aten_ms"] > 0 and r["triton"] == [] for r in report["rows"])  # no CUDA here
    # a Snake follows each residual unit's convolution, not the input's: the kernel fuses those twelve
    assert ["aten_snake_ms" in r for r in report["rows"]] == [False] + [True] * 12
    totals = report["totals"]["2"]
    assert report["random_weights"] and totals["layers"] == 13
    assert totals["with_snakes_aten_ms"] > totals["aten_ms"]


def test_snac_first_frame_prices_a_first_frame_without_lookahead(noiseless_snac: Path) -> None:
    from snac_first_frame import first_frame_snr
    from snac_holdback import load

    model = load(str(noiseless_snac))
    default, early = (first_frame_snr(model, 12, 0, first, [512]) for first in (1, 0))
    assert all(v is not None for v in (*default.values(), *early.values()))
    assert early["frame0"] < default["frame0"] - 3  # no right context at all for the first frame
    assert early["whole_utterance"] < default["whole_utterance"]
    # The frame's head, far from its end, still pays for the missing right context; with it, the head is the
    # part of the frame closest to a whole decode.
    assert early["frame0_head_512"] < default["frame0_head_512"] - 3
    assert default["frame0_head_512"] > default["frame0"]


def test_snac_holdback_stitches_the_servers_stream_and_prices_the_delay(noiseless_snac: Path) -> None:
    from snac_fidelity import decode_whole, streamed_snr, utterance
    from snac_holdback import held_back_snr, least_slack_ms, load

    from oai_server.codec.snac_window_policy import WindowPolicy
    from oai_server.codec.snac_windows import SEAM_SAMPLES

    model = load(str(noiseless_snac))
    snr = held_back_snr(model, 12, [0, SEAM_SAMPLES, 1024])
    codes = utterance(12)
    whole = decode_whole(model, codes, "cpu")[1]
    (server,) = streamed_snr(model, "cpu", codes, whole, [4], policy=WindowPolicy(2, 1), graphs=False)
    assert snr[0] is not None and snr[SEAM_SAMPLES] is not None and server["snr_db"] is not None
    assert abs(snr[SEAM_SAMPLES] - server["snr_db"]) < 0.5  # the server's own seams (float vs int16 PCM)
    assert snr[SEAM_SAMPLES] > snr[0] + 0.5  # against none: more right context at every seam
    assert snr[1024] is not None and snr[1024] > snr[0] + 3
    assert [least_slack_ms(1.0, m) for m in (0, 512, 1024)] == [0.0, -21.3, -42.7]  # m samples later, exactly
    assert least_slack_ms(0.8, 0) > least_slack_ms(0.9, 0) > 0


def test_streams_summary_reads_each_admitted_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import gzip

    from streams_summary import main as streams_summary

    def stream(
        sent_at: float, ok: bool = True, stall_at: float | None = None, wall: float = 2.1, audio: float = 4.0
    ) -> dict[str, Any]:
        return {
            "ok": ok, "status": 200 if ok else 429, "sent_at_s": sent_at, "ttfa_s": 0.1 if ok else None,
            "wall_s": wall if ok else 1.5, "audio_s": audio if ok else 0.0, "underruns": int(stall_at is not None),
            "first_stall_audio_s": stall_at, "rtf": wall / audio if ok else None,
        }  # fmt: skip

    overload = [stream(1.0), stream(2.0, stall_at=0.587), stream(9.0, stall_at=0.587, wall=4.1), stream(9.5)]
    overload.append(stream(10.0, ok=False))
    short = [stream(0.0, wall=0.9, audio=0.5), stream(0.0, wall=1.0, audio=0.6), stream(0.0), stream(0.0)]
    phases = {"search 4": short, "rate=4.18": [stream(0.5), stream(1.5)], "overload": overload}
    results = {"streams": {"speech": phases}}
    path = tmp_path / "results.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(results, f)
    assert streams_summary([str(path), "--buckets", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[str(path)]
    assert report["rate=4.18"]["admitted"] == 2 and report["rate=4.18"]["stalled"] == 0
    search = report["search 4"]  # a capacity search's level: RTF past 1 on its two short streams, none stalled
    assert (search["rtf_over_1"], search["rtf_over_1_stalled"]) == (2, 0)
    assert search["rtf_over_1_audio_s_p50"] == pytest.approx(0.55) and search["audio_s_p50"] == pytest.approx(2.3)
    assert report["overload"]["rtf_over_1"] == 1 and report["overload"]["rtf_over_1_stalled"] == 1  # 4.1 s for 4
    over = report["overload"]
    assert (over["offered"], over["admitted"], over["refused_429"], over["stalled"]) == (5, 4, 1, 2)
    assert over["speed_p50"] == pytest.approx(2.0) and over["speed_p10"] == pytest.approx(1.3)  # 4 s in 2 s or 4 s
    assert over["first_stalls_at_s"] == [[0.587, 2]]
    assert [(b["from_s"], b["admitted"], b["stalled"]) for b in over["by_arrival"]] == [(0, 2, 1), (8, 2, 1)]
    overload[2]["headers_s"] = 1.0  # the stream sent at 9 s was admitted at 10 s
    with gzip.open(path, "wt") as f:
        json.dump(results, f)
    assert streams_summary([str(path), "--buckets", "8", "--json"]) == 0
    by_arrival = json.loads(capsys.readouterr().out)[str(path)]["overload"]["by_arrival"]
    assert [(b["from_s"], b["admitted"], b["stalled"]) for b in by_arrival] == [(0, 2, 1), (8, 2, 1)]  # as sent
    assert streams_summary([str(path), "--buckets", "0.5", "--by-admission", "--json"]) == 0
    by_admission = json.loads(capsys.readouterr().out)[str(path)]["overload"]["by_arrival"]
    assert [(b["from_s"], b["admitted"], b["stalled"]) for b in by_admission] == [
        (1.0, 1, 0), (2.0, 1, 1), (9.5, 1, 0), (10.0, 1, 1)
    ]  # fmt: skip
    assert streams_summary([str(path), "--buckets", "8"]) == 0
    printed = capsys.readouterr().out
    assert "overload: offered 5, admitted 4, 429 1, stalled 2" in printed
    assert "search 4: offered 4, admitted 4" in printed
    assert "RTF > 1: 2 (0 stalled, audio p50 0.55 s against 2.30 s for all)" in printed


def test_profile_churn_lanes_restart_streams_with_lengths_from_the_mix() -> None:
    from profile_engine import _lane, churn_tokens

    assert [churn_tokens(s) for s in (1.0, 5.0, 20.0)] == [12 * 7, 59 * 7, 234 * 7]  # whole frames of 2048 samples

    async def lanes(count: int, streams: int) -> tuple[dict[int, list[int]], int]:
        budgets: dict[int, list[int]] = {}
        started = [0]
        done = asyncio.Event()

        def runner(lane: int) -> Any:
            async def run(tokens: int, index: int) -> None:
                budgets.setdefault(lane, []).append(tokens)
                if sum(map(len, budgets.values())) >= streams:
                    done.set()
                await asyncio.sleep(0)

            return run

        tasks = [asyncio.create_task(_lane(runner(lane), lane, LengthMix(), started)) for lane in range(count)]
        await asyncio.wait_for(done.wait(), 10)  # a lane that stops after one stream never gets there
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return budgets, started[0]

    budgets, started = asyncio.run(lanes(3, 60))
    assert started == sum(map(len, budgets.values())) >= 60  # a new stream the moment the last one ends
    assert all(len(b) >= 19 for b in budgets.values())  # every lane keeps going
    every = [t for b in budgets.values() for t in b]
    assert all(t % 7 == 0 and churn_tokens(1.0) <= t <= churn_tokens(20.0) for t in every)
    assert len(set(every)) > 20 and budgets[0] != budgets[1]  # a mix, and each lane its own
    again, _ = asyncio.run(lanes(3, 60))
    assert again[2][:10] == budgets[2][:10]  # seeded per lane: a rerun offers the same lengths


def test_the_benchs_orpheus_engine_is_the_servers_with_their_variant_flags() -> None:
    """profile_engine.py and baselines.py build Orpheus's engine alike (`orpheus_engine_spec`), from their flags."""
    from _common import orpheus_engine_spec
    from baselines import parse_args as baselines_args
    from profile_engine import parse_args as profile_args

    from oai_server.codec.snac_service import ROUNDS_KEY, SERVICE_KEY

    flags = ["--no-prefix-caching", "--snac-rounds", "step", "--cudagraph-mode", "full"]
    model = ["--tts-model", "/models/orpheus"]
    profiled = orpheus_engine_spec(
        profile_args([*model, *flags, "--out", "/tmp/unused"]), max_num_seqs=192, snac_service="orpheus-0"
    )
    kwargs = profiled.engine_kwargs()
    assert (kwargs["max_num_seqs"], kwargs["enable_prefix_caching"], kwargs["enforce_eager"]) == (192, False, False)
    assert kwargs["compilation_config"] == {"cudagraph_mode": "FULL"}
    assert kwargs["additional_config"][SERVICE_KEY] == "orpheus-0" and kwargs["additional_config"][ROUNDS_KEY] == "step"
    compared = orpheus_engine_spec(
        baselines_args([*model, "--snac", "/models/snac", *flags, "--enforce-eager"]),
        max_num_seqs=192,
        snac_service="orpheus-0",
        enforce_eager=True,
    )
    assert compared == replace(profiled, enforce_eager=True)  # the same engine but for that


def test_profile_reports_how_late_the_benchs_loop_ran() -> None:
    """A loop busy elsewhere starts a lane's next stream late: the report says how late its timers ran."""
    from profile_engine import loop_lateness

    async def busy_then_measure() -> tuple[dict[str, float], dict[str, float]]:
        quiet = await loop_lateness(0.2)
        loop = asyncio.get_running_loop()
        for delay in (0.05, 0.15):  # two 60 ms stretches of work on the loop itself
            loop.call_later(delay, time.sleep, 0.06)
        return quiet, await loop_lateness(0.3)

    quiet, busy = asyncio.run(busy_then_measure())
    assert busy["loop_late_ms_p99"] >= 40 and busy["loop_late_ms_mean"] > quiet["loop_late_ms_mean"]


def test_profile_trace_summary(tmp_path: Path) -> None:
    from profile_engine import summarize_trace

    def kernel(name: str, ts: float, dur: float, stream: int = 7) -> dict[str, object]:
        return {"cat": "kernel", "name": name, "ts": ts, "dur": dur, "args": {"stream": stream}}

    events = [
        {"ph": "M", "name": "thread_name", "tid": 11, "args": {"name": "snac-service"}},
        {"cat": "cpu_op", "name": "aten::conv1d", "tid": 11, "ts": 10, "dur": 6},
        {"cat": "cpu_op", "name": "aten::conv1d", "tid": 11, "ts": 12, "dur": 6},  # nested: counted once
        kernel("snac_conv", 45, 30, stream=20),  # overlaps the engine's kernels from 45 to 50 and 60 to 75
        {"cat": "user_annotation", "name": "execute_context_0(0)_generation_127(127)", "ts": 0, "dur": 5},
        {"cat": "user_annotation", "name": "execute_context_0(0)_generation_127(127)", "ts": 100, "dur": 5},
        {"cat": "user_annotation", "name": "aten::mm", "ts": 1, "dur": 1},
        {"cat": "gpu_user_annotation", "name": "gpu_model_runner: sample", "ts": 60, "dur": 30},
        kernel("sm90_xmma_gemm_bf16", 0, 40),
        kernel("flash_fwd_splitkv_kernel", 30, 20),  # overlaps the GEMM by 10 us
        kernel("void at::native::sort_kernel", 60, 30),
        kernel("sm90_xmma_gemm_bf16", 100, 40),
        kernel("my_custom_thing", 190, 10),
    ]
    path = tmp_path / "worker.pt.trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    summary = summarize_trace(path)
    assert summary["steps"] == 2
    assert summary["gpu_busy_ms_per_step"] == pytest.approx((50 + 10 + 30 + 40 + 10) / 2 / 1000)
    assert summary["profiled_wall_ms_per_step"] == pytest.approx(200 / 2 / 1000)
    assert summary["by_category_ms_per_step"] == pytest.approx(
        {"gemm": 0.04, "sampling": 0.015, "other": 0.02, "attention": 0.01}
    )
    engine, snac = summary["by_stream"]["7"], summary["by_stream"]["20"]
    assert engine["busy_ms_per_step"] == pytest.approx(0.065) and snac["busy_ms_per_step"] == pytest.approx(0.015)
    assert snac["top"] == [("snac_conv", pytest.approx(0.015))]
    assert summary["streams_overlap_ms_per_step"] == pytest.approx(0.02 / 2)
    assert summary["host_ms_per_step_by_thread"]["11 snac-service"] == pytest.approx(8 / 2 / 1000)
    assert summary["by_region_gpu_ms_per_step"] == {"sample": pytest.approx(0.015)}
    assert summary["top_kernels_ms_per_step"][0] == ("sm90_xmma_gemm_bf16", pytest.approx(0.04))


def test_slot_processor_cost_counts_and_times_both_versions() -> None:
    proc = _run("slot_processor_cost.py", "--rows", "4,8", "--old", "HEAD", "--band-graphs", "--change-every", "2")
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r["variant"], r["rows"]) for r in rows] == [
        ("current", 4), ("HEAD", 4), ("graphs", 4), ("current", 8), ("HEAD", 8), ("graphs", 8)
    ]  # fmt: skip
    timed = [r for r in rows if r["variant"] != "graphs"]
    assert all(0 < r["host_ms_per_step"] < 50 for r in timed)
    assert all(0 < r["host_ms_per_step_churn"] < 50 for r in timed)  # a stream coming and going every other step
    assert all(0 < r["batch_change_us"] < 50_000 for r in timed)  # a stream replaced, the layout rebuilt
    # each ATen op is a kernel launch on a GPU: the same code launches as many at any batch size
    assert rows[0]["aten_ops_per_step"] == rows[3]["aten_ops_per_step"] > 20
    assert rows[1]["aten_ops_per_step"] == rows[4]["aten_ops_per_step"] > 20
    # the band work as one replay: fewer than half the launches, the replay counted once
    assert 8 < rows[2]["aten_ops_per_step"] == rows[5]["aten_ops_per_step"] < rows[0]["aten_ops_per_step"] / 2 + 2


def test_engine_spy_finds_the_engine_core_and_sums_py_spy_samples(tmp_path: Path) -> None:
    from engine_spy import engine_core_pids, summarize_raw

    proc = tmp_path / "proc"
    for pid, ppid, comm in [
        (10, 1, "python3"),
        (11, 10, "VLLM::EngineCor"),
        (12, 10, "python3"),
        (13, 12, "x"),
        (14, 2, "VLLM::EngineCor"),
    ]:
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(f"{pid} ({comm} a) S {ppid} 1 1 0")  # a comm may hold spaces and ")"
        (proc / str(pid) / "comm").write_text(comm + "\n")
    assert engine_core_pids(10, proc) == [11]  # 14 is an engine core of another process
    raw = tmp_path / "gil.txt"
    raw.write_text(
        "thread (0x1);run_busy_loop (core.py:1);step (core.py:2) 30\n"
        "thread (0x1);run_busy_loop (core.py:1);schedule (scheduler.py:9) 10\n"
        "thread (0x2) snac-service;_answer (snac_service.py:1);recv (connection.py:3) 10\n"
        "garbage line\n"
    )
    summary = summarize_raw(raw)
    assert summary["samples"] == 50
    engine, snac = summary["threads"]["thread (0x1)"], summary["threads"]["thread (0x2) snac-service"]
    assert engine["share"] == pytest.approx(0.8) and snac["share"] == pytest.approx(0.2)
    assert engine["top"][0] == ("step (core.py:2)", 30)


def test_engine_spy_inclusive_counts_each_function_once_per_sample_per_thread(tmp_path: Path) -> None:
    from engine_spy import inclusive, main

    raw = tmp_path / "arrivals_spy.txt"
    server, engine = 'process 7:"python3 -m oai_server serve"', 'process 8:"VLLM::EngineCore"'
    raw.write_text(
        f"{server};{engine};thread (8): MainThread;loop (core.py:1);step (core.py:2);step (core.py:5) 30\n"
        f"{server};{engine};thread (8): MainThread;loop (core.py:1);schedule (scheduler.py:9) 10\n"
        f"{server};{engine};thread (9): snac-service;decode (snac_stream.py:4) 20\n"
        f"{server};thread (7): MainThread;run (base_events.py:3) 5\n"
        "no count here\n"
    )
    report = inclusive(raw, "engine:MainThread")
    assert report["threads"] == {"engine:MainThread": 40, "engine:snac-service": 20, "server:MainThread": 5}
    assert report["samples"] == 40
    shares = dict(report["inclusive"])  # a recursive frame counts once; line numbers merge into the function
    assert shares == {"loop (core.py)": 1.0, "step (core.py)": 0.75, "schedule (scheduler.py)": 0.25}
    plain = tmp_path / "engine_core_gil.txt"  # profile_engine's files hold the engine core alone: no process frames
    plain.write_text("thread (0x1): MainThread;step (core.py:2) 3\n")
    assert inclusive(plain, "MainThread")["threads"] == {"MainThread": 3}
    assert main([str(raw), "--thread", "snac", "--top", "1"]) == 0


@pytest.mark.slow
def test_asr_load_demo_writes_results(tmp_path: Path, demo_cache: Path) -> None:
    out = tmp_path / "asr"
    proc = _run("asr_load.py", "--demo", "--cache-dir", str(demo_cache), "--out", str(out), "--upload-format", "wav")
    report = json.loads((out / "asr_results.json").read_text())
    assert report["config"]["upload_format"] == "wav"
    assert set(report["engines"]) == {"llm", "tts", "asr"}
    assert [level["concurrency"] for level in report["latency"]] == [1, 2]
    for level in report["latency"]:
        assert (level["requests"], level["failed"]) == (level["concurrency"], 0)
        assert 0 < level["latency_ms"]["p50"] <= level["latency_ms"]["max"]
        assert level["audio_s_per_wall_s"] > 0
    single = report["latency"][0]
    assert 0 < single["first_delta_ms"]["p50"] <= single["streamed_done_ms"]["p50"]
    assert report["throughput"]["requests"] >= 2 and report["throughput"]["failed"] == 0
    margin = report["speech_margin"]
    assert margin["alone"]["ok"] == margin["with_transcription"]["ok"] == 2
    assert margin["with_transcription"]["transcription_during_speech"]["requests"] >= 1
    assert margin["rtf_p50_change"] == pytest.approx(
        margin["with_transcription"]["rtf"]["p50"] - margin["alone"]["rtf"]["p50"]
    )
    assert report["transcription_errors"] == []
    assert "error" in report["gpu_memory"]  # no nvidia-smi on the CPU runner
    assert "== transcription of a 5 s utterance" in proc.stdout


def test_random_whisper_has_the_v3_turbo_layout(tmp_path: Path) -> None:
    """The GPU bench's Whisper (tiny here): v3's 51866 ids, special tokens where Whisper has them, 128 mels."""
    from transformers import AutoConfig, WhisperProcessor

    _run("build_random_models.py", "--out", str(tmp_path), "--which", "whisper", "--tiny", "--device", "cpu")
    config = AutoConfig.from_pretrained(tmp_path / "whisper")
    assert (config.vocab_size, config.num_mel_bins, config.max_source_positions) == (51866, 128, 1500)
    processor = WhisperProcessor.from_pretrained(tmp_path / "whisper")
    ids = processor.tokenizer.convert_tokens_to_ids
    assert [ids("<|endoftext|>"), ids("<|startoftranscript|>"), ids("<|en|>"), ids("<|translate|>")] == [
        50257, 50258, 50259, 50359,
    ]  # fmt: skip
    assert [ids("<|transcribe|>"), ids("<|notimestamps|>"), ids("<|0.00|>"), ids("<|30.00|>")] == [
        50360, 50364, 50365, 51865,
    ]  # fmt: skip
    assert processor.feature_extractor.feature_size == 128


def test_headroom_cost_times_the_admission_check() -> None:
    proc = _run("headroom_cost.py", "--streams", "4,16", "--rate", "100")
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r["variant"], r["streams"]) for r in rows] == [("current", 4), ("current", 16)]
    assert [r["events_in_window"] for r in rows] == [4 * 29, 16 * 29]  # 2 s of 7-token deltas at 100 tokens/s
    assert all(r["us_per_check"] > 0 for r in rows)


def test_bench_shell_scripts_parse() -> None:
    """The GPU-side shell scripts never run in CI; bash at least parses each of them."""
    scripts = sorted((ROOT / "bench").glob("*.sh"))
    assert {s.name for s in scripts} >= {"gpu_load.sh", "gpu_session.sh", "prepare_device_carry.sh"}
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, (script.name, result.stderr)


def test_gpu_session_watch_gives_up_at_once_on_a_machine_where_nothing_started(tmp_path: Path) -> None:
    """A lent machine lost between calls comes back bare; `watch` there must not wait out WATCH_S of device time."""
    env = {
        **os.environ, "SESSION_DIR": str(tmp_path / "s6"), "SESSION_REPO": str(tmp_path / "repo"),
        "OUT": str(tmp_path / "out"), "WATCH_S": "600",
    }  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_session.sh"), "watch"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 3, result.stderr
    assert "no jobs were started on this machine" in result.stderr
    assert time.monotonic() - started < 30


def test_snac_hurry_prices_the_grow_lead_on_the_window_planner(tmp_path: Path) -> None:
    out = tmp_path / "grow.json"
    _run(
        "snac_hurry.py", "--rates", "1.1", "--hurry-ms", "0", "--ramps", "gentle", "--grow-leads", "0,1",
        "--hiccup-ms", "100", "--hiccup-every-s", "1", "--phases", "8", "--out", str(out),
    )  # fmt: skip
    ramp_alone, held = json.loads(out.read_text())["rows"]
    assert [r["grow_lead"] for r in (ramp_alone, held)] == [0.0, 1.0]
    assert ramp_alone["stalled_prebuffer_250ms"] > 0 and held["stalled_prebuffer_250ms"] == 0
    # held at 3-frame chunks (2 decoded per emitted) instead of 4 (1.75), near real time only
    assert ramp_alone["decoded_per_emitted_frame"] < held["decoded_per_emitted_frame"] < 2.1


def test_snac_hurry_prices_the_hurry_on_the_window_planner(tmp_path: Path) -> None:
    out = tmp_path / "hurry.json"
    _run(
        "snac_hurry.py", "--rates", "1.25", "--hurry-ms", "0,150", "--ramps", "step,gentle", "--phases", "8",
        "--out", str(out),
    )  # fmt: skip
    calm, hurried, gentle, _ = json.loads(out.read_text())["rows"]
    assert [(r["ramp"], r["hurry_lead_ms"]) for r in (calm, hurried, gentle)] == [
        ("step", 0),
        ("step", 150),
        ("gentle", 0),
    ]
    assert calm["effective_rate"] == pytest.approx(1.125)  # 200 ms pauses every 2 s take a tenth
    assert calm["stalled_prebuffer_250ms"] > gentle["stalled_prebuffer_250ms"]
    assert calm["stalled_prebuffer_250ms"] > 0 and hurried["stalled_prebuffer_250ms"] == 0
    assert calm["decoded_per_emitted_frame"] < hurried["decoded_per_emitted_frame"] < 4  # K=1 windows decode 4
    assert (
        calm["decoded_per_emitted_frame"]
        < gentle["decoded_per_emitted_frame"]
        < calm["decoded_per_emitted_frame"] * 1.03
    )
    assert calm["windows_per_stream"] == 20  # 70 frames: 1, 1, 2, 3, then 4s, and the end's remainder
    assert gentle["windows_per_stream"] == 21  # 1, 1, 2, 2, 3, 3, 3, then 4s, and the end's remainder


def test_green_context_probe_reports_no_cuda_without_a_gpu(tmp_path: Path) -> None:
    """The probe is a GPU job; on the CPU it parses its options and says there is no CUDA instead of failing."""
    out = tmp_path / "green.json"
    _run("green_context_probe.py", "--sms", "16,32", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["cuda"] is False and "rows" not in report
    assert report["config"]["sms"] == [16, 32]


def test_intake_cost_measures_the_old_and_new_text_handling_on_the_demo_tokenizer(
    demo_models: Any, tmp_path: Path
) -> None:
    """`bench/intake_cost.py`: both ways give the same pieces and prompt ids for each text (it asserts that before
    timing), the direct encoder is in use, every figure is there, and both route classes answered each endpoint's
    request 200 (it asserts that on every call)."""
    out = tmp_path / "intake.json"
    proc = _run("intake_cost.py", "--tokenizer", str(demo_models.tts_dir), "--repeats", "20", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["direct_encoder"] == "DirectEncoder" and sorted(report["texts"]) == ["287 chars", "41 chars"]
    for row in report["texts"].values():
        assert set(row["before"]) == set(row["now"]) == {"split_us", "prompt_us"}
        assert all(value > 0 for value in [*row["before"].values(), *row["now"].values()])
    assert sorted(report["routes"]) == ["chat", "speech"]
    for row in report["routes"].values():
        assert row["before_us"] > 0 and row["now_us"] > 0
        assert row["saved_us"] == pytest.approx(row["before_us"] - row["now_us"])
    assert proc.stdout.count("saved") == 4 and proc.stdout.count(" route: ") == 2


def test_churn_table_reads_a_real_churn_ab_summary() -> None:
    """Session 32's summary.txt (four variants, the first raw vLLM): per variant churn ÷ steady, the engine time a new
    stream cost ((1 - ratio) / streams started a second), SNAC's columns only where SNAC ran, and churn tokens a second
    against the first variant's; a variant that died before both measurements is left out."""
    from churn_table import markdown, read_summary, rows

    text = (ROOT / "bench/results/h200_s32_random_weights/churn_192/summary.txt").read_text()
    variants = read_summary(text + "v5: --mode ours_in_engine --died\n")
    assert [name for name, _, _ in variants] == [
        "--mode raw", "--mode ours_in_engine", "--mode ours_in_engine --snac-round-wait each",
        "--mode ours_in_engine --py-spy /tmp/site/bin/py-spy",
    ]  # fmt: skip
    table = rows(variants)
    raw, ours = table[0], table[1]
    assert raw[1:] == ["23 448 (8.19)", "17 629 (10.89)", "35.5", "0.75", "7.0", "—", "—", "1.00"]
    assert ours[1:] == ["18 113 (10.60)", "11 884 (16.16)", "26.5", "0.66", "13.0", "0.44 / 0.67", "0.63", "0.67"]
    assert table[2][5:8] == ["18.9", "0.45 / 0.84", "8.97"]
    text_table = markdown(table)
    assert text_table.count("\n") == 1 + len(table) and text_table.startswith("| variant |")


async def test_churn_over_time_measures_the_churning_engine_again_and_again_and_prints_each_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`profile_engine.py --churn-repeats 3 --churn-gap-s 0.5`: three more measurements, each after the gap, each
    printed as a line `churn_table.py` reads into its over-time table."""
    import profile_engine
    from churn_table import over_time_rows, read_churn_over_time

    args = profile_engine.parse_args(
        ["--tts-model", "m", "--churn", "--churn-repeats", "3", "--churn-gap-s", "0.5", "--out", "o"]
    )
    gaps: list[float] = []

    async def measure(settle_s: float) -> dict[str, Any]:
        gaps.append(settle_s)
        tokens = 12_000.0 - 1_000 * len(gaps)
        return {"churn_s": 8 + 2.5 * len(gaps), "aggregate_tokens_per_s": tokens, "wall_ms_per_step": 192_000 / tokens}

    runs = await profile_engine.churn_over_time(measure, args)
    assert gaps == [0.5, 0.5, 0.5] and [run["aggregate_tokens_per_s"] for run in runs] == [11_000, 10_000, 9_000]
    printed = capsys.readouterr().out
    assert [line.split(": ")[0] for line in printed.splitlines()] == [
        "unprofiled, churn, at 10 s", "unprofiled, churn, at 13 s", "unprofiled, churn, at 16 s"
    ]  # fmt: skip
    first = {"churn_s": 8.0, "aggregate_tokens_per_s": 12_000.0, "wall_ms_per_step": 16.0}
    summary = f"v1: --mode raw\nunprofiled, churn: {json.dumps(first)}\n{printed}v2: --mode ours_in_engine\n"
    assert over_time_rows(read_churn_over_time(summary)) == [
        ["--mode raw", "8", "12 000 (16.00)", "1.00"],
        ["--mode raw", "10", "11 000 (17.45)", "0.92"],
        ["--mode raw", "13", "10 000 (19.20)", "0.83"],
        ["--mode raw", "16", "9 000 (21.33)", "0.75"],
    ]


def test_churn_table_averages_each_variants_later_runs_of_a_real_summary() -> None:
    """Session 35's summary.txt (raw vLLM's band engine, ours, ours without SNAC; each measured at 4 s and ten times
    more): the means of the ten later runs, of their halves, and against raw vLLM's mean."""
    from churn_table import over_time_means, read_churn_over_time

    text = (ROOT / "bench/results/h200_s35_random_weights/churn_over_time/summary.txt").read_text()
    assert over_time_means(read_churn_over_time(text)) == [
        ["--mode raw --sampling band", "10", "19 235 / 16 530", "17 882", "1.00"],
        ["--mode ours_in_engine", "10", "17 079 / 14 163", "15 621", "0.87"],
        ["--mode ours_in_engine --snac-decode none", "10", "21 975 / 20 971", "21 473", "1.20"],
    ]


def test_churn_table_pools_a_variant_that_ran_on_several_engines_across_summaries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Session 39's two calls, ours first then raw first: each variant's engines pooled (ours 17 730 and 14 700, raw
    16 295 and 17 606 on their later runs' means: ours ÷ raw 0.96 pooled), printed as a fifth table only when a
    variant repeats."""
    from churn_table import main, pooled_means, read_churn_over_time

    results = ROOT / "bench/results/h200_s39_random_weights"
    paths = [str(results / name / "summary.txt") for name in ("churn_stretch", "churn_raw_first")]
    text = "\n".join(Path(path).read_text() for path in paths)
    assert pooled_means(read_churn_over_time(text)) == [
        ["--mode ours_in_engine", "2 (1, 5)", "16 215", "1.00"],
        ["--mode ours_in_engine --snac-stretch-frames 8", "1 (2)", "16 335", "1.01"],
        ["--mode raw --sampling band", "2 (3, 4)", "16 950", "1.05"],
    ]
    assert main(paths) == 0
    assert "| pooled mean of their later runs |" in capsys.readouterr().out
    assert main(paths[:1]) == 0
    assert "pooled mean" not in capsys.readouterr().out  # no variant ran twice


def test_churn_table_adds_the_switch_interval_ab_of_a_variant_that_ran_one(tmp_path: Path) -> None:
    """`profile_engine.py --switch-interval-ab`'s lines (B, A, B, A on one engine) make a second table, each run against
    the variant's first churn measurement; variants without them are not in it, and the first table is unchanged."""
    from churn_table import main, read_summary, read_switch_runs, switch_rows

    text = (ROOT / "bench/results/h200_s33_random_weights/churn_split/summary.txt").read_text()
    for ms, tokens in ((0.5, 15_000.0), (5, 12_600.0)):
        run = {"switch_interval_ms": ms, "aggregate_tokens_per_s": tokens, "wall_ms_per_step": 192_000 / tokens}
        text += f"unprofiled, churn, switch {ms:g} ms: {json.dumps(run)}\n"
    variants = read_switch_runs(text)
    assert [(name, len(runs)) for name, _, runs in variants] == [("--mode ours_in_engine --trace", 2)]
    assert switch_rows(variants) == [
        ["--mode ours_in_engine --trace", "as started", "13 645 (14.07)", "1.00"],
        ["--mode ours_in_engine --trace", "0.5", "15 000 (12.80)", "1.10"],
        ["--mode ours_in_engine --trace", "5", "12 600 (15.24)", "0.92"],
    ]
    assert len(read_summary(text)) == 5  # the switch lines leave the first table's variants as they were
    summary = tmp_path / "summary.txt"
    summary.write_text(text)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main([str(summary)])
    first, second = printed.getvalue().strip().split("\n\n")
    assert first.count("\n") == 6 and second.count("\n") == 4 and "GIL switch interval" in second


def test_snac_ab_variants_take_the_runs_flags_for_what_they_leave_out_and_run_a_b_b_a() -> None:
    """`--snac-ab`'s variants: ``key=value`` settings joined by ``+``, the run's own SNAC flags for the rest; a
    malformed one is refused before any GPU work (`profile_engine.main`); the order reverses each repeat."""
    import profile_engine
    import torch
    from snac_ab import parse_variants, schedule, switch

    a, b, c = parse_variants("depthwise=aten,depthwise=triton+dtype=float16,decode=none", "aten", "auto", "decoder")
    assert (a.label, a.depthwise, a.dtype, a.fusion, a.decode) == ("depthwise=aten", "aten", "auto", "decoder", "gpu")
    assert (b.depthwise, b.dtype, b.fusion, b.decode) == ("triton", "float16", "decoder", "gpu")
    assert (c.depthwise, c.decode) == ("aten", "none")
    used: list[tuple[Any, ...]] = []
    decoder = SimpleNamespace(use_model=lambda *model: used.append(model), decode_mode="gpu")
    asyncio.run(switch(decoder, b, "/snac"))  # type: ignore[arg-type]
    asyncio.run(switch(decoder, c, "/snac"))  # type: ignore[arg-type]
    # the service's model as each variant names it (auto: what the server resolves it to), what a round does too
    assert used == [("/snac", torch.float16, "decoder", "triton"), ("/snac", torch.float32, "decoder", "aten")]
    assert decoder.decode_mode == "none"
    order = [v.label for v in schedule([a, b, c], 3)]
    assert order == [a.label, b.label, c.label, c.label, b.label, a.label, a.label, b.label, c.label]
    for bad in ("depthwise=cudnn,decode=none", "speed=fast,decode=none", "decode=none", "decode=none,decode=none"):
        with pytest.raises(ValueError, match="--snac-ab"):
            parse_variants(bad, "aten", "auto", "off")
    base = ["--tts-model", "m", "--snac", "s", "--mode", "ours_in_engine", "--out", "o"]
    with pytest.raises(SystemExit, match="needs --mode ours_in_engine --churn"):
        profile_engine.main([*base, "--snac-ab", "decode=gpu,decode=none"])
    with pytest.raises(SystemExit, match="needs --mode ours_in_engine --churn"):
        profile_engine.main([*base, "--churn", "--snac-decode", "none", "--snac-ab", "decode=gpu,decode=none"])
    with pytest.raises(SystemExit, match="speed=fast"):
        profile_engine.main([*base, "--churn", "--snac-ab", "speed=fast,decode=none"])


def test_churn_table_adds_the_snac_ab_of_a_variant_that_ran_one(tmp_path: Path) -> None:
    """`profile_engine.py --snac-ab`'s lines make two more tables: each run against the variant's first churn, then
    each SNAC variant's mean (tokens a second, step) against the first SNAC variant's."""
    from churn_table import main, read_snac_ab_runs, snac_ab_means, snac_ab_rows

    text = (ROOT / "bench/results/h200_s33_random_weights/churn_split/summary.txt").read_text()
    aten, triton = "depthwise=aten", "depthwise=triton"
    for label, tokens in ((aten, 15_000.0), (triton, 16_000.0), (triton, 17_000.0), (aten, 14_000.0)):
        run = {"snac_variant": label, "aggregate_tokens_per_s": tokens, "wall_ms_per_step": 192_000 / tokens}
        text += f"unprofiled, churn, snac {label}: {json.dumps(run)}\n"
    variants = read_snac_ab_runs(text)
    assert [(name, len(runs)) for name, _, runs in variants] == [("--mode ours_in_engine --trace", 4)]
    assert snac_ab_rows(variants)[1] == ["--mode ours_in_engine --trace", "depthwise=aten", "15 000 (12.80)", "1.10"]
    assert snac_ab_means(variants) == [
        ["--mode ours_in_engine --trace", "depthwise=aten", "2", "14 500 (13.26)", "1.00"],
        ["--mode ours_in_engine --trace", "depthwise=triton", "2", "16 500 (11.65)", "1.14"],
    ]
    summary = tmp_path / "summary.txt"
    summary.write_text(text)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main([str(summary)])
    tables = printed.getvalue().strip().split("\n\n")
    assert len(tables) == 3 and "SNAC variant" in tables[1] and "÷ the first SNAC variant's" in tables[2]


def test_rounds_gil_bench_runs_the_real_service_s_rounds_in_an_engine_like_loop(tmp_path: Path) -> None:
    out = tmp_path / "gil.json"
    _run(
        "rounds_gil.py", "--modes", "none,step,thread", "--seconds", "1", "--rounds-per-s", "40",
        "--step-python-us", "1000", "--out", str(out), timeout=180,
    )  # fmt: skip
    report = json.loads(out.read_text())
    none, step, thread = report["runs"]
    assert none["steps_per_s"] > 0 and "rounds_sent" not in none  # nothing sent: the engine alone
    # every round sent was answered, by the engine's steps once they ran (the first may beat the first step)
    assert (
        step["rounds"]["by_step"] >= 1
        and step["rounds"]["by_step"] + step["rounds"]["by_thread"] == step["rounds_sent"]
    )
    assert thread["rounds"] == {"mode": "thread"} and thread["rounds_sent"] >= 1
    assert report["summary"]["none"]["of_none"] == 1.0 and set(report["summary"]) == {"none", "step", "thread"}
