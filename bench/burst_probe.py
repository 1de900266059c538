"""What one burst of new connections costs a running server's front end, with a client that costs almost nothing.

`load.py`'s clients are httpx on asyncio: fine for capacity, but their own CPU blurs what the server spends
to take a burst in. This probe opens N plain sockets at once, writes N `/v1/audio/speech` requests, and times
each stream's response headers and first audio bytes with one `select` loop; then it closes them (the server
aborts their engine requests). `--route chat` sends spoken chat replies instead (SSE; first audio = the first
chunk with audio data). Beside it, a thread samples the listening socket's accept queue (connections
the kernel holds until the server accepts them, `/proc/net/tcp`), and with `--server-pid` the probe reads the
server's CPU seconds before and after, so the report says how much server CPU one admitted request took.

On two H200s (session 10) a burst of 288 left up to 212 connections in the accept queue, drained at ~500 per
second: the server's event loop takes a burst in one request after another, so the last ones wait. This probe
measures that cost without a GPU against `bench/frontend.py` (the real app over engines that cost nothing):

    python bench/frontend.py --port 8090 &
    python bench/burst_probe.py --port 8090 --server-pid $! --n 32,128,288 --out probe.json

`--hold-s S` measures the steady state instead: the N streams (a long input each) are read for `--settle-s`,
past their intake, then for S seconds during which the probe counts the audio they delivered and the server's CPU
seconds: the server's share of a core per stream at the engines' pace (`frontend.py --token-rate`), so how many
real-time streams one server process's event loop can carry before it is the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import spread_ms

ROUTES: dict[str, tuple[str, dict[str, Any], bytes]] = {
    # route: (path, body, the bytes that mark the first audio in the response body)
    "speech": (
        "/v1/audio/speech",
        {
            "model": "tts-1",
            "input": "Hello there, this is a test of the burst.",
            "voice": "tara",
            "response_format": "pcm",
        },
        b"",  # the body is audio: its first byte
    ),
    "chat": (
        "/v1/chat/completions",
        {
            "model": "gpt-4o-audio-preview",
            "modalities": ["text", "audio"],
            "audio": {"voice": "tara", "format": "pcm16"},
            "stream": True,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hello there, tell me something about the sea."}],
        },
        b'"data":"',  # an SSE chunk with audio data (text and transcript chunks come first)
    ),
}


LONG_INPUT = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs far away."] * 4)
"""The steady mode's speech input: long enough for every stream to outlast the measurement."""


def _request(host: str, route: str, long: bool = False) -> bytes:
    path, payload, _ = ROUTES[route]
    if long and route == "speech":
        payload = {**payload, "input": LONG_INPUT}
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process `pid` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def accept_queue(port: int) -> int | None:
    """Connections waiting in the accept queue of the IPv4 socket listening on `port` (None: no such socket)."""
    suffix = f":{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(suffix) and fields[3] == "0A":  # 0A: LISTEN; rx_queue holds the accept backlog
            return int(fields[4].split(":")[1], 16)
    return None


class QueueSampler(threading.Thread):
    """Samples `accept_queue(port)` every `interval` seconds until stopped: (seconds, queued) pairs."""

    def __init__(self, port: int, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        while not self._stop_event.is_set():
            queued = accept_queue(self.port)
            if queued is not None:
                self.samples.append((time.perf_counter() - self._t0, queued))
            self._stop_event.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self._stop_event.set()
        self.join()
        return self.samples


def watch_queue(port: int, seconds: float, interval: float = 0.01) -> None:
    """Print `unix-time queued` for the accept queue of `port` every `interval` s for `seconds` (gpu_load.sh's)."""
    end = time.time() + seconds
    while time.time() < end:
        queued = accept_queue(port)
        if queued is not None:
            print(f"{time.time():.3f} {queued}", flush=True)
        time.sleep(interval)


def burst(
    host: str, port: int, n: int, server_pid: int | None, timeout_s: float = 60.0, route: str = "speech"
) -> dict[str, Any]:
    """Open `n` connections, send `n` requests of `route`, time headers and first audio; the server CPU it took."""
    request, audio_mark = _request(host, route), ROUTES[route][2]
    sampler = QueueSampler(port)
    sampler.start()
    cpu0 = cpu_seconds(server_pid) if server_pid else None
    t0 = time.perf_counter()
    socks = [socket.create_connection((host, port)) for _ in range(n)]
    connected = time.perf_counter() - t0
    for sock in socks:
        sock.sendall(request)
        sock.setblocking(False)
    sent = time.perf_counter() - t0
    received = {sock: b"" for sock in socks}
    headers: dict[socket.socket, float] = {}
    first_audio: dict[socket.socket, float] = {}
    status: dict[socket.socket, int] = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        open_count = n
        while open_count and time.perf_counter() - t0 < timeout_s:
            for key, _ in selector.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(65536)
                now = time.perf_counter() - t0
                received[sock] += data
                if sock not in headers and b"\r\n\r\n" in received[sock]:
                    headers[sock] = now
                    status[sock] = int(received[sock].split(b" ", 2)[1])
                body = received[sock].partition(b"\r\n\r\n")[2]
                has_audio = len(body) > 0 and audio_mark in body  # b"" (speech) is in any non-empty body
                if not data or (sock in headers and (has_audio or status[sock] != 200)):
                    if data and status.get(sock) == 200:
                        first_audio[sock] = now
                    selector.unregister(sock)
                    open_count -= 1
    server_cpu = cpu_seconds(server_pid) - cpu0 if server_pid and cpu0 is not None else None
    for sock in socks:
        sock.close()
    time.sleep(0.05)
    queue = sampler.stop()
    peak = max((q for _, q in queue), default=0)
    return {
        "n": n,
        "connected_all_ms": connected * 1000,
        "sent_all_ms": sent * 1000,
        "ok": sum(1 for code in status.values() if code == 200),
        "statuses": sorted(set(status.values())),
        "headers_ms": spread_ms(list(headers.values())),
        "first_audio_ms": spread_ms(list(first_audio.values())),
        "accept_queue_peak": peak,
        "accept_queue_drained_ms": 1000 * max((t for t, q in queue if q > 0), default=0.0),
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_request": None if server_cpu is None else 1000 * server_cpu / n,
    }


def steady(host: str, port: int, n: int, server_pid: int, hold_s: float, settle_s: float = 3.0) -> dict[str, Any]:
    """Hold `n` long speech streams open: after `settle_s`, the audio they deliver and the server CPU it takes over
    `hold_s` seconds (pcm: 48 000 bytes a second of audio; per stream: per stream answered 200)."""
    request = _request(host, "speech", long=True)
    socks = [socket.create_connection((host, port)) for _ in range(n)]
    for sock in socks:
        sock.sendall(request)
        sock.setblocking(False)
    body_bytes = dict.fromkeys(socks, 0)
    status: dict[socket.socket, int] = {}
    ended = 0
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)

        def read_until(deadline: float) -> None:
            nonlocal ended
            while time.perf_counter() < deadline:
                for key, _ in selector.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    data = sock.recv(262144)
                    if not data:
                        selector.unregister(sock)
                        ended += 1
                        continue
                    if sock not in status:
                        status[sock] = int(data.split(b" ", 2)[1])
                        data = data.partition(b"\r\n\r\n")[2]  # the first read holds the headers (pcm: no framing)
                    if status[sock] == 200:  # a refusal's body is no audio
                        body_bytes[sock] += len(data)

        read_until(time.perf_counter() + settle_s)
        start, cpu0, bytes0 = time.perf_counter(), cpu_seconds(server_pid), sum(body_bytes.values())
        read_until(start + hold_s)
    wall = time.perf_counter() - start
    cpu = cpu_seconds(server_pid) - cpu0
    audio_s = (sum(body_bytes.values()) - bytes0) / 48000
    statuses = Counter(status.values())
    served = statuses[200] or n
    for sock in socks:
        sock.close()
    return {
        "n": n,
        "hold_s": wall,
        "streams_ended_early": ended,
        "statuses": {str(code): statuses[code] for code in sorted(statuses)},
        "audio_s_per_s_per_stream": audio_s / wall / served,
        "server_cpu_core_fraction": cpu / wall,
        "server_cpu_ms_per_audio_s": 1000 * cpu / audio_s if audio_s else None,
        "server_cpu_core_fraction_per_stream": cpu / wall / served,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--n", default="32,128,288", help="burst sizes, one burst each (comma-separated)")
    p.add_argument("--route", choices=sorted(ROUTES), default="speech", help="speech, or chat with audio (SSE)")
    p.add_argument("--repeats", type=int, default=3, help="bursts per size")
    p.add_argument("--pause-s", type=float, default=12.0, help="wait between bursts (the aborted streams wind down)")
    p.add_argument("--server-pid", type=int, default=None, help="the server's pid: its CPU seconds per burst")
    p.add_argument("--out", type=Path, default=None, help="write the bursts as JSON here")
    p.add_argument("--hold-s", type=float, default=None, help="steady mode: read N long streams this long (needs pid)")
    p.add_argument("--settle-s", type=float, default=3.0, help="steady mode: read this long before measuring")
    p.add_argument(
        "--watch-queue-s", type=float, default=None,
        help="send nothing: print `unix-time queued` for --port's accept queue every 10 ms for this many seconds",
    )  # fmt: skip
    args = p.parse_args()
    if args.watch_queue_s is not None:
        watch_queue(args.port, args.watch_queue_s)
        return
    if args.hold_s is not None and args.server_pid is None:
        p.error("--hold-s needs --server-pid")
    runs = []
    for n in (int(x) for x in args.n.split(",")):
        for _ in range(args.repeats):
            if args.hold_s is None:
                run = burst(args.host, args.port, n, args.server_pid, route=args.route)
                h, f, cpu = run["headers_ms"], run["first_audio_ms"], run["server_cpu_ms_per_request"]
                summary = (
                    f"ok={run['ok']} headers p50/p95 {h['p50']:.0f}/{h['p95']:.0f} ms, first audio p50/p95 "
                    f"{f['p50']:.0f}/{f['p95']:.0f} ms, accept queue peak {run['accept_queue_peak']} (empty after "
                    f"{run['accept_queue_drained_ms']:.0f} ms)" + (f", server CPU {cpu:.2f} ms/request" if cpu else "")
                )
            else:
                run = steady(args.host, args.port, n, args.server_pid, args.hold_s, args.settle_s)
                summary = (
                    f"steady: {run['audio_s_per_s_per_stream']:.2f} s of audio a second a stream, server "
                    f"{100 * run['server_cpu_core_fraction']:.1f} % of a core ({run['server_cpu_ms_per_audio_s']:.2f}"
                    f" ms a second of audio), {run['streams_ended_early']} ended early, statuses {run['statuses']}"
                )
            runs.append(run)
            print(f"n={n} {summary}", flush=True)
            time.sleep(args.pause_s)
    if args.out:
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
