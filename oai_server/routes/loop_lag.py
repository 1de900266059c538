"""The event-loop lag monitor runs for the app's lifetime; the startup heap is frozen once startup completes.

See `serving.loop_monitor` for both: the `oai_event_loop_lag_seconds` metric, and why the objects
created while starting are taken out of the garbage collector's reach.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..serving.loop_monitor import LoopLagMonitor, freeze_startup_heap

logger = logging.getLogger(__name__)


class LoopLagMiddleware:
    """Runs `monitor` while the app's lifespan runs; freezes the startup heap once startup completes.

    See `serving.loop_monitor` for both: the lag metric, and why the objects of startup are frozen.
    """

    def __init__(self, app: ASGIApp, monitor: LoopLagMonitor, gc_young_threshold: int = 0) -> None:
        self.app = app
        self.monitor = monitor
        self.gc_young_threshold = gc_young_threshold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass HTTP and WebSocket through; wrap the lifespan with the monitor."""
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        self.monitor.start()

        async def send_started(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                frozen = freeze_startup_heap(self.gc_young_threshold)  # before any request: nothing waits on it
                logger.debug("startup heap frozen: %d objects out of the collector's reach", frozen)
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        finally:
            await self.monitor.stop()
