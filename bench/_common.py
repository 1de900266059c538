"""Shared helpers of the bench scripts: server subprocesses, the playback simulator, summaries, plots.

The playback simulator is the heart of every streaming metric: a client player that starts once
`prebuffer_ms` of audio is buffered (or at the end of a shorter stream) and then plays in real
time. Each time the next chunk arrives after the buffered audio has run out, that is one
underrun; the wait until it arrives adds to the stall time.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from oai_server.engines.vllm_args import EngineSpec

ROOT = Path(__file__).resolve().parents[1]
VOICE = "tara"
SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 2048
TOKENS_PER_FRAME = 7
REAL_TIME_TOKENS_PER_SECOND = TOKENS_PER_FRAME * SAMPLE_RATE / SAMPLES_PER_FRAME

SENTENCES = (
    "Hello there! It is a lovely morning, and the sun is shining over the quiet hills.",
    "To make a good cup of tea, boil fresh water, pour it over the leaves, and wait three minutes.",
    "The train leaves at seven o'clock, so we should pack our bags and go to bed early tonight.",
    "Once upon a time, a curious little robot wandered through the city looking for new friends.",
)


def orpheus_prompt(tokenizer: Any, text: str) -> list[int]:
    """Orpheus prompt ids of `text` spoken by `VOICE`."""
    from oai_server.codec.orpheus import speech_prompt

    return speech_prompt(tokenizer, VOICE, text)


ORPHEUS_TEMPERATURE, ORPHEUS_TOP_P, ORPHEUS_REPETITION_PENALTY = 0.6, 0.8, 1.1
"""The server's Orpheus sampling defaults, as every bench samples."""


def voice_options(max_tokens: int) -> Any:
    """`VoiceOptions` of the bench's voice with the server's Orpheus sampling and a fixed token budget."""
    from oai_server.pipeline.speech import VoiceOptions

    return VoiceOptions(VOICE, ORPHEUS_TEMPERATURE, ORPHEUS_TOP_P, ORPHEUS_REPETITION_PENALTY, max_tokens=max_tokens)


def speech_synthesizer(
    engine: Any, tokenizer: Any, decoder: Any, windows: Any, max_tokens: int, max_model_len: int
) -> Any:
    """The server's `SpeechSynthesizer` over `engine` and SNAC `decoder`, as the benches run it in process."""
    from oai_server.pipeline.speech import SpeechSynthesizer

    return SpeechSynthesizer(
        engine,
        tokenizer,
        decoder,
        windows=windows,
        tokens_per_char=8.0,
        max_tokens=max_tokens,
        max_model_len=max_model_len,
    )


def add_engine_variant_flags(p: argparse.ArgumentParser) -> None:
    """The Orpheus engine's A/B flags: `--no-band-graphs` and `--no-frame-deltas` (on by default, as the server runs
    them), `--cudagraph-mode`, `--arrival-window-ms`, `--no-prefix-caching` (vLLM's default is on; the server runs
    Orpheus without it), `--engine-switch-interval-ms`, `--snac-rounds`, `--snac-round-slices`."""
    p.add_argument(
        "--band-graphs", action=argparse.BooleanOptionalAction, default=True,
        help="the server's --tts-band-graphs (on, as the server runs): the band work of a step as one CUDA graph",
    )  # fmt: skip
    p.add_argument(
        "--no-frame-deltas", dest="frame_deltas", action="store_false",
        help="vLLM's own delta rule (the server's --no-tts-frame-deltas): the first token alone, frames a step late",
    )  # fmt: skip
    p.add_argument(
        "--cudagraph-mode", default="auto",
        choices=("auto", "full", "full_and_piecewise", "full_decode_only", "piecewise", "none"),
        help="the server's --tts-cudagraph-mode: vLLM's CUDA graph mode (full: steps with a prompt as full graphs too)",
    )  # fmt: skip
    p.add_argument(
        "--arrival-window-ms", type=float, default=0.0,
        help="the server's --tts-arrival-window-ms (30 there): arrivals into a busy engine enter in groups (0: off, "
        "as raw vLLM runs; one engine serves every mode of a run)",
    )  # fmt: skip
    p.add_argument(
        "--no-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        help="vLLM without prefix caching (as the server runs Orpheus): no block hashing of the audio a stream makes",
    )
    p.add_argument(
        "--engine-switch-interval-ms", type=float, default=0.0,
        help="the server's --tts-engine-switch-interval-ms: the engine process's GIL switch interval (0: Python's)",
    )  # fmt: skip
    p.add_argument(
        "--snac-rounds", choices=("thread", "step"), default="thread",
        help="with SNAC in the engine: the server's --snac-rounds (thread: its default, the service's thread answers "
        "each round; step: the engine's thread serves them between its steps, session 42)",
    )  # fmt: skip
    p.add_argument(
        "--snac-round-slices", type=int, choices=range(1, 5), default=1, metavar="{1..4}",
        help="the server's --snac-round-slices: graph batches of 64 windows one SNAC round takes at most on CUDA",
    )  # fmt: skip


def orpheus_engine_spec(
    args: argparse.Namespace, *, max_num_seqs: int, snac_service: str | None, enforce_eager: bool = False
) -> EngineSpec:
    """The Orpheus engine's `EngineSpec` as the server builds it, from `add_engine_variant_flags`' flags (and the
    bench's model, length, memory, quantization and stream-interval flags), with SNAC's service under
    ``snac_service`` (None: SNAC decodes elsewhere, or not at all)."""
    from oai_server.engines.vllm_args import EngineSpec

    return EngineSpec(
        args.tts_model,
        tokenizer=args.tts_model,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        stream_interval=args.stream_interval,
        orpheus_slots=True,
        snac_service=snac_service,
        snac_low_priority=args.snac_low_priority,
        snac_rounds=args.snac_rounds,
        switch_interval_ms=args.engine_switch_interval_ms,
        band_graphs=args.band_graphs,
        enable_prefix_caching=args.prefix_caching,
        cudagraph_mode=args.cudagraph_mode,
    )


def orpheus_params(max_tokens: int, band_sampling: bool = True, band_draw: bool = False) -> Any:
    """The server's Orpheus sampling defaults (`SamplingParams`) with a fixed token budget; with
    ``band_sampling`` off, top-p is left to vLLM's sampler over the whole vocabulary (raw vLLM's way);
    with ``band_draw`` the draw is made over the band too."""
    from oai_server.codec.orpheus import STOP_TOKEN_IDS
    from oai_server.engines.base import SamplingParams

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=ORPHEUS_TEMPERATURE,
        top_p=ORPHEUS_TOP_P,
        repetition_penalty=ORPHEUS_REPETITION_PENALTY,
        stop_token_ids=STOP_TOKEN_IDS,
        orpheus_audio_slots=True,
        orpheus_band_sampling=band_sampling,
        orpheus_band_draw=band_draw,
    )


@dataclass
class StreamResult:
    """One streamed request as the client saw it (times in seconds from the request being sent)."""

    ok: bool = False
    error: str | None = None
    ttfa_s: float | None = None
    wall_s: float = 0.0
    audio_s: float = 0.0
    bytes: int = 0
    underruns: int = 0
    stall_ms: float = 0.0
    first_stall_audio_s: float | None = None
    """Seconds of audio played when the first underrun came (a chat reply's segment boundary, the ramp, ...)."""
    rtf: float | None = None
    rtf_after_first_audio: float | None = None
    """The wall time after the first audio over the audio after the first chunk: how fast the stream ran once it had
    started, apart from its TTFA (which `rtf` holds too, and weighs most in the shortest streams)."""
    first_text_s: float | None = None
    """Chat only: when the first transcript arrived (the first segment was cut and its TTS started)."""
    first_text_words: int | None = None
    """Chat only: words in that first transcript."""
    first_text: str | None = None
    """Chat only: that first transcript."""
    status: int | None = None
    """HTTP status of the response (None when no response came)."""
    connected_s: float | None = None
    """When the TCP connection was up (None when a kept-alive connection was reused)."""
    sent_s: float | None = None
    """When the whole request (headers and body) had been written to the socket."""
    headers_s: float | None = None
    """When the response headers arrived (for a 429: the time to the refusal)."""
    retry_after_s: float | None = None
    """The `retry-after` header of a 429 or 503."""
    hung: bool = False
    """The client gave up: no end of the stream within its deadline."""
    sent_at_s: float | None = None
    """When the request was sent, in seconds from the start of its run (arrival models)."""
    seed: int | None = None
    target_audio_s: float | None = None
    """The speech length the arrival model asked for (None in bursts)."""
    arrivals: list[tuple[float, int]] = field(default_factory=list, repr=False)
    """(seconds since the request was sent, cumulative samples received) per audio chunk."""

    def finish(self, wall_s: float, prebuffer_ms: float) -> StreamResult:
        """Fill the derived metrics from `arrivals` once the stream has ended at `wall_s`."""
        self.wall_s = wall_s
        samples = self.arrivals[-1][1] if self.arrivals else 0
        self.audio_s = samples / SAMPLE_RATE
        self.ttfa_s = self.arrivals[0][0] if self.arrivals else None
        self.rtf = wall_s / self.audio_s if self.audio_s > 0 else None
        if self.arrivals and self.ttfa_s is not None and samples > self.arrivals[0][1]:
            self.rtf_after_first_audio = (wall_s - self.ttfa_s) / ((samples - self.arrivals[0][1]) / SAMPLE_RATE)
        stalls = playback_stalls(self.arrivals, wall_s, prebuffer_ms / 1000)
        self.underruns, self.stall_ms = len(stalls), sum(gap for _, gap in stalls) * 1000
        self.first_stall_audio_s = stalls[0][0] if stalls else None
        return self

    @property
    def refused(self) -> bool:
        """Admission refused the request (429): counted apart from failures."""
        return self.status == 429

    def public(self) -> dict[str, Any]:
        """The JSON form (without the per-chunk arrivals)."""
        data = asdict(self)
        data.pop("arrivals")
        return data


def simulate_playback(arrivals: Sequence[tuple[float, int]], end_s: float, prebuffer_s: float) -> tuple[int, float]:
    """Underruns and total stall seconds of a real-time player fed by `arrivals` (see `playback_stalls`)."""
    stalls = playback_stalls(arrivals, end_s, prebuffer_s)
    return len(stalls), sum(gap for _, gap in stalls)


def playback_stalls(
    arrivals: Sequence[tuple[float, int]], end_s: float, prebuffer_s: float
) -> list[tuple[float, float]]:
    """(seconds of audio played when it ran dry, seconds it waited) per underrun of a real-time player.

    `arrivals` are (time, cumulative samples) in time order. Playback starts when the buffered
    audio reaches `prebuffer_s` or at `end_s` (end of stream) if it never does. Afterwards a chunk
    that arrives after everything before it has been played is an underrun; playback resumes
    when it arrives (no re-buffering), so the stall is the gap.
    """
    if not arrivals:
        return []
    need = prebuffer_s * SAMPLE_RATE
    start = next((t for t, total in arrivals if total >= need), end_s)
    stalls: list[tuple[float, float]] = []
    stalled = 0.0
    previous = 0
    for t, total in arrivals:
        if total == previous:
            continue
        dry_at = start + stalled + previous / SAMPLE_RATE
        if t > start and t > dry_at:
            stalls.append((previous / SAMPLE_RATE, t - dry_at))
            stalled += t - dry_at
        previous = total
    return stalls


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`; None when empty."""
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return None
    pos = (len(data) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return data[low] + (data[high] - data[low]) * (pos - low)


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of `values`."""
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def spread_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """`spread` of times in seconds, in milliseconds."""
    return {k: None if v is None else v * 1000 for k, v in spread(seconds).items()}


def summarize(concurrency: int, results: Sequence[StreamResult], wall_s: float) -> dict[str, Any]:
    """The per-level report: percentiles, zero-underrun streams, aggregate audio tokens/s.

    `errors` are failures other than admission refusals; 429s are counted in `refused_429`, with
    the time to the refusal and the `retry-after` they carried.
    """
    ok = [r for r in results if r.ok]
    refused = [r for r in results if r.refused]
    samples = sum(r.audio_s for r in ok) * SAMPLE_RATE
    tokens = samples / SAMPLES_PER_FRAME * TOKENS_PER_FRAME
    zero = sum(1 for r in ok if r.underruns == 0)
    errors = [r.error for r in results if not r.ok and not r.refused]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(errors),
        "error_samples": sorted(set(e for e in errors if e))[:5],
        "refused_429": len(refused),
        "time_to_429_ms": spread_ms([r.headers_s for r in refused if r.headers_s is not None]),
        "retry_after_s": sorted({r.retry_after_s for r in refused if r.retry_after_s is not None}),
        "hung": sum(1 for r in results if r.hung),
        "ttfa_ms": spread_ms([r.ttfa_s for r in ok if r.ttfa_s]),
        "client_phases_ms": {
            phase: spread_ms([t for r in ok if (t := getattr(r, f"{phase}_s")) is not None])
            for phase in ("connected", "sent", "headers")
        },
        "rtf": spread([r.rtf for r in ok if r.rtf is not None]),
        "rtf_after_first_audio": spread([r.rtf_after_first_audio for r in ok if r.rtf_after_first_audio is not None]),
        "audio_s": {"min": min((r.audio_s for r in ok), default=None), **spread([r.audio_s for r in ok])},
        **_first_text(ok),
        "underruns": spread([float(r.underruns) for r in ok]),
        "stall_ms": spread([r.stall_ms for r in ok]),
        "first_stall_audio_s": spread([r.first_stall_audio_s for r in ok if r.first_stall_audio_s is not None]),
        "streams_zero_underruns": zero,
        "zero_underrun_fraction": zero / len(results) if results else 0.0,
        "audio_s_total": samples / SAMPLE_RATE,
        "bytes_total": sum(r.bytes for r in ok),
        "wall_s": wall_s,
        "aggregate_audio_tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "per_stream_audio_tokens_per_s_p50": percentile(
            [r.audio_s * SAMPLE_RATE / SAMPLES_PER_FRAME * TOKENS_PER_FRAME / r.wall_s for r in ok if r.wall_s], 50
        ),
    }


def _first_text(results: Sequence[StreamResult]) -> dict[str, Any]:
    """Chat's split of TTFA: time to the first transcript (LLM + segmenter) and that segment's words."""
    times = [r.first_text_s * 1000 for r in results if r.first_text_s is not None]
    if not times:
        return {}
    return {
        "first_text_ms": spread(times),
        "first_text_words": spread([float(r.first_text_words or 0) for r in results if r.first_text_s is not None]),
    }


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(title: str, levels: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text table of the levels of one mode."""
    head = (
        f"{'N':>5} {'ok':>5} {'err':>4} {'429':>4} {'ttfa50':>7} {'ttfa95':>7} {'ttfa99':>7} {'rtf50':>6} "
        f"{'rtf99':>6} {'und95':>6} {'0-und':>6} {'agg tok/s':>10} {'text50':>7}"
    )
    lines = [title, head]
    for lv in levels:
        t, r = lv["ttfa_ms"], lv["rtf"]
        lines.append(
            f"{lv['concurrency']:>5} {lv['ok']:>5} {lv['errors']:>4} {lv.get('refused_429', 0):>4} "
            f"{_fmt(t['p50']):>7} {_fmt(t['p95']):>7} {_fmt(t['p99']):>7} {_fmt(r['p50'], 2):>6} "
            f"{_fmt(r['p99'], 2):>6} {_fmt(lv['underruns']['p95'], 1):>6} {lv['streams_zero_underruns']:>6} "
            f"{lv['aggregate_audio_tokens_per_s']:>10.0f} {_fmt(lv.get('first_text_ms', {}).get('p50')):>7}"
        )
    return "\n".join(lines)


def read_json(path: Path) -> Any:
    """JSON from `path`, gzipped (`.gz`, as bench/results keeps large files) or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, creating the parent directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_process(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group with stdout+stderr to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    return subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)


def server_argv(port: int, extra: Sequence[str]) -> list[str]:
    """`python -m oai_server serve --host 127.0.0.1 --port P ...`."""
    return [sys.executable, "-m", "oai_server", "serve", "--host", "127.0.0.1", "--port", str(port), *extra]


def server_urls(url: str) -> list[str]:
    """The servers of a `--url`: one base URL, or several comma-separated (one server per card, say)."""
    return [part.strip().rstrip("/") for part in url.split(",") if part.strip()]


def metrics_urls(args: argparse.Namespace) -> list[str]:
    """The servers whose `/metrics` make a run's server view: `--metrics-url`, else `--url`'s."""
    return server_urls(getattr(args, "metrics_url", None) or args.url)


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float, path: str = "/health/ready") -> float:
    """Poll `url + path` until it answers 200; raise if the process exits or time runs out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url}{path} was ready")
        try:
            if httpx.get(url + path, timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}{path} not ready after {timeout_s:.0f} s")


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL it after `grace_s`."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


@contextmanager
def benchmarked_server(
    args: Any, log: Path, extra_flags: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes] | None]:
    """The server a benchmark drives, ready. With ``args.demo``: a demo server (CPU, random weights) on a free
    port, ``args.url`` pointed at it, its log in ``log``, stopped on leaving; otherwise ``args.url``, waited for.
    ``args`` needs ``demo``, ``url``, ``server_timeout``, ``cache_dir`` and ``server_args``."""
    if not args.demo:
        for url in server_urls(args.url):  # several servers sharing the load: every one of them
            wait_ready(url, None, args.server_timeout)
        yield None
        return
    port = free_port()
    args.url = f"http://127.0.0.1:{port}"
    flags = ["--demo", "--cache-dir", str(args.cache_dir), "--log-level", "warning", *extra_flags]
    server = start_process(server_argv(port, [*flags, *shlex.split(args.server_args)]), log)
    try:
        print(f"demo server ready in {wait_ready(args.url, server, args.server_timeout):.1f} s", flush=True)
        yield server
    finally:
        stop_process(server)


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file (for error reports)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- GPU check helpers ---------------------------------------------------------------------------


def ensure_snac(path: Path) -> str:
    """Write a random-weight SNAC with the real 24 kHz config at `path` unless one is there."""
    if (path / "config.json").is_file():
        return "existing"
    import torch

    from oai_server.engines.demo import SNAC_24KHZ_CONFIG, write_random_snac

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    write_random_snac(path, SNAC_24KHZ_CONFIG)
    return "random (real 24 kHz config)"


def decode_audio(data: bytes, fmt: str) -> tuple[int, int]:
    """(samples, sample rate) of encoded audio, decoded with PyAV (pcm: s16le 24 kHz)."""
    if fmt in ("pcm", "pcm16"):
        return len(data) // 2, 24000
    import av

    samples, rate = 0, 0
    with av.open(io.BytesIO(data), mode="r") as container:
        for frame in container.decode(audio=0):
            samples += frame.samples
            rate = frame.sample_rate
    return samples, rate


def engine_gauges(base: str) -> dict[str, float]:
    """`oai_engine_active_requests{engine=...}` from /metrics, plus /health's active_streams."""
    gauges: dict[str, float] = {}
    try:
        text = httpx.get(base + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("oai_engine_active_requests{"):
                label = line.split('engine="', 1)[1].split('"', 1)[0]
                gauges[f"engine:{label}"] = float(line.rsplit(" ", 1)[1])
    except (httpx.HTTPError, IndexError, ValueError):
        pass
    gauges["active_streams"] = float(httpx.get(base + "/health", timeout=5).json().get("active_streams", -1))
    return gauges


def gpu_memory() -> dict[str, Any]:
    """Per-process GPU memory from nvidia-smi, each pid named by its command line."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
        total = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"nvidia-smi: {exc}"}
    procs = []
    for line in out.strip().splitlines():
        pid, used = (x.strip() for x in line.split(","))
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
        except OSError:
            cmd = "?"
        procs.append({"pid": int(pid), "used_mib": float(used), "cmdline": cmd})
    return {"processes": procs, "gpu_used_total_mib": total}


def as_wav(flac: bytes) -> bytes:
    """The same utterance as a 16-bit PCM WAV file at its own rate (the decoder's fast path)."""
    import io
    import wave

    import av
    import numpy as np

    with av.open(io.BytesIO(flac)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        pcm = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(stream)])
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm.astype("<i2").tobytes())
    return out.getvalue()
