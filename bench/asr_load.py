"""Speech-recognition load on a running server: latency, throughput, GPU memory, cost to speech streams.

Drives `/v1/audio/transcriptions` over HTTP (multipart, the 5 s utterance `bench/data/utterance_5s.flac`,
espeak-ng speech, so the server's VAD passes it to Whisper) and `/v1/audio/speech` (`clients.py`):

1. **latency**: for each N of `--concurrency` (1,32), `--rounds` bursts of N simultaneous transcriptions
   (json, `language=en`, `max_tokens` 24: random weights never pick `<|endoftext|>`, and a 5 s utterance
   is ~20 tokens of text); per-request seconds p50/p95/max, and the audio seconds transcribed per wall
   second of the level; at N=1 also the time to the first `transcript.text.delta` (`stream=true`);
2. **throughput**: `--saturate` clients in a closed loop for `--duration-s`: audio seconds per wall second;
3. **speech margin**: `--speech-streams` speech streams of `--speech-seconds` alone, then the same streams
   with `--transcribers` closed-loop transcription clients running the whole time: RTF, TTFA,
   underruns of both runs side by side (what concurrent transcription costs the real-time margin), and
   the transcription latency under that speech load;
4. **memory**: GPU memory of every process of the server (nvidia-smi), each engine core named by its
   start order (the server builds Orpheus, then Gemma, then Whisper; `engines/factory.py`).

    python bench/asr_load.py --url http://127.0.0.1:8080 --out /tmp/out/asr --server-pid PID
    python bench/asr_load.py --demo          # starts the CPU demo server itself, tiny sizes

No assertions on timings: it measures and reports (JSON in `--out`, a table on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    as_wav,
    benchmarked_server,
    gpu_memory,
    spread,
    summarize,
    tail,
    write_json,
)
from clients import RequestSpec, Seeds, speech_stream, speech_text

UTTERANCE = Path(__file__).resolve().parent / "data" / "utterance_5s.flac"
UTTERANCE_SECONDS = 5.0
ENGINE_ORDER = ("orpheus", "gemma", "whisper")
"""The order the server starts its vLLM engine cores in (`engines/factory.py`: TTS, LLM, then ASR)."""


class Transcriber:
    """POSTs the utterance to /v1/audio/transcriptions; records seconds per request and failures."""

    def __init__(self, client: httpx.AsyncClient, args: argparse.Namespace) -> None:
        self.client = client
        self.args = args
        flac = UTTERANCE.read_bytes()
        self.audio = as_wav(flac) if args.upload_format == "wav" else flac
        self.filename = f"u.{args.upload_format}"
        self.errors: list[str] = []

    def _form(self, stream: bool) -> dict[str, str]:
        form = {"model": self.args.asr_model, "language": self.args.language, "response_format": "json"}
        form["max_tokens"] = str(self.args.max_tokens)
        if stream:
            form["stream"] = "true"
        return form

    async def once(self) -> float | None:
        """Seconds from sending to the whole json transcript; None on failure."""
        started = time.perf_counter()
        try:
            response = await self.client.post(
                "/v1/audio/transcriptions", data=self._form(False), files={"file": (self.filename, self.audio)}
            )
        except httpx.HTTPError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return None
        if response.status_code != 200:
            self.errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
            return None
        return time.perf_counter() - started

    async def first_delta(self) -> tuple[float | None, float | None]:
        """(seconds to the first delta, to the done event) of a streamed transcription."""
        started = time.perf_counter()
        first = None
        request = self.client.build_request(
            "POST", "/v1/audio/transcriptions", data=self._form(True), files={"file": (self.filename, self.audio)}
        )
        response = await self.client.send(request, stream=True)
        try:
            if response.status_code != 200:
                self.errors.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                return None, None
            async for line in response.aiter_lines():
                if first is None and '"transcript.text.delta"' in line:
                    first = time.perf_counter() - started
                if '"transcript.text.done"' in line:
                    return first, time.perf_counter() - started
        finally:
            await response.aclose()
        return first, None

    async def loop(self, stop: asyncio.Event, latencies: list[float]) -> None:
        """Transcribe again and again until ``stop`` is set."""
        while not stop.is_set():
            seconds = await self.once()
            if seconds is not None:
                latencies.append(seconds)


def _level(n: int, latencies: list[float], wall: float, failed: int) -> dict[str, Any]:
    return {
        "concurrency": n,
        "requests": len(latencies) + failed,
        "failed": failed,
        "latency_ms": {k: None if v is None else v * 1000 for k, v in spread(latencies).items()},
        "audio_s_per_wall_s": len(latencies) * UTTERANCE_SECONDS / wall if wall > 0 else 0.0,
        "wall_s": wall,
    }


async def latency_levels(t: Transcriber, args: argparse.Namespace) -> list[dict[str, Any]]:
    levels = []
    for n in args.concurrency:
        latencies: list[float] = []
        failed = 0
        started = time.perf_counter()
        for _ in range(args.rounds):
            results = await asyncio.gather(*(t.once() for _ in range(n)))
            latencies += [r for r in results if r is not None]
            failed += sum(1 for r in results if r is None)
        level = _level(n, latencies, time.perf_counter() - started, failed)
        if n == 1:
            firsts = [await t.first_delta() for _ in range(args.rounds)]
            level["first_delta_ms"] = spread([f * 1000 for f, _ in firsts if f is not None])
            level["streamed_done_ms"] = spread([d * 1000 for _, d in firsts if d is not None])
        levels.append(level)
        print(_row(level), flush=True)
    return levels


async def saturate(t: Transcriber, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` closed-loop transcribers for ``seconds``."""
    stop = asyncio.Event()
    latencies: list[float] = []
    errors_before = len(t.errors)
    started = time.perf_counter()
    tasks = [asyncio.create_task(t.loop(stop, latencies)) for _ in range(clients)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    level = _level(clients, latencies, time.perf_counter() - started, len(t.errors) - errors_before)
    print(_row(level), flush=True)
    return level


async def speech_run(
    client: httpx.AsyncClient, args: argparse.Namespace, seeds: Seeds, t: Transcriber | None
) -> dict[str, Any]:
    """``--speech-streams`` speech streams at once; with ``t``, ``--transcribers`` clients transcribe meanwhile."""
    specs = [
        RequestSpec(speech_text(args.speech_seconds, args.tokens_per_char, i), seed=seeds.take())
        for i in range(args.speech_streams)
    ]
    stop = asyncio.Event()
    asr_latencies: list[float] = []
    background = [asyncio.create_task(t.loop(stop, asr_latencies)) for _ in range(args.transcribers)] if t else []
    started = time.perf_counter()
    results = await asyncio.gather(*(speech_stream(client, args, spec) for spec in specs))
    wall = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*background)
    summary = summarize(args.speech_streams, results, wall)
    if t is not None:
        summary["transcription_during_speech"] = _level(args.transcribers, asr_latencies, wall, 0)
    return summary


def engine_memory(server_pid: int | None) -> dict[str, Any]:
    """GPU memory per process of the server, each engine core named by its start order."""
    info = gpu_memory()
    procs = info.get("processes")
    if not procs:
        return info
    family = _descendants(server_pid) if server_pid else None
    ours = sorted((p for p in procs if family is None or p["pid"] in family), key=lambda p: _start_ticks(p["pid"]))
    cores = [p for p in ours if p["pid"] != server_pid]
    for proc in ours:
        proc["engine"] = "server (SNAC, API)" if proc["pid"] == server_pid else "?"
    if len(cores) == len(ENGINE_ORDER):
        for proc, name in zip(cores, ENGINE_ORDER, strict=True):
            proc["engine"] = name
    return {**info, "processes": ours, "per_engine_mib": {p["engine"]: p["used_mib"] for p in ours}}


def _start_ticks(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    family = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in family and pid not in family:
                family.add(pid)
                grew = True
    return family


def _row(level: dict[str, Any]) -> str:
    lat = level["latency_ms"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    return (
        f"  N={level['concurrency']:>3}  requests {level['requests']:>4} (failed {level['failed']})  latency ms "
        f"p50 {fmt(lat['p50'])} p95 {fmt(lat['p95'])} max {fmt(lat['max'])}  "
        f"audio s / wall s {level['audio_s_per_wall_s']:.1f}"
    )


def _speech_row(name: str, summary: dict[str, Any]) -> str:
    rtf, ttfa = summary["rtf"], summary["ttfa_ms"]

    def fmt(v: float | None, digits: int = 2) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    return (
        f"  {name:<22} ok {summary['ok']}/{summary['requests']}  RTF p50 {fmt(rtf['p50'])} p99 {fmt(rtf['p99'])}  "
        f"TTFA p95 {fmt(ttfa['p95'], 0)} ms  zero-underrun streams {summary['streams_zero_underruns']}"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    timeout = httpx.Timeout(args.request_timeout, connect=30)
    report: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=timeout) as client:
        report["engines"] = (await client.get("/health")).json().get("engines")
        t = Transcriber(client, args)
        await asyncio.gather(*(t.once() for _ in range(args.warmup)))  # compile, warm the caches
        print(f"== transcription of a {UTTERANCE_SECONDS:g} s utterance ({args.url}) ==", flush=True)
        report["latency"] = await latency_levels(t, args)
        if args.saturate:
            print(f"== throughput: {args.saturate} clients for {args.duration_s:g} s ==", flush=True)
            report["throughput"] = await saturate(t, args.saturate, args.duration_s)
        if args.speech_streams:
            seeds = Seeds(args.seed)
            print(
                f"== {args.speech_streams} speech streams of ~{args.speech_seconds:g} s, alone and with "
                f"{args.transcribers} transcription clients ==",
                flush=True,
            )
            await speech_stream(client, args, RequestSpec(speech_text(1.0, args.tokens_per_char), seed=args.seed))
            alone = await speech_run(client, args, seeds, None)
            print(_speech_row("speech alone", alone), flush=True)
            seeds = Seeds(args.seed)  # the same requests again
            loaded = await speech_run(client, args, seeds, t)
            print(_speech_row("speech + transcription", loaded), flush=True)
            print(_row(loaded["transcription_during_speech"]), flush=True)
            report["speech_margin"] = {"alone": alone, "with_transcription": loaded, **_margin(alone, loaded)}
        report["transcription_errors"] = sorted(set(t.errors))[:10]
    report["gpu_memory"] = engine_memory(args.server_pid)
    return report


def _margin(alone: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    """How much of the real-time margin (1 - RTF) concurrent transcription used up, at p50 and p99."""
    out: dict[str, Any] = {}
    for q in ("p50", "p99"):
        a, b = alone["rtf"][q], loaded["rtf"][q]
        out[f"rtf_{q}_change"] = None if a is None or b is None else b - a
        out[f"margin_{q}_alone"] = None if a is None else 1 - a
        out[f"margin_{q}_with_transcription"] = None if b is None else 1 - b
    out["zero_underrun_streams_lost"] = alone["streams_zero_underruns"] - loaded["streams_zero_underruns"]
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--out", type=Path, default=None, help="directory for asr_results.json")
    p.add_argument("--server-pid", type=int, default=None, help="the server's pid (names its GPU processes)")
    p.add_argument("--concurrency", default=None, help="latency levels, comma-separated (default 1,32)")
    p.add_argument("--rounds", type=int, default=None, help="bursts per level (default 8; demo 1)")
    p.add_argument("--saturate", type=int, default=None, help="closed-loop clients of the throughput phase (64)")
    p.add_argument("--duration-s", type=float, default=None, help="throughput phase length (20)")
    p.add_argument("--speech-streams", type=int, default=None, help="speech streams of the margin phase (64)")
    p.add_argument("--speech-seconds", type=float, default=None, help="audio per speech stream (10)")
    p.add_argument("--transcribers", type=int, default=None, help="transcription clients during speech (32)")
    p.add_argument("--tokens-per-char", type=float, default=8.0, help="the server's --tts-tokens-per-char")
    p.add_argument("--max-tokens", type=int, default=24, help="transcript tokens per request (random weights)")
    p.add_argument("--language", default="en")
    p.add_argument(
        "--upload-format", choices=("flac", "wav"), default="flac", help="the utterance as sent (wav: 16-bit PCM)"
    )
    p.add_argument("--asr-model", default="whisper-1")
    p.add_argument("--speech-model", default="tts-1")
    p.add_argument("--voice", default="alloy")
    p.add_argument("--seed", type=int, default=1234, help="base seed of the speech requests")
    p.add_argument("--prebuffer-ms", type=float, default=250.0)
    p.add_argument("--warmup", type=int, default=None, help="unrecorded concurrent transcriptions first (8)")
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--demo", action="store_true", help="start the CPU demo server and run tiny sizes")
    p.add_argument("--server-args", default="", help="--demo: extra flags of the demo server")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "oai-cache", help="--demo models")
    p.add_argument("--server-timeout", type=float, default=300.0, help="wait this long for /health/ready")
    args = p.parse_args(argv)
    defaults = (
        {"concurrency": "1,2", "rounds": 1, "saturate": 2, "duration_s": 2.0, "speech_streams": 2,
         "speech_seconds": 1.0, "transcribers": 1, "warmup": 1}
        if args.demo
        else {"concurrency": "1,32", "rounds": 8, "saturate": 64, "duration_s": 20.0, "speech_streams": 64,
              "speech_seconds": 10.0, "transcribers": 32, "warmup": 8}
    )  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.concurrency = _ints(args.concurrency)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the phases (starting the demo server with --demo); 0 unless no transcription succeeded."""
    args = parse_args(argv)
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="oai-asr-"))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "server.log"
    try:
        with benchmarked_server(args, log) as server:
            if server is not None:
                args.server_pid = server.pid
            report = asyncio.run(run(args))
    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
        print(f"error: {exc}\n{tail(log)}", file=sys.stderr)
        return 1
    write_json(out / "asr_results.json", report)
    memory = report["gpu_memory"].get("per_engine_mib") or report["gpu_memory"].get("error", "no GPU")
    print(f"GPU memory (MiB): {memory}")
    if report["transcription_errors"]:
        print(f"transcription errors: {report['transcription_errors']}")
    print(f"wrote {out / 'asr_results.json'}")
    ok = sum(level["requests"] - level["failed"] for level in report["latency"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
