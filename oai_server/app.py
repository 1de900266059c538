"""The application factory: `create_app(settings)` builds the FastAPI app.

Engines are opened in the lifespan (or injected by tests) and kept, with the serving objects
built on them, in one `Services` object on `app.state`. Nothing lives in module globals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from .admission import Admission
from .audio_store import AudioStore, MemoryAudioStore, RedisAudioStore
from .engines.factory import Engines, open_engines, resolve_models, window_policy
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import install_middleware
from .pipeline.speech import SpeechSynthesizer
from .serving.chat import ChatServing
from .serving.speech import SpeechServing
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """What the routes use; built once per app in the lifespan."""

    settings: Settings
    engines: Engines
    speech: SpeechServing
    chat: ChatServing
    admission: Admission
    audio_store: AudioStore
    started_at: float = field(default_factory=time.time)


def build_services(settings: Settings, engines: Engines, metrics: Metrics | None = None) -> Services:
    """Wire the serving objects onto the engines."""
    synthesizer = SpeechSynthesizer(
        engines.tts,
        engines.tts_tokenizer,
        engines.snac,
        windows=window_policy(settings),
        tokens_per_char=settings.tts_tokens_per_char,
        max_tokens=settings.tts_max_tokens,
        max_model_len=settings.tts_max_model_len,
    )
    store: AudioStore = (
        RedisAudioStore(settings.redis_url) if settings.redis_url else MemoryAudioStore(settings.audio_cache_size)
    )
    speech = SpeechServing(settings, synthesizer, metrics)
    chat = ChatServing(
        settings,
        engines.llm,
        engines.llm_tokenizer,
        engines.llm_stop_token_ids,
        synthesizer,
        store,
        speech.voice_options,
        metrics,
    )
    admission = Admission(settings.max_concurrent_streams, settings.max_queued, settings.queue_timeout_seconds)
    return Services(settings, engines, speech, chat, admission, store)


def create_app(settings: Settings | None = None, engines: Engines | None = None) -> FastAPI:
    """Build the app. With `engines` given (tests), the lifespan uses them and does not close them."""
    settings = resolve_models(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engines is not None:
            app.state.services = build_services(settings, engines, app.state.metrics)
            yield
            return
        async with open_engines(settings) as opened:
            services = build_services(settings, opened, app.state.metrics)
            app.state.services = services
            logger.info("ready: chat model %s, speech model %s", settings.chat_model_id, settings.speech_model_id)
            yield
            drained = await services.admission.wait_idle(settings.shutdown_drain_seconds)
            if not drained:
                logger.warning("shutdown: aborting %d streams still in flight", services.admission.active)

    app = FastAPI(title="oai-server", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    install_middleware(app, settings)
    from .routes import audio_speech, chat_completions, health, metrics, models, seed, web

    for module in (audio_speech, chat_completions, models, health, seed, metrics, web):
        app.include_router(module.router)
    return app
