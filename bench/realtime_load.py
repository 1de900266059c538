"""Load test of the Realtime API: N concurrent voice sessions over WebSocket against a running server.

Each session is a caller: a microphone that streams 24 kHz pcm16 at real-time pace, 20 ms per
append, without pause (silence between utterances, as a real microphone sends), and a player.
It speaks `--turns` espeak-ng utterances, each answered by the server's VAD turn and spoken
reply, then (with `--barge-in`) one more whose reply it interrupts by speaking again as soon as
that reply's first audio arrives. Levels of N sessions (`--sessions 1,8,32`) run one after the
other; within a level the sessions start spread over `--stagger-s` (seeded).

Measured per reply, on the client's clock (no assertion on any of it):

- **voice-to-voice from the end of speech**: the last speech sample sent -> the reply's first audio;
- **voice-to-voice from the VAD decision**: `input_audio_buffer.speech_stopped` received -> first audio;
- **underruns** of a player that starts after `--prebuffer-ms` of the reply and then plays in real time
  (`_common.simulate_playback`); a session has zero underruns when none of its replies had one;
- **barge-in**: `speech_started` received -> the last audio byte of the interrupted reply received
  (0 when none came after it: the server drops the reply's queued audio at the decision), the bytes that
  came after it, and the interrupted reply's `response.done` status; the server's own figure (VAD
  decision -> the reply's engines aborted) is `oai_realtime_barge_in_seconds` on `/metrics`.

A session waits at most `--event-timeout` seconds for each server event it expects; a failed session
prints (and keeps in the results) its error, naming the event it waited for, and its last server events.
`--demo` starts a demo server (CPU, random weights) for a smoke run. JSON to `--out`/results.json,
rewritten after every level (a run stopped later keeps the levels already finished).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_metrics
from _common import (
    benchmarked_server,
    simulate_playback,
    spread,
    tail,
    write_json,
)
from realtime_client import INTERRUPTION, PHRASES, RATE, Events, Microphone, espeak


@dataclass
class Reply:
    """One answered turn as the client saw it."""

    v2v_speech_end_ms: float | None = None
    v2v_vad_ms: float | None = None
    audio_s: float = 0.0
    underruns: int = 0
    stall_ms: float = 0.0
    status: str | None = None


@dataclass
class SessionResult:
    ok: bool = False
    error: str | None = None
    replies: list[Reply] = field(default_factory=list)
    barge_in_status: str | None = None
    barge_in_late_ms: float | None = None
    """`speech_started` received -> the interrupted reply's last audio received (0 if none came after it)."""
    barge_in_late_bytes: int = 0
    last_events: list[str] = field(default_factory=list)
    """A failed session's last server event types (which wait timed out, and after what)."""


def reply_of(events: Events, created: int, speech_end: float, vad_at: float, prebuffer_ms: float) -> Reply:
    """Measure the reply `response.created` at index `created` started (up to its `response.done`)."""
    rid = events.log[created][1]["response"]["id"]
    arrivals, samples, done_at, status = [], 0, None, None
    for at, event in events.log[created:]:
        if event["type"] == "response.output_audio.delta" and event["response_id"] == rid:
            samples += len(base64.b64decode(event["delta"])) // 2
            arrivals.append((at - vad_at, samples))
        elif event["type"] == "response.done" and event["response"]["id"] == rid:
            done_at, status = at, event["response"]["status"]
            break
    reply = Reply(status=status, audio_s=samples / RATE)
    if arrivals:
        first = arrivals[0][0] + vad_at
        reply.v2v_speech_end_ms = (first - speech_end) * 1000
        reply.v2v_vad_ms = (first - vad_at) * 1000
        reply.underruns, stall = simulate_playback(arrivals, (done_at or first) - vad_at, prebuffer_ms / 1000)
        reply.stall_ms = stall * 1000
    return reply


async def turn(mic: Microphone, events: Events, speech: bytes, args: argparse.Namespace) -> tuple[Reply, int]:
    """Speak, and wait for the VAD turn's reply to be done; returns it and the index of its `response.created`."""
    start = len(events.log)
    speech_end = await mic.say(speech)
    stopped = await events.wait(events.kind("input_audio_buffer.speech_stopped"), start)
    created = await events.wait(events.kind("response.created"), stopped)
    rid = events.log[created][1]["response"]["id"]
    await events.wait(lambda e: e["type"] == "response.done" and e["response"]["id"] == rid, created, "response.done")
    return reply_of(events, created, speech_end, events.log[stopped][0], args.prebuffer_ms), created


async def session(args: argparse.Namespace, index: int, speech: dict[str, bytes], delay: float) -> SessionResult:
    result = SessionResult()
    await asyncio.sleep(delay)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = args.url.replace("http", "ws", 1) + "/v1/realtime?model=gpt-realtime"
    events: Events | None = None
    try:
        async with websockets.connect(url, max_size=None, additional_headers=headers) as ws:
            events = Events(ws, args.event_timeout)
            await events.wait(events.kind("session.created"))
            update = {"type": "realtime", "max_output_tokens": args.max_output_tokens,
                      "audio": {"output": {"voice": args.voice}}}  # fmt: skip
            await ws.send(json.dumps({"type": "session.update", "session": update}))
            await events.wait(events.kind("session.updated"))
            mic = Microphone(ws)
            try:
                for number in range(args.turns):
                    reply, _ = await turn(mic, events, speech[PHRASES[(index + number) % len(PHRASES)]], args)
                    result.replies.append(reply)
                if args.barge_in:
                    await barge_in(ws, mic, events, speech, args, result)
            finally:
                await mic.close()
            result.ok = True
    except Exception as exc:  # a failed session is reported, not raised
        result.error = f"{type(exc).__name__}: {exc}"[:300]
        if events is not None:
            result.last_events = events.last_types()
    finally:
        if events is not None:
            await events.close()
    return result


async def barge_in(
    ws: Any, mic: Microphone, events: Events, speech: dict[str, bytes], args: argparse.Namespace, result: SessionResult
) -> None:
    """A long reply, interrupted by speaking as soon as its first audio arrives."""
    start = len(events.log)
    longer = {"type": "session.update", "session": {"max_output_tokens": args.barge_in_max_tokens}}
    await ws.send(json.dumps(longer))
    await events.wait(events.kind("session.updated"), start)
    start = len(events.log)
    await mic.say(speech[PHRASES[0]])
    created = await events.wait(events.kind("response.created"), start)
    rid = events.log[created][1]["response"]["id"]
    await events.wait(
        lambda e: e["type"] == "response.output_audio.delta" and e["response_id"] == rid, created, "reply audio"
    )
    talking = len(events.log)
    mic.say(speech[INTERRUPTION])
    started = await events.wait(events.kind("input_audio_buffer.speech_started"), talking)
    # the interrupting turn's own reply is a normal one (random weights speak to the token budget: 256 tokens of
    # text is over a minute of audio, which outlived --event-timeout at 32 sessions on the H200)
    await ws.send(json.dumps({"type": "session.update", "session": {"max_output_tokens": args.max_output_tokens}}))
    done = await events.wait(
        lambda e: e["type"] == "response.done" and e["response"]["id"] == rid, created, "the barged-in response.done"
    )
    decided_at = events.log[started][0]
    late = [
        (at, len(base64.b64decode(e["delta"])))
        for at, e in events.log[started:done]
        if e["type"] == "response.output_audio.delta" and e["response_id"] == rid
    ]
    result.barge_in_status = events.log[done][1]["response"]["status"]
    result.barge_in_late_ms = max([(at - decided_at) * 1000 for at, _ in late], default=0.0)
    result.barge_in_late_bytes = sum(size for _, size in late)
    nxt = await events.wait(events.kind("response.created"), done)  # the interrupting turn's own reply
    next_id = events.log[nxt][1]["response"]["id"]
    await events.wait(
        lambda e: e["type"] == "response.done" and e["response"]["id"] == next_id, nxt, "the next response.done"
    )


SERVER_SERIES = {
    "voice_to_voice_vad_decision": ("oai_realtime_voice_to_voice_seconds", 'since="vad_decision"'),
    "voice_to_voice_speech_end": ("oai_realtime_voice_to_voice_seconds", 'since="speech_end"'),
    "barge_in": ("oai_realtime_barge_in_seconds", ""),
}
"""The server's realtime histograms (`server_metrics` scrapes them before and after a level)."""


def server_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean server-side latencies (ms) over the level; None for a series nothing was observed in."""
    view = server_metrics.level_view(before, after, SERVER_SERIES)
    return {f"{name}_mean_ms": view[name]["mean_ms"] if name in view else None for name in SERVER_SERIES}


def summarize(n: int, results: list[SessionResult], wall_s: float, server: dict[str, float | None]) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    replies = [reply for r in ok for reply in r.replies]
    barged = [r for r in ok if r.barge_in_status is not None]
    return {
        "sessions": n,
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "error_samples": sorted({r.error for r in results if r.error})[:5],
        "replies": len(replies),
        "v2v_speech_end_ms": spread([r.v2v_speech_end_ms for r in replies if r.v2v_speech_end_ms is not None]),
        "v2v_vad_ms": spread([r.v2v_vad_ms for r in replies if r.v2v_vad_ms is not None]),
        "reply_audio_s": spread([r.audio_s for r in replies]),
        "replies_without_audio": sum(1 for r in replies if r.audio_s == 0),
        "underruns": spread([float(r.underruns) for r in replies]),
        "sessions_zero_underruns": sum(1 for r in ok if all(reply.underruns == 0 for reply in r.replies)),
        "barge_in": {
            "sessions": len(barged),
            "cancelled": sum(1 for r in barged if r.barge_in_status == "cancelled"),
            "late_audio_ms": spread([r.barge_in_late_ms for r in barged if r.barge_in_late_ms is not None]),
            "late_audio_bytes_total": sum(r.barge_in_late_bytes for r in barged),
        },
        "server": server,
        "wall_s": wall_s,
        "session_results": [asdict(r) for r in results],
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(levels: list[dict[str, Any]]) -> str:
    head = "  N   ok  v2v(end) p50/p95 ms   v2v(vad) p50/p95 ms   zero-underrun   barge-in late ms p50/max"
    rows = [head]
    for lv in levels:
        end, vad, late = lv["v2v_speech_end_ms"], lv["v2v_vad_ms"], lv["barge_in"]["late_audio_ms"]
        rows.append(
            f"{lv['sessions']:>3} {lv['ok']:>4}  {_fmt(end['p50']):>8}/{_fmt(end['p95']):<8}    "
            f"{_fmt(vad['p50']):>8}/{_fmt(vad['p95']):<8}    {lv['sessions_zero_underruns']:>4}/{lv['ok']:<4}      "
            f"{_fmt(late['p50'])}/{_fmt(late['max'])}"
        )
    return "\n".join(rows)


def print_failures(results: list[SessionResult]) -> None:
    """One line per failed session: its error and the last server events it got."""
    for index, result in enumerate(results):
        if not result.ok:
            seen = ", ".join(result.last_events) or "none"
            print(f"    session {index} failed: {result.error}; last events: {seen}", flush=True)


def write_results(args: argparse.Namespace, levels: list[dict[str, Any]]) -> None:
    """`results.json` under `--out` with the levels finished so far (a run killed later keeps them)."""
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"}
    write_json(args.out / "results.json", {"config": config, "levels": levels})


async def run_levels(args: argparse.Namespace) -> list[dict[str, Any]]:
    phrases = {text: espeak(text) for text in (*PHRASES, INTERRUPTION)}
    lead = bytes(int(RATE * 0.3) * 2)
    speech = {text: lead + pcm for text, pcm in phrases.items()}
    rng = random.Random(args.seed)
    levels = []
    for n in args.sessions:
        before = server_metrics.scrape(args.url, SERVER_SERIES)
        started = time.monotonic()
        delays = [rng.uniform(0, args.stagger_s) for _ in range(n)]
        results = await asyncio.gather(*(session(args, i, speech, delays[i]) for i in range(n)))
        wall = time.monotonic() - started
        level = summarize(n, list(results), wall, server_means(before, server_metrics.scrape(args.url, SERVER_SERIES)))
        levels.append(level)
        print(table([level]).splitlines()[-1], flush=True)
        print_failures(list(results))
        write_results(args, levels)
    return levels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="a running server")
    parser.add_argument("--demo", action="store_true", help="start a demo server (CPU, random weights) instead")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "oai-server")
    parser.add_argument("--server-args", default="", help="extra flags of the demo server")
    parser.add_argument("--server-timeout", type=float, default=300)
    parser.add_argument("--sessions", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 8, 32])
    parser.add_argument("--turns", type=int, default=2, help="answered VAD turns per session")
    parser.add_argument("--barge-in", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max-output-tokens", type=int, default=32)
    parser.add_argument(
        "--barge-in-max-tokens", type=int, default=256, help="so the interrupted reply is still running"
    )
    parser.add_argument("--voice", default="marin")
    parser.add_argument("--prebuffer-ms", type=float, default=250)
    parser.add_argument("--stagger-s", type=float, default=1.0, help="session starts spread over this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--event-timeout", type=float, default=60, help="seconds a session waits for each expected server event"
    )
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="oai-realtime-"))
    out.mkdir(parents=True, exist_ok=True)
    args.out = out
    log = out / "server.log"
    try:
        with benchmarked_server(args, log, ["--realtime-seed", "7"]):
            print(table([]), flush=True)
            levels = asyncio.run(run_levels(args))
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}\n{tail(log)}", file=sys.stderr)
        return 1
    write_results(args, levels)
    print(f"wrote {out / 'results.json'}")
    return 0 if any(level["ok"] for level in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
