"""The churn A/B's table: `gpu_session.sh churn_ab`'s summary.txt as Markdown, one row per engine variant.

Each variant of `bench/profile_engine.py --churn` measured its engine twice, steady (N streams of 1 024 tokens) and
while streams came and went (`unprofiled_churn`); this prints, per variant, both tokens a second with the wall time
of a step, the streams started a second, churn ÷ steady, what one new stream cost the engine (the share of the wall
time churn lost, over the streams started: ms of engine time a new stream), and where SNAC ran, its busy share and a
window's wait for its round while streams came and went; then every variant's churn tokens a second against the first
variant's (the run's reference, e.g. raw vLLM). Tables follow for what a variant measured again on its one engine:
`--switch-interval-ab`, each measurement at the GIL switch interval it ran with, against its first churn measurement;
`--snac-ab`, each measurement with the SNAC variant it ran (`snac_ab.py`), then each SNAC variant's mean against the
first's; `--churn-repeats`, its churn measured again and again, by the seconds since its streams began churning, and
the means of those runs. The engine that runs later on one card churns slower, by more than ours ÷ raw's gap (session
39: ours ÷ raw 1.09 with ours first, 0.83 with raw first), so a variant listed again in `CHURN_VARIANTS` (best in the
order A, B, B, A), or in several summaries given together, gets one more table: its engines' means pooled, against the
first variant's pooled mean:

    python3 bench/churn_table.py /tmp/s6/churn_ab/summary.txt
    python3 bench/churn_table.py call1/summary.txt call2/summary.txt    # one call's order, then the other's
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLUMNS = (
    "variant",
    "steady tokens/s (ms a step)",
    "churn tokens/s (ms a step)",
    "streams started a second",
    "churn ÷ steady",
    "engine ms a new stream",
    "SNAC busy steady / churn",
    "window wait for its round, churn (ms)",
    "churn ÷ first variant's",
)


def _variant_lines(text: str) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """Per variant of a summary.txt (a `v<i>: <flags>` line), its measurement lines in order: (head, JSON) of each
    `unprofiled...: {...}` line after it."""
    variants: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []
    for line in text.splitlines():
        head, _, rest = line.partition(": ")
        if head.startswith("v") and head[1:].isdigit():
            variants.append((rest.strip(), []))
        elif head.startswith("unprofiled") and variants:
            variants[-1][1].append((head, json.loads(rest)))
    return variants


def read_summary(text: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(variant, steady, churn) per variant of a summary.txt: a `v<i>: <flags>` line, then its `unprofiled:` and
    `unprofiled, churn:` JSON lines (a variant that died before measuring has fewer; it is skipped)."""
    out = []
    for name, lines in _variant_lines(text):
        runs = [run for head, run in lines if head in ("unprofiled", "unprofiled, churn")]
        if len(runs) == 2:
            out.append((name, runs[0], runs[1]))
    return out


SWITCH_COLUMNS = ("variant", "GIL switch interval (ms)", "churn tokens/s (ms a step)", "÷ the variant's first churn")
OVER_TIME_COLUMNS = (
    "variant", "seconds since the streams began churning", "churn tokens/s (ms a step)", "÷ the variant's first churn",
)  # fmt: skip


def _later_runs(text: str, prefix: str) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(variant, its churn, its later runs on the same engine) per variant of a summary.txt that has any: the runs are
    its lines whose head starts with `prefix`, in order."""
    out = []
    for name, lines in _variant_lines(text):
        churn = next((run for head, run in lines if head == "unprofiled, churn"), None)
        runs = [run for head, run in lines if head.startswith(prefix)]
        if churn and runs:
            out.append((name, churn, runs))
    return out


def read_switch_runs(text: str) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(variant, its churn, its `--switch-interval-ab` runs) per variant of a summary.txt that has any: the runs are
    its `unprofiled, churn, switch <ms> ms:` lines, in order."""
    return _later_runs(text, "unprofiled, churn, switch ")


def read_snac_ab_runs(text: str) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(variant, its churn, its `--snac-ab` runs) per variant of a summary.txt that has any: the runs are its
    `unprofiled, churn, snac <SNAC variant>:` lines, in order."""
    return _later_runs(text, "unprofiled, churn, snac ")


def read_churn_over_time(text: str) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(variant, its churn, its `--churn-repeats` runs) per variant of a summary.txt that has any: the runs are its
    `unprofiled, churn, at <s> s:` lines, in order."""
    return _later_runs(text, "unprofiled, churn, at ")


def _against_first(
    variants: list[tuple[str, dict[str, Any], list[dict[str, Any]]]],
    first_label: Callable[[dict[str, Any]], str],
    label: Callable[[dict[str, Any]], str],
) -> list[list[str]]:
    """One row per run of each variant on its one engine, its first churn run first (labelled `first_label(churn)`),
    each labelled `label(run)` and set against that first run's tokens a second."""
    out: list[list[str]] = []
    for name, churn, runs in variants:
        first = churn["aggregate_tokens_per_s"]
        out.append([name, first_label(churn), _tokens(churn), "1.00"])
        out.extend([name, label(run), _tokens(run), f"{run['aggregate_tokens_per_s'] / first:.2f}"] for run in runs)
    return out


def switch_rows(variants: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> list[list[str]]:
    """One row per measurement of each variant's switch-interval A/B on one engine, its first churn run first."""
    return _against_first(variants, lambda _: "as started", lambda run: f"{run['switch_interval_ms']:g}")


SNAC_AB_COLUMNS = ("variant", "SNAC variant", "churn tokens/s (ms a step)", "÷ the variant's first churn")
SNAC_AB_MEAN_COLUMNS = (
    "variant", "SNAC variant", "runs", "mean churn tokens/s (mean ms a step)", "÷ the first SNAC variant's",
)  # fmt: skip


def snac_ab_rows(variants: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> list[list[str]]:
    """One row per measurement of each variant's SNAC A/B on one engine, its first churn run first."""
    return _against_first(variants, lambda _: "as started", lambda run: run["snac_variant"])


def snac_ab_means(variants: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> list[list[str]]:
    """One row per SNAC variant of each engine's A/B, in the order each first ran: its runs' mean tokens a second and
    step, against the engine's first SNAC variant's mean (the runs of one variant spread more than the A/B's effects:
    the means over the order A, B, B, A are what to compare)."""
    out: list[list[str]] = []
    for name, _, runs in variants:
        by_variant: dict[str, list[dict[str, Any]]] = {}
        for run in runs:
            by_variant.setdefault(run["snac_variant"], []).append(run)
        reference = None
        for label, of_label in by_variant.items():
            tokens = sum(run["aggregate_tokens_per_s"] for run in of_label) / len(of_label)
            step = sum(run["wall_ms_per_step"] for run in of_label) / len(of_label)
            reference = reference or tokens
            out.append(
                [name, label, str(len(of_label)), f"{_number(tokens)} ({step:.2f})", f"{tokens / reference:.2f}"]
            )
    return out


def over_time_rows(variants: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> list[list[str]]:
    """One row per measurement of each variant's churn over time on one engine, its first churn run first."""

    def since(run: dict[str, Any]) -> str:
        return "—" if run.get("churn_s") is None else f"{run['churn_s']:.0f}"

    return _against_first(variants, since, since)


OVER_TIME_MEAN_COLUMNS = (
    "variant", "later runs", "churn tokens/s, mean of the first half / the second half", "mean of all",
    "÷ the first variant's mean",
)  # fmt: skip


def over_time_means(variants: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> list[list[str]]:
    """One row per variant: the mean churning tokens a second of its later runs (`--churn-repeats`, the first churn run
    left out), of their first and second half (the longer streams of the length mix reach their share only late), and
    of all, against the first variant's mean of all. In runs of a few seconds a variant moves ±20 % from one to the
    next, so the means are what to compare."""
    out: list[list[str]] = []
    reference = None
    for name, _, runs in variants:
        tokens = [run["aggregate_tokens_per_s"] for run in runs]
        half = len(tokens) // 2
        halves = (tokens[:half], tokens[half:]) if half else (tokens, tokens)
        mean = sum(tokens) / len(tokens)
        reference = reference or mean
        out.append([
            name, str(len(tokens)), " / ".join(_number(sum(part) / len(part)) for part in halves), _number(mean),
            f"{mean / reference:.2f}",
        ])  # fmt: skip
    return out


POOLED_COLUMNS = (
    "variant", "engines (their places in the order)", "pooled mean of their later runs", "÷ the first variant's",
)  # fmt: skip


def pooled_means(variants: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> list[list[str]]:
    """One row per distinct variant, in the order each first ran: how many engines ran it and where in the order (1 =
    first), the mean of their later runs' means (each engine weighs alike), against the first variant's."""
    places: dict[str, list[int]] = {}
    means: dict[str, list[float]] = {}
    for place, (name, _, runs) in enumerate(variants, start=1):
        places.setdefault(name, []).append(place)
        means.setdefault(name, []).append(sum(run["aggregate_tokens_per_s"] for run in runs) / len(runs))
    pooled = {name: sum(values) / len(values) for name, values in means.items()}
    reference = next(iter(pooled.values()), 0.0)
    return [
        [name, f"{len(places[name])} ({', '.join(map(str, places[name]))})", _number(mean), f"{mean / reference:.2f}"]
        for name, mean in pooled.items()
    ]


def _number(value: float) -> str:
    return f"{value:,.0f}".replace(",", " ")


def _tokens(run: dict[str, Any]) -> str:
    return f"{run['aggregate_tokens_per_s']:,.0f} ({run['wall_ms_per_step']:.2f})".replace(",", " ")


def rows(variants: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[list[str]]:
    """One table row per variant."""
    out: list[list[str]] = []
    reference = variants[0][2]["aggregate_tokens_per_s"] if variants else 0.0
    for name, steady, churn in variants:
        ratio = churn["aggregate_tokens_per_s"] / steady["aggregate_tokens_per_s"]
        started = churn["streams_started_per_s"]
        new_stream_ms = (1 - ratio) / started * 1000 if started else float("nan")
        snac = "—"
        if churn.get("snac_windows_per_s") and "snac_busy" in churn:  # older summaries lack SNAC's counters
            snac = f"{steady.get('snac_busy', 0):.2f} / {churn.get('snac_busy', 0):.2f}"
        wait = churn.get("snac_queued_ms_per_window")
        out.append([
            name, _tokens(steady), _tokens(churn), f"{started:.1f}", f"{ratio:.2f}", f"{new_stream_ms:.1f}", snac,
            "—" if wait is None else f"{wait:.2f}", f"{churn['aggregate_tokens_per_s'] / reference:.2f}",
        ])  # fmt: skip
    return out


def markdown(table: list[list[str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """The rows under `columns` as a Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table])


def main(argv: list[str] | None = None) -> int:
    """Print the table of a summary.txt."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("summary", type=Path, nargs="+", help="summary.txt files, read as one, in order")
    args = p.parse_args(argv)
    text = "\n".join(path.read_text() for path in args.summary)
    print(markdown(rows(read_summary(text))))
    switches = read_switch_runs(text)
    if switches:  # --switch-interval-ab: the interval's A/B, each on its own engine
        print()
        print(markdown(switch_rows(switches), SWITCH_COLUMNS))
    snac_ab = read_snac_ab_runs(text)
    if snac_ab:  # --snac-ab: SNAC variants in turn on one engine, each run, then each SNAC variant's mean
        print()
        print(markdown(snac_ab_rows(snac_ab), SNAC_AB_COLUMNS))
        print()
        print(markdown(snac_ab_means(snac_ab), SNAC_AB_MEAN_COLUMNS))
    over_time = read_churn_over_time(text)
    if over_time:  # --churn-repeats: one engine's churn measured again and again
        print()
        print(markdown(over_time_rows(over_time), OVER_TIME_COLUMNS))
        print()
        print(markdown(over_time_means(over_time), OVER_TIME_MEAN_COLUMNS))
        if len({name for name, _, _ in over_time}) < len(over_time):  # a variant ran on more than one engine
            print()
            print(markdown(pooled_means(over_time), POOLED_COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
