"""What the replicated server's connection hand-off adds to a request: the shared port against a replica's own.

Every request opens a new TCP connection (the hand-off happens once per connection), sends one
`GET /health` and reads the whole response; the URLs take turns, so both see the same machine state.
Run against `oai-server serve --replicas 2 --port 8190` (replicas alone on 8191 and 8192):

    python bench/handoff_latency.py --url http://127.0.0.1:8190,http://127.0.0.1:8191 --requests 2000 --out h.json

Reports per URL the p50 / p95 / p99 of connect-to-last-byte, and the p50 difference to the first URL.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


def one_request(host: str, port: int) -> float:
    """Seconds from connect to the response's last byte, on a fresh connection (`Connection: close`)."""
    start = time.perf_counter()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    if not received.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{host}:{port} answered {received[:40]!r}")
    return time.perf_counter() - start


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 in milliseconds."""
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_ms": cuts[49] * 1000, "p95_ms": cuts[94] * 1000, "p99_ms": cuts[98] * 1000}


def main(argv: list[str] | None = None) -> int:
    """Measure, print and (with --out) write the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="comma-separated: the shared port first, then a replica's own")
    p.add_argument("--requests", type=int, default=2000, help="per URL")
    p.add_argument("--warmup", type=int, default=50, help="per URL, not counted")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    targets = [(u, urlsplit(u)) for u in args.url.split(",")]
    samples: dict[str, list[float]] = {u: [] for u, _ in targets}
    for i in range(args.warmup + args.requests):
        for url, parts in targets:
            seconds = one_request(parts.hostname or "127.0.0.1", parts.port or 80)
            if i >= args.warmup:
                samples[url].append(seconds)
    report = {url: percentiles(s) for url, s in samples.items()}
    first = targets[0][0]
    for url, figures in report.items():
        figures["p50_minus_first_ms"] = figures["p50_ms"] - report[first]["p50_ms"]
        print(f"{url}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    if args.out:
        args.out.write_text(json.dumps({"requests": args.requests, "results": report}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
