"""Load test of a running server over HTTP: bursts, a capacity search, Poisson arrivals, overload.

Phases (each optional, run per mode, speech and/or chat, or `mixed`: bursts of N speech streams and N
chat conversations at once, each part judged by its own criteria; clients in `clients.py`):

* bursts (`--concurrency 1,8,32`): N streams at once (`--requests-per-stream` each, one after
  another), and the `capacity` block (`capacity.py`): per level which criteria held, and the
  capacity, the largest N with 100 % success, zero underruns (`--prebuffer-ms` 250), RTF p99 <=
  `--rtf-p99-max` (1) and TTFA p95 <= `--ttfa-p95-ms` (500; chat `--chat-ttfa-p95-ms`, 800);
* `--search`: find the capacity by running bursts up a ladder and bisecting (`capacity.search`);
* `--arrival-rates 0.5,1,2`: Poisson arrivals with the 1-20 s length mix (`arrivals.py`) for
  `--arrival-duration-s` each, TTFA/underruns/RTF/429s against the offered load;
* `--overload C`: offer `--overload-factor` (1.5) x C and check that admitted streams stay clean
  and the rest get a 429 within `--refusal-target-s` (2 s), nothing hanging.

Per stream it records time to first audio (for chat also the first transcript), the audio timeline
against the wall clock and a simulated player's underruns. No assertions on timings: it measures.
`--seed` seeds every request (base + request number); `--demo` does so by default.

    python bench/load.py --url http://127.0.0.1:8080 --mode both --concurrency 1,8,32,64,128 --out bench/out
    python bench/load.py --url ... --mode speech --concurrency '' --search --search-max 512 --out ...
    python bench/load.py --url ... --concurrency '' --arrival-rates 2,4,8 --arrival-duration-s 60 --out ...
    python bench/load.py --url ... --mode mixed --concurrency '' --search --out ...   # N speech + N chat at once
    python bench/load.py --demo          # starts the CPU demo server itself, tiny sweep
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import server_metrics
from _common import (
    SENTENCES,
    StreamResult,
    benchmarked_server,
    metrics_urls,
    summarize,
    table,
    tail,
    write_json,
)
from arrivals import mix_config, overload, run_rate
from capacity import Criteria, capacity_block, search
from client_pool import START_MARGIN_S, pool_for, run_workers
from clients import RequestSpec, Seeds
from plots import plot_arrivals, plot_bursts, plot_capacity

DEMO_TEXT = "Hello there, how are you today?"
DEMO_SEED = 1234
"""Base seed of --demo: every demo request seeded, so no smoke run sees a random empty reply."""


def _text(args: argparse.Namespace, index: int) -> str:
    return args.text or SENTENCES[index % len(SENTENCES)]


MIXED_PARTS = ("speech", "chat")
"""`--mode mixed`: each level N is N speech streams and N chat conversations sent at once."""


async def run_level(
    mode: str, n: int, args: argparse.Namespace, seeds: Seeds
) -> tuple[dict[str, Any], list[StreamResult]]:
    """A burst: N concurrent workers, each sending `--requests-per-stream` requests one after another
    (`mixed`: N speech and N chat workers at once; the summary covers all 2N and has one per part)."""
    modes = MIXED_PARTS if mode == "mixed" else (mode,)
    workers = [
        (part, [RequestSpec(_text(args, i + k), seed=seeds.take(), server=i) for k in range(args.requests_per_stream)])
        for i in range(n)
        for part in modes
    ]
    pool = pool_for(args)

    async def burst() -> tuple[list[list[StreamResult]], float]:
        started = time.perf_counter()
        if pool is not None:
            per_worker = await pool.run(args, workers)
            started += START_MARGIN_S  # the processes' agreed start
        elif args.preconnect:  # the connections open before the agreed start, outside the level's wall time
            per_worker = await run_workers(args, workers, time.time() + START_MARGIN_S)
            started += START_MARGIN_S
        else:
            per_worker = await run_workers(args, workers)
        return per_worker, time.perf_counter() - started

    (per_worker, wall), server = await server_metrics.around(metrics_urls(args), burst())
    results = [r for rs in per_worker for r in rs]
    summary = summarize(n, results, wall)
    summary["server"] = server
    if mode == "mixed":
        summary["parts"] = {
            part: summarize(
                n, [r for (p, _), rs in zip(workers, per_worker, strict=True) if p == part for r in rs], wall
            )
            for part in modes
        }
    return summary, results


def criteria(mode: str, args: argparse.Namespace) -> Criteria:
    """The capacity thresholds of `mode` from the flags (`mixed`: each part's own)."""
    ttfa = args.ttfa_p95_ms if mode in ("speech", "mixed") else args.chat_ttfa_p95_ms
    parts = tuple((part, criteria(part, args)) for part in MIXED_PARTS) if mode == "mixed" else ()
    return Criteria(ttfa_p95_ms=ttfa, rtf_p99_max=args.rtf_p99_max, prebuffer_ms=args.prebuffer_ms, parts=parts)


class Sweep:
    """Every phase of every mode; the report grows as they run and is rewritten after each step."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.seeds = Seeds(args.seed)
        self.report: dict[str, Any] = {
            "url": args.url,
            "config": _config(args),
            "modes": {},
            "capacity": {},
            "streams": {},
            "search": {},
            "arrivals": {},
            "overload": {},
        }

    def save(self) -> None:
        if self.args.out is not None:  # a killed run still leaves every finished step
            write_json(self.args.out / "results.json", {**self.report, "partial": True})

    async def run(self) -> dict[str, Any]:
        args = self.args
        for mode in ["speech", "chat"] if args.mode == "both" else [args.mode]:
            if args.warmup > 0:  # unrecorded: first-use JIT compiles would skew the first level
                await run_level(mode, args.warmup, args, self.seeds)
            await self.bursts(mode)
            if args.search:
                await self.search(mode)
            if mode == "mixed" and (args.arrival_rates or args.overload):
                print("[mixed] Poisson arrivals and overload run per mode (speech, chat), not mixed", flush=True)
                continue
            for rate in args.arrival_rates:
                summary, results = await run_rate(mode, rate, args, self.seeds, criteria(mode, args))
                self.report["arrivals"].setdefault(mode, []).append(summary)
                self.report["streams"].setdefault(mode, {})[f"rate={rate:g}"] = [r.public() for r in results]
                print(
                    f"[{mode}] arrivals {rate:g}/s: {_brief(summary)} {server_metrics.snac_note(summary)}", flush=True
                )
                self.save()
            if args.overload:
                summary, results = await overload(mode, args.overload, args, self.seeds, criteria(mode, args))
                self.report["overload"][mode] = summary
                self.report["streams"].setdefault(mode, {})["overload"] = [r.public() for r in results]
                verdict = json.dumps(summary["verdict"])
                print(
                    f"[{mode}] overload x{args.overload_factor:g}: {verdict} {server_metrics.snac_note(summary)}",
                    flush=True,
                )
                self.save()
        return self.report

    async def bursts(self, mode: str) -> None:
        levels: list[dict[str, Any]] = []
        for n in self.args.concurrency:
            summary, results = await run_level(mode, n, self.args, self.seeds)
            levels.append(summary)
            run = sum(level["concurrency"] == n for level in levels)  # a level run again keeps its own streams
            key = str(n) if run == 1 else f"{n} #{run}"
            self.report["streams"].setdefault(mode, {})[key] = [r.public() for r in results]
            print(f"[{mode}] N={n}: {json.dumps(summary)}", flush=True)
            self.report["modes"][mode] = levels
            self.report["capacity"][mode] = capacity_block(levels, criteria(mode, self.args))
            self.save()

    async def search(self, mode: str) -> None:
        args = self.args

        async def level(n: int) -> dict[str, Any]:
            summary, results = await run_level(mode, n, args, self.seeds)
            # a run cut short (the GPU call's time limit) still leaves every level it ran
            self.report.setdefault("search_levels", {}).setdefault(mode, []).append(summary)
            self.report["streams"].setdefault(mode, {})[f"search {n}"] = [r.public() for r in results]
            self.save()
            return summary

        self.report["search"][mode] = await search(
            level,
            criteria(mode, args),
            start=args.search_start,
            maximum=args.search_max,
            resolution=args.search_resolution,
            growth=args.search_growth,
            log=lambda line: print(f"[{mode}] {line}", flush=True),
        )
        self.save()


def _brief(summary: dict[str, Any]) -> str:
    keys = ("offered_requests", "ok", "errors", "refused_429", "hung", "streams_zero_underruns")
    return json.dumps({k: summary[k] for k in keys} | {"ttfa_ms": summary["ttfa_ms"], "rtf": summary["rtf"]})


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "mode", "concurrency", "requests_per_stream", "text", "max_tokens", "prebuffer_ms", "voice", "warmup", "seed",
        "ttfa_p95_ms", "chat_ttfa_p95_ms", "rtf_p99_max", "search", "search_start", "search_max", "search_resolution",
        "search_growth", "arrival_rates", "arrival_duration_s", "overload", "overload_factor", "overload_arrivals",
        "overload_duration_s", "refusal_target_s", "hang_s", "client_procs",
    )  # fmt: skip
    return {k: getattr(args, k) for k in keys} | {"length_mix": mix_config(args)}


def arrivals_table(mode: str, rates: list[dict[str, Any]]) -> str:
    """Offered load against what came out, one line per rate."""
    lines = [
        f"\n== {mode}: Poisson arrivals ==",
        f"{'rate/s':>7} {'load':>6} {'req':>5} {'ok':>5} {'429':>4} {'err':>4} {'hung':>4} {'cmax':>5} {'cmean':>6} "
        f"{'ttfa50':>7} {'ttfa95':>7} {'ttfa99':>7} {'rtf99':>6} {'0-und':>6}",
    ]
    for r in rates:
        t, c = r["ttfa_ms"], r["concurrency_reached"]
        cells = [f"{v:>7.0f}" if v is not None else f"{'-':>7}" for v in (t["p50"], t["p95"], t["p99"])]
        rtf = r["rtf"]["p99"]
        lines.append(
            f"{r['rate_per_s']:>7g} {r['offered_load_streams']:>6.1f} {r['requests']:>5} {r['ok']:>5} "
            f"{r['refused_429']:>4} {r['errors']:>4} {r['hung']:>4} {c['max']:>5} {c['mean']:>6.1f} {' '.join(cells)} "
            f"{'-' if rtf is None else f'{rtf:.2f}':>6} {r['streams_zero_underruns']:>6}"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--url", default="http://127.0.0.1:8080",
        help="base URL of a running server, or several comma-separated: stream i goes to server i mod count",
    )  # fmt: skip
    p.add_argument(
        "--metrics-url", default="",
        help="the servers whose /metrics make the server's view, comma-separated (default: --url's); for "
        "--placement replicated, each replica's own port (--replica-base-port + i)",
    )  # fmt: skip
    p.add_argument(
        "--mode",
        choices=("speech", "chat", "both", "mixed"),
        default="both",
        help="both: speech, then chat; mixed: N speech streams and N chat conversations at once",
    )
    p.add_argument("--concurrency", default=None, help="bursts: N, comma-separated ('' none)")
    p.add_argument("--requests-per-stream", type=int, default=1)
    p.add_argument("--text", default=None, help="input text (default: built-in sentences, one per stream)")
    p.add_argument("--max-tokens", type=int, default=None, help="chat max_tokens of bursts")
    p.add_argument("--seed", type=int, default=None, help="base seed: request k gets seed+k (default none; demo 1234)")
    p.add_argument("--prebuffer-ms", type=float, default=250.0)
    g = p.add_argument_group("capacity definition")
    g.add_argument("--ttfa-p95-ms", type=float, default=500.0, help="speech: TTFA p95 limit")
    g.add_argument("--chat-ttfa-p95-ms", type=float, default=800.0, help="chat: TTFA p95 limit")
    g.add_argument("--rtf-p99-max", type=float, default=1.0, help="RTF p99 limit")
    g = p.add_argument_group("capacity search (bursts)")
    g.add_argument("--search", action="store_true", help="find the capacity: ladder up, then bisect")
    g.add_argument("--search-start", type=int, default=8)
    g.add_argument("--search-max", type=int, default=512)
    g.add_argument("--search-growth", type=float, default=2.0, help="ladder factor")
    g.add_argument("--search-resolution", type=int, default=16, help="stop bisecting when pass/fail are this close")
    g = p.add_argument_group("arrival model (Poisson)")
    g.add_argument("--arrival-rates", default="", help="comma-separated requests/s to sweep (default: none)")
    g.add_argument("--arrival-duration-s", type=float, default=60.0, help="arrivals per rate during this long")
    g.add_argument("--arrival-seed", type=int, default=0, help="seed of arrival times and lengths")
    g.add_argument("--length-median-s", type=float, default=5.0, help="lognormal median of the speech length")
    g.add_argument("--length-sigma", type=float, default=0.6)
    g.add_argument("--length-min-s", type=float, default=1.0)
    g.add_argument("--length-max-s", type=float, default=20.0)
    g.add_argument("--tokens-per-char", type=float, default=8.0, help="the server's --tts-tokens-per-char")
    g.add_argument("--chat-tokens-per-s", type=float, default=3.0, help="chat max_tokens per second of speech")
    g.add_argument("--overload", type=int, default=0, help="a capacity C: offer --overload-factor x C")
    g.add_argument("--overload-factor", type=float, default=1.5)
    g.add_argument("--overload-arrivals", choices=("poisson", "burst"), default="poisson")
    g.add_argument("--overload-duration-s", type=float, default=60.0)
    g.add_argument("--refusal-target-s", type=float, default=2.0, help="a 429 should come within this long")
    g.add_argument("--hang-s", type=float, default=180.0, help="arrivals: a request not done after this long hung")
    p.add_argument("--voice", default="alloy")
    p.add_argument("--speech-model", default="tts-1")
    p.add_argument("--chat-model", default="gpt-4o-audio-preview")
    p.add_argument("--api-key", default=None)
    p.add_argument("--warmup", type=int, default=2, help="unrecorded concurrent requests before each mode")
    p.add_argument(
        "--client-procs", type=int, default=1,
        help="send each burst from this many client processes (one event loop parsing 100+ streams inflates TTFA)",
    )  # fmt: skip
    p.add_argument(
        "--preconnect", action="store_true",
        help="open each burst worker's connection (GET /health) before a level: its TTFAs exclude the TCP connect",
    )  # fmt: skip
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=None, help="directory for results.json and the plots")
    p.add_argument("--demo", action="store_true", help="start the CPU demo server and run a tiny sweep")
    p.add_argument("--server-args", default="", help="--demo: extra flags of the demo server")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "oai-cache", help="--demo models")
    p.add_argument("--server-timeout", type=float, default=300.0, help="wait this long for /health/ready")
    args = p.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = "1,2" if args.demo else "1,8,32,64,128"
    if args.demo:
        args.text = args.text or DEMO_TEXT
        args.max_tokens = args.max_tokens or 24
        args.warmup = min(args.warmup, 1)
        args.seed = DEMO_SEED if args.seed is None else args.seed
    args.concurrency = _ints(args.concurrency)
    args.arrival_rates = [float(x) for x in args.arrival_rates.split(",") if x.strip()]
    return args


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    """The tables and verdicts on stdout."""
    for mode, levels in report["modes"].items():
        print(table(f"\n== {mode} bursts ({args.url}, prebuffer {args.prebuffer_ms:.0f} ms; ms, RTF) ==", levels))
        for part in MIXED_PARTS if mode == "mixed" else ():
            print(table(f"-- {part} part of the mixed bursts --", [lv["parts"][part] for lv in levels]))
        cap = report["capacity"][mode]
        failed = {v["n"]: v["failed"] for v in cap["levels"] if v["failed"]}
        print(f"capacity: {cap['capacity']} (largest N with zero underruns: {cap['largest_n_zero_underruns']}; "
              f"failed: {failed or 'none'})")  # fmt: skip
    for mode, found in report["search"].items():
        print(f"[{mode}] search: capacity {found['capacity']}, levels run {found['levels_run']}")
    for mode, rates in report["arrivals"].items():
        print(arrivals_table(mode, rates))
    for mode, over in report["overload"].items():
        print(
            f"[{mode}] overload x{over['factor']:g} of {over['capacity']}: admitted {over['admitted']}, refused "
            f"{over['refused_429']}, time to 429 max {over['time_to_429_s_max']}, verdict {over['verdict']}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the phases (starting the demo server with --demo); 0 unless no request succeeded."""
    args = parse_args(argv)
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="oai-load-"))
    out.mkdir(parents=True, exist_ok=True)
    args.out = out
    log = out / "server.log"
    try:
        with benchmarked_server(args, log):
            report = asyncio.run(Sweep(args).run())
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}\n{tail(log)}", file=sys.stderr)
        return 1
    print_report(report, args)
    write_json(out / "results.json", report)
    if report["modes"]:
        plot_bursts(report["modes"], out / "results.png")
        plot_capacity(report["capacity"], out / "capacity.png")
    if report["search"]:
        searched = {m: {**s, "levels": sorted(s["runs"], key=lambda r: r["n"])} for m, s in report["search"].items()}
        plot_capacity(searched, out / "search.png")
    if report["arrivals"]:
        plot_arrivals(report["arrivals"], out / "arrivals.png")
    print(f"wrote {out / 'results.json'} and the plots")
    levels = [lv for lvs in [*report["modes"].values(), *report["arrivals"].values()] for lv in lvs]
    levels += [*report["overload"].values(), *(r["level"] for s in report["search"].values() for r in s["runs"])]
    total_ok = sum(lv["ok"] for lv in levels)
    return 0 if total_ok else 1


if __name__ == "__main__":
    sys.exit(main())
