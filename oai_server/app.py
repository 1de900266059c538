"""The application factory: `create_app(settings)` builds the FastAPI app.

Engines are opened in the lifespan (or injected by tests) and kept, with the serving objects
built on them, in one `serving.services.Services` object on `app.state`. Nothing lives in module globals.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .engines.bundle import Engines
from .engines.factory import open_engines, resolve_models
from .routes.docs import install_openapi
from .routes.errors import install_error_handlers
from .routes.middleware import install_middleware
from .serving.services import build_services
from .settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, engines: Engines | None = None) -> FastAPI:
    """Build the app. With `engines` given (tests), the lifespan uses them and does not close them."""
    settings = resolve_models(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engines is not None:
            app.state.services = build_services(settings, engines, app.state.metrics)
            yield
            app.state.services.close()
            return
        async with open_engines(settings) as opened:
            services = build_services(settings, opened, app.state.metrics)
            app.state.services = services
            logger.info("ready: chat model %s, speech model %s", settings.chat_model_id, settings.speech_model_id)
            yield
            drained = await services.admission.wait_idle(settings.shutdown_drain_seconds)
            if not drained:
                logger.warning("shutdown: aborting %d streams still in flight", services.admission.active)
            services.close()

    app = FastAPI(title="oai-server", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    install_middleware(app, settings)
    from .routes import (
        audio_speech,
        audio_transcriptions,
        chat_completions,
        health,
        metrics,
        models,
        realtime,
        seed,
        web,
    )

    routers = (audio_speech, audio_transcriptions, chat_completions, models, health, seed, metrics, web, realtime)
    for module in routers:
        app.include_router(module.router)
    install_openapi(app)
    return app
