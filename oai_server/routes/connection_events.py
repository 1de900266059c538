"""The limits every connection is held to, and the record of connections the server closes or refuses.

`ConnectionLimits` is built from the settings at start (`runtime_limits.uvicorn_options`);
`ConnectionEvents` counts each closed or refused connection in
`oai_connections_closed_total{reason}` and logs it, at most once per `LOG_EVERY_SECONDS` per
reason (with how many happened since), so a flood of hostile connections cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..metrics import Metrics

logger = logging.getLogger("oai_server.routes.connections")

LOG_EVERY_SECONDS = 10.0
"""A reason is logged at most this often."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits one server enforces on every connection (see `connections` and `write_stall`)."""

    max_connections: int
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    write_stall_timeout: float


@dataclass
class ConnectionEvents:
    """Counts (metrics) and rate-limited logs of the connections the server closes or refuses."""

    metrics: Metrics | None = None
    connections: set[Any] = field(default_factory=set)
    """uvicorn's set of open connection protocols, bound when the first connection opens."""
    _last_logged: dict[str, float] = field(default_factory=dict)
    _unlogged: dict[str, int] = field(default_factory=dict)

    def closed(self, reason: str, message: str) -> None:
        """Count one closed or refused connection; log `message` unless `reason` was logged just now."""
        if self.metrics is not None:
            self.metrics.count_connection_closed(reason)
        now = time.monotonic()
        if now - self._last_logged.get(reason, -LOG_EVERY_SECONDS) < LOG_EVERY_SECONDS:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return
        self._last_logged[reason] = now
        more = self._unlogged.pop(reason, 0)
        suffix = f" ({more} more since the last such line)" if more else ""
        logger.warning("%s%s", message, suffix)
