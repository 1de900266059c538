"""`bench/load.py --mode mixed`: N speech streams and N chat conversations at once, each part judged by its
own capacity criteria (speech TTFA p95 <= 500 ms, chat <= 800 ms); and `bench/placement_summary.py`, which
turns the `gpu_load.sh placement` runs into capacities per layout and card count. Verdicts and summaries on
exact inputs, and a real mixed capacity search against the CPU demo server (no timing assertions)."""

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
from placement_summary import capacity_of, summarize_run, table  # noqa: E402

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


def _report(mode: str, levels: list[dict[str, Any]], *, searched: bool) -> dict[str, Any]:
    runs = [{"level": lv, "n": lv["concurrency"]} for lv in levels]
    search = {"capacity": 16, "bracket": {"pass": 16, "fail": 24}, "reached_maximum": False, "runs": runs}
    return {
        "config": {"ttfa_p95_ms": 500.0, "chat_ttfa_p95_ms": 800.0, "rtf_p99_max": 1.0, "prebuffer_ms": 250.0},
        "search": {mode: search} if searched else {},
        "search_levels": {mode: levels},
    }


def test_summary_takes_the_search_or_else_the_levels_it_ran() -> None:
    levels = [_part(8), _part(16, ttfa=450), _part(24, clean=20)]
    for level in levels:
        level["aggregate_audio_tokens_per_s"] = 82.0 * level["concurrency"]
    done = capacity_of(_report("speech", levels, searched=True), "speech")
    assert done is not None and (done["capacity"], done["partial"], done["bracket"]) == (
        16,
        False,
        {"pass": 16, "fail": 24},
    )
    assert done["at_capacity"] == {"ttfa_p95_ms": 450, "rtf_p99": 0.5, "aggregate_audio_tokens_per_s": 1312.0}
    cut = capacity_of(_report("chat", levels[:2], searched=False), "chat")  # the call ended mid-search
    assert cut is not None and (cut["capacity"], cut["partial"], cut["levels_run"]) == (16, True, [8, 16])
    assert capacity_of({"search": {}}, "mixed") is None


def test_table_gives_each_capacity_against_one_card() -> None:
    def run(cards: int, placement: str, speech: int, chat: int) -> dict[str, Any]:
        def entry(capacity: int) -> dict[str, Any]:
            return {"capacity": capacity, "partial": False}

        ttfa = {"speech": {"ttfa_ms_p50": 61.0}, "chat": {"ttfa_ms_p50": 190.4}}
        return {
            "cards": cards,
            "placement": placement,
            "speech": entry(speech),
            "chat": entry(chat),
            "mixed": None,
            "ttfa": ttfa,
        }

    text = table([run(2, "speech", 320, 96), run(1, "shared", 128, 32), run(2, "chat", 240, 128)])
    rows = text.splitlines()[2:]
    assert rows[0] == "| 1 | shared | 128 | 32 | - | 61 ms / 190 ms |"
    assert rows[1] == "| 2 | chat | 240 (1.88x) | 128 (4.00x) | - | 61 ms / 190 ms |"
    assert rows[2] == "| 2 | speech | 320 (2.50x) | 96 (3.00x) | - | 61 ms / 190 ms |"


@pytest.mark.slow
def test_mixed_search_against_the_demo_server(tmp_path: Path, demo_cache: Path) -> None:
    out = tmp_path / "cpu1_demo_mixed"
    argv = ["--demo", "--cache-dir", str(demo_cache), "--mode", "mixed", "--concurrency", "", "--search"]
    argv += ["--search-start", "1", "--search-max", "2", "--search-resolution", "1", "--out", str(out)]
    # criteria a 2-core CPU can meet, so that the search climbs to its second level
    argv += ["--ttfa-p95-ms", "1e6", "--chat-ttfa-p95-ms", "1e6", "--rtf-p99-max", "1e3", "--prebuffer-ms", "1e6"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), *argv], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "results.json").read_text())
    assert (
        [lv["concurrency"] for lv in report["search_levels"]["mixed"]]
        == [1, 2]
        == report["search"]["mixed"]["levels_run"]
    )
    level = report["search_levels"]["mixed"][1]
    assert level["requests"] == level["ok"] == 4, level["error_samples"]
    assert {part: (lv["requests"], lv["ok"]) for part, lv in level["parts"].items()} == {
        "speech": (2, 2),
        "chat": (2, 2),
    }
    assert "first_text_ms" in level["parts"]["chat"] and "first_text_ms" not in level["parts"]["speech"]
    verdict = report["search"]["mixed"]["runs"][1]
    assert (
        set(verdict["parts"]) == {"speech", "chat"} and verdict["passed"] and report["search"]["mixed"]["capacity"] == 2
    )
    summary = summarize_run(tmp_path, "cpu1_demo", 1, "shared")
    assert summary["mixed"]["capacity"] == report["search"]["mixed"]["capacity"] and not summary["mixed"]["partial"]
    assert summary["speech"] is None and summary["ttfa"] is None
