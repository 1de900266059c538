"""What the process sets up before it serves: the fd limit, the allocator, uvicorn's connection limits.

`prepare_process(settings)` runs first thing in `oai-server serve`:

- **File descriptors**: the soft `RLIMIT_NOFILE` is raised to the hard limit; a warning says so
  if it is still below what the admission limits need (`max_concurrent_streams + max_queued`
  connections plus a reserve for models, logs and Redis).
- **Allocator**: glibc gives every thread that mallocs its own arena (up to 8 per core), and the
  decoder and engine threads each keep theirs: RSS grew ~45 MB per concurrent stream and stayed
  there. `mallopt(M_ARENA_MAX, settings.malloc_arena_max)` caps the arenas (2 by default; the
  figures are in the README's reliability section), and `MALLOC_ARENA_MAX` is exported for child
  processes (vLLM's engine cores). A `MALLOC_ARENA_MAX` already in the environment wins (glibc
  read it at start); the Dockerfiles, compose file and k8s manifests set it too.

`uvicorn_options(settings, app)` is the extra `uvicorn.Config` keyword arguments: the guarded
HTTP protocol of `routes.connections` (header limits, header/body timeouts, write-stall abort,
the connection cap) and WebSocket protocol of `routes.websocket_guard` (write-stall abort), bound
to the app's metrics, and the idle keep-alive timeout (`keep_alive_timeout_seconds`, longer than
clients' connection pools keep a connection). Without `httptools`, uvicorn's h11 serves HTTP with
only the header size bounded; without `websockets` (the WebSocket guard's base), HTTP keeps every
guard and uvicorn picks its WebSocket protocol itself (`ws="auto"`: wsproto if installed, else
none); either case logs a warning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import resource
from typing import TYPE_CHECKING, Any

from .settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8
"""glibc's `mallopt` parameter number for the arena cap (malloc.h)."""
FD_RESERVE_MIN = 64
"""File descriptors kept back from connections at least (model files, logs, Redis, pipes): 1/8 of the limit."""
INFINITE_FD_TARGET = 1 << 20
"""The soft limit chosen when the hard limit is unlimited."""


def fd_reserve(fd_limit: int) -> int:
    """File descriptors not given to connections: max(64, 1/8 of the limit)."""
    return max(FD_RESERVE_MIN, fd_limit // 8)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft fd limit to the hard one; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = INFINITE_FD_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the file descriptor limit from %d to %d: %s", soft, target, exc)
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fd_limit() -> int:
    """The current soft fd limit (a large number when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return INFINITE_FD_TARGET if soft == resource.RLIM_INFINITY else soft


def max_connections(settings: Settings, limit: int) -> int:
    """The connection cap: the setting, or (0) the fd limit minus its reserve."""
    return settings.max_connections or max(16, limit - fd_reserve(limit))


def configure_allocator(settings: Settings) -> str:
    """Cap glibc's malloc arenas (see the module docstring); returns what was done, for the log."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return f"MALLOC_ARENA_MAX={os.environ['MALLOC_ARENA_MAX']} from the environment"
    if settings.malloc_arena_max == 0:
        return "glibc's default malloc arenas"
    if platform.libc_ver()[0] != "glibc":
        return "not glibc: malloc arenas left alone"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if libc.mallopt(M_ARENA_MAX, settings.malloc_arena_max) != 1:
        return "mallopt(M_ARENA_MAX) failed: malloc arenas left alone"
    os.environ["MALLOC_ARENA_MAX"] = str(settings.malloc_arena_max)  # for child processes
    return f"malloc arenas capped at {settings.malloc_arena_max}"


def prepare_process(settings: Settings) -> None:
    """Raise the fd limit and cap the allocator's arenas; warn when the limits cannot hold the settings."""
    allocator = configure_allocator(settings)
    before, after = raise_fd_limit()
    cap = max_connections(settings, after)
    logger.info("fd limit %d (was %d), connection cap %d, %s", after, before, cap, allocator)
    wanted = settings.max_concurrent_streams + settings.max_queued
    if cap < wanted:
        logger.warning(
            "the connection cap (%d, from an fd limit of %d) is below max_concurrent_streams + max_queued (%d): "
            "raise the fd limit (ulimit -n) or lower those settings",
            cap,
            after,
            wanted,
        )
    if settings.max_connections and settings.max_connections > after - fd_reserve(after):
        logger.warning(
            "max_connections %d leaves fewer than %d of %d file descriptors spare: accept() may fail silently",
            settings.max_connections,
            fd_reserve(after),
            after,
        )


def keep_alive_option(settings: Settings) -> dict[str, Any]:
    """The `uvicorn.Config` keyword argument of the idle keep-alive timeout (a part of `uvicorn_options`)."""
    return {"timeout_keep_alive": settings.keep_alive_timeout_seconds}


def uvicorn_options(settings: Settings, app: FastAPI) -> dict[str, Any]:
    """Extra `uvicorn.Config` keyword arguments: the guarded protocols, bound to `app`'s metrics, and the
    idle keep-alive timeout."""
    keep_alive = keep_alive_option(settings)
    try:
        from .routes.connections import ConnectionEvents, ConnectionLimits, bind
    except ImportError as exc:  # httptools (uvicorn[standard]) missing: h11 bounds the header bytes only
        logger.warning("connection guards off (%s): only the header size is bounded", exc)
        return {"http": "h11", "h11_max_incomplete_event_size": settings.max_header_bytes, **keep_alive}
    limits = ConnectionLimits(
        max_connections=max_connections(settings, fd_limit()),
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        write_stall_timeout=settings.write_stall_timeout_seconds,
    )
    metrics = getattr(app.state, "metrics", None)
    events = ConnectionEvents(metrics)
    if metrics is not None:
        metrics.set_live_sources(connections=lambda: len(events.connections))
    ws: type | str
    try:
        from .routes.websocket_guard import bind_websocket
    except ImportError as exc:  # websockets missing: HTTP keeps its guards, uvicorn picks wsproto or no WebSocket
        logger.warning(
            "the WebSocket (Realtime) protocol is unguarded (%s): without the websockets package uvicorn "
            "serves WebSockets through wsproto if installed, else not at all; HTTP keeps every connection guard",
            exc,
        )
        ws = "auto"
    else:
        ws = bind_websocket(limits, events)
    http = bind(limits, events)
    return {"http": http, "ws": ws, "h11_max_incomplete_event_size": settings.max_header_bytes, **keep_alive}
