"""Capacity per GPU layout and card count, from the `bench/gpu_load.sh placement` runs.

One run (`--tag h200x2_speech --dir $OUT`): reads `<dir>/<tag>_<phase>/results.json` for the phases
ttfa, speech, chat and mixed, and writes `<dir>/<tag>_summary.json`: each phase's capacity (from the
search; from the levels it ran when the search was cut short, then marked `partial` and a lower bound),
the TTFA p95 / RTF p99 at that capacity, TTFA at one stream, and the layout block the server logged.

Several runs (`--table summary.json ... [--plot scaling.png]`): a Markdown table, one row per card count
and layout, with each capacity's ratio to the one-card run of the same table, and a plot of capacity
against cards.

    python bench/placement_summary.py --dir $OUT --tag h200x2_speech --cards 2 --placement speech
    python bench/placement_summary.py --dir bench/results --tag h200x2_auto --cards 2 --placement auto \
        --suffix _random_weights      # after copying <tag>_<phase>/results.json to <tag>_<phase>_random_weights.json
    python bench/placement_summary.py --table bench/results/h200x*_summary_random_weights.json --plot scaling.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from capacity import Criteria, capacity_block

CAPACITY_PHASES = ("speech", "chat", "mixed")


def _criteria(mode: str, config: dict[str, Any]) -> Criteria:
    speech = config.get("ttfa_p95_ms", 500.0)
    chat = config.get("chat_ttfa_p95_ms", 800.0)
    rtf, prebuffer = config.get("rtf_p99_max", 1.0), config.get("prebuffer_ms", 250.0)
    if mode == "mixed":
        parts = (("speech", _criteria("speech", config)), ("chat", _criteria("chat", config)))
        return Criteria(speech, rtf, prebuffer, parts)
    return Criteria(speech if mode == "speech" else chat, rtf, prebuffer)


def capacity_of(report: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """The phase's capacity and the level that set it; None when nothing ran."""
    found = report.get("search", {}).get(mode)
    levels = report.get("search_levels", {}).get(mode) or []
    if found is not None:
        capacity, partial = found["capacity"], False
        levels = [run["level"] for run in found["runs"]]
        extra = {"bracket": found["bracket"], "reached_maximum": found["reached_maximum"]}
    elif levels:
        block = capacity_block(levels, _criteria(mode, report.get("config", {})))
        capacity, partial, extra = block["capacity"], True, {"first_failed_n": block["first_failed_n"]}
    else:
        return None
    at = next((lv for lv in levels if lv["concurrency"] == capacity), None)
    return {
        "capacity": capacity,
        "partial": partial,
        "levels_run": [lv["concurrency"] for lv in levels],
        "at_capacity": None
        if at is None
        else {
            "ttfa_p95_ms": at["ttfa_ms"]["p95"],
            "rtf_p99": at["rtf"]["p99"],
            "aggregate_audio_tokens_per_s": at["aggregate_audio_tokens_per_s"],
            **(
                {"parts_ttfa_p95_ms": {p: v["ttfa_ms"]["p95"] for p, v in at["parts"].items()}} if "parts" in at else {}
            ),
        },
        **extra,
    }


def summarize_run(directory: Path, tag: str, cards: int, placement: str, suffix: str = "") -> dict[str, Any]:
    """The summary of one `gpu_load.sh placement` run (see the module docstring). Phase results are
    `<tag>_<phase>/results.json` as the script writes them, or `<tag>_<phase><suffix>.json` as copied
    into `bench/results/` (e.g. suffix `_random_weights`)."""
    summary: dict[str, Any] = {"tag": tag, "cards": cards, "placement": placement, "random_weights": True}
    layouts = [directory / f"{tag}_layout{suffix}.txt", directory / f"{tag}_layout.txt"]
    layout = next((path for path in layouts if path.exists()), None)
    summary["layout"] = layout.read_text().strip() if layout is not None else None
    for phase in ("ttfa", *CAPACITY_PHASES):
        path = directory / f"{tag}_{phase}" / "results.json"
        if not path.exists():
            path = directory / f"{tag}_{phase}{suffix}.json"
        if not path.exists():
            summary[phase] = None
            continue
        report = json.loads(path.read_text())
        if phase == "ttfa":
            summary[phase] = {
                mode: {
                    "ttfa_ms_p50": levels[0]["ttfa_ms"]["p50"],
                    "first_text_ms_p50": levels[0].get("first_text_ms", {}).get("p50"),
                    "requests": levels[0]["requests"],
                    "ok": levels[0]["ok"],
                }
                for mode, levels in report["modes"].items()
                if levels
            }
        else:
            summary[phase] = capacity_of(report, phase)
    return summary


def _cap(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    return f"{entry['capacity']}{' (partial, at least)' if entry['partial'] else ''}"


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: one row per run, capacities with their ratio to the one-card run in the same list."""
    base = {
        phase: next((s[phase]["capacity"] for s in summaries if s["cards"] == 1 and s.get(phase)), None)
        for phase in CAPACITY_PHASES
    }
    lines = [
        "| cards | layout | speech streams | chat conversations | mixed (N speech + N chat) "
        "| TTFA 1 stream: speech / chat |",
        "|---|---|---|---|---|---|",
    ]
    for s in sorted(summaries, key=lambda s: (s["cards"], s["placement"])):
        cells = []
        for phase in CAPACITY_PHASES:
            cell = _cap(s.get(phase))
            if s.get(phase) and base[phase] and s["cards"] != 1:
                cell += f" ({s[phase]['capacity'] / base[phase]:.2f}x)"
            cells.append(cell)
        ttfa = s.get("ttfa") or {}
        one = " / ".join(
            "-" if ttfa.get(m, {}).get("ttfa_ms_p50") is None else f"{ttfa[m]['ttfa_ms_p50']:.0f} ms"
            for m in ("speech", "chat")
        )
        lines.append(f"| {s['cards']} | {s['placement']} | {' | '.join(cells)} | {one} |")
    return "\n".join(lines)


def plot(summaries: list[dict[str, Any]], path: Path) -> None:
    """Capacity against cards, one panel per load: each layout's points (a lower bound marked "at least"), the
    best per card count joined, and linear scaling from the one-card capacity dashed; the axes start at zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CAPACITY_PHASES), figsize=(12, 3.6))
    cards = sorted({s["cards"] for s in summaries})
    for ax, phase in zip(axes, CAPACITY_PHASES, strict=True):
        measured = [s for s in summaries if s.get(phase)]
        for placement in sorted({s["placement"] for s in measured}):
            points = sorted((s["cards"], s[phase]["capacity"]) for s in measured if s["placement"] == placement)
            ax.plot(*zip(*points, strict=True), marker="o", linestyle="none", label=placement)
        for s in measured:  # a search cut short gives a lower bound: say so on the point
            if s[phase]["partial"]:
                ax.annotate(
                    "at least",
                    (s["cards"], s[phase]["capacity"]),
                    textcoords="offset points",
                    xytext=(-8, -14),
                    ha="right",
                    fontsize=8,
                )
        best = sorted({c: max(s[phase]["capacity"] for s in measured if s["cards"] == c) for c in cards
                       if any(s["cards"] == c for s in measured)}.items())  # fmt: skip
        if len(best) > 1:
            ax.plot(*zip(*best, strict=True), color="0.3", linewidth=1)
        one = dict(best).get(1)
        if one:
            ax.plot(cards, [one * c for c in cards], color="0.6", linestyle="--", linewidth=1, label="linear")
        ax.set_title(f"{phase} capacity (random weights)", fontsize=10)
        ax.set_xlabel("H200 cards")
        ax.set_xticks(cards)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("concurrent streams / conversations")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Summarize one run, or tabulate and plot several."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, help="one run: the directory with <tag>_<phase>/results.json")
    p.add_argument("--tag")
    p.add_argument("--cards", type=int, default=1)
    p.add_argument("--placement", default="auto")
    p.add_argument("--suffix", default="", help="phase files named <tag>_<phase><suffix>.json (bench/results)")
    p.add_argument("--table", type=Path, nargs="+", help="several runs: their summary JSON files")
    p.add_argument("--plot", type=Path, default=None, help="with --table: write the scaling plot here")
    args = p.parse_args(argv)
    if args.table:
        summaries = [json.loads(path.read_text()) for path in args.table]
        print(table(summaries))
        if args.plot:
            plot(summaries, args.plot)
        return 0
    if args.dir is None or args.tag is None:
        p.error("give --dir and --tag (one run) or --table (several)")
    summary = summarize_run(args.dir, args.tag, args.cards, args.placement, args.suffix)
    (args.dir / f"{args.tag}_summary{args.suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table([summary]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
