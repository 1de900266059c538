"""Shared fixtures: the tiny demo models and a real server on loopback.

The server is the real app (`create_app`) on the real transformers engines and SNAC, served by
uvicorn on 127.0.0.1 in a background thread, so clients see real streaming over sockets.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from oai_server.app import create_app
from oai_server.engines.bundle import Engines
from oai_server.engines.demo import DemoModels, build_demo_models
from oai_server.serving.services import Services
from oai_server.settings import Settings


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo-model cache for the whole session (OAI_TEST_CACHE reuses one across runs)."""
    cache = os.environ.get("OAI_TEST_CACHE")
    return Path(cache) if cache else tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="session")
def demo_models(demo_cache: Path) -> DemoModels:
    """The tiny random-weight models."""
    return build_demo_models(demo_cache)


def demo_settings(cache: Path, **overrides: Any) -> Settings:
    """Demo-profile settings for tests (CPU, small limits)."""
    base: dict[str, Any] = {
        "demo": True,
        "cache_dir": cache,
        "port": 0,
        "device": "cpu",
        "snac_device": "cpu",
        "max_concurrency": 4,
    }
    base.update(overrides)
    return Settings(**base)


@dataclass
class LiveServer:
    """A running server: its base URL and the app (for looking at engine state)."""

    url: str
    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def services(self) -> Services:
        """The app's services (engines, admission, ...)."""
        return self.app.state.services  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Shut the server down and wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (in its own thread)."""
        return self.server.servers[0].get_loop()

    def tasks(self) -> collections.Counter[str]:
        """The asyncio tasks alive on the server's loop, counted by coroutine name."""

        async def alive() -> collections.Counter[str]:
            me = asyncio.current_task()
            return collections.Counter(
                getattr(task.get_coro(), "__qualname__", repr(task.get_coro()))
                for task in asyncio.all_tasks()
                if task is not me
            )

        return asyncio.run_coroutine_threadsafe(alive(), self.loop).result(timeout=10)


def start_server(settings: Settings, engines: Engines | None = None) -> LiveServer:
    """Start the app (on `engines` if given) on a free loopback port and wait until it is ready."""
    app = create_app(settings, engines=engines)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveServer(f"http://127.0.0.1:{port}", app, server, thread)


@pytest.fixture(scope="session")
def live_server(demo_cache: Path, demo_models: DemoModels) -> Iterator[LiveServer]:
    """The shared server most API tests talk to."""
    server = start_server(demo_settings(demo_cache))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(live_server: LiveServer) -> Any:
    """The official openai SDK pointed at the live server."""
    from openai import OpenAI

    return OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-test", max_retries=0, timeout=60)


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll `predicate` until it is true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
