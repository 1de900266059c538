"""One Realtime server for every realtime test: the real app on the demo engines, watched.

The chat and speech engines are wrapped (`WatchedEngine`: a `FaultyEngine` that also records
every prompt), so tests can stall a reply to keep it running (barge-in, cancel), see the
exact prompt a reply was built from (truncation), and check that nothing is left in flight.
Replies are seeded (`realtime_seed`), so they are the same on every run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from oai_server.engines.base import SamplingParams
from oai_server.engines.bundle import Engines
from oai_server.engines.demo import DemoModels
from oai_server.engines.factory import open_engines, resolve_models

from ..conftest import LiveServer, demo_settings, start_server
from ..fault_engine import Fault, FaultyEngine

SEED = 7


class WatchedEngine(FaultyEngine):
    """A `FaultyEngine` that records the prompt of every request and can stall just the next one."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.prompts: list[list[int]] = []
        self.once: Fault | None = None

    def stall_next(self, after_tokens: int = 14) -> None:
        """Stall the next request after `after_tokens` tokens (14: two SNAC frames), until it is cancelled."""
        self.raised = self.stalled = self.cancelled = 0
        self.once = Fault(after_tokens, stall=True)

    async def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        self.prompts.append(list(prompt_token_ids))
        fault, self.once = self.once or self.fault, None
        deltas = self.inner.generate(prompt_token_ids, params, request_id)
        self.live.add(request_id)
        sent = 0
        try:
            async for delta in deltas:
                yield delta
                sent += len(delta)
                if fault is not None and sent >= fault.after_tokens:
                    await self._inject(fault, sent)
            if fault is not None:
                await self._inject(fault, sent)
        finally:
            await deltas.aclose()
            self.live.discard(request_id)


@dataclass
class RealtimeServer:
    """The live server and its watched engines."""

    live: LiveServer
    llm: WatchedEngine
    tts: WatchedEngine
    engines: Engines

    @property
    def ws_url(self) -> str:
        """`ws://127.0.0.1:PORT/v1/realtime`."""
        return self.live.url.replace("http://", "ws://") + "/v1/realtime"

    @contextmanager
    def armed(self, engine: FaultyEngine, fault: Fault) -> Iterator[None]:
        """Inject `fault` into every request of `engine` inside the block."""
        engine.raised = engine.stalled = engine.cancelled = 0
        engine.fault = fault
        try:
            yield
        finally:
            engine.fault = None

    def idle(self) -> bool:
        """Nothing in flight: no response, no engine request, no admission slot but the open sessions'."""
        svc = self.live.services
        asr = self.engines.asr
        return (
            svc.admission.active == svc.realtime.open
            and not self.llm.live
            and not self.tts.live
            and self.llm.inner.active_requests() == 0
            and self.tts.inner.active_requests() == 0
            and (asr is None or asr.active_requests() == 0)
        )

    async def settled(self, timeout: float = 20.0) -> bool:
        """Wait, without blocking the test's event loop, until `idle`."""
        return await eventually(self.idle, timeout)

    def prompt_text(self, index: int = -1) -> str:
        """The chat prompt of a recorded LLM request, decoded."""
        return str(self.engines.llm_tokenizer.decode(self.llm.prompts[index]))


async def eventually(predicate: Any, timeout: float = 10.0) -> bool:
    """Poll `predicate` until it holds, letting the test's event loop run (client sockets close there)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def realtime_settings(cache: Path, **overrides: Any) -> Any:
    """Demo settings for realtime tests: seeded replies, a deadline that stalls can hit, short waits."""
    base: dict[str, Any] = {"realtime_seed": SEED, "request_timeout_seconds": 60}
    base.update(overrides)
    return resolve_models(demo_settings(cache, **base))


@pytest.fixture(scope="session")
def rt_server(demo_cache: Path, demo_models: DemoModels) -> Iterator[RealtimeServer]:
    """The shared Realtime server."""
    settings = realtime_settings(demo_cache)
    loop = asyncio.new_event_loop()  # the engines are opened (and closed) here; they serve any loop
    opened = open_engines(settings)
    real: Engines = loop.run_until_complete(opened.__aenter__())
    llm, tts = WatchedEngine(real.llm), WatchedEngine(real.tts)
    engines = replace(real, llm=llm, tts=tts)
    live = start_server(settings, engines=engines)
    try:
        yield RealtimeServer(live, llm, tts, engines)
    finally:
        if real.vad is not None:  # its batching task lives on the server's loop: close it there
            asyncio.run_coroutine_threadsafe(real.vad.close(), live.loop).result(timeout=30)
            real.vad = None
        live.stop()
        loop.run_until_complete(opened.__aexit__(None, None, None))
        loop.close()


class Wiretap:
    """Every event each Realtime connection of the test process received and sent, in order.

    The server runs in this process (a thread), so the connection class is patched to record:
    `("in", event)` for each client event the session handled, `("out", event)` for each event
    queued for the client (as dicts). `sessions` is in order of connection.
    """

    def __init__(self) -> None:
        self.by_connection: dict[int, list[tuple[str, dict[str, Any]]]] = {}

    def record(self, connection: object, direction: str, event: Any) -> None:
        key = getattr(connection, "_wiretap_key", None)
        if key is None:  # not id(): a new connection may reuse a freed one's id
            key = len(self.by_connection)
            connection._wiretap_key = key  # type: ignore[attr-defined]
        self.by_connection.setdefault(key, []).append((direction, event.model_dump(mode="json")))

    def mark(self) -> int:
        """How many connections were recorded so far (pass to `since`)."""
        return len(self.by_connection)

    def since(self, mark: int) -> list[list[tuple[str, dict[str, Any]]]]:
        """The logs of connections opened after `mark`."""
        return list(self.by_connection.values())[mark:]

    @staticmethod
    def sent(log: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """The events the server sent on one connection."""
        return [event for direction, event in log if direction == "out"]

    @staticmethod
    def received(log: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """The client events the server handled on one connection."""
        return [event for direction, event in log if direction == "in"]


@pytest.fixture(scope="session")
def wiretap() -> Iterator[Wiretap]:
    """Record every Realtime connection's events (see `Wiretap`)."""
    from oai_server.routes.realtime_connection import RealtimeConnection
    from oai_server.serving.realtime.session import RealtimeSession

    tap = Wiretap()
    send, handle = RealtimeConnection.send, RealtimeSession.handle

    async def tapped_send(self: RealtimeConnection, event: Any) -> None:
        tap.record(self, "out", event)
        await send(self, event)

    async def tapped_handle(self: RealtimeSession, event: Any) -> None:
        tap.record(self.sink, "in", event)
        await handle(self, event)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RealtimeConnection, "send", tapped_send)
        patch.setattr(RealtimeSession, "handle", tapped_handle)
        yield tap


class LogCapture(logging.Handler):
    """Every log record of the process from WARNING up (loguru's too, for pipecat), as text lines."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    def problems(self) -> list[str]:
        """Errors, and warnings about unknown, invalid or unhandled events."""
        words = ("unknown", "invalid", "validat", "unhandled", "unexpected", "failed", "error")
        return [
            line
            for line in self.lines
            if line.startswith(("ERROR", "CRITICAL")) or any(word in line.lower() for word in words)
        ]


@pytest.fixture
def client_logs() -> Iterator[LogCapture]:
    """Capture WARNING+ records of every logger (and loguru's) during one test."""
    capture = LogCapture()
    root = logging.getLogger()
    root.addHandler(capture)
    sink_id = None
    try:
        from loguru import logger as loguru_logger

        sink_id = loguru_logger.add(
            lambda m: capture.lines.append(f"{m.record['level'].name} loguru: {m.record['message']}"), level="WARNING"
        )
    except ImportError:
        pass
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        if sink_id is not None:
            from loguru import logger as loguru_logger

            loguru_logger.remove(sink_id)
