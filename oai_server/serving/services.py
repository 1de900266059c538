"""The serving objects of one running server, built on its engines: what the routes use."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..engines.bundle import Engines
from ..engines.factory import window_policy
from ..metrics import Metrics
from ..pipeline.speech import SpeechSynthesizer
from ..pipeline.voices import VoiceCatalog
from ..settings import Settings
from .admission import Admission
from .audio_store import AudioStore, MemoryAudioStore, RedisAudioStore, SqliteAudioStore
from .chat import ChatServing
from .headroom import HeadroomGate
from .realtime.service import RealtimeServing
from .realtime.session import SessionDeps
from .reply import ReplyService
from .speech import SpeechServing
from .transcription import TranscriptionService


@dataclass
class Services:
    """What the routes use; built once per app in the lifespan."""

    settings: Settings
    engines: Engines
    voices: VoiceCatalog
    replies: ReplyService
    speech: SpeechServing
    chat: ChatServing
    admission: Admission
    audio_store: AudioStore
    transcription: TranscriptionService
    realtime: RealtimeServing
    headroom: HeadroomGate | None = None
    """Admission by real-time headroom for requests that speak (None when `--no-headroom-admission`)."""
    metrics: Metrics | None = None
    started_at: float = field(default_factory=time.time)

    def close(self) -> None:
        """Release what the serving objects hold beside the engines (the audio worker threads)."""
        self.transcription.close()


def build_services(settings: Settings, engines: Engines, metrics: Metrics | None = None) -> Services:
    """Wire the serving objects onto the engines."""
    headroom = (
        HeadroomGate(
            margin=settings.headroom_margin,
            overload_margin=settings.headroom_overload_margin,
            overload_hold_s=settings.headroom_overload_hold_seconds,
            min_streams=settings.headroom_min_streams,
            wait_s=settings.headroom_wait_seconds,
        )
        if settings.headroom_admission
        else None
    )
    synthesizer = SpeechSynthesizer(
        engines.tts,
        engines.tts_tokenizer,
        engines.snac,
        windows=window_policy(settings),
        tokens_per_char=settings.tts_tokens_per_char,
        max_tokens=settings.tts_max_tokens,
        max_model_len=settings.tts_max_model_len,
        observer=headroom,
    )
    store: AudioStore
    if settings.redis_url:
        store = RedisAudioStore(settings.redis_url)
    elif settings.audio_store_path is not None:
        store = SqliteAudioStore(settings.audio_store_path, settings.audio_cache_size)
    else:
        store = MemoryAudioStore(settings.audio_cache_size)
    voices = VoiceCatalog(
        tuple(settings.voices),
        settings.default_voice,
        settings.tts_temperature,
        settings.tts_top_p,
        settings.tts_repetition_penalty,
    )
    replies = ReplyService(
        settings, engines.llm, engines.llm_tokenizer, engines.llm_stop_token_ids, synthesizer, store, metrics
    )
    speech = SpeechServing(settings, synthesizer, voices, metrics)
    transcription = TranscriptionService(settings, engines.asr)
    chat = ChatServing(settings, replies, store, voices, transcription)
    admission = Admission(settings.max_concurrent_streams, settings.max_queued, settings.queue_timeout_seconds)
    realtime = RealtimeServing(
        SessionDeps(settings, replies, voices, admission, engines.asr, engines.vad, transcription, metrics)
    )
    return Services(
        settings, engines, voices, replies, speech, chat, admission, store, transcription, realtime, headroom, metrics
    )
