"""Builds the speech-recognition role (Whisper) and its voice activity detector, from settings."""

from __future__ import annotations

import asyncio
import logging

from ..settings import Settings
from .asr import SpeechRecognizer
from .layout import Layout
from .vad_stream import StreamingVad

logger = logging.getLogger(__name__)


async def build_asr(settings: Settings, kind: str, layout: Layout | None = None) -> SpeechRecognizer | None:
    """The ASR engine on the chosen backend, or None when disabled (or remote without an upstream).
    On vLLM it runs where the GPU `layout` puts it, with the layout's memory share."""
    if not settings.asr:
        return None
    if kind == "vllm":
        from .asr_vllm import VLLMWhisper

        if layout is None:
            from .layout import LayoutRequest, plan_layout
            from .placement import visible_cards

            layout = plan_layout(*visible_cards(), LayoutRequest.from_settings(settings))
        (plan,) = layout.role("asr")
        return await VLLMWhisper.create(
            settings.asr_model_name,
            max_model_len=settings.asr_max_model_len,
            gpu_memory_utilization=plan.memory,
            dtype=settings.dtype,
            enforce_eager=settings.enforce_eager,
            max_num_seqs=settings.asr_max_num_seqs,
            input_workers=settings.asr_input_workers,
            max_num_batched_tokens=settings.asr_max_num_batched_tokens,
            log_stats=settings.engine_log_stats,
            placement=plan.placement,
        )
    if kind == "remote":
        if not settings.asr_remote_url:
            logger.warning("engine=remote without --asr-remote-url: speech recognition is off")
            return None
        from .asr_remote import RemoteTranscriber, RemoteTranscriberConfig

        key = settings.remote_api_key.get_secret_value() if settings.remote_api_key else None
        config = RemoteTranscriberConfig(
            settings.asr_remote_url,
            settings.asr_remote_model or settings.asr_model_name,
            api_key=key,
            read_timeout=settings.remote_read_timeout,
        )
        return RemoteTranscriber(config)
    from .asr_transformers import TransformersWhisper

    return await asyncio.to_thread(
        TransformersWhisper,
        settings.asr_model_name,
        device=settings.device,
        dtype=settings.dtype,
        max_batch=settings.asr_max_batch,
        torch_threads=1 if settings.demo else None,
    )


async def build_vad(asr: SpeechRecognizer | None) -> StreamingVad | None:
    """The streaming voice activity detector (ONNX, CPU), loaded with the ASR role."""
    if asr is None:
        return None
    return await asyncio.to_thread(StreamingVad)
