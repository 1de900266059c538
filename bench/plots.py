"""The load test's plots (matplotlib, Agg): bursts vs N, arrivals vs offered load, capacity verdicts.

* `plot_bursts`: TTFA percentiles and the zero-underrun fraction vs N, one line per mode;
* `plot_arrivals`: TTFA p50/p95/p99 vs offered load (streams = rate x mean length), and the
  zero-underrun and 429 fractions with the concurrency reached;
* `plot_capacity`: per mode, a grid of levels x criteria, green where a criterion held, red where
  it failed, with its value; the capacity in the title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capacity import CRITERIA


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ttfa_lines(ax: Any, xs: list[float], levels: list[dict[str, Any]], mode: str, color: str) -> None:
    for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        ys = [lv["ttfa_ms"][q] or float("nan") for lv in levels]
        ax.plot(xs, ys, style, marker="o", color=color, label=f"{mode} {q}")


def plot_bursts(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """TTFA percentiles and the zero-underrun fraction vs N, one line per mode."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (mode, levels) in enumerate(results.items()):
        ns = [lv["concurrency"] for lv in levels]
        _ttfa_lines(ax1, ns, levels, mode, f"C{i}")
        ax2.plot(ns, [lv["zero_underrun_fraction"] for lv in levels], marker="o", color=f"C{i}", label=mode)
    for ax, ylabel in ((ax1, "time to first audio (ms)"), (ax2, "streams with zero underruns")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams N (burst)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax2.set_ylim(-0.05, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_arrivals(arrivals: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """TTFA percentiles vs offered load; zero-underrun and 429 fractions and concurrency reached."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax3 = ax2.twinx()
    for i, (mode, rates) in enumerate(arrivals.items()):
        load = [r["offered_load_streams"] for r in rates]
        color = f"C{i}"
        _ttfa_lines(ax1, load, rates, mode, color)
        ax2.plot(
            load, [r["zero_underrun_fraction"] for r in rates], marker="o", color=color, label=f"{mode} 0 underruns"
        )
        refused = [r["refused_429"] / r["requests"] if r["requests"] else 0.0 for r in rates]
        ax2.plot(load, refused, marker="x", linestyle="--", color=color, label=f"{mode} refused (429)")
        ax3.plot(load, [r["concurrency_reached"]["max"] for r in rates], marker=".", linestyle=":", color=color)
    ax1.set_ylabel("time to first audio (ms)")
    ax2.set_ylabel("fraction of requests")
    ax3.set_ylabel("concurrency reached (max, dotted)")
    ax2.set_ylim(-0.05, 1.05)
    for ax in (ax1, ax2):
        ax.set_xlabel("offered load (streams = rate x mean length)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Poisson arrivals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(name: str, check: dict[str, Any]) -> str:
    value = check["value"]
    if value is None:
        return "-"
    if name == "success":
        return f"{value:.0%}"
    if name == "zero_underruns":
        return f"{value} bad"
    return f"{value:.2f}" if name == "rtf_p99" else f"{value:.0f}"


def plot_capacity(blocks: dict[str, dict[str, Any]], path: Path) -> None:
    """Per mode: levels x criteria, green = held, red = failed, annotated with the measured value."""
    plt = _pyplot()
    modes = [m for m, b in blocks.items() if b["levels"]]
    fig, axes = plt.subplots(len(modes) or 1, 1, figsize=(max(6.0, 1.2 * _widest(blocks)), 2.2 * max(1, len(modes))))
    axes = [axes] if not hasattr(axes, "__len__") else list(axes)
    for ax, mode in zip(axes, modes, strict=False):
        block = blocks[mode]
        levels = block["levels"]
        grid = [[1.0 if lv["criteria"][c]["held"] else 0.0 for lv in levels] for c in CRITERIA]
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for row, name in enumerate(CRITERIA):
            for col, lv in enumerate(levels):
                ax.text(col, row, _cell(name, lv["criteria"][name]), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(levels)), [str(lv["n"]) for lv in levels])
        limits = block["criteria"]
        labels = ["100 % ok", "0 underruns", f"RTF p99 <= {limits['rtf_p99_max']:g}",
                  f"TTFA p95 <= {limits['ttfa_p95_ms']:g} ms"]  # fmt: skip
        ax.set_yticks(range(len(CRITERIA)), labels, fontsize=8)
        ax.set_xlabel("N (burst)")
        ax.set_title(f"{mode}: capacity {block['capacity']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _widest(blocks: dict[str, dict[str, Any]]) -> int:
    return max((len(b["levels"]) for b in blocks.values()), default=1)
