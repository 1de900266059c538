"""What `--snac-hurry-lead-ms`, `--snac-grow-lead` and `--snac-stretch-frames` buy and cost, on the window planner
alone (no model, no GPU, seconds).

A stream's frames arrive at `rate` x real time; every `--hiccup-every-s` the whole engine pauses `--hiccup-ms`
(a step full of prefills: on an H200 the admitted streams of a 1.5x overload ran at ~1.12x and a quarter of them
stalled once at their first 4-frame chunk, session 25). The real `WindowPlanner` chunks the frames, hurried
while a listener who plays on arrival would hold less than the hurry lead (the pipeline's `ListenerLead` rule) and
held short of K while that listener holds less than the grow lead times a K-frame chunk's audio (stretched to K2
frames while it holds the grow lead times a K2-frame chunk's, `--stretch-frames`), and each window's
audio leaves when its last frame arrives. Two players listen: one that starts on 250 ms of audio (bench/load.py's)
and one that plays on arrival. Reported per (ramp, grow lead, rate, hurry lead), over hiccups at every
phase of a stream's start: the share of streams that stall and their worst stall, and the SNAC work, as windows
and as frames decoded per frame emitted (the steady state decodes 1.75 with the defaults).

    python bench/snac_hurry.py --out bench/results/cpu_snac_hurry_s25.json
    python bench/snac_hurry.py --ramps gentle,step --grow-leads 0,0.5,1 --hurry-ms 0 --rates 1.05,1.1,1.15,1.25,1.6 \
        --hiccup-ms 100 --hiccup-every-s 1 --out bench/results/cpu_snac_grow_lead_s36.json
    python bench/snac_hurry.py --ramps gentle --grow-leads 1 --hurry-ms 0 --stretch-frames 0,6,8 --fill \
        --rates 1.05,1.1,1.25,1.6,2.0 --frames 140 --out bench/results/cpu_snac_stretch_s39.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import playback_stalls

from oai_server.codec.orpheus import FRAME_SECONDS, SAMPLES_PER_FRAME
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import Window
from oai_server.pipeline.speech import ListenerLead


def arrivals(frames: int, rate: float, every_s: float, pause_s: float, phase_s: float) -> list[float]:
    """When each frame is complete: one every FRAME_SECONDS / rate, all held while the engine pauses."""
    times, t = [], 0.0
    for _ in range(frames):
        t += FRAME_SECONDS / rate
        if every_s and pause_s:
            into = (t + phase_s) % every_s
            if into < pause_s:
                t += pause_s - into
        times.append(t)
    return times


def sends(policy: WindowPolicy, times: list[float]) -> tuple[list[tuple[float, int]], int, int]:
    """(time, frames emitted) of every window, the windows, and the frames they decode, with the pipeline's rule
    (`ListenerLead` on the simulated clock)."""
    planner = policy.planner()
    now = [0.0]
    lead = ListenerLead(clock=lambda: now[0])
    hurry_s = policy.hurry_lead_ms / 1000
    out: list[tuple[float, int]] = []
    decoded = 0

    def send(windows: list[Window]) -> None:
        nonlocal decoded
        for window in windows:
            out.append((now[0], window.count))
            lead.sent(window.count * SAMPLES_PER_FRAME)
            decoded += len(window.frames)

    for index, t in enumerate(times):
        now[0] = t
        send(planner.add([(index,)], hurry=lead.under(hurry_s), lead_s=lead.seconds()))
    send(planner.finish())
    return out, len(out), decoded


def stalls(sent: list[tuple[float, int]], prebuffer_s: float) -> list[float]:
    """Each stall (s) of bench/load.py's player (`playback_stalls`) starting on `prebuffer_s` (0: on arrival)."""
    cumulative, total = [], 0
    for t, count in sent:
        total += count * SAMPLES_PER_FRAME
        cumulative.append((t, total))
    return [gap for _, gap in playback_stalls(cumulative, sent[-1][0], max(prebuffer_s, 1e-9))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="1.05,1.1,1.25,1.6,2.0", help="generation speed, x real time")
    p.add_argument("--hurry-ms", default="0,150,250,400", help="hurry leads to compare (0: off)")
    p.add_argument("--ramps", default="step,gentle", help="the chunks' ramps to compare (--snac-ramp)")
    p.add_argument("--grow-leads", default="0", help="the ramps' grow leads to compare (--snac-grow-lead; 0: off)")
    p.add_argument("--stretch-frames", default="0", help="stretched chunks to compare (--snac-stretch-frames; 0: off)")
    p.add_argument("--fill", action="store_true", help="fill windows to the steady length (the server's on CUDA)")
    p.add_argument("--frames", type=int, default=70, help="frames a stream (70: 6 s, the arrivals' mean)")
    p.add_argument("--hiccup-every-s", type=float, default=2.0)
    p.add_argument("--hiccup-ms", type=float, default=200.0)
    p.add_argument("--phases", type=int, default=40, help="hiccup phases tried across a stream's start")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rows = []
    print(
        f"(rate: between pauses; effective: with the pauses of {args.hiccup_ms:.0f} ms every {args.hiccup_every_s} s)"
    )
    print(
        "  ramp  grow  K2  rate  effective  hurry  stalled@250ms  worst ms  stalled@0  worst ms  windows"
        "  decoded/emitted"
    )
    plans = [
        (ramp, float(grow), int(stretch), float(rate), int(hurry))
        for ramp in args.ramps.split(",")
        for grow in args.grow_leads.split(",")
        for stretch in args.stretch_frames.split(",")
        for rate in args.rates.split(",")
        for hurry in args.hurry_ms.split(",")
    ]
    for ramp, grow, stretch, rate, hurry in plans:
        policy = WindowPolicy(
            ramp=ramp,  # type: ignore[arg-type]
            hurry_lead_ms=hurry,
            grow_lead=grow,
            fill=args.fill,
            stretch_frames=stretch,
        )
        effective = rate * (1 - args.hiccup_ms / 1000 / args.hiccup_every_s) if args.hiccup_every_s else rate
        row = {"ramp": ramp, "grow_lead": grow, "stretch_frames": stretch, "rate": rate, "effective_rate": effective}
        row |= {"hurry_lead_ms": hurry, "streams": args.phases}
        buffered, eager, windows, decoded = [], [], 0, 0
        for k in range(args.phases):
            phase = args.hiccup_every_s * k / args.phases
            times = arrivals(args.frames, rate, args.hiccup_every_s, args.hiccup_ms / 1000, phase)
            sent, n_windows, n_decoded = sends(policy, times)
            buffered.append(stalls(sent, 0.25))
            eager.append(stalls(sent, 0.0))
            windows += n_windows
            decoded += n_decoded
        row |= {
            "stalled_prebuffer_250ms": sum(1 for s in buffered if s) / args.phases,
            "worst_stall_ms_prebuffer_250ms": 1000 * max((max(s) for s in buffered if s), default=0.0),
            "stalled_play_on_arrival": sum(1 for s in eager if s) / args.phases,
            "worst_stall_ms_play_on_arrival": 1000 * max((max(s) for s in eager if s), default=0.0),
            "windows_per_stream": windows / args.phases,
            "decoded_per_emitted_frame": decoded / (args.frames * args.phases),
        }
        rows.append(row)
        cells = (
            f"{ramp:>6} {grow:5.2f} {stretch:3d} {rate:5.2f} {effective:10.3f} {hurry:6d}",
            f"{row['stalled_prebuffer_250ms']:13.0%} {row['worst_stall_ms_prebuffer_250ms']:9.0f}",
            f"{row['stalled_play_on_arrival']:10.0%} {row['worst_stall_ms_play_on_arrival']:9.0f}",
            f"{row['windows_per_stream']:8.1f} {row['decoded_per_emitted_frame']:16.2f}",
        )
        print(" ".join(cells))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k != "out"}
        args.out.write_text(json.dumps({"config": config, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
