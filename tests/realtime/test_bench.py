"""`bench/realtime_load.py` against the test server: two sessions, one answered turn and one barge-in each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import RealtimeServer

ROOT = Path(__file__).resolve().parents[2]


def test_realtime_load_smoke(rt_server: RealtimeServer, tmp_path: Path) -> None:
    out = tmp_path / "rt"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "realtime_load.py"), "--url", rt_server.live.url, "--sessions", "2",
         "--turns", "1", "--max-output-tokens", "16", "--barge-in-max-tokens", "256", "--stagger-s", "0.3",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (level,) = json.loads((out / "results.json").read_text())["levels"]
    assert (level["sessions"], level["ok"], level["errors"], level["replies"]) == (2, 2, 0, 2), level["error_samples"]
    assert level["replies_without_audio"] == 0
    assert level["v2v_vad_ms"]["p50"] > 0 and level["v2v_speech_end_ms"]["p50"] > level["v2v_vad_ms"]["p50"]
    barge_in = level["barge_in"]
    assert (barge_in["sessions"], barge_in["cancelled"]) == (2, 2)
    assert barge_in["late_audio_bytes_total"] == 0  # nothing of an interrupted reply is sent after speech_started
    assert level["server"]["barge_in_mean_ms"] is not None
    assert level["server"]["voice_to_voice_vad_decision_mean_ms"] is not None


def test_realtime_load_reports_which_wait_timed_out(rt_server: RealtimeServer, tmp_path: Path) -> None:
    out = tmp_path / "rt"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "realtime_load.py"), "--url", rt_server.live.url, "--sessions", "1",
         "--turns", "1", "--no-barge-in", "--event-timeout", "0.3", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    (level,) = json.loads((out / "results.json").read_text())["levels"]
    (result,) = level["session_results"]
    assert not result["ok"] and result["error"].startswith("TimeoutError: no input_audio_buffer.speech_stopped")
    assert result["last_events"][:2] == ["session.created", "session.updated"]
    assert "session 0 failed: TimeoutError" in proc.stdout and "last events: session.created" in proc.stdout
    assert "never retrieved" not in proc.stderr
