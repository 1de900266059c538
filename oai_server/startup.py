"""Start-up failures and the listening sockets, shared by the command (`cli`) and its replicas' supervisor.

A start-up failure is one line on stderr and an exit status: `BAD_SETTING` (2) for a setting that cannot
work, checked before anything loads; `STARTUP_FAILURE` (3) when the server could not start. The sockets
are bound before any model loads, so a taken port fails at once.
"""

from __future__ import annotations

import errno
import socket

BAD_SETTING = 2
"""Exit status for settings that cannot work (checked before anything loads)."""
STARTUP_FAILURE = 3
"""Exit status when the server could not start (as `uvicorn.run`)."""


class StartupError(Exception):
    """A start-up failure with its one-line explanation and exit status."""

    def __init__(self, message: str, status: int = STARTUP_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model loads, so a taken port fails at once."""
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        # IPv4 first: `localhost` should answer at 127.0.0.1, where the ready line points browsers.
        family, kind, proto, _, address = sorted(found, key=lambda info: info[0] != socket.AF_INET)[0]
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on host {host!r}: {exc.strerror}: set --host to an address of this machine "
            "(0.0.0.0 for all interfaces, 127.0.0.1 for this machine only)",
            BAD_SETTING,
        ) from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = f"port {port} is already in use on {host} (another server is listening there)"
            todo = f"stop that server, or choose a free port with --port (e.g. --port {port + 1})"
        elif exc.errno == errno.EACCES:
            why = f"permission denied for port {port} on {host} (ports below 1024 need root)"
            todo = "choose a port above 1023 with --port, e.g. --port 8080"
        else:
            why = f"cannot listen on {host}:{port} ({exc.strerror or exc})"
            todo = "check --host and --port"
        raise StartupError(f"{why}: {todo}") from exc
    sock.set_inheritable(True)
    return sock


def loopback_url(host: str, port: int) -> str:
    """A URL of the server that a browser on this machine can open (0.0.0.0 is not one)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
