"""Builds the engines a server runs on, from settings: in-process vLLM, transformers, or remote."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ..codec.snac_model import load_snac, resolve_device, resolve_snac_dtype
from ..codec.snac_service import EngineSnacDecoder
from ..codec.snac_stream import SnacDecoder, SnacDecoding
from ..codec.snac_window_policy import WindowPolicy, crops_decodes, fills_windows
from ..settings import Settings
from .asr_factory import build_asr, build_vad
from .balanced import BalancedEngine
from .base import TokenEngine
from .bundle import Engines
from .layout import Layout
from .layout_shares import EnginePlan
from .snac_replicas import ReplicaSnacDecoders

logger = logging.getLogger(__name__)


def snac_service_name(replica: int) -> str:
    """Name of the SNAC service Orpheus replica `replica` hosts with `--snac-in-engine`."""
    return f"orpheus-{replica}"


def choose_engine(settings: Settings) -> str:
    """`auto` -> vllm when it is installed and CUDA is present, else transformers."""
    if settings.engine != "auto":
        return settings.engine
    import torch

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        return "vllm"
    return "transformers"


def resolve_models(settings: Settings) -> Settings:
    """Check the settings that need more than one field, then, in the demo profile, build the tiny
    offline models and point the settings at them. Raises `ValueError` naming the bad setting."""
    from .placement import placements

    placements(settings)
    if not settings.demo:
        return settings
    from .demo import build_demo_models
    from .demo_whisper import build_demo_whisper

    demo = build_demo_models(settings.cache_dir)
    whisper = build_demo_whisper(settings.cache_dir) if settings.asr else None
    # Cap each segment at ~2 s of audio so the demo stays fast on a laptop CPU, unless the user chose a cap.
    caps: dict[str, object] = {} if "tts_max_tokens" in settings.model_fields_set else {"tts_max_tokens": 168}
    if "warmup_batch_sizes" not in settings.model_fields_set:
        caps["warmup_batch_sizes"] = [1]
    return settings.model_copy(
        update={
            **caps,
            "llm_model_name": str(demo.llm_dir),
            "tts_model_name": str(demo.tts_dir),
            "snac_model_name": str(demo.snac_dir),
            "llm_served_name": settings.llm_served_name or "demo-gemma-2",
            "tts_served_name": settings.tts_served_name or "demo-orpheus",
            **(
                {"asr_model_name": str(whisper), "asr_served_name": settings.asr_served_name or "demo-whisper"}
                if whisper is not None
                else {}
            ),
        }
    )


def gemma_stop_ids(tokenizer: Any) -> tuple[int, ...]:
    """`<end_of_turn>` and eos."""
    ids = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return tuple(sorted(i for i in ids if i is not None))


async def start_replicas(
    plans: Sequence[EnginePlan], start: Callable[[EnginePlan], Awaitable[TokenEngine]]
) -> TokenEngine:
    """Start a role's engines one after another: one plan is the engine itself, several are replicas
    behind a `BalancedEngine` with the layout's weights. A failed start closes the ones already up."""
    engines: list[TokenEngine] = []
    try:
        for plan in plans:
            engines.append(await start(plan))
    except BaseException:
        await asyncio.gather(*(engine.close() for engine in engines), return_exceptions=True)
        raise
    if len(engines) == 1:
        return engines[0]
    return BalancedEngine(engines, [plan.weight for plan in plans])


async def _build(
    settings: Settings, kind: str, layout: Layout | None = None, snac_hosts: Sequence[EnginePlan] = ()
) -> tuple[TokenEngine, TokenEngine]:
    if kind == "vllm":
        assert layout is not None, "the vLLM engines are built from a layout"
        from .vllm_args import EngineSpec
        from .vllm_engine import VLLMEngine

        async def orpheus(plan: EnginePlan) -> TokenEngine:
            return await VLLMEngine.create(
                EngineSpec(
                    settings.tts_model_name,
                    tokenizer=settings.tts_model_name,
                    max_model_len=settings.tts_max_model_len,
                    gpu_memory_utilization=plan.memory,
                    max_num_seqs=settings.tts_max_num_seqs,
                    stream_interval=settings.tts_stream_interval,
                    kv_cache_dtype=settings.tts_kv_cache_dtype,
                    quantization=settings.tts_quantization,
                    enable_prefix_caching=settings.tts_prefix_caching,
                    orpheus_slots=True,
                    snac_service=snac_service_name(snac_hosts.index(plan)) if plan in snac_hosts else None,
                    snac_low_priority=settings.snac_low_priority,
                    snac_rounds=settings.snac_rounds,
                    switch_interval_ms=settings.tts_engine_switch_interval_ms,
                    band_graphs=settings.tts_band_graphs,
                    cudagraph_mode=settings.tts_cudagraph_mode,
                    dtype=settings.dtype,
                    enforce_eager=settings.enforce_eager,
                    log_stats=settings.engine_log_stats,
                ),
                frame_deltas=settings.tts_frame_deltas,
                arrival_window_ms=settings.tts_arrival_window_ms,
                placement=plan.placement,
                kind="vllm-orpheus",
            )

        async def gemma(plan: EnginePlan) -> TokenEngine:
            return await VLLMEngine.create(
                EngineSpec(
                    settings.llm_model_name,
                    tokenizer=settings.llm_model_name,
                    max_model_len=settings.llm_max_model_len,
                    gpu_memory_utilization=plan.memory,
                    max_num_seqs=settings.llm_max_num_seqs,
                    stream_interval=settings.llm_stream_interval,
                    dtype=settings.dtype,
                    enforce_eager=settings.enforce_eager,
                    log_stats=settings.engine_log_stats,
                ),
                placement=plan.placement,
                kind="vllm-gemma",
            )

        tts = await start_replicas(layout.role("tts"), orpheus)
        try:
            llm = await start_replicas(layout.role("llm"), gemma)
        except BaseException:
            await tts.close()
            raise
        return llm, tts
    if kind == "remote":
        from .remote import RemoteEngine, RemoteEngineConfig

        assert settings.llm_remote_url and settings.tts_remote_url
        key = settings.remote_api_key.get_secret_value() if settings.remote_api_key else None

        def remote(url: str, model: str, max_model_len: int, kind: str) -> TokenEngine:
            config = RemoteEngineConfig(
                url, model, api_key=key, read_timeout=settings.remote_read_timeout, max_model_len=max_model_len
            )
            return RemoteEngine(config, kind=kind)

        return (
            remote(
                settings.llm_remote_url,
                settings.llm_remote_model or settings.llm_model_name,
                settings.llm_max_model_len,
                "remote-gemma",
            ),
            remote(
                settings.tts_remote_url,
                settings.tts_remote_model or settings.tts_model_name,
                settings.tts_max_model_len,
                "remote-orpheus",
            ),
        )
    from .transformers_engine import TransformersEngine

    # One torch thread per op for the tiny demo models: two engines and SNAC share the cores (2 ms vs 60 ms a step).
    threads = 1 if settings.demo else None

    def engine(model: str, kind: str, max_model_len: int) -> TokenEngine:
        return TransformersEngine(
            model,
            kind=kind,
            device=settings.device,
            dtype=settings.dtype,
            max_concurrency=settings.max_concurrency,
            max_model_len=max_model_len,
            torch_threads=threads,
        )

    def load() -> tuple[TokenEngine, TokenEngine]:
        llm = engine(settings.llm_model_name, "transformers-gemma", settings.llm_max_model_len)
        tts = engine(settings.tts_model_name, "transformers-orpheus", settings.tts_max_model_len)
        return llm, tts

    return await asyncio.to_thread(load)


@asynccontextmanager
async def open_engines(settings: Settings) -> AsyncIterator[Engines]:
    """Load tokenizers, engines and SNAC for `settings` (already resolved); close them on exit."""
    # transformers' lazy module import is not thread-safe: resolve it here before the loader threads.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from .loading import load_tokenizer

    kind = choose_engine(settings)
    logger.info(
        "loading engines (%s): llm=%s tts=%s asr=%s",
        kind,
        settings.llm_model_name,
        settings.tts_model_name,
        settings.asr_model_name if settings.asr else "off",
    )
    llm_tokenizer, tts_tokenizer = await asyncio.gather(
        asyncio.to_thread(load_tokenizer, settings.llm_model_name),
        asyncio.to_thread(load_tokenizer, settings.tts_model_name),
    )
    layout = gpu_layout(settings) if kind == "vllm" else None
    device = layout.snac_device if layout is not None else resolve_device(settings.snac_device)
    dtype = resolve_snac_dtype(settings.snac_dtype, device)
    snac_hosts = snac_hosts_of(settings, layout)
    snac: SnacDecoding | None = None
    if not snac_hosts:
        snac_model = await asyncio.to_thread(
            load_snac, settings.snac_model_name, device, dtype, settings.snac_depthwise
        )
        snac = SnacDecoder(
            snac_model, device, settings.snac_max_batch, settings.snac_fusion, settings.snac_round_slices
        )
    try:
        llm, tts = await _build(settings, kind, layout, snac_hosts)
    except BaseException:
        if snac is not None:
            snac.close()
        raise
    if snac is None:
        try:
            snac = await engine_snac_decoders(settings, tts, len(snac_hosts), device, dtype)
        except BaseException:
            await asyncio.gather(llm.close(), tts.close(), return_exceptions=True)
            raise
    engines = Engines(llm, llm_tokenizer, gemma_stop_ids(llm_tokenizer), tts, tts_tokenizer, snac)
    try:
        engines.asr = await build_asr(settings, kind, layout)
        engines.vad = await build_vad(engines.asr)
    except BaseException:
        await engines.close()
        raise
    try:
        if settings.warmup_batch_sizes:
            from .warmup import warm_up

            sizes = settings.warmup_batch_sizes
            llm_sizes = [size for size in sizes if size <= settings.llm_max_num_seqs]
            await warm_up(engines, sizes, llm_sizes, window_policy(settings), settings.snac_cuda_graphs)
        yield engines
    finally:
        await engines.close()


def snac_hosts_of(settings: Settings, layout: Layout | None) -> tuple[EnginePlan, ...]:
    """The Orpheus engines whose processes decode SNAC (`--snac-in-engine` with vLLM), each the streams
    it generates; empty: the server decodes SNAC."""
    if not settings.snac_in_engine:
        return ()
    if layout is None:
        if "snac_in_engine" in settings.model_fields_set:
            logger.warning("--snac-in-engine needs the vLLM engines; the server decodes SNAC")
        return ()
    hosts = layout.snac_hosts()
    if hosts:
        logger.info("SNAC decodes in the process of each Orpheus engine, on cards %s", layout.snac_cards())
    elif layout.snac_card is not None and layout.snac_card not in {c for p in layout.role("tts") for c in p.cards}:
        logger.info("SNAC decodes in the server on %s, a card without Orpheus", layout.snac_device)
    else:
        logger.warning(
            "--snac-in-engine: an Orpheus engine spans cards or shares one with another Orpheus engine; "
            "the server decodes SNAC on %s",
            layout.snac_device,
        )
    return hosts


async def engine_snac_decoders(
    settings: Settings, tts: TokenEngine, hosts: int, device: str, dtype: Any
) -> SnacDecoding:
    """Connect to the SNAC service of each of the `hosts` Orpheus engines (all of `tts`'s replicas when
    there are several: each stream's windows then go to its replica's service)."""
    decoders: list[SnacDecoder] = []
    try:
        for replica in range(hosts):
            name = snac_service_name(replica)
            decoders.append(
                await asyncio.to_thread(
                    EngineSnacDecoder.load,
                    name,
                    settings.snac_model_name,
                    device,
                    dtype,
                    settings.snac_max_batch,
                    settings.snac_fusion,
                    settings.snac_depthwise,
                    settings.snac_round_slices,
                )
            )
    except BaseException:
        for decoder in decoders:
            decoder.close()
        raise
    if hosts == 1:
        return decoders[0]
    assert isinstance(tts, BalancedEngine), "several SNAC services come with several Orpheus replicas"
    return ReplicaSnacDecoders(tts, decoders)


def gpu_layout(settings: Settings) -> Layout:
    """The layout of the vLLM engines on the cards this process sees, logged in one block."""
    from .layout import LayoutRequest, plan_layout
    from .placement import visible_cards

    layout = plan_layout(*visible_cards(), LayoutRequest.from_settings(settings))
    logger.info("%s", layout.describe())
    for warning in hidden_queue_warnings(settings, layout):
        logger.warning("%s", warning)
    return layout


ROLE_LABELS = {"tts": "Orpheus", "llm": "chat"}


def hidden_queue_warnings(settings: Settings, layout: Layout) -> list[str]:
    """A warning for each engine role that takes fewer requests at once than the server admits: past its
    replicas' max_num_seqs, admitted requests wait inside vLLM for one to end, out of the queue timeout's and
    the 429's reach."""
    warnings = []
    for role, flag, seqs in (
        ("tts", "--tts-max-num-seqs", settings.tts_max_num_seqs),
        ("llm", "--llm-max-num-seqs", settings.llm_max_num_seqs),
    ):
        replicas = sum(plan.placement.data_parallel for plan in layout.role(role))
        if replicas and seqs * replicas < settings.max_concurrent_streams:
            warnings.append(
                f"--max-concurrent-streams {settings.max_concurrent_streams} admits more requests than the "
                f"{ROLE_LABELS[role]} engines take at once ({flag} {seqs} x {replicas} replica(s)): the rest wait "
                f"inside vLLM for a request to end; raise {flag} or lower --max-concurrent-streams"
            )
    return warnings


def window_policy(settings: Settings) -> WindowPolicy:
    """The SNAC window settings."""
    return WindowPolicy(
        settings.snac_context_frames,
        settings.snac_lookahead_frames,
        settings.snac_frames_per_decode,
        settings.snac_seam_samples,
        settings.snac_first_lookahead_frames,
        settings.snac_ramp,
        settings.snac_hurry_lead_ms,
        settings.snac_grow_lead,
        fills_windows(settings.snac_fill_windows, resolve_device(settings.snac_device), settings.snac_cuda_graphs),
        settings.snac_stretch_frames,
        crops_decodes(settings.snac_crop_decodes, resolve_device(settings.snac_device)),
    )
