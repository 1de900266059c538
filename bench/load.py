"""Load test of a running server over HTTP: N concurrent audio streams, swept over N.

Drives `/v1/audio/speech` (pcm, stream_format audio) and/or `/v1/chat/completions` with audio
(modalities text+audio, pcm16, stream; `delta.audio.data` base64) with real sockets. Per stream
it records time to first audio (for chat also time to the first transcript, i.e. the first segment
cut from the LLM's reply, which splits TTFA into its LLM and TTS parts), the audio timeline against
the wall clock, and a simulated player's underruns (start after `--prebuffer-ms` of audio, then real
time). Per level it reports TTFA/RTF/underrun percentiles, streams with zero underruns and the
aggregate audio tokens/s, and overall the largest N with zero underruns. No assertions on timings: it measures.

    python bench/load.py --url http://127.0.0.1:8080 --mode both --concurrency 1,8,32,64,128 --out bench/out
    python bench/load.py --demo          # starts the CPU demo server itself, tiny sweep
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    SENTENCES,
    StreamResult,
    capacity,
    free_port,
    plot,
    server_argv,
    start_process,
    stop_process,
    summarize,
    table,
    tail,
    wait_ready,
    write_json,
)

DEMO_TEXT = "Hello there, how are you today?"


def _headers(args: argparse.Namespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


class _Recorder:
    """Accumulates audio bytes of one stream into (time, cumulative samples) arrivals."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.result = StreamResult()
        self._samples = 0

    def add(self, data: bytes) -> None:
        self.result.bytes += len(data)
        samples = self.result.bytes // 2
        if samples > self._samples:
            self._samples = samples
            self.result.arrivals.append((time.perf_counter() - self.started, samples))


async def _http_error(response: httpx.Response) -> str:
    body = (await response.aread()).decode(errors="replace")
    return f"HTTP {response.status_code}: {body[:200]}"


async def speech_stream(client: httpx.AsyncClient, args: argparse.Namespace, text: str) -> StreamResult:
    """One `/v1/audio/speech` pcm stream."""
    body = {
        "model": args.speech_model,
        "input": text,
        "voice": args.voice,
        "response_format": "pcm",
        "stream_format": "audio",
    }
    rec = _Recorder(time.perf_counter())
    try:
        async with client.stream("POST", "/v1/audio/speech", json=body, headers=_headers(args)) as response:
            if response.status_code != 200:
                rec.result.error = await _http_error(response)
                return rec.result
            async for data in response.aiter_raw():
                if data:
                    rec.add(data)
        rec.result.ok = rec.result.bytes > 0
        rec.result.error = None if rec.result.ok else "no audio"
    except (httpx.HTTPError, OSError) as exc:
        rec.result.error = f"{type(exc).__name__}: {exc}"
    return rec.result.finish(time.perf_counter() - rec.started, args.prebuffer_ms)


async def chat_stream(client: httpx.AsyncClient, args: argparse.Namespace, text: str) -> StreamResult:
    """One streamed chat completion with audio (pcm16)."""
    body: dict[str, Any] = {
        "model": args.chat_model,
        "messages": [{"role": "user", "content": text}],
        "modalities": ["text", "audio"],
        "audio": {"voice": args.voice, "format": "pcm16"},
        "stream": True,
    }
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    rec = _Recorder(time.perf_counter())
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=_headers(args)) as response:
            if response.status_code != 200:
                rec.result.error = await _http_error(response)
                return rec.result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                if "error" in event:
                    rec.result.error = f"stream error: {str(event['error'])[:200]}"
                    break
                for choice in event.get("choices") or ():
                    audio = (choice.get("delta") or {}).get("audio") or {}
                    if audio.get("transcript") and rec.result.first_text_s is None:
                        rec.result.first_text_s = time.perf_counter() - rec.started
                        rec.result.first_text_words = len(audio["transcript"].split())
                    if audio.get("data"):
                        rec.add(base64.b64decode(audio["data"]))
        if rec.result.error is None:
            rec.result.ok = rec.result.bytes > 0
            rec.result.error = None if rec.result.ok else "no audio"
    except (httpx.HTTPError, OSError, ValueError) as exc:
        rec.result.error = f"{type(exc).__name__}: {exc}"
    return rec.result.finish(time.perf_counter() - rec.started, args.prebuffer_ms)


def _text(args: argparse.Namespace, index: int) -> str:
    return args.text or SENTENCES[index % len(SENTENCES)]


async def run_level(mode: str, n: int, args: argparse.Namespace) -> tuple[dict[str, Any], list[StreamResult]]:
    """N concurrent workers, each sending `--requests-per-stream` requests one after another."""
    request = speech_stream if mode == "speech" else chat_stream
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    timeout = httpx.Timeout(args.request_timeout, connect=30)
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=timeout) as client:

        async def worker(index: int) -> list[StreamResult]:
            return [await request(client, args, _text(args, index + k)) for k in range(args.requests_per_stream)]

        started = time.perf_counter()
        per_worker = await asyncio.gather(*(worker(i) for i in range(n)))
        wall = time.perf_counter() - started
    results = [r for rs in per_worker for r in rs]
    return summarize(n, results, wall), results


async def warm_up(mode: str, args: argparse.Namespace) -> None:
    """A few unrecorded concurrent requests (first-use JIT compiles would skew the first level)."""
    if args.warmup > 0:
        await run_level(mode, args.warmup, args)


async def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Every mode at every concurrency level; the report as a dict."""
    modes = ["speech", "chat"] if args.mode == "both" else [args.mode]
    report: dict[str, Any] = {"url": args.url, "config": _config(args), "modes": {}, "capacity": {}, "streams": {}}
    for mode in modes:
        await warm_up(mode, args)
        levels = []
        for n in args.concurrency:
            summary, results = await run_level(mode, n, args)
            levels.append(summary)
            report["streams"].setdefault(mode, {})[str(n)] = [r.public() for r in results]
            print(f"[{mode}] N={n}: {json.dumps(summary)}", flush=True)
            report["modes"][mode] = levels
            report["capacity"][mode] = capacity(levels, args.ttfa_p95_ms)
            if args.out is not None:  # a killed run still leaves every finished level
                write_json(args.out / "results.json", {**report, "partial": True})
    return report


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("mode", "concurrency", "requests_per_stream", "text", "max_tokens", "prebuffer_ms", "voice", "warmup")
    return {k: getattr(args, k) for k in keys} | {"ttfa_p95_threshold_ms": args.ttfa_p95_ms}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="base URL of a running server")
    p.add_argument("--mode", choices=("speech", "chat", "both"), default="both")
    p.add_argument("--concurrency", default=None, help="comma-separated sweep of N (default 1,8,32,64,128; demo 1,2)")
    p.add_argument("--requests-per-stream", type=int, default=1)
    p.add_argument("--text", default=None, help="input text (default: built-in sentences, one per stream)")
    p.add_argument("--max-tokens", type=int, default=None, help="chat max_tokens")
    p.add_argument("--prebuffer-ms", type=float, default=250.0)
    p.add_argument("--ttfa-p95-ms", type=float, default=1000.0, help="TTFA p95 limit of the capacity flag")
    p.add_argument("--voice", default="alloy")
    p.add_argument("--speech-model", default="tts-1")
    p.add_argument("--chat-model", default="gpt-4o-audio-preview")
    p.add_argument("--api-key", default=None)
    p.add_argument("--warmup", type=int, default=2, help="unrecorded concurrent requests before each mode")
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=None, help="directory for results.json and results.png")
    p.add_argument("--demo", action="store_true", help="start the CPU demo server and run a tiny sweep")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "oai-cache", help="--demo models")
    p.add_argument("--server-timeout", type=float, default=300.0, help="wait this long for /health/ready")
    args = p.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = "1,2" if args.demo else "1,8,32,64,128"
    if args.demo:
        args.text = args.text or DEMO_TEXT
        args.max_tokens = args.max_tokens or 24
        args.warmup = min(args.warmup, 1)
    args.concurrency = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the sweep (starting the demo server with --demo); 0 unless no request succeeded."""
    args = parse_args(argv)
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="oai-load-"))
    out.mkdir(parents=True, exist_ok=True)
    args.out = out
    server = None
    log = out / "server.log"
    try:
        if args.demo:
            port = free_port()
            args.url = f"http://127.0.0.1:{port}"
            flags = ["--demo", "--cache-dir", str(args.cache_dir), "--log-level", "warning"]
            server = start_process(server_argv(port, flags), log)
            print(f"demo server ready in {wait_ready(args.url, server, args.server_timeout):.1f} s", flush=True)
        else:
            wait_ready(args.url, None, args.server_timeout)
        report = asyncio.run(sweep(args))
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}\n{tail(log)}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            stop_process(server)
    for mode, levels in report["modes"].items():
        print(table(f"\n== {mode} ({args.url}, prebuffer {args.prebuffer_ms:.0f} ms; ms, RTF) ==", levels))
        cap = report["capacity"][mode]
        print(
            f"largest N with zero underruns: {cap['largest_n_zero_underruns']}; "
            f"and TTFA p95 <= {cap['ttfa_p95_threshold_ms']:.0f} ms: {cap['largest_n_zero_underruns_ttfa_ok']}"
        )
    write_json(out / "results.json", report)
    plot(report["modes"], out / "results.png")
    print(f"wrote {out / 'results.json'} and {out / 'results.png'}")
    total_ok = sum(lv["ok"] for levels in report["modes"].values() for lv in levels)
    return 0 if total_ok else 1


if __name__ == "__main__":
    sys.exit(main())
