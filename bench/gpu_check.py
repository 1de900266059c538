"""GPU proof run: the real server on vLLM (both engines in one process), checked end to end.

Starts `python -m oai_server serve --engine vllm ...` on random-weight Orpheus-3B / Gemma-2-2B
dirs (bench/build_random_models.py) and a SNAC with the real 24 kHz config (random weights are
written if `--snac` has no config.json), waits for /health/ready, then checks with the openai SDK:
speech in every format (decoded with PyAV), speech SSE, chat with audio streamed and whole, and
a client disconnect that must abort both engines. It measures first-audio latency, single-stream
audio tokens/s and GPU memory per process. `--remote` repeats a short check with two
`vllm serve` upstreams and `--engine remote`. Prints PASS/FAIL per check and writes JSON.

    python bench/gpu_check.py --llm-model /tmp/rand/gemma --tts-model /tmp/rand/orpheus \\
        --snac /tmp/rand/snac --enforce-eager --remote --out $OUT/gpu_check.json
    python bench/gpu_check.py --demo --out /tmp/gpu_check.json      # CPU dry run of the checks
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    decode_audio,
    engine_gauges,
    ensure_snac,
    free_port,
    gpu_memory,
    percentile,
    server_argv,
    start_process,
    stop_process,
    tail,
    wait_ready,
)

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
TEXT = "Hello there! It is a lovely morning, and the sun is shining over the quiet hills."
LONG_TEXT = " ".join([TEXT] * 3)
LOGITS_PROCESSOR = "oai_server.engines.vllm_orpheus_logits:OrpheusSlotLogitsProcessor"


class Checker:
    """Runs named checks against one server, recording PASS/FAIL, details and timing."""

    def __init__(self, base: str, speech_model: str, chat_model: str, deadline: float) -> None:
        from openai import OpenAI

        self.base = base
        self.speech_model = speech_model
        self.chat_model = chat_model
        self.deadline = deadline
        self.client = OpenAI(base_url=base + "/v1", api_key="none", timeout=120, max_retries=0)
        self.results: dict[str, Any] = {}

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one check; an exception or a falsy `ok` is a FAIL."""
        if time.monotonic() > self.deadline:
            self.results[name] = {"ok": False, "detail": "skipped: out of time"}
            return
        started = time.monotonic()
        try:
            detail = fn()
            ok = bool(detail.pop("ok", True))
        except Exception as exc:  # every failure is a result
            ok, detail = False, {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-800:]}
        detail["seconds"] = round(time.monotonic() - started, 2)
        self.results[name] = {"ok": ok, **detail}
        print(f"{'PASS' if ok else 'FAIL'} {name}: {json.dumps(detail, default=str)[:300]}", flush=True)

    def speech_format(self, fmt: str) -> dict[str, Any]:
        """One speech request in `fmt`, decoded."""
        response = self.client.audio.speech.create(
            model=self.speech_model,
            voice="alloy",
            input=TEXT,
            response_format=fmt,  # type: ignore[arg-type]
        )
        samples, rate = decode_audio(response.content, fmt)
        return {"ok": samples > 0, "bytes": len(response.content), "samples": samples, "rate": rate}

    def speech_sse(self) -> dict[str, Any]:
        """Speech as SSE: delta events then a done event with usage; also single-stream tokens/s."""
        started = time.perf_counter()
        audio, first, usage = bytearray(), None, None
        with self.client.audio.speech.with_streaming_response.create(
            model=self.speech_model, voice="alloy", input=LONG_TEXT, response_format="pcm", stream_format="sse"
        ) as response:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("type") == "speech.audio.delta":
                    audio += base64.b64decode(event["audio"])
                    first = first or time.perf_counter() - started
                elif event.get("type") == "speech.audio.done":
                    usage = event.get("usage")
        wall = time.perf_counter() - started
        tokens = (usage or {}).get("output_tokens", 0)
        return {
            "ok": bool(audio) and usage is not None,
            "audio_s": len(audio) / 2 / 24000,
            "usage": usage,
            "ttfa_ms": None if first is None else first * 1000,
            "audio_tokens_per_s": tokens / wall if wall else None,
            "audio_tokens_per_s_after_first_audio": tokens / (wall - first) if first and wall > first else None,
        }

    def chat_stream(self) -> dict[str, Any]:
        """Streamed chat with pcm16 audio through the SDK (retried: a random model may say nothing)."""
        attempts = 0
        while attempts < 3:
            attempts += 1
            stream = self.client.chat.completions.create(
                model=self.chat_model,
                messages=[{"role": "user", "content": "Tell me a short story about a robot."}],
                modalities=["text", "audio"],
                audio={"voice": "alloy", "format": "pcm16"},
                stream=True,
                max_tokens=96,
            )
            pcm, transcript, audio_id = 0, [], None
            for chunk in stream:
                for choice in chunk.choices:
                    audio = choice.delta.audio or {}
                    audio = audio if isinstance(audio, dict) else audio.model_dump()
                    pcm += len(base64.b64decode(audio["data"])) if audio.get("data") else 0
                    transcript.append(audio.get("transcript") or "")
                    audio_id = audio_id or audio.get("id")
            if pcm > 0:
                break
        return {
            "ok": pcm > 0 and bool(audio_id),
            "attempts": attempts,
            "audio_id": audio_id,
            "audio_s": pcm / 2 / 24000,
            "transcript": "".join(transcript)[:80],
        }

    def chat_whole(self) -> dict[str, Any]:
        """Non-streamed chat with wav audio, decoded."""
        reply = self.client.chat.completions.create(
            model=self.chat_model,
            messages=[{"role": "user", "content": "Say hello."}],
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
            max_tokens=48,
        )
        audio = reply.choices[0].message.audio
        samples, rate = decode_audio(base64.b64decode(audio.data), "wav") if audio else (0, 0)
        return {
            "ok": samples > 0,
            "samples": samples,
            "rate": rate,
            "transcript": (audio.transcript if audio else "")[:80],
        }

    def disconnect(self) -> dict[str, Any]:
        """Close a long chat stream after 2 audio chunks; both engines must drain to 0 requests."""
        body = {
            "model": self.chat_model,
            "messages": [{"role": "user", "content": "Tell me a very long story about the sea. " * 4}],
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"},
            "stream": True,
            "max_tokens": 400,
        }
        chunks, during = 0, {}
        with httpx.stream("POST", self.base + "/v1/chat/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data:") and '"data"' in line:
                    chunks += 1
                    if chunks == 2:
                        during = engine_gauges(self.base)
                        break
        closed = time.monotonic()
        after = engine_gauges(self.base)
        while any(v > 0 for v in after.values()) and time.monotonic() - closed < 20:
            time.sleep(0.2)
            after = engine_gauges(self.base)
        drained = time.monotonic() - closed
        return {
            "ok": chunks == 2 and not any(v > 0 for v in after.values()),
            "during": during,
            "after": after,
            "drain_s": round(drained, 2),
            "metrics_found": any(k.startswith("engine:") for k in after),
            "engines_busy_at_close": sorted(k for k, v in during.items() if k.startswith("engine:") and v > 0),
        }

    def latency(self, speech_runs: int, chat_runs: int) -> dict[str, Any]:
        """TTFA p50 of sequential speech (pcm) and streamed chat requests, via bench/clients.py."""
        import clients

        args = argparse.Namespace(
            speech_model=self.speech_model, chat_model=self.chat_model, voice="alloy", prebuffer_ms=250.0,
            api_key=None, max_tokens=64,
        )  # fmt: skip

        async def sequential(fn: Any, runs: int) -> list[Any]:
            async with httpx.AsyncClient(base_url=self.base, timeout=120) as client:
                return [await fn(client, args, TEXT) for _ in range(runs)]

        speech = asyncio.run(sequential(clients.speech_stream, speech_runs))
        chat = asyncio.run(sequential(clients.chat_stream, chat_runs))
        ms = [r.ttfa_s * 1000 for r in speech if r.ok and r.ttfa_s]
        chat_ms = [r.ttfa_s * 1000 for r in chat if r.ok and r.ttfa_s]
        return {
            "ok": len(ms) == speech_runs and len(chat_ms) == chat_runs,
            "speech_ttfa_ms_p50": percentile(ms, 50),
            "speech_ttfa_ms_all": [round(x) for x in ms],
            "chat_ttfa_ms_p50": percentile(chat_ms, 50),
            "chat_ttfa_ms_all": [round(x) for x in chat_ms],
            "speech_rtf_p50": percentile([r.rtf for r in speech if r.rtf], 50),
            "errors": [r.error for r in speech + chat if not r.ok][:3],
        }


def serve_flags(args: argparse.Namespace) -> list[str]:
    """Flags of the in-process server run."""
    names = ["--llm-served-name", "gemma", "--tts-served-name", "orpheus"]
    if args.demo:
        return ["--demo", "--cache-dir", str(Path(tempfile.gettempdir()) / "oai-cache"), *names]
    flags = [
        "--engine", args.engine, "--llm-model-name", args.llm_model, "--tts-model-name", args.tts_model,
        "--snac-model-name", str(args.snac), "--tts-gpu-memory-utilization", "0.35",
        "--llm-gpu-memory-utilization", "0.25", *names,
    ]  # fmt: skip
    return flags + (["--enforce-eager"] if args.enforce_eager else []) + args.server_arg


def run_server_checks(args: argparse.Namespace, report: dict[str, Any], deadline: float) -> None:
    """Phase 1: the in-process server."""
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    log = args.log_dir / "server.log"
    proc = start_process(server_argv(port, serve_flags(args)), log)
    try:
        ready = wait_ready(base, proc, min(args.ready_timeout, deadline - time.monotonic()))
        report["server_ready_s"] = round(ready, 1)
        print(f"server ready in {ready:.1f} s", flush=True)
        report["gpu_memory_after_ready"] = gpu_memory()
        check = Checker(base, "orpheus", "gemma", deadline)
        for fmt in FORMATS:
            check.run(f"speech_{fmt}", lambda fmt=fmt: check.speech_format(fmt))
        check.run("speech_sse", check.speech_sse)
        check.run("chat_stream", check.chat_stream)
        check.run("chat_whole", check.chat_whole)
        check.run("disconnect_aborts_engines", check.disconnect)
        check.run("latency", lambda: check.latency(args.speech_runs, args.chat_runs))
        report["gpu_memory_after_checks"] = gpu_memory()
        report["checks"] = check.results
    except Exception as exc:
        report["checks"] = report.get("checks") or {}
        report["checks"]["server_start"] = {"ok": False, "error": str(exc), "log": tail(log, 40)}
        print(f"FAIL server_start: {exc}\n{tail(log, 40)}", flush=True)
    finally:
        stop_process(proc)


def run_remote_checks(args: argparse.Namespace, report: dict[str, Any], deadline: float) -> None:
    """Phase 2: two `vllm serve` upstreams and `--engine remote`."""
    eager = ["--enforce-eager"] if args.enforce_eager else []
    ports = {"tts": free_port(), "llm": free_port()}
    upstreams = {
        "tts": [args.tts_model, "--gpu-memory-utilization", "0.35", "--logits-processors", LOGITS_PROCESSOR],
        "llm": [args.llm_model, "--gpu-memory-utilization", "0.25"],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    checks: dict[str, Any] = {}
    try:
        # One at a time: vLLM's start-up memory profiling fails if another process on the same GPU
        # changes its memory use meanwhile.
        for name, argv in upstreams.items():
            command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", *argv]
            command += ["--host", "127.0.0.1", "--port", str(ports[name]), "--max-model-len", "2048", *eager]
            procs[name] = start_process(command, args.log_dir / f"vllm_{name}.log")
            started = time.monotonic()
            budget = max(5.0, deadline - time.monotonic() - 60)
            wait_ready(f"http://127.0.0.1:{ports[name]}", procs[name], budget, "/health")
            checks[f"remote_{name}_upstream_ready"] = {"ok": True, "seconds": round(time.monotonic() - started, 1)}
        port = free_port()
        flags = [
            "--engine", "remote", "--llm-remote-url", f"http://127.0.0.1:{ports['llm']}",
            "--tts-remote-url", f"http://127.0.0.1:{ports['tts']}", "--llm-model-name", args.llm_model,
            "--tts-model-name", args.tts_model, "--snac-model-name", str(args.snac),
            "--llm-served-name", "gemma", "--tts-served-name", "orpheus",
        ]  # fmt: skip
        server = start_process(server_argv(port, flags), args.log_dir / "server_remote.log")
        try:
            wait_ready(f"http://127.0.0.1:{port}", server, max(5.0, deadline - time.monotonic() - 30))
            check = Checker(f"http://127.0.0.1:{port}", "orpheus", "gemma", deadline)
            check.run("remote_speech_pcm", lambda: check.speech_format("pcm"))
            check.run("remote_chat_stream", check.chat_stream)
            check.run("remote_latency", lambda: check.latency(3, 2))
            checks.update(check.results)
            checks["remote_gpu_memory"] = {"ok": True, **gpu_memory()}
        finally:
            stop_process(server)
    except Exception as exc:
        logs = {n: tail(args.log_dir / f"vllm_{n}.log", 15) for n in procs}
        checks["remote_start"] = {"ok": False, "error": str(exc), "logs": logs}
        print(f"FAIL remote_start: {exc}\n{json.dumps(logs, indent=1)}", flush=True)
    finally:
        for proc in procs.values():
            stop_process(proc)
    report["remote_checks"] = checks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm-model", help="Gemma-2 dir (random weights)")
    p.add_argument("--tts-model", help="Orpheus dir (random weights)")
    p.add_argument("--snac", type=Path, help="SNAC dir; random weights with the real config are written if empty")
    p.add_argument("--engine", default="vllm", choices=("vllm", "transformers"))
    p.add_argument("--demo", action="store_true", help="CPU dry run on the demo profile (no GPU)")
    p.add_argument("--enforce-eager", action="store_true", help="pass --enforce-eager (faster start)")
    p.add_argument("--server-arg", action="append", default=[], help="extra serve flag (repeatable)")
    p.add_argument("--remote", action="store_true", help="also check --engine remote on two vllm serve")
    p.add_argument("--skip-server", action="store_true", help="skip the in-process checks (e.g. only --remote)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--budget-s", type=float, default=520.0, help="total time; later phases are skipped past it")
    p.add_argument("--speech-runs", type=int, default=10)
    p.add_argument("--chat-runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = p.parse_args(argv)
    if not args.demo and not (args.llm_model and args.tts_model and args.snac):
        p.error("--llm-model, --tts-model and --snac are required (or --demo)")
    if args.demo and args.remote:
        p.error("--remote needs vLLM and a GPU")
    args.log_dir = args.out.parent / "logs"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the phases, print the report, write the JSON; 0 when every check passed."""
    args = parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget_s
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if not args.demo:
        report["snac"] = ensure_snac(args.snac)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every phase, so a killed run still leaves its figures
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    if not args.skip_server:
        run_server_checks(args, report, deadline)
        save()
    if args.remote:
        if deadline - time.monotonic() > 150:
            run_remote_checks(args, report, deadline)
        else:
            report["remote_checks"] = {"remote": {"ok": False, "detail": "skipped: out of time"}}
    report["total_s"] = round(time.monotonic() - start, 1)
    all_checks = {**report.get("checks", {}), **report.get("remote_checks", {})}
    report["passed"] = all(c.get("ok") for c in all_checks.values()) and bool(all_checks)
    print("\n== gpu_check ==")
    for name, c in all_checks.items():
        print(f"{'PASS' if c.get('ok') else 'FAIL'}  {name}")
    lat = all_checks.get("latency", {})
    sse = all_checks.get("speech_sse", {})
    print(f"speech TTFA p50 {lat.get('speech_ttfa_ms_p50')} ms, chat TTFA p50 {lat.get('chat_ttfa_ms_p50')} ms")
    print(f"single-stream audio tokens/s {sse.get('audio_tokens_per_s')} (real time needs 82)")
    for proc in report.get("gpu_memory_after_ready", {}).get("processes", []):
        print(f"GPU pid {proc['pid']}: {proc['used_mib']:.0f} MiB  {proc['cmdline'][:90]}")
    save()
    print(f"{'PASSED' if report['passed'] else 'FAILED'} in {report['total_s']} s; wrote {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
