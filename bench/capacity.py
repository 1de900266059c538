"""The capacity definition, the per-level verdicts behind it, and a search for it.

Capacity (issue 17) is the largest N at which N streams sent at once (a burst) all pass:

* ``success``: every request succeeded (a 429 refusal counts as a miss here);
* ``zero_underruns``: no stream underran (the player pre-buffers `prebuffer_ms`, 250 ms);
* ``rtf_p99``: the 99th percentile of the streams' real-time factors (wall / audio) is <= 1;
* ``ttfa_p95_ms``: the 95th percentile of the time to first audio is <= 500 ms for speech,
  800 ms for chat.

`capacity_block` judges every level that ran and names the criteria that failed; the capacity
is the largest N that passed (``non_monotonic`` flags a passing N above a failing one).
`search` finds it by running levels: up a geometric ladder, then bisecting between the last pass
and the first failure. It never runs a level above a clear failure (see `Margins`); a marginal
one (within the margins, plausibly noise) lets the ladder go one step further, a second failure
in a row stops it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from server_metrics import snac_note

CRITERIA = ("success", "zero_underruns", "rtf_p99", "ttfa_p95_ms")


@dataclass(frozen=True)
class Criteria:
    """The thresholds of the capacity definition for one mode."""

    ttfa_p95_ms: float
    rtf_p99_max: float = 1.0
    prebuffer_ms: float = 250.0
    """The player's pre-buffer the underruns were counted with (informational)."""
    parts: tuple[tuple[str, Criteria], ...] = ()
    """A mixed load (speech streams and chat conversations at once): the level carries `parts`, one summary
    per mode, each judged by its own criteria; the level passes when every part does."""


@dataclass(frozen=True)
class Margins:
    """How far past a threshold a failure is 'clear' rather than marginal (possibly noise)."""

    underrun_fraction: float = 0.05
    """More than this fraction of the streams underran, or failed."""
    rtf: float = 0.10
    """RTF p99 more than 10 % over its limit."""
    ttfa: float = 0.50
    """TTFA p95 more than 50 % over its limit."""


def evaluate(level: dict[str, Any], criteria: Criteria, margins: Margins = Margins()) -> dict[str, Any]:
    """Each criterion's value, limit and whether it held at this level; the failed ones; clear or marginal."""
    if criteria.parts:
        return _evaluate_parts(level, criteria, margins)
    requests = level["requests"]
    ok = level["ok"]
    rtf = level["rtf"]["p99"]
    ttfa = level["ttfa_ms"]["p95"]
    not_clean = requests - level["streams_zero_underruns"]
    rtf_limit, ttfa_limit = criteria.rtf_p99_max, criteria.ttfa_p95_ms
    checks = {
        "success": {"value": ok / requests if requests else 0.0, "limit": 1.0, "held": requests > 0 and ok == requests},
        "zero_underruns": {"value": not_clean, "limit": 0, "held": requests > 0 and not_clean == 0},
        "rtf_p99": {"value": rtf, "limit": rtf_limit, "held": rtf is not None and rtf <= rtf_limit},
        "ttfa_p95_ms": {"value": ttfa, "limit": ttfa_limit, "held": ttfa is not None and ttfa <= ttfa_limit},
    }
    failed = [name for name in CRITERIA if not checks[name]["held"]]
    clear = bool(failed) and (
        not requests
        or not_clean > margins.underrun_fraction * requests
        or rtf is None
        or rtf > rtf_limit * (1 + margins.rtf)
        or ttfa is None
        or ttfa > ttfa_limit * (1 + margins.ttfa)
    )
    return {"n": level["concurrency"], "passed": not failed, "failed": failed, "clear_fail": clear, "criteria": checks}


def _evaluate_parts(level: dict[str, Any], criteria: Criteria, margins: Margins) -> dict[str, Any]:
    """A mixed level: each part against its own criteria; a criterion holds when it holds for every part
    (its value is the worst part's); failures are named `part.criterion`."""
    parts = {name: evaluate(level["parts"][name], part, margins) for name, part in criteria.parts}
    worst = {"success": min, "zero_underruns": sum, "rtf_p99": max, "ttfa_p95_ms": max}
    checks = {}
    for name in CRITERIA:
        values = [v["criteria"][name]["value"] for v in parts.values() if v["criteria"][name]["value"] is not None]
        held = all(v["criteria"][name]["held"] for v in parts.values())
        limit = {part: v["criteria"][name]["limit"] for part, v in parts.items()}
        checks[name] = {"value": worst[name](values) if values else None, "limit": limit, "held": held}
    failed = [f"{part}.{name}" for part, v in parts.items() for name in v["failed"]]
    return {
        "n": level["concurrency"],
        "passed": not failed,
        "failed": failed,
        "clear_fail": any(v["clear_fail"] for v in parts.values()),
        "criteria": checks,
        "parts": parts,
    }


def capacity_block(levels: list[dict[str, Any]], criteria: Criteria) -> dict[str, Any]:
    """The JSON `capacity` block of one mode: the verdict of every level and the resulting capacity."""
    verdicts = [evaluate(level, criteria) for level in levels]
    passed = [v["n"] for v in verdicts if v["passed"]]
    failed = [v["n"] for v in verdicts if not v["passed"]]
    capacity = max(passed, default=0)
    clean = [lv["concurrency"] for lv in levels if lv["requests"] and lv["streams_zero_underruns"] == lv["requests"]]
    return {
        "capacity": capacity,
        "definition": "largest N of a burst with 100 % success, zero underruns, RTF p99 <= limit, TTFA p95 <= limit",
        "criteria": asdict(criteria),
        "levels": verdicts,
        "first_failed_n": min(failed, default=None),
        "non_monotonic": any(n < capacity for n in failed),
        "largest_n_zero_underruns": max(clean, default=0),
    }


def ladder(start: int, maximum: int, growth: float = 2.0) -> list[int]:
    """start, start*growth, ... and `maximum` itself (ascending, distinct)."""
    steps, n = [], max(1, start)
    while n < maximum:
        steps.append(n)
        n = max(n + 1, round(n * growth))
    steps.append(maximum)
    return steps


RunLevel = Callable[[int], Awaitable[dict[str, Any]]]


async def search(
    run: RunLevel,
    criteria: Criteria,
    *,
    start: int,
    maximum: int,
    resolution: int,
    growth: float = 2.0,
    margins: Margins = Margins(),
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Find the capacity by running bursts: `run(n)` returns a level summary (`_common.summarize`).

    Up the ladder `ladder(start, maximum, growth)` until a clear failure or two failures in a row;
    then bisect between the largest passing N below the first failure above it and that failure,
    until they are `resolution` apart. Returns the capacity (the largest N that passed, 0 if none),
    the bracket, and every level run in order with its verdict and summary.
    """
    runs: list[dict[str, Any]] = []
    results: dict[int, bool] = {}

    async def probe(n: int, phase: str) -> dict[str, Any]:
        level = await run(n)
        verdict = evaluate(level, criteria, margins)
        runs.append({"phase": phase, **verdict, "level": level})
        results[n] = verdict["passed"]
        failed = ", ".join(verdict["failed"]) or "-"
        log(f"search {phase} N={n}: {'pass' if verdict['passed'] else 'FAIL'} (failed: {failed}){_timings(level)}")
        return verdict

    misses = 0
    for n in ladder(start, maximum, growth):
        verdict = await probe(n, "ladder")
        if verdict["passed"]:
            misses = 0
            continue
        misses += 1
        if verdict["clear_fail"] or misses >= 2:
            break
    low = max((n for n, ok in results.items() if ok), default=0)
    above = [n for n, ok in results.items() if not ok and n > low]
    high = min(above, default=None)
    while high is not None and high - low > resolution:
        mid = (low + high) // 2
        if mid - mid % resolution > low:  # round levels: multiples of the resolution where possible
            mid -= mid % resolution
        if mid in results:
            break
        if (await probe(mid, "bisect"))["passed"]:
            low = mid
        else:
            high = mid
    capacity = max((n for n, ok in results.items() if ok), default=0)
    return {
        "capacity": capacity,
        "bracket": {"pass": low, "fail": high},
        "resolution": resolution,
        "maximum": maximum,
        "reached_maximum": results.get(maximum, False),
        "criteria": asdict(criteria),
        "levels_run": [r["n"] for r in runs],
        "runs": runs,
    }


def _timings(level: dict[str, Any]) -> str:
    """`; TTFA p95 X ms, RTF p99 R (R' after the first audio), shortest stream S s, client p95 ms: ..., server:
    <series> p95 Y ms, ...` for a search log line (what is known of it). The RTF after the first audio tells a level
    that failed RTF p99 on its shortest streams' TTFA from one whose streams ran slower than real time."""
    ttfa = (level.get("ttfa_ms") or {}).get("p95")
    server = ", ".join(
        f"{name} p95 {view['p95_ms']:.0f} ms"
        for name, view in (level.get("server") or {}).items()
        if isinstance(view, dict) and view.get("p95_ms") is not None
    )
    snac = snac_note(level)  # did streams wait on SNAC?
    server += (", " if server and snac else "") + snac
    phases = ", ".join(
        f"{name} {view['p95']:.0f}"
        for name, view in (level.get("client_phases_ms") or {}).items()
        if view.get("p95") is not None
    )
    rtf = (level.get("rtf") or {}).get("p99")
    after = (level.get("rtf_after_first_audio") or {}).get("p99")
    shortest = (level.get("audio_s") or {}).get("min")
    return (
        (f"; TTFA p95 {ttfa:.0f} ms" if ttfa is not None else "")
        + (f", RTF p99 {rtf:.3f}" if rtf is not None else "")
        + (f" ({after:.3f} after the first audio)" if rtf is not None and after is not None else "")
        + (f", shortest stream {shortest:.2f} s" if shortest is not None else "")
        + (f", client p95 ms: {phases}" if phases else "")
        + (f", server: {server}" if server else "")
    )
