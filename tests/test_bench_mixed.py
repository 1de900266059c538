"""`bench/load.py --mode mixed`: N speech streams and N chat conversations at once, each part judged by its
own capacity criteria (speech TTFA p95 <= 500 ms, chat <= 800 ms). Verdicts on exact inputs, and a real
mixed burst against the CPU demo server (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from capacity import Criteria, capacity_block, evaluate  # noqa: E402

SPEECH, CHAT = Criteria(ttfa_p95_ms=500), Criteria(ttfa_p95_ms=800)
MIXED = Criteria(ttfa_p95_ms=500, parts=(("speech", SPEECH), ("chat", CHAT)))


def _part(n: int, *, clean: int | None = None, rtf: float = 0.5, ttfa: float = 100.0) -> dict[str, Any]:
    return {
        "concurrency": n,
        "requests": n,
        "ok": n,
        "streams_zero_underruns": n if clean is None else clean,
        "rtf": {"p99": rtf},
        "ttfa_ms": {"p95": ttfa},
    }


def _mixed(n: int, speech: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    both = _part(2 * n, clean=speech["streams_zero_underruns"] + chat["streams_zero_underruns"])
    return {**both, "concurrency": n, "parts": {"speech": speech, "chat": chat}}


def test_each_part_is_judged_by_its_own_ttfa_limit() -> None:
    chat_at_700 = evaluate(_mixed(8, _part(8, ttfa=300), _part(8, ttfa=700)), MIXED)
    assert chat_at_700["passed"] and chat_at_700["criteria"]["ttfa_p95_ms"] == {
        "value": 700,
        "limit": {"speech": 500, "chat": 800},
        "held": True,
    }
    speech_at_700 = evaluate(_mixed(8, _part(8, ttfa=700), _part(8, ttfa=300)), MIXED)
    assert speech_at_700["failed"] == ["speech.ttfa_p95_ms"] and not speech_at_700["clear_fail"]  # 40 % over
    underran = evaluate(_mixed(8, _part(8), _part(8, clean=6, rtf=1.2)), MIXED)
    assert underran["failed"] == ["chat.zero_underruns", "chat.rtf_p99"] and underran["clear_fail"]
    assert underran["criteria"]["zero_underruns"]["value"] == 2 and underran["criteria"]["rtf_p99"]["value"] == 1.2
    assert underran["parts"]["speech"]["passed"] and not underran["parts"]["chat"]["passed"]


def test_mixed_capacity_is_the_largest_n_where_both_parts_pass() -> None:
    levels = [
        _mixed(8, _part(8), _part(8)),
        _mixed(16, _part(16), _part(16, ttfa=600)),
        _mixed(32, _part(32), _part(32, ttfa=900)),
    ]
    block = capacity_block(levels, MIXED)
    assert block["capacity"] == 16 and block["first_failed_n"] == 32
    assert [v["failed"] for v in block["levels"]] == [[], [], ["chat.ttfa_p95_ms"]]


@pytest.mark.slow
def test_mixed_burst_against_the_demo_server(tmp_path: Path, demo_cache: Path) -> None:
    out = tmp_path / "mixed"
    argv = ["--demo", "--cache-dir", str(demo_cache), "--mode", "mixed", "--concurrency", "2", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), *argv], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "results.json").read_text())
    (level,) = report["modes"]["mixed"]
    assert level["concurrency"] == 2 and level["requests"] == level["ok"] == 4, level["error_samples"]
    assert {part: (lv["requests"], lv["ok"]) for part, lv in level["parts"].items()} == {
        "speech": (2, 2),
        "chat": (2, 2),
    }
    assert "first_text_ms" in level["parts"]["chat"] and "first_text_ms" not in level["parts"]["speech"]
    assert len(report["streams"]["mixed"]["2"]) == 4
    verdict = report["capacity"]["mixed"]["levels"][0]
    assert set(verdict["parts"]) == {"speech", "chat"}
    assert report["config"]["mode"] == "mixed" and "-- chat part of the mixed bursts --" in proc.stdout
