"""Builds the speech-recognition role (Whisper) and its voice activity detector, from settings."""

from __future__ import annotations

import asyncio
import logging

from ..settings import Settings
from .asr import SpeechRecognizer
from .vad import StreamingVad

logger = logging.getLogger(__name__)


async def build_asr(settings: Settings, kind: str) -> SpeechRecognizer | None:
    """The ASR engine on the chosen backend, or None when disabled (or remote without an upstream)."""
    if not settings.asr:
        return None
    if kind == "vllm":
        from .asr_vllm import VLLMWhisper
        from .placement import placements

        return await VLLMWhisper.create(
            settings.asr_model_name,
            max_model_len=settings.asr_max_model_len,
            gpu_memory_utilization=settings.asr_gpu_memory_utilization,
            dtype=settings.dtype,
            enforce_eager=settings.enforce_eager,
            max_num_seqs=settings.asr_max_num_seqs,
            placement=placements(settings)["asr"],
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
