"""Stream by stream: what `load.py`'s bursts, arrivals and overload did to each admitted stream, from its results.json.

For every burst (`N`, a capacity search's `search N`), arrivals phase (`rate=...`) and the overload of one or more
runs: requests offered, admitted and refused (429), admitted streams that stalled, their speed after the first audio
(audio seconds per wall second, p10 and p50), TTFA p95, where in the audio the first stalls came (the most common
positions: 0.587 s is the first 4-frame chunk of the ramp 1, 1, 2, 3, 4), the streams with an RTF past 1 (how many
stalled, their audio's median length against every stream's: RTF counts the TTFA, so short streams can fail a
level's RTF p99 without a stall) and, with `--buckets S`, the same by S seconds of arrival time (streams that
stalled / admitted @ median speed), which shows a server slowing down as the run goes on; with `--by-admission` by
the moment the response headers came instead (the server sends them once it has admitted the stream), which shows
a wave of admissions (session 38: 124 of the 127 streams admitted within 1.3 s stalled, none of those around it).

    python bench/streams_summary.py bench/results/h200_s26_random_weights/onecard_chat/arrivals/results.json.gz \
        --buckets 8
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile, read_json


def speed(stream: dict[str, Any]) -> float | None:
    """Audio seconds per wall second after the stream's first audio (None if it had none)."""
    after = stream["wall_s"] - stream["ttfa_s"] if stream.get("ttfa_s") is not None else 0.0
    return stream["audio_s"] / after if after > 0 else None


def admitted_at(stream: dict[str, Any]) -> float:
    """Seconds from the phase's start to the stream's response headers (its admission), else to its request."""
    return stream["sent_at_s"] + (stream.get("headers_s") or 0.0)


def summarize_phase(
    streams: Sequence[dict[str, Any]], buckets_s: float = 0, by_admission: bool = False
) -> dict[str, Any]:
    """One phase's streams (load.py's per-request records) as the figures above."""
    admitted = [s for s in streams if s["ok"]]
    stalled = [s for s in admitted if s["underruns"] > 0]
    speeds = [v for v in map(speed, admitted) if v is not None]
    firsts = Counter(round(s["first_stall_audio_s"], 3) for s in stalled if s["first_stall_audio_s"] is not None)
    summary: dict[str, Any] = {
        "offered": len(streams),
        "admitted": len(admitted),
        "refused_429": sum(1 for s in streams if s.get("status") == 429),
        "stalled": len(stalled),
        "speed_p10": percentile(speeds, 10),
        "speed_p50": percentile(speeds, 50),
        "ttfa_p95_ms": percentile([s["ttfa_s"] * 1000 for s in admitted], 95),
        "first_stalls_at_s": firsts.most_common(3),
        # RTF counts the TTFA: a level can fail RTF p99 on short streams that never stalled
        "rtf_over_1": len(slow := [s for s in admitted if s.get("rtf") is not None and s["rtf"] > 1]),
        "rtf_over_1_stalled": sum(1 for s in slow if s["underruns"] > 0),
        "rtf_over_1_audio_s_p50": percentile([s["audio_s"] for s in slow], 50),
        "audio_s_p50": percentile([s["audio_s"] for s in admitted], 50),
    }
    if buckets_s > 0:
        by: dict[int, list[dict[str, Any]]] = {}
        for s in admitted:
            moment = admitted_at(s) if by_admission else s["sent_at_s"]
            by.setdefault(int(moment // buckets_s), []).append(s)
        summary["by_arrival"] = [
            {
                "from_s": index * buckets_s,
                "admitted": len(group),
                "stalled": sum(1 for s in group if s["underruns"] > 0),
                "speed_p50": percentile([v for v in map(speed, group) if v is not None], 50),
            }
            for index, group in sorted(by.items())
        ]
    return summary


def summarize(results: dict[str, Any], buckets_s: float = 0, by_admission: bool = False) -> dict[str, dict[str, Any]]:
    """Every arrivals phase and the overload of one load.py run, by the phase's name."""
    phases = results.get("streams", {}).get("speech", {})
    return {name: summarize_phase(streams, buckets_s, by_admission) for name, streams in phases.items()}


def _line(name: str, s: dict[str, Any]) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return (
        f"{name:>12}: offered {s['offered']}, admitted {s['admitted']}, 429 {s['refused_429']}, "
        f"stalled {s['stalled']}, speed p10/p50 {fmt(s['speed_p10'], '.2f')}/{fmt(s['speed_p50'], '.2f')}, "
        f"TTFA p95 {fmt(s['ttfa_p95_ms'], '.0f')} ms, first stalls at {s['first_stalls_at_s']}, "
        f"RTF > 1: {s['rtf_over_1']} ({s['rtf_over_1_stalled']} stalled, audio p50 "
        f"{fmt(s['rtf_over_1_audio_s_p50'], '.2f')} s against {fmt(s['audio_s_p50'], '.2f')} s for all)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="load.py results.json (or .json.gz) files")
    p.add_argument("--buckets", type=float, default=0, help="also by this many seconds of arrival time")
    p.add_argument("--by-admission", action="store_true", help="buckets by admission (response headers), not arrival")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = p.parse_args(argv)
    report = {str(path): summarize(read_json(path), args.buckets, args.by_admission) for path in args.results}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for path, phases in report.items():
        print(path)
        for name, s in phases.items():
            print(_line(name, s))
            for b in s.get("by_arrival", []):
                print(f"{'':>14}{b['from_s']:>5g} s: {b['stalled']}/{b['admitted']} @ {b['speed_p50'] or 0:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
