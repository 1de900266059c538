"""What one admission check of the real-time headroom gate costs the event loop, at N generating streams.

`HeadroomGate.has_headroom()` runs for every speech request admitted, and every 50 ms for each request waiting
for headroom while the gate is shut. This fills the gate's window the way N streams at `--rate` tokens/s in
7-token deltas do, then times the check on a fake clock. Session 10 made the window's sums running totals:
before, each check summed every token event of the last 2 s (at 288 streams ~170 µs on a 2-core CPU, so 100
requests waiting behind a shut gate cost the loop a third of its time); `--old FILE` times another version of
`serving/headroom.py` beside the current one.

    python bench/headroom_cost.py --streams 64,288,576
    git show 776f90c:oai_server/serving/headroom.py > /tmp/headroom_old.py
    python bench/headroom_cost.py --old /tmp/headroom_old.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oai_server.serving.headroom import HeadroomGate


def _load(path: Path) -> Any:
    """`HeadroomGate` from another copy of `serving/headroom.py` (its relative imports made absolute)."""
    source = path.read_text().replace("from ..", "from oai_server.")
    spec = importlib.util.spec_from_loader("headroom_variant", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module.HeadroomGate


def check_cost_us(gate_class: Any, streams: int, rate: float, checks: int = 2000) -> tuple[float, int]:
    """µs per `has_headroom()` with `streams` generating for the whole window; and the window's token events."""
    now = [100.0]
    gate = gate_class(clock=lambda: now[0])
    for _ in range(streams):
        gate.started()
    step = 7 / rate
    for _ in range(int(gate.window_s / step) + 1):
        now[0] += step
        for _ in range(streams):
            gate.record(7)
    started = time.perf_counter()
    for _ in range(checks):
        gate.has_headroom()
    return (time.perf_counter() - started) / checks * 1e6, len(gate._events)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="64,288,576", help="generating streams (comma-separated)")
    p.add_argument("--rate", type=float, default=110.0, help="tokens/s per stream")
    p.add_argument("--old", type=Path, default=None, help="another headroom.py to time beside this one")
    args = p.parse_args()
    variants = {"current": HeadroomGate} | ({"old": _load(args.old)} if args.old else {})
    rows = []
    for streams in (int(s) for s in args.streams.split(",")):
        for name, gate_class in variants.items():
            us, events = check_cost_us(gate_class, streams, args.rate)
            rows.append({"variant": name, "streams": streams, "events_in_window": events, "us_per_check": us})
            print(f"{name:>8} {streams:>4} streams, {events:>6} token events in the window: {us:8.1f} µs per check")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
