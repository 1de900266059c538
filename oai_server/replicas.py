"""Several server processes on one port (`--placement replicated`, auto's choice on 2+ cards; `--replicas N`).

One event loop takes a burst's requests in one after another, and on the GPU host each costs it ~1-2 ms
with vLLM's clients on the same loop: one process on two H200s carried about what one card did, where one
process per card carried twice as much (README, Several GPUs). So the `serve` command's process becomes a
supervisor: it binds the port and one port per replica, then runs N copies of the command, replica i with
`CUDA_VISIBLE_DEVICES` set to the i-th visible card (when the engines use cards) and its channel and own
socket named in `OAI_SERVER_REPLICA` (`ReplicaRole`), and watches them:

- The supervisor accepts the shared port's connections and hands each to the next ready replica in turn
  (`handoff.py`: why not the kernel's ways of sharing a port). A replica also listens alone on its own port
  (`--replica-base-port` + i): its own /metrics and /health/ready, for scrapes and probes per card.
- The shared port listens from the first replica ready on (its models loaded): before, connections are
  refused, as with one process, and a replica gets connections only once it is ready.
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

from .handoff import Dispatcher, HandedConnections, channel_pair
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
BACKLOG = 2048
"""The shared port's listen backlog (uvicorn's default)."""
FAILED_WITHOUT_STATUS = 3
"""The supervisor's exit status when a replica died without one (a signal) or exited 0 unasked."""


@dataclass(frozen=True)
class ReplicaRole:
    """What a replica learns from its supervisor: which one it is, of how many, its sockets, its card."""

    index: int
    count: int
    supervisor_pid: int
    channel_fd: int
    """Its end of the channel the supervisor hands connections over (`handoff.py`)."""
    own_fd: int
    card: str | None = None
    """Its `CUDA_VISIBLE_DEVICES` entry, or None where the engines use no card."""

    def encode(self) -> str:
        """The value of `OAI_SERVER_REPLICA` for this replica."""
        return f"{self.index}/{self.count};{self.supervisor_pid};{self.channel_fd},{self.own_fd};{self.card or ''}"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ReplicaRole | None:
        """This process's role, or None when it is not a replica."""
        value = environ.get(REPLICA_ENV)
        if not value:
            return None
        position, pid, fds, card = value.split(";")
        index, count = position.split("/")
        channel, own = fds.split(",")
        return cls(int(index), int(count), int(pid), int(channel), int(own), card or None)

    @property
    def label(self) -> str:
        """`replica 1 of 2 (card 1)`, for the log."""
        return f"replica {self.index} of {self.count}" + (f" (card {self.card})" if self.card else "")

    def own_socket(self) -> socket.socket:
        """The inherited socket of this replica's own port (bound; uvicorn listens on it)."""
        return socket.socket(fileno=self.own_fd)

    def channel(self) -> HandedConnections:
        """The inherited channel, as the connections it brings (`handoff.HandedConnections`)."""
        return HandedConnections(socket.socket(fileno=self.channel_fd))

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
        listener: socket.socket,
        own: Sequence[socket.socket],
        cards: Sequence[str | None],
        drain_seconds: float,
        ready_line: str = "",
    ) -> None:
        self.command = list(command)
        self.listener = listener
        self.own = list(own)
        self.ready_line = ready_line
        """Logged when the first replica is ready (the shared port listens from then on)."""
        self.cards = list(cards)
        self.drain_seconds = drain_seconds
        self.processes: list[subprocess.Popen[bytes]] = []
        self.dispatcher: Dispatcher | None = None
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
            if self.dispatcher is not None:
                self.dispatcher.stop()
                self.dispatcher.join()
            for process in self.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self) -> None:
        count = len(self.own)
        pairs = [channel_pair() for _ in range(count)]
        self.dispatcher = Dispatcher(self.listener, [ours for ours, _ in pairs], BACKLOG, self._first_ready)
        self.dispatcher.start()
        try:
            for index, ((_, theirs), own, card) in enumerate(zip(pairs, self.own, self.cards, strict=True)):
                if self.signals:  # stopped while starting: the ones started have their SIGTERM already
                    break
                role = ReplicaRole(index, count, os.getpid(), theirs.fileno(), own.fileno(), card)
                env = {**os.environ, REPLICA_ENV: role.encode()}
                if card is not None:
                    env["CUDA_VISIBLE_DEVICES"] = card
                fds = (role.channel_fd, role.own_fd)
                self.processes.append(subprocess.Popen(self.command, env=env, pass_fds=fds))
        finally:  # the replicas hold their ends and their own ports now
            for sock in (*(theirs for _, theirs in pairs), *self.own):
                sock.close()

    def _first_ready(self) -> None:
        if self.ready_line:
            logger.info("%s", self.ready_line)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.dispatcher is not None:
            self.dispatcher.stop()  # the shared port closes: new connections are refused while the replicas drain
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
                deadline = float("inf")
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
                if self.dispatcher is not None:
                    self.dispatcher.stop()
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
    from .engines.placement import visible_card_count

    on_cards = not settings.demo and choose_engine(settings) == "vllm"
    cards = visible_card_count() if on_cards else 0  # no CUDA context in the supervisor: the replicas own the cards
    try:
        return server_processes(cards, LayoutRequest.from_settings(settings)), on_cards
    except ValueError as exc:
        raise StartupError(f"bad setting: {exc}", BAD_SETTING) from exc


def supervise(settings: Settings, argv: Sequence[str], count: int, on_cards: bool) -> None:
    """Bind the shared port and each replica's own, run `count` replicas of this command until they stop."""
    try:
        ports = replica_ports(settings.port, settings.replica_base_port, count)
    except ValueError as exc:
        raise StartupError(f"bad setting: {exc}", BAD_SETTING) from exc
    listener = bind_socket(settings.host, settings.port)
    port = listener.getsockname()[1]  # the one an OS-chosen --port 0 became
    own: list[socket.socket] = []
    try:
        own.extend(bind_socket(settings.host, own_port) for own_port in ports)
    except StartupError:
        for sock in (listener, *own):
            sock.close()
        raise
    cards = replica_cards(count, os.environ.get("CUDA_VISIBLE_DEVICES"), on_cards)
    url = loopback_url(settings.host, port)
    lines = [
        f"replica {index}: {f'card {card}' if card else 'no card'}, alone at "
        f"{loopback_url(settings.host, sock.getsockname()[1])}"
        for index, (card, sock) in enumerate(zip(cards, own, strict=True))
    ]
    logger.info(
        "replicated: %d server processes at %s, each with its own engines\n  %s",
        count,
        url,
        "\n  ".join(lines),
    )
    command = [sys.executable, "-m", "oai_server", *argv, "--placement", "shared", "--replicas", "1"]
    with tempfile.TemporaryDirectory(prefix="oai-server-") as scratch:
        if not settings.redis_url and settings.audio_store_path is None:  # a later turn may reach another replica
            command += ["--audio-store-path", str(Path(scratch) / "audio-ids.sqlite3")]
        ready = f"Ready: open {url} in a browser, or point OpenAI clients at {url}v1 (the first replica is ready)"
        supervisor = Supervisor(command, listener, own, cards, settings.shutdown_drain_seconds, ready)
        status = supervisor.run()
    if status:
        raise StartupError(supervisor.failure or f"a replica exited with status {status}", status)
