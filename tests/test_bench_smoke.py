"""CI smoke test of the bench scripts on the CPU demo profile (no timing assertions).

`bench/load.py --demo` starts its own demo server and drives it over real sockets;
`bench/baselines.py --demo` runs the raw-engine, seed-style and our pipeline in process.
The playback simulator that every underrun figure rests on is checked on exact timelines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import simulate_playback  # noqa: E402

LEVEL_KEYS = {
    "concurrency",
    "requests",
    "ok",
    "errors",
    "ttfa_ms",
    "rtf",
    "underruns",
    "stall_ms",
    "streams_zero_underruns",
    "zero_underrun_fraction",
    "audio_s_total",
    "aggregate_audio_tokens_per_s",
}
FRAME = 2048  # samples = 85.33 ms at 24 kHz


def test_playback_starts_after_prebuffer_and_counts_underruns() -> None:
    # 3 frames at t=0 (256 ms buffered >= 250 ms: play from 0), the 4th at 0.5 s: dry at 0.256 s.
    arrivals = [(0.0, FRAME), (0.0, 2 * FRAME), (0.0, 3 * FRAME), (0.5, 4 * FRAME)]
    underruns, stall = simulate_playback(arrivals, end_s=0.5, prebuffer_s=0.25)
    assert underruns == 1
    assert stall == pytest.approx(0.5 - 3 * FRAME / 24000)


def test_playback_real_time_arrivals_never_stall() -> None:
    arrivals = [(i * 0.08, (i + 1) * FRAME) for i in range(20)]  # faster than 85.3 ms per frame
    assert simulate_playback(arrivals, end_s=1.6, prebuffer_s=0.25) == (0, 0.0)


def test_playback_short_stream_starts_at_end() -> None:
    # Never reaches 250 ms: the player starts at the end of the stream, so nothing can run dry.
    assert simulate_playback([(0.1, FRAME), (2.0, 2 * FRAME)], end_s=2.0, prebuffer_s=0.25) == (0, 0.0)


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


@pytest.mark.slow
def test_load_demo_writes_results(tmp_path: Path, demo_cache: Path) -> None:
    out = tmp_path / "load"
    proc = _run("load.py", "--demo", "--cache-dir", str(demo_cache), "--out", str(out), "--concurrency", "1,2")
    report = json.loads((out / "results.json").read_text())
    assert set(report["modes"]) == {"speech", "chat"}
    for mode, levels in report["modes"].items():
        assert [lv["concurrency"] for lv in levels] == [1, 2]
        for level in levels:
            assert set(level) >= LEVEL_KEYS
            # A random-weight chat model sometimes ends its reply at once (nothing to speak).
            if mode == "speech":
                assert level["ok"] == level["requests"], level["error_samples"]
        assert sum(level["audio_s_total"] for level in levels) > 0
        assert {"largest_n_zero_underruns", "largest_n_zero_underruns_ttfa_ok"} <= set(report["capacity"][mode])
        assert len(report["streams"][mode]["2"]) == 2
    for level in report["modes"]["chat"]:
        if level["ok"]:  # the transcript of a segment is sent before its audio
            assert level["first_text_ms"]["p50"] <= level["ttfa_ms"]["p50"]
            assert 1 <= level["first_text_words"]["max"] <= 10  # --first-segment-max-words
    assert all("first_text_ms" not in level for level in report["modes"]["speech"])
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "largest N with zero underruns" in proc.stdout


@pytest.mark.slow
def test_baselines_demo_writes_json(tmp_path: Path, demo_cache: Path) -> None:
    out = tmp_path / "baselines.json"
    _run("baselines.py", "--demo", "--cache-dir", str(demo_cache), "--out", str(out), "--concurrency", "1,2")
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"raw", "seed", "ours"}
    for mode, levels in report["modes"].items():
        assert all(set(lv) >= LEVEL_KEYS for lv in levels)
        # The seed's pipeline plays nothing of an utterance shorter than 4 frames, and the demo
        # Orpheus sometimes stops that early: only our pipeline and the raw engine must never miss.
        if mode != "seed":
            assert all(lv["ok"] == lv["requests"] for lv in levels), levels
    raw = report["modes"]["raw"][0]
    assert raw["engine_tokens_total"] > 0 and "first_token_ms" in raw
    assert "ratio_ours_over_seed_real_time_streams" in report


def test_snac_decode_bench_compares_schemes(tmp_path: Path) -> None:
    out = tmp_path / "snac.json"
    _run("snac_decode.py", "--batch", "1", "--frames-per-decode", "2", "--repeats", "1", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    shapes = [(r["scheme"], r["window_frames"], r["emitted_frames"]) for r in rows]
    assert shapes == [("seed", 4, 1), ("eager-K2", 5, 2)]
    assert all(r["us_per_emitted_frame"] > 0 for r in rows)


def test_profile_trace_summary(tmp_path: Path) -> None:
    from profile_engine import summarize_trace

    def kernel(name: str, ts: float, dur: float) -> dict[str, object]:
        return {"cat": "kernel", "name": name, "ts": ts, "dur": dur}

    events = [
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
    assert summary["gpu_busy_ms_per_step"] == pytest.approx((50 + 30 + 40 + 10) / 2 / 1000)
    assert summary["profiled_wall_ms_per_step"] == pytest.approx(200 / 2 / 1000)
    assert summary["by_category_ms_per_step"] == pytest.approx(
        {"gemm": 0.04, "sampling": 0.015, "attention": 0.01, "other": 0.005}
    )
    assert summary["by_region_gpu_ms_per_step"] == {"sample": pytest.approx(0.015)}
    assert summary["top_kernels_ms_per_step"][0] == ("sm90_xmma_gemm_bf16", pytest.approx(0.04))
