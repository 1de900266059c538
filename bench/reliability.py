"""RSS per concurrent stream and event-loop lag under load, on the demo server (issue 20).

Starts `oai-server serve --demo` as a subprocess (optionally from another checkout, `--server-root`,
to measure the code before a change), then:

1. **RSS per concurrent stream**: after one warm-up stream, the server's RSS is the baseline; for
   each level N of `--streams`, N speech streams (pcm, seeded) run at once while RSS is sampled;
   `per_stream_mb` = (RSS after the level settled - baseline) / N, and the peak likewise.
2. **Event-loop lag under load**: during each level, and during one hostile chat request (255
   messages of 4,096 characters, 1 MB), a prober times `GET /health` every 50 ms (works on any
   version), and the server's own `oai_event_loop_lag_seconds` histogram is read before and after
   (where the server has it): the largest bucket bound that got samples, and how many samples
   were over 100 ms.

    python bench/reliability.py --streams 20 --out bench/results/reliability_after.json
    python bench/reliability.py --server-root /work/main --streams 20 --out before.json   # older code
    python bench/reliability.py --serve-args "--malloc-arena-max 0" --streams 20 ...       # glibc default arenas

`MALLOC_ARENA_MAX` is removed from the server's environment unless `--env MALLOC_ARENA_MAX=N` gives
it, so the server's own choice is what is measured. Nothing here asserts: it measures and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import ROOT, free_port, stop_process, tail, wait_ready, write_json

TEXT = (
    "Hello there! It is a lovely morning, and the sun is shining over the quiet hills. "
    "To make a good cup of tea, boil fresh water, pour it over the leaves, and wait three minutes."
)
LAG_SERIES = "oai_event_loop_lag_seconds"


class HealthProber:
    """Times `GET /health` every `interval` seconds in a thread until stopped."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        self.url = url
        self.interval = interval
        self.times: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get("/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.times.append(time.perf_counter() - started)
                self.failures += not ok
                self._stop.wait(self.interval)

    def __enter__(self) -> HealthProber:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=180)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.times)
        if not ordered:
            return {"probes": 0}
        return {
            "probes": len(ordered),
            "failures": self.failures,
            "max_ms": round(ordered[-1] * 1000, 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
            "median_ms": round(ordered[len(ordered) // 2] * 1000, 1),
        }


def lag_buckets(url: str) -> dict[float, float] | None:
    """The cumulative buckets of the loop-lag histogram (None when the server has no such metric)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    buckets = {}
    for line in text.splitlines():
        if line.startswith(f"{LAG_SERIES}_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets or None


def lag_delta(before: dict[float, float] | None, after: dict[float, float] | None) -> dict[str, Any] | None:
    """Samples taken between two scrapes: count, how many over 100 ms, the largest bucket that got any."""
    if before is None or after is None:
        return None
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    total = delta[float("inf")]
    bounds = sorted(delta)
    worst = next((bound for bound in bounds if delta[bound] == total), None)
    return {
        "samples": int(total),
        "over_100ms": int(total - delta.get(0.1, 0.0)),
        "max_at_most_s": worst,
        "within_10ms_share": round(delta.get(0.01, 0.0) / total, 4) if total else None,
    }


def rss_mb(proc: psutil.Process) -> float:
    """Resident memory of the server and its children, in MB."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / 1e6


def speech(url: str, seed: int, repeat: int = 1) -> int:
    text = " ".join([TEXT] * repeat)
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", "seed": seed}
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=600) as response:
        response.raise_for_status()
        return sum(len(piece) for piece in response.iter_bytes())


def sample_rss(proc: psutil.Process, stop: threading.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb(proc))
        stop.wait(0.2)


def level(url: str, proc: psutil.Process, n: int, baseline: float, settle_s: float, repeat: int) -> dict[str, Any]:
    """N concurrent speech streams: RSS growth per stream, /health times and loop lag meanwhile."""
    peak = [0.0]
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(proc, stop, peak), daemon=True)
    sampler.start()
    lag_before = lag_buckets(url)
    started = time.monotonic()
    with HealthProber(url) as prober, ThreadPoolExecutor(n) as pool:
        sizes = list(pool.map(lambda seed: speech(url, seed, repeat), range(1, n + 1)))
    wall = time.monotonic() - started
    lag = lag_delta(lag_before, lag_buckets(url))
    time.sleep(settle_s)
    stop.set()
    sampler.join()
    after = rss_mb(proc)
    return {
        "streams": n,
        "wall_s": round(wall, 1),
        "audio_bytes": sum(sizes),
        "rss_baseline_mb": round(baseline, 1),
        "rss_peak_mb": round(peak[0], 1),
        "rss_after_mb": round(after, 1),
        "per_stream_mb": round((after - baseline) / n, 1),
        "peak_per_stream_mb": round((peak[0] - baseline) / n, 1),
        "health": prober.summary(),
        "loop_lag": lag,
    }


def hostile_chat(url: str) -> dict[str, Any]:
    """One chat request with 255 messages of 4,096 characters: its time, /health meanwhile, loop lag."""
    text = ("the train leaves at seven so we should pack our bags and go to bed early " * 60)[:4096]
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i in range(255)]
    body = {"model": "gpt-4o-audio-preview", "messages": messages, "max_tokens": 4, "seed": 1}
    lag_before = lag_buckets(url)
    with HealthProber(url) as prober:
        started = time.perf_counter()
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
        seconds = time.perf_counter() - started
    return {
        "status": response.status_code,
        "request_s": round(seconds, 2),
        "health": prober.summary(),
        "loop_lag": lag_delta(lag_before, lag_buckets(url)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="20", help="comma-separated concurrency levels ('' for none)")
    parser.add_argument("--server-root", default=str(ROOT), help="checkout whose oai_server is started")
    parser.add_argument("--serve-args", default="", help="extra `oai-server serve` flags")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)")
    parser.add_argument("--cache-dir", default=os.environ.get("OAI_TEST_CACHE", "/tmp/oai-test-cache"))
    parser.add_argument("--settle-s", type=float, default=3.0, help="wait after a level before reading RSS")
    parser.add_argument("--text-repeat", type=int, default=4, help="speech input: the two sentences this many times")
    parser.add_argument("--skip-hostile", action="store_true", help="skip the 1 MB chat request")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "oai_server", "serve", "--demo", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--cache-dir", args.cache_dir, "--log-level", "warning", *shlex.split(args.serve_args)]
    os.environ.pop("MALLOC_ARENA_MAX", None)  # the server inherits this environment: measure its own choice
    env = {"PYTHONPATH": args.server_root, **dict(item.split("=", 1) for item in args.env)}
    log = Path(tempfile.gettempdir()) / f"oai-reliability-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as log_file:  # run from the server root: `-m` puts the cwd first on sys.path
        server = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=args.server_root,
            start_new_session=True,
        )
    try:
        wait_ready(url, server, 600)
        proc = psutil.Process(server.pid)
        speech(url, 0)  # warm-up: first-use allocations are not per-stream growth
        time.sleep(args.settle_s)
        baseline = rss_mb(proc)
        counts = [int(n) for n in args.streams.split(",") if n.strip()]
        levels = [level(url, proc, n, baseline, args.settle_s, args.text_repeat) for n in counts]
        hostile = None if args.skip_hostile else hostile_chat(url)
    except Exception:
        print(tail(log), file=sys.stderr)
        raise
    finally:
        stop_process(server)
    result = {
        "server_root": args.server_root,
        "serve_args": args.serve_args,
        "environment": {key: value for key, value in env.items() if key != "PYTHONPATH"},
        "cpu_count": os.cpu_count(),
        "text_repeat": args.text_repeat,
        "levels": levels,
        "hostile_chat": hostile,
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
