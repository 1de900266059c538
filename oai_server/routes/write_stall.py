"""Write-stall detection: a client that stops reading loses its connection after `write_stall_timeout`.

While a connection has something to deliver (bytes in the transport's buffer or in the kernel's
send queue), a timer checks every `CHECK_SECONDS` whether the client acknowledged anything since
the last check (Linux `TCP_INFO.tcpi_bytes_acked`). A client whose application stopped reading
fills its receive window and then acknowledges nothing; after `write_stall_timeout` without
progress the transport is aborted (`close()` would wait forever for the buffer to drain). The
app then sees a disconnect at once, so a stream's engine requests are aborted and its admission
slot is freed. This does not depend on the send buffer size: the kernel autotunes it up to
megabytes, which at demo speeds would take minutes of audio to fill.

Without `TCP_INFO` (not Linux) the transport's own flow control is the signal: paused for writing
(its buffer past the high-water mark) the whole time counts as no progress.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
import time
from typing import Any, ClassVar

from .connection_events import ConnectionEvents, ConnectionLimits

CHECK_SECONDS = 1.0
"""How often a connection with data in flight is checked (at most a quarter of the timeout)."""
_TCP_INFO_BYTES_ACKED = 120
"""Offset of `tcpi_bytes_acked` (u64) in Linux's `struct tcp_info` (since Linux 4.1)."""


def bytes_acked(sock: Any) -> int | None:
    """Bytes the peer acknowledged so far on a TCP socket, or None where the kernel does not say."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 192)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_BYTES_ACKED + 8:
        return None
    return int(struct.unpack_from("Q", info, _TCP_INFO_BYTES_ACKED)[0])


def unacknowledged_bytes(sock: Any) -> int:
    """Bytes in the kernel's send queue (sent but not acknowledged, or not sent yet); 0 if unknown."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


class WriteStallGuard:
    """Mixin before a uvicorn protocol in its bases: `_watch_writes()` while a response may be sending;
    aborts on a stall. It takes the protocol's `pause_writing` / `resume_writing` as its no-progress signal."""

    limits: ClassVar[ConnectionLimits]
    events: ClassVar[ConnectionEvents]
    transport: asyncio.Transport
    _write_timer: asyncio.TimerHandle | None = None
    _write_paused_flag = False
    _last_acked: int | None = None
    _last_progress = 0.0

    def _nothing_to_send(self) -> bool:
        """Whether no response is in progress (the watch stops then); protocols refine it."""
        return False

    def _watch_writes(self) -> None:
        """Start checking for progress (idempotent)."""
        if self._write_timer is None:
            self._last_acked = None
            self._last_progress = time.monotonic()
            self._schedule_write_check()

    def _stop_watching_writes(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _schedule_write_check(self) -> None:
        interval = min(CHECK_SECONDS, self.limits.write_stall_timeout / 4)
        self._write_timer = asyncio.get_running_loop().call_later(interval, self._check_writes)

    def pause_writing(self) -> None:
        """The transport's buffer is full: the protocol's own flow control, and no progress for the watch."""
        super().pause_writing()  # type: ignore[misc]  # the uvicorn protocol after this mixin in the MRO
        self._write_paused_flag = True

    def resume_writing(self) -> None:
        """The transport's buffer drained."""
        super().resume_writing()  # type: ignore[misc]
        self._write_paused_flag = False

    def _check_writes(self) -> None:
        self._write_timer = None
        buffered = self.transport.get_write_buffer_size()
        if buffered == 0 and (self.transport.is_closing() or self._nothing_to_send()):
            return  # idle: the next response starts the watch again
        sock = self.transport.get_extra_info("socket")
        acked = bytes_acked(sock)
        now = time.monotonic()
        if acked is None:
            progressing = not self._write_paused_flag
        else:
            waiting = buffered + unacknowledged_bytes(sock)
            progressing = waiting == 0 or acked != self._last_acked
            self._last_acked = acked
        if progressing:
            self._last_progress = now
        elif now - self._last_progress >= self.limits.write_stall_timeout:
            peer = self.transport.get_extra_info("peername")
            timeout = self.limits.write_stall_timeout
            self.events.closed("write_stall", f"closing connection from {peer}: it read nothing for {timeout:g} s")
            self.transport.abort()
            return
        self._schedule_write_check()
