"""In-process baselines on the same engine/GPU as the server, for ratios against `bench/load.py`.

Modes (each swept over N concurrent streams of the same Orpheus prompts):

* ``raw``: the engine alone, no audio decoding: first-token time and tokens/s per stream and in
  aggregate; its token timeline is also played as audio (7 tokens = 2048 samples), the ceiling.
  Top-p is vLLM's own (over the whole vocabulary), as anyone running vLLM gets it.
* ``raw_band``: the same with top-p over each position's band in the slot processor, as the server
  samples: ``raw_band`` ÷ ``raw`` is what that alone gains the engine. ``raw_band_draw``: the draw in
  the band too (`SamplingParams.orpheus_band_draw`, off in the server).
* ``seed``: a faithful reimplementation of the seed's / Canopy's pipeline. Each token the engine
  streams is detokenized to ``<custom_token_N>`` text and parsed the way Canopy parses the last custom
  token of an update (``N - 10 - 4096 * (k % 7)``); the seed's engine streamed one token per update,
  this one streams ``--stream-interval`` (7) per update, so the seed column here pays for a seventh of
  the seed's per-update work and is, if anything, optimistic. Codes <= 0 are dropped, and after every
  7th code once k >= 28 ONE unbatched SNAC decode of the last 28 codes runs for that stream (tensors built with
  ``torch.cat``, ``.cpu()`` then int16, samples 2048:4096), on the event loop like Canopy's sync
  wrapper (``--seed-decode loop``) or in a thread per decode (``--seed-decode thread``).
* ``ours``: this project's `SpeechSynthesizer` (batched, windowed SNAC in its worker thread), SNAC in
  this process (a second CUDA context beside the engine core's).
* ``ours_in_engine``: the same, with SNAC decoded in the Orpheus engine-core process (the server's
  ``--snac-in-engine``: one CUDA context, SNAC on its own stream of it).
* ``silent``: the same pipeline with SNAC's work replaced by silence of the right length: what the
  pipeline costs without any decoding, so ``raw``, ``silent`` and ``ours`` split the gap.

Every mode reports the metrics of `load.py` (TTFA, RTF, underruns with a 250 ms prebuffer), so
"real-time streams ours / seed" is the ratio of the largest N with zero underruns.
Sampling is constrained to the Orpheus audio slots in every mode (random weights would
otherwise emit few audio tokens). ``raw`` and ``seed`` leave top-p to vLLM's sampler; ``raw_band``
and the pipeline modes apply it over the band (the server's way); otherwise the modes differ only
downstream of the engine. ``ratios_over_raw`` gives each mode's aggregate tokens/s over raw's per N.

    python bench/baselines.py --demo --out /tmp/baselines.json                # CPU smoke test
    python bench/baselines.py --engine vllm --tts-model /tmp/rand/orpheus --snac /tmp/rand/snac \\
        --concurrency 1,8,32,64 --max-tokens 1024 --out bench/out/baselines.json   # on the GPU

``--engines 2`` runs every mode on two Orpheus engines (two engine-core processes) on the one GPU
behind the server's balancer (`BalancedEngine`; with ``ours_in_engine`` each engine hosts the SNAC
of its own streams, as the server's replicas do): vLLM's engine loop is Python, and at 192 streams
its main thread holds the GIL for ~73 % of a step (py-spy, `bench/results/h200_s17_random_weights`),
so one engine process is host-bound before the GPU is; two give the host work two interpreters. On an
H200 two carried 0.87x one engine's rate (two CUDA contexts, time-sliced by the driver without MPS).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    SENTENCES,
    StreamResult,
    add_engine_variant_flags,
    orpheus_engine_spec,
    orpheus_params,
    orpheus_prompt,
    speech_synthesizer,
    summarize,
    table,
    voice_options,
    write_json,
)
from capacity import Criteria, capacity_block

from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_windows import WindowShape
from oai_server.engines.balanced import BalancedEngine
from oai_server.engines.base import SamplingParams, TokenEngine, new_request_id
from oai_server.engines.snac_replicas import ReplicaSnacDecoders

BENCH_SNAC_SERVICE = "bench"

# --- the seed's / Canopy's decoder, reproduced -------------------------------------------------


def canopy_token_to_code(token_string: str, index: int) -> int | None:
    """Canopy's `turn_token_into_id`: the LAST `<custom_token_N>` of the text, as a code."""
    token_string = token_string.strip()
    last = token_string.rfind("<custom_token_")
    if last == -1:
        return None
    last_token = token_string[last:]
    if last_token.startswith("<custom_token_") and last_token.endswith(">"):
        try:
            return int(last_token[14:-1]) - 10 - ((index % 7) * 4096)
        except ValueError:
            return None
    return None


def canopy_convert_to_audio(multiframe: list[int], snac: torch.nn.Module, device: str) -> bytes | None:
    """Canopy's `convert_to_audio`: one unbatched decode of 4 frames, middle 2048 samples as int16."""
    if len(multiframe) < 7:
        return None
    codes_0 = torch.tensor([], device=device, dtype=torch.int32)
    codes_1 = torch.tensor([], device=device, dtype=torch.int32)
    codes_2 = torch.tensor([], device=device, dtype=torch.int32)
    num_frames = len(multiframe) // 7
    frame = multiframe[: num_frames * 7]
    for j in range(num_frames):
        i = 7 * j
        codes_0 = torch.cat([codes_0, torch.tensor([frame[i]], device=device, dtype=torch.int32)])
        codes_1 = torch.cat([codes_1, torch.tensor([frame[i + 1]], device=device, dtype=torch.int32)])
        codes_1 = torch.cat([codes_1, torch.tensor([frame[i + 4]], device=device, dtype=torch.int32)])
        for k in (2, 3, 5, 6):
            codes_2 = torch.cat([codes_2, torch.tensor([frame[i + k]], device=device, dtype=torch.int32)])
    codes = [codes_0.unsqueeze(0), codes_1.unsqueeze(0), codes_2.unsqueeze(0)]
    if any(torch.any(c < 0) or torch.any(c > 4096) for c in codes):
        return None
    with torch.inference_mode():
        audio_hat = snac.decode(codes)
    audio_np = audio_hat[:, :, 2048:4096].detach().cpu().numpy()
    return (audio_np * 32767).astype(np.int16).tobytes()


# --- one stream per mode -----------------------------------------------------------------------


class Bench:
    """The engine, tokenizer and SNAC shared by every stream of every mode."""

    def __init__(self, args: argparse.Namespace, engine: TokenEngine, tokenizer: Any, snac: torch.nn.Module) -> None:
        self.args = args
        self.engine = engine
        self.tokenizer = tokenizer
        self.snac = snac
        self.synthesizers: dict[str, Any] = {}
        """The pipeline of each of the modes ours, ours_in_engine and silent."""
        self.services: list[Any] = []
        """ours_in_engine: the decoder of each engine's SNAC service."""

    def prompt(self, index: int) -> tuple[str, list[int]]:
        """Text and Orpheus prompt ids of stream `index`."""
        text = self.args.text or SENTENCES[index % len(SENTENCES)]
        return text, orpheus_prompt(self.tokenizer, text)

    def params(self, band_sampling: bool = False, band_draw: bool = False) -> SamplingParams:
        """The server's Orpheus sampling defaults with a fixed token budget (top-p vLLM's unless `band_sampling`)."""
        return orpheus_params(self.args.max_tokens, band_sampling, band_draw)

    async def raw(self, index: int) -> StreamResult:
        """Engine only; the token timeline is played as if every 7 tokens were a frame."""
        return await self._raw(index, band_sampling=False)

    async def raw_band(self, index: int) -> StreamResult:
        """Engine only, top-p over the band as the server samples."""
        return await self._raw(index, band_sampling=True)

    async def raw_band_draw(self, index: int) -> StreamResult:
        """Engine only, top-p and the draw over the band."""
        return await self._raw(index, band_sampling=True, band_draw=True)

    async def _raw(self, index: int, band_sampling: bool, band_draw: bool = False) -> StreamResult:
        _, prompt = self.prompt(index)
        result, started, tokens = StreamResult(), time.perf_counter(), 0
        first = None
        params = self.params(band_sampling, band_draw)
        async for delta in self.engine.generate(prompt, params, new_request_id("raw")):
            now = time.perf_counter() - started
            first = now if first is None else first
            before, tokens = tokens // 7, tokens + len(delta)
            if tokens // 7 > before:
                result.arrivals.append((now, tokens // 7 * 2048))
        wall = time.perf_counter() - started
        result.ok = tokens > 0
        result.finish(wall, self.args.prebuffer_ms)
        extra = {"first_token_s": first, "tokens": tokens, "tokens_per_s": tokens / wall if wall else 0.0}
        result.error = None if result.ok else "no tokens"
        return _with(result, extra)

    async def seed(self, index: int) -> StreamResult:
        """The seed's pipeline (see the module docstring)."""
        _, prompt = self.prompt(index)
        result, started = StreamResult(), time.perf_counter()
        buffer: list[int] = []
        count = 0
        device = self.args.snac_device
        async for delta in self.engine.generate(prompt, self.params(), new_request_id("seed")):
            # The seed's engine streams one token per output; this engine may batch several (its stream_interval)
            # into one delta, and Canopy's parser keeps only the last code of the text it is given, so each token
            # is parsed on its own, as the seed sees them.
            for token_id in delta:
                token = canopy_token_to_code(self.tokenizer.decode([token_id], skip_special_tokens=False), count)
                if token is None or token <= 0:
                    continue
                buffer.append(token)
                count += 1
                if count % 7 != 0 or count <= 27:
                    continue
                window = buffer[-28:]
                if self.args.seed_decode == "thread":
                    audio = await asyncio.to_thread(canopy_convert_to_audio, window, self.snac, device)
                else:
                    audio = canopy_convert_to_audio(window, self.snac, device)
                if audio:
                    result.bytes += len(audio)
                    result.arrivals.append((time.perf_counter() - started, result.bytes // 2))
        result.ok = result.bytes > 0
        result.error = None if result.ok else "no audio"
        return result.finish(time.perf_counter() - started, self.args.prebuffer_ms)

    async def ours(self, index: int) -> StreamResult:
        """This project's synthesizer: parser, window planner, batched SNAC decoder in this process."""
        return await self._speak("ours", index)

    async def ours_in_engine(self, index: int) -> StreamResult:
        """This project's synthesizer, SNAC decoding in the engine-core process."""
        return await self._speak("ours_in_engine", index)

    async def silent(self, index: int) -> StreamResult:
        """This project's synthesizer without SNAC's work."""
        return await self._speak("silent", index)

    async def _speak(self, mode: str, index: int) -> StreamResult:
        from oai_server.pipeline.speech import SpeechStats

        text, _ = self.prompt(index)
        options = voice_options(self.args.max_tokens)
        result, started = StreamResult(), time.perf_counter()
        async for pcm in self.synthesizers[mode].synthesize(text, options, SpeechStats()):
            result.bytes += len(pcm)
            result.arrivals.append((time.perf_counter() - started, result.bytes // 2))
        result.ok = result.bytes > 0
        result.error = None if result.ok else "no audio"
        return result.finish(time.perf_counter() - started, self.args.prebuffer_ms)


def _with(result: StreamResult, extra: dict[str, Any]) -> StreamResult:
    result.__dict__["extra"] = extra
    return result


async def run_level(bench: Bench, mode: str, n: int) -> dict[str, Any]:
    """N concurrent streams of one mode; the `summarize` report plus raw-engine extras."""
    stream = getattr(bench, mode)

    async def guarded(i: int) -> StreamResult:
        try:
            return await stream(i)
        except Exception as exc:  # a failed stream is a result, not a crash of the sweep
            return StreamResult(error=f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    results = await asyncio.gather(*(guarded(i) for i in range(n)))
    summary = summarize(n, results, time.perf_counter() - started)
    extras = [r.__dict__.get("extra") for r in results if r.ok and r.__dict__.get("extra")]
    if extras:
        from _common import spread

        summary["first_token_ms"] = {
            k: None if v is None else v * 1000 for k, v in spread([e["first_token_s"] for e in extras]).items()
        }
        summary["tokens_per_s_per_stream"] = spread([e["tokens_per_s"] for e in extras])
        summary["engine_tokens_total"] = sum(e["tokens"] for e in extras)
        summary["aggregate_engine_tokens_per_s"] = summary["engine_tokens_total"] / summary["wall_s"]
    return summary


def silence(windows: int, shape: WindowShape) -> np.ndarray:
    """int16 zeros ``[windows, lead + 2048 * emitted]``: a batch of `shape`'s decoded length (the seam before the
    chunk, then the chunk), as SNAC would return it."""
    return np.zeros((windows, shape[3] + 2048 * shape[2]), dtype=np.int16)


class SilentDecoder(SnacDecoder):
    """The `silent` mode's decoder: the right number of zero samples, no SNAC work."""

    def decode_frames(self, frames: np.ndarray, shape: WindowShape) -> np.ndarray:
        """Silence of the batch's decoded length."""
        return silence(len(frames), shape)

    def decode_batches(self, batches: Sequence[tuple[np.ndarray, WindowShape]]) -> list[np.ndarray | Exception]:
        """A worker round's batches, each silence (no graph replays either)."""
        return [self.decode_frames(frames, shape) for frames, shape in batches]


async def build(args: argparse.Namespace) -> Bench:
    """Engine, tokenizer and SNAC from the arguments."""
    from snac import SNAC

    from oai_server.codec.snac_model import load_snac, resolve_snac_dtype
    from oai_server.codec.snac_service import EngineSnacDecoder, SnacService, service_address
    from oai_server.codec.snac_window_policy import WindowPolicy, crops_decodes, fills_windows
    from oai_server.engines.loading import load_tokenizer

    tokenizer = load_tokenizer(args.tts_model)
    seed_snac = SNAC.from_pretrained(args.snac).to(args.snac_device).eval()  # as the seed loads it
    snac_dtype = resolve_snac_dtype(args.snac_dtype, args.snac_device)  # as the server loads it
    decoders: dict[str, SnacDecoder] = {}
    if "ours" in args.modes:
        decoders["ours"] = SnacDecoder(
            load_snac(args.snac, args.snac_device, snac_dtype, args.snac_depthwise),
            args.snac_device,
            64,
            args.snac_fusion,
            args.snac_round_slices,
        )
    if "silent" in args.modes:
        decoders["silent"] = SilentDecoder(None, "cpu", 64)
    windows = WindowPolicy(
        frames_per_decode=args.frames_per_decode,
        first_lookahead_frames=args.snac_first_lookahead_frames,
        fill=fills_windows("auto", args.snac_device),  # as the server's --snac-fill-windows
        crop=crops_decodes(args.snac_crop_decodes, args.snac_device),  # as the server's --snac-crop-decodes
    )
    in_engine = "ours_in_engine" in args.modes
    engine: TokenEngine
    if args.engine == "vllm":
        engine = await vllm_engines(args, in_engine)
    else:
        from oai_server.engines.transformers_engine import TransformersEngine

        engine = await asyncio.to_thread(
            TransformersEngine,
            args.tts_model,
            kind="transformers-orpheus",
            max_model_len=args.max_model_len,
            max_concurrency=max(args.concurrency),
        )
        if in_engine:  # no engine process: the service runs in this one, over the same connection
            SnacService(service_address(snac_services(1)[0], os.getpid()), args.snac_device).start()
    if in_engine:
        in_engine_decoders = [
            await asyncio.to_thread(
                EngineSnacDecoder.load,
                service,
                args.snac,
                args.snac_device,
                snac_dtype,
                64,
                args.snac_fusion,
                args.snac_depthwise,
                args.snac_round_slices,
            )
            for service in snac_services(args.engines)
        ]
        decoders["ours_in_engine"] = (
            ReplicaSnacDecoders(engine, in_engine_decoders)
            if isinstance(engine, BalancedEngine)
            else in_engine_decoders[0]
        )
    bench = Bench(args, engine, tokenizer, seed_snac)
    bench.services = in_engine_decoders if in_engine else []
    for mode, decoder in decoders.items():
        await decoder.capture_graphs(windows.decode_shapes)  # as the server's warm-up does (CUDA only)
        bench.synthesizers[mode] = speech_synthesizer(
            engine, tokenizer, decoder, windows, args.max_tokens, args.max_model_len
        )
    return bench


def snac_services(engines: int) -> list[str]:
    """The SNAC service name of each Orpheus engine (one engine keeps the name earlier runs used)."""
    return [BENCH_SNAC_SERVICE] if engines == 1 else [f"{BENCH_SNAC_SERVICE}-{i}" for i in range(engines)]


async def vllm_engines(args: argparse.Namespace, in_engine: bool) -> TokenEngine:
    """`args.engines` vLLM Orpheus engines on the GPU (one: the engine itself; more: the server's balancer
    over them), each with `--gpu-memory-utilization` and an equal share of the largest N as its batch."""
    from oai_server.engines.vllm_engine import VLLMEngine

    engines: list[TokenEngine] = []
    try:
        for service in snac_services(args.engines):
            engines.append(
                await VLLMEngine.create(
                    orpheus_engine_spec(
                        args,
                        max_num_seqs=-(-max(args.concurrency) // args.engines),
                        snac_service=service if in_engine else None,
                        enforce_eager=args.enforce_eager,
                    ),
                    frame_deltas=args.frame_deltas,
                    arrival_window_ms=args.arrival_window_ms,
                    kind="vllm-orpheus",
                )
            )
    except BaseException:
        for started in engines:
            await started.close()
        raise
    return engines[0] if len(engines) == 1 else BalancedEngine(engines)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then sweep every mode; the report."""
    from oai_server.engines.warmup import tts_warmup_request, warm_engine

    bench = await build(args)
    report: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}, "modes": {}, "capacity": {}}
    try:
        # e.g. the CUDA priorities of each engine's stream and its SNAC service's (--snac-low-priority)
        report["snac_services"] = [await asyncio.to_thread(d.connection.call, "stats") for d in bench.services]
        # As the server does before readiness: a sampled batch at every size, so no level pays for
        # Triton JIT compiles of the sampler (a 9 s stall at the first 64-stream batch otherwise).
        prompt, params = tts_warmup_request(bench.tokenizer)
        await warm_engine(bench.engine, prompt, params, sorted({1, *args.concurrency}))
        if {"raw", "seed"} & set(args.modes):  # vLLM's own top-p: its Triton kernel compiles at the first batch >= 8
            vocab = dataclasses.replace(params, orpheus_band_sampling=False)
            await warm_engine(bench.engine, prompt, vocab, sorted({1, *args.concurrency}))
        for mode in args.modes:
            await run_level(bench, mode, min(4, max(args.concurrency)))  # warm-up, not recorded
            levels = []
            for n in args.concurrency:
                levels.append(await run_level(bench, mode, n))
                level = levels[-1]
                print(
                    f"[{mode}] N={n}: ok {level['ok']}/{n}, {level['aggregate_audio_tokens_per_s']:.0f} tok/s, "
                    f"RTF p99 {level['rtf']['p99']}, TTFA p95 {level['ttfa_ms']['p95']} ms",
                    flush=True,
                )
            report["modes"][mode] = levels
            criteria = Criteria(args.ttfa_p95_ms, args.rtf_p99_max, args.prebuffer_ms)
            report["capacity"][mode] = capacity_block(levels, criteria)
    finally:
        await bench.engine.close()
        for synthesizer in bench.synthesizers.values():
            synthesizer.decoder.close()
    report["ratios_over_raw"] = ratios_over_raw(report["modes"])
    cap = report["capacity"]
    if "ours" in cap and "seed" in cap:
        seed_n = cap["seed"]["largest_n_zero_underruns"]
        ours_n = cap["ours"]["largest_n_zero_underruns"]
        report["ratio_ours_over_seed_real_time_streams"] = ours_n / seed_n if seed_n else None
    return report


def ratios_over_raw(modes: dict[str, list[dict[str, Any]]]) -> dict[str, dict[int, float]]:
    """Each mode's aggregate audio tokens/s over the raw mode's at the same N (measured in this run)."""
    raw = {level["concurrency"]: level["aggregate_audio_tokens_per_s"] for level in modes.get("raw", [])}
    return {
        mode: {
            level["concurrency"]: level["aggregate_audio_tokens_per_s"] / raw[level["concurrency"]]
            for level in levels
            if raw.get(level["concurrency"])
        }
        for mode, levels in modes.items()
        if mode != "raw" and raw
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI options; `--demo` fills in the CPU demo models and a tiny sweep."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", action="store_true", help="CPU smoke test on the demo models")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "oai-cache", help="--demo models")
    p.add_argument("--engine", choices=("vllm", "transformers"), default=None)
    p.add_argument("--tts-model", default=None)
    p.add_argument("--snac", default=None)
    p.add_argument("--snac-device", default=None)
    p.add_argument("--modes", default="raw,seed,ours")
    p.add_argument("--snac-dtype", default="auto", help="ours: SNAC precision (the server's --snac-dtype)")
    p.add_argument("--snac-crop-decodes", default="auto", choices=("auto", "on", "off"), help="ours: the server's flag")
    p.add_argument("--snac-depthwise", default="auto", choices=("auto", "aten", "triton"), help="ours: the server's")
    p.add_argument(
        "--snac-fusion", default="off", choices=["off", "decoder"],
        help="ours: SNAC's CUDA graphs of its compiled decoder (the server's --snac-fusion)",
    )  # fmt: skip
    p.add_argument("--concurrency", default=None, help="comma-separated N (default 1,8,32,64; demo 1,2)")
    p.add_argument("--max-tokens", type=int, default=None, help="audio tokens per stream (default 1024; demo 70)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--text", default=None)
    p.add_argument("--prebuffer-ms", type=float, default=250.0)
    p.add_argument("--ttfa-p95-ms", type=float, default=500.0, help="capacity: TTFA p95 limit")
    p.add_argument("--rtf-p99-max", type=float, default=1.0, help="capacity: RTF p99 limit")
    p.add_argument("--frames-per-decode", type=int, default=4, help="ours: SNAC frames per steady decode (K)")
    p.add_argument(
        "--snac-first-lookahead-frames", type=int, default=None,
        help="ours: lookahead of each stream's first frame (the server's flag; default: the lookahead's, 1)",
    )  # fmt: skip
    p.add_argument("--seed-decode", choices=("loop", "thread"), default="loop")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.35, help="of each engine")
    p.add_argument("--engines", type=int, default=1, help="vLLM Orpheus engines on the GPU, behind the balancer")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument(
        "--snac-low-priority", action="store_true",
        help="ours_in_engine: the engine's kernels on a stream of higher priority than SNAC's (the server's flag)",
    )  # fmt: skip
    add_engine_variant_flags(p)
    p.add_argument("--quantization", default=None, help="vLLM weight quantization of Orpheus, e.g. fp8")
    p.add_argument("--kv-cache-dtype", default="auto", help="vLLM KV-cache dtype of Orpheus (auto or fp8)")
    p.add_argument("--stream-interval", type=int, default=7, help="vLLM stream_interval (the server's default)")
    p.add_argument("--out", type=Path, default=None, help="JSON report path")
    args = p.parse_args(argv)
    if args.demo:
        from oai_server.engines.demo import build_demo_models

        demo = build_demo_models(args.cache_dir)
        args.tts_model = args.tts_model or str(demo.tts_dir)
        args.snac = args.snac or str(demo.snac_dir)
        args.engine = args.engine or "transformers"
    if not (args.tts_model and args.snac):
        p.error("--tts-model and --snac are required (or --demo)")
    args.engine = args.engine or ("vllm" if torch.cuda.is_available() else "transformers")
    if args.engines < 1 or (args.engines > 1 and args.engine != "vllm"):
        p.error("--engines: 1, or more with --engine vllm")
    args.snac_device = args.snac_device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.concurrency = [int(x) for x in (args.concurrency or ("1,2" if args.demo else "1,8,32,64")).split(",")]
    args.max_tokens = args.max_tokens or (70 if args.demo else 1024)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the baselines, print the tables, write the JSON."""
    args = parse_args(argv)
    report = asyncio.run(amain(args))
    for mode, levels in report["modes"].items():
        print(table(f"\n== {mode} ({args.engine}, {args.max_tokens} tokens/stream) ==", levels))
        cap = report["capacity"][mode]
        print(f"capacity: {cap['capacity']}; largest N with zero underruns: {cap['largest_n_zero_underruns']}")
    for mode, ratios in report["ratios_over_raw"].items():
        print(f"{mode} / raw aggregate tokens/s: " + ", ".join(f"N={n}: {r:.3f}" for n, r in ratios.items()))
    if "ratio_ours_over_seed_real_time_streams" in report:
        print(f"real-time streams ours / seed: {report['ratio_ours_over_seed_real_time_streams']}")
    out = args.out or Path(tempfile.mkdtemp(prefix="oai-baselines-")) / "baselines.json"
    write_json(out, report)
    print(f"wrote {out}")
    ok = sum(lv["ok"] for levels in report["modes"].values() for lv in levels)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
