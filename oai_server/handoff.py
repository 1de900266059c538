"""Connections handed from the supervisor to its replicas, one after another in turn (`--placement replicated`).

The supervisor accepts every connection of the shared port itself (`Dispatcher`, a thread) and passes each
one's file descriptor to the next ready replica over that replica's channel, a Unix `SOCK_SEQPACKET` pair
(`SCM_RIGHTS`, one message per connection); the replica serves it like one of its own (`HandedConnections`,
on its event loop). So a burst is dealt out exactly in turn, as the GPU run that chose the layout dealt it from
the client, whatever each replica's loop is doing: the kernel's alternatives spread it unevenly on the CPU
(one listening socket shared by both replicas sent 191 of 192 speech requests to one; a socket each with
`SO_REUSEPORT`, spread by a hash of the client's address and port, 35/29, 34/30 and 45/19 in bursts of 64).
An accept and a hand-off cost the supervisor's thread tens of microseconds, nothing beside a request.

A replica says it is ready with one byte on its channel once its models are loaded, and the shared port
listens from the first ready replica on (refused before, as one process's is); a replica whose channel
closes (it drains or died) gets no more. A connection no replica can take (every channel full or closed)
is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

READY = b"R"
"""What a replica writes on its channel once it serves."""
HANDED = b"c"
"""The byte each handed connection's descriptor rides on."""
ACCEPTS_PER_WAKE = 64
"""Connections accepted in one go before the dispatcher looks at its channels again."""


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A replica's channel: the supervisor's end (non-blocking) and the replica's (inheritable)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.set_inheritable(True)
    return ours, theirs


class Dispatcher:
    """The supervisor's accept loop: each new connection goes to the next ready replica, in turn."""

    def __init__(
        self, listener: socket.socket, channels: Sequence[socket.socket], backlog: int, on_ready: Callable[[], None]
    ) -> None:
        self.listener = listener
        self.channels = list(channels)
        self.backlog = backlog
        self.on_ready = on_ready
        """Called once, when the first replica is ready (the port listens from then on)."""
        self.ready: set[int] = set()
        self.handed = [0] * len(self.channels)
        """Connections handed to each replica so far."""
        self._next = 0
        self._listening = False
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, name="replica-dispatcher", daemon=True)

    def start(self) -> None:
        """Run the accept loop in its thread."""
        self.listener.setblocking(False)
        for index, channel in enumerate(self.channels):
            self._selector.register(channel, selectors.EVENT_READ, index)
        self._selector.register(self._wake_read, selectors.EVENT_READ, "stop")
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close the port (new connections are refused); safe from a signal handler."""
        with contextlib.suppress(OSError):  # already stopped
            self._wake_write.send(b"x")

    def join(self) -> None:
        """Wait for the thread, then close what it used."""
        self._thread.join()
        for sock in (self.listener, *self.channels, self._wake_read, self._wake_write):
            sock.close()

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data == "stop":
                    self._selector.close()
                    self.listener.close()
                    return
                if key.data == "listener":
                    self._accept()
                else:
                    self._hear(key.data)

    def _hear(self, index: int) -> None:
        try:
            message = self.channels[index].recv(16)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:  # the replica closed its end: draining, or gone
            self.ready.discard(index)
            self._selector.unregister(self.channels[index])
            return
        self.ready.add(index)
        if not self._listening:
            self._listening = True
            self.listener.listen(self.backlog)
            self._selector.register(self.listener, selectors.EVENT_READ, "listener")
            self.on_ready()

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            with connection:
                self._hand(connection)

    def _hand(self, connection: socket.socket) -> None:
        count = len(self.channels)
        for step in range(count):
            index = (self._next + step) % count
            if index not in self.ready:
                continue
            try:
                socket.send_fds(self.channels[index], [HANDED], [connection.fileno()])
            except BlockingIOError:
                continue  # its channel is full: its loop is far behind, the next replica takes it
            except OSError:
                self.ready.discard(index)
                continue
            self.handed[index] += 1
            self._next = index + 1
            return
        logger.warning("no replica could take a connection: closed")


class HandedConnections:
    """A replica's end of its channel: the connections its supervisor hands over, served on this loop."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self._loop: asyncio.AbstractEventLoop | None = None
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        """Serve what arrives with `protocol_factory`, and tell the supervisor this replica is ready."""
        self._loop, self._factory = loop, protocol_factory
        self.channel.setblocking(False)
        loop.add_reader(self.channel.fileno(), self._receive)
        self.channel.send(READY)

    def stop(self) -> None:
        """Take no more connections (the supervisor sees the channel close)."""
        if self._loop is not None and self.channel.fileno() != -1:
            self._loop.remove_reader(self.channel.fileno())
        self.channel.close()

    def _receive(self) -> None:
        assert self._loop is not None and self._factory is not None
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self.channel, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:  # the supervisor is gone; its watch stops this process
                self.stop()
                return
            for fd in fds:
                connection = socket.socket(fileno=fd)
                connection.setblocking(False)
                task = self._loop.create_task(self._serve(connection))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _serve(self, connection: socket.socket) -> None:
        assert self._loop is not None and self._factory is not None
        try:
            await self._loop.connect_accepted_socket(self._factory, connection)
        except OSError:
            connection.close()  # the client left before it was served
