"""Several server processes on one port (`--placement replicated`, auto's choice on 2+ cards; `--replicas N`).

One event loop takes a burst's requests in one after another, and on the GPU host each costs it ~1-2 ms
with vLLM's clients on the same loop: one process on two H200s carried about what one card did, where one
process per card carried twice as much (README, Several GPUs). So the `serve` command's process becomes a
supervisor: it binds the port and one port per replica, then runs N copies of the command, replica i with
`CUDA_VISIBLE_DEVICES` set to the i-th visible card (when the engines use cards) and its sockets named in
`OAI_SERVER_REPLICA` (`ReplicaRole`), and watches them:

- Every replica listens on the shared port with a socket of its own (`SO_REUSEPORT`): the kernel spreads
  new connections over the replicas by a hash of the client's address and port, evenly on average, whatever
  each replica's loop is doing. (One socket shared by all, as uvicorn's and gunicorn's workers share
  theirs, sent a whole burst to the replica whose loop woke first: 191 of 192 speech requests in three
  bursts on the CPU.) A replica also listens alone on its own port (`--replica-base-port` + i): its own
  /metrics and /health/ready, for scrapes and probes per card.
- A replica listens only once its models are loaded, so until the first one is ready connections are
  refused, as with one process.
- SIGTERM or SIGINT reaches every replica as SIGTERM, and each drains as one server does; the supervisor
  exits 0 once all have. A second signal reaches them as SIGINT, which cuts their streams at once.
- A replica that exits on its own (a failed start, a dead engine, killed) stops the others (SIGTERM: they
  drain) and the supervisor exits with its status (3 when it had none), so systemd or Kubernetes restarts
  the whole server rather than leaving it with a card's capacity missing. A replica whose supervisor is
  gone stops itself the same way.
- Audio ids of chat replies live in a SQLite file of the supervisor's temporary directory, which every replica
  reads (`--audio-store-path`), unless `--redis-url` or `--audio-store-path` says where: a later turn that
  names an earlier reply's audio may reach another replica.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from .startup import BAD_SETTING, StartupError, bind_socket, loopback_url

if TYPE_CHECKING:
    from .settings import Settings

logger = logging.getLogger(__name__)

REPLICA_ENV = "OAI_SERVER_REPLICA"
"""The environment variable that makes a `serve` process a replica: `ReplicaRole.encode()`."""
POLL_SECONDS = 0.1
"""How often the supervisor looks at its replicas."""
KILL_GRACE_SECONDS = 60.0
"""How long past the drain a stopping replica may take before it is killed."""
FAILED_WITHOUT_STATUS = 3
"""The supervisor's exit status when a replica died without one (a signal) or exited 0 unasked."""


@dataclass(frozen=True)
class ReplicaRole:
    """What a replica learns from its supervisor: which one it is, of how many, its sockets, its card."""

    index: int
    count: int
    supervisor_pid: int
    shared_fd: int
    own_fd: int
    card: str | None = None
    """Its `CUDA_VISIBLE_DEVICES` entry, or None where the engines use no card."""

    def encode(self) -> str:
        """The value of `OAI_SERVER_REPLICA` for this replica."""
        return f"{self.index}/{self.count};{self.supervisor_pid};{self.shared_fd},{self.own_fd};{self.card or ''}"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ReplicaRole | None:
        """This process's role, or None when it is not a replica."""
        value = environ.get(REPLICA_ENV)
        if not value:
            return None
        position, pid, fds, card = value.split(";")
        index, count = position.split("/")
        shared, own = fds.split(",")
        return cls(int(index), int(count), int(pid), int(shared), int(own), card or None)

    @property
    def label(self) -> str:
        """`replica 1 of 2 (card 1)`, for the log."""
        return f"replica {self.index} of {self.count}" + (f" (card {self.card})" if self.card else "")

    def sockets(self) -> list[socket.socket]:
        """The inherited listening sockets: the shared one first, then this replica's own."""
        return [socket.socket(fileno=self.shared_fd), socket.socket(fileno=self.own_fd)]

    def watch_supervisor(self) -> None:
        """SIGTERM to this process (a drain) once its supervisor is gone, from a daemon thread."""

        def watch() -> None:
            while os.getppid() == self.supervisor_pid:
                time.sleep(1.0)
            logger.warning("%s: the supervisor (pid %d) is gone; stopping", self.label, self.supervisor_pid)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="replica-supervisor-watch", daemon=True).start()


def replica_cards(count: int, visible: str | None, on_cards: bool) -> list[str | None]:
    """Each replica's card as a `CUDA_VISIBLE_DEVICES` entry: the i-th visible one; None where the engines
    use no card (demo, transformers, remote)."""
    if not on_cards:
        return [None] * count
    entries = [item.strip() for item in visible.split(",") if item.strip()] if visible else []
    chosen = entries[:count] if entries else [str(index) for index in range(count)]
    return list[str | None](chosen)


def replica_ports(port: int, base: int, count: int) -> list[int]:
    """Each replica's own port: `base` + i (`base` 0: `port` + 1 + i), or OS-chosen ones when both are 0."""
    if port == 0 and base == 0:
        return [0] * count
    start = base or port + 1
    if start + count - 1 > 65535:
        raise ValueError(
            f"--replica-base-port: {count} replicas from port {start} run past 65535: set --replica-base-port lower"
        )
    return [start + index for index in range(count)]


class Supervisor:
    """Runs the replicas of one `serve` command and stops them together (see the module docstring)."""

    def __init__(
        self,
        command: Sequence[str],
        shared: Sequence[socket.socket],
        own: Sequence[socket.socket],
        cards: Sequence[str | None],
        drain_seconds: float,
    ) -> None:
        self.command = list(command)
        self.shared = list(shared)
        self.own = list(own)
        self.cards = list(cards)
        self.drain_seconds = drain_seconds
        self.processes: list[subprocess.Popen[bytes]] = []
        self.signals = 0
        self.failure: str | None = None
        """Why the supervisor stopped on its own: the replica that exited and its status."""

    def run(self) -> int:
        """Start every replica, wait until all have exited, return the exit status (0: a clean shutdown)."""
        handled = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            self._start()
            return self._wait()
        finally:
            for process in self.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self) -> None:
        count = len(self.own)
        try:
            for index, (shared, own, card) in enumerate(zip(self.shared, self.own, self.cards, strict=True)):
                role = ReplicaRole(index, count, os.getpid(), shared.fileno(), own.fileno(), card)
                env = {**os.environ, REPLICA_ENV: role.encode()}
                if card is not None:
                    env["CUDA_VISIBLE_DEVICES"] = card
                fds = (role.shared_fd, role.own_fd)
                self.processes.append(subprocess.Popen(self.command, env=env, pass_fds=fds))
        finally:  # the replicas hold the sockets now; the supervisor accepts nothing
            for sock in (*self.shared, *self.own):
                sock.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        self._send(signal.SIGTERM if self.signals == 1 else signal.SIGINT)

    def _send(self, sig: signal.Signals) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(sig)

    def _wait(self) -> int:
        deadline: float | None = None
        while any(process.poll() is None for process in self.processes):
            if self.failure is None and not self.signals:
                self._notice_exit()
            if deadline is None and (self.signals or self.failure):
                deadline = time.monotonic() + self.drain_seconds + KILL_GRACE_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                logger.error("replicas still running %.0f s past the drain: killing them", KILL_GRACE_SECONDS)
                for process in self.processes:
                    process.kill()
            time.sleep(POLL_SECONDS)
        if self.failure is None and not self.signals:
            self._notice_exit()  # the last ones exited together, between two looks
        return self._status()

    def _notice_exit(self) -> None:
        for index, process in enumerate(self.processes):
            if process.returncode is not None:
                card = f" (card {self.cards[index]})" if self.cards[index] else ""
                self.failure = (
                    f"replica {index}{card} exited with status {process.returncode}; the other replicas were stopped"
                )
                logger.error("%s", self.failure)
                self._send(signal.SIGTERM)
                return

    def _status(self) -> int:
        codes = [process.returncode for process in self.processes]
        if self.failure is None and all(code == 0 for code in codes):
            return 0
        first = next((code for code in codes if code), 0)
        return first if first > 0 else FAILED_WITHOUT_STATUS


def replica_count(settings: Settings) -> tuple[int, bool]:
    """How many server processes share the port (`engines.layout.server_processes`), and whether each takes a
    card of its own (vLLM engines; not with --demo, transformers or remote engines)."""
    from .engines.factory import choose_engine
    from .engines.layout import LayoutRequest, server_processes

    on_cards = not settings.demo and choose_engine(settings) == "vllm"
    cards = 0
    if on_cards:
        import torch

        cards = torch.cuda.device_count()  # no CUDA context in the supervisor: the replicas own the cards
    try:
        return server_processes(cards, LayoutRequest.from_settings(settings)), on_cards
    except ValueError as exc:
        raise StartupError(f"bad setting: {exc}", BAD_SETTING) from exc


def supervise(settings: Settings, argv: Sequence[str], count: int, on_cards: bool) -> None:
    """Bind the shared port and each replica's own, run `count` replicas of this command until they stop."""
    from .replicas import Supervisor, replica_cards, replica_ports

    try:
        ports = replica_ports(settings.port, settings.replica_base_port, count)
    except ValueError as exc:
        raise StartupError(f"bad setting: {exc}", BAD_SETTING) from exc
    # A plain bind first: it fails where anyone holds the port, also another server's SO_REUSEPORT sockets,
    # which the replicas' sockets would otherwise silently join.
    with bind_socket(settings.host, settings.port) as probe:
        port = probe.getsockname()[1]  # the one an OS-chosen --port 0 became
    shared: list[socket.socket] = []
    own: list[socket.socket] = []
    try:
        shared.extend(bind_socket(settings.host, port, reuse_port=True) for _ in range(count))
        own.extend(bind_socket(settings.host, own_port) for own_port in ports)
    except StartupError:
        for sock in (*shared, *own):
            sock.close()
        raise
    cards = replica_cards(count, os.environ.get("CUDA_VISIBLE_DEVICES"), on_cards)
    lines = [
        f"replica {index}: {f'card {card}' if card else 'no card'}, alone at "
        f"{loopback_url(settings.host, sock.getsockname()[1])}"
        for index, (card, sock) in enumerate(zip(cards, own, strict=True))
    ]
    logger.info(
        "replicated: %d server processes at %s, each with its own engines\n  %s",
        count,
        loopback_url(settings.host, port),
        "\n  ".join(lines),
    )
    command = [sys.executable, "-m", "oai_server", *argv, "--placement", "shared", "--replicas", "1"]
    with tempfile.TemporaryDirectory(prefix="oai-server-") as scratch:
        if not settings.redis_url and settings.audio_store_path is None:  # a later turn may reach another replica
            command += ["--audio-store-path", str(Path(scratch) / "audio-ids.sqlite3")]
        supervisor = Supervisor(command, shared, own, cards, settings.shutdown_drain_seconds)
        status = supervisor.run()
    if status:
        raise StartupError(supervisor.failure or f"a replica exited with status {status}", status)
