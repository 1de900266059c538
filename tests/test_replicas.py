"""Several server processes on one port: how many (`server_processes`), and the supervisor running real replicas.

The decision is checked on fake card counts. The supervisor runs `oai-server serve --demo --replicas 2` as
a real subprocess (demo replicas use no card): both replicas answer on their own ports and share the main
one, speech comes through the shared port and each replica's own, a chat reply's audio id from one replica
resolves on the other, new connections reach the replicas exactly in turn, a Realtime WebSocket works through the
shared port, SIGTERM drains both and exits 0, and a replica that dies
takes the other down with exit status 3 and a line naming it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from openai import OpenAI

from oai_server.cli import main
from oai_server.engines.layout import LayoutRequest, server_processes
from oai_server.handoff import HANDED, READY, Dispatcher, HandedConnections, channel_pair
from oai_server.replicas import REPLICA_ENV, ReplicaRole, replica_cards, replica_ports

from .helpers import answers_ready, eventually, wait_until
from .realtime.client import RawClient

PLACEMENT_FLAG = frozenset({"tts_gpus"})


def request(workload: str = "auto", replicas: int = 0, explicit: frozenset[str] = frozenset()) -> LayoutRequest:
    given = explicit | ({"replicas"} if replicas else set()) | ({"placement"} if workload != "auto" else set())
    return LayoutRequest(workload=workload, replicas=replicas, explicit=frozenset(given), gpus={"tts": "1"})


@pytest.mark.parametrize(
    ("cards", "made", "processes"),
    [
        (1, request(), 1),  # one card: the shared layout, one process
        (2, request(), 2),  # auto on two cards: a process per card
        (4, request(), 4),
        (2, request(explicit=PLACEMENT_FLAG), 1),  # a placement flag: the manual layout in one process
        (2, request("speech"), 1),  # an in-process layout over both cards
        (2, request("balanced"), 1),
        (4, request("replicated"), 4),
        (1, request("replicated"), 1),
        (4, request(replicas=3), 3),  # explicit: the first three cards
        (2, request(replicas=1), 1),  # one process on both cards (auto's in-process layout)
        (0, request(replicas=3), 3),  # engines without cards (demo, transformers, remote): front-end processes
        (0, request("replicated"), 1),
        (0, request(), 1),
    ],
)
def test_server_processes_follow_the_cards_and_the_flags(cards: int, made: LayoutRequest, processes: int) -> None:
    assert server_processes(cards, made) == processes


@pytest.mark.parametrize(
    ("cards", "made", "says"),
    [
        (2, request(replicas=3), "--replicas 3: each replica needs a card of its own, and 2 are visible"),
        (2, request(replicas=2, explicit=PLACEMENT_FLAG), "the placement flags"),
        (2, request("speech", replicas=2), "--placement speech lays out one process"),
        (2, request("replicated", explicit=PLACEMENT_FLAG), "placement replicated puts every engine on each card"),
    ],
)
def test_server_processes_refuse_what_cannot_be_laid_out(cards: int, made: LayoutRequest, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        server_processes(cards, made)


def test_a_replica_reads_its_role_from_the_environment() -> None:
    role = ReplicaRole(index=1, count=2, supervisor_pid=4321, channel_fd=7, own_fd=9, card="5")
    assert ReplicaRole.from_environ({REPLICA_ENV: role.encode()}) == role
    assert ReplicaRole.from_environ({}) is None
    no_card = ReplicaRole(0, 3, 1, 3, 4)
    assert ReplicaRole.from_environ({REPLICA_ENV: no_card.encode()}) == no_card
    assert role.label == "replica 1 of 2 (card 5)" and no_card.label == "replica 0 of 3"


def test_replica_cards_follow_the_visible_devices() -> None:
    assert replica_cards(2, "3,5,6", on_cards=True) == ["3", "5"]  # renumbered through CUDA_VISIBLE_DEVICES
    assert replica_cards(2, None, on_cards=True) == ["0", "1"]
    assert replica_cards(2, "3,5", on_cards=False) == [None, None]


def test_replica_ports() -> None:
    assert replica_ports(8080, 0, 2) == [8081, 8082]
    assert replica_ports(8080, 9000, 3) == [9000, 9001, 9002]
    assert replica_ports(0, 0, 2) == [0, 0]  # OS-chosen, logged by the supervisor
    with pytest.raises(ValueError, match="run past 65535"):
        replica_ports(65534, 0, 2)


def test_bad_replica_settings_exit_2_before_anything_starts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--demo", "--cache-dir", str(tmp_path), "--replicas", "2", "--llm-gpus", "0"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--replicas 2" in error[0] and "the placement flags" in error[0], error


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_taken_port_fails_at_once_also_against_another_servers_shared_sockets(
    reuse_port: bool, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A port held by anyone, also by sockets that allow sharing it (another replicated server's), fails with
    status 3 before any replica starts, instead of the replicas' sockets joining the other server's."""
    with closing(socket.socket()) as holder:
        if reuse_port:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["serve", "--demo", "--cache-dir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port),
                  "--replicas", "2"])  # fmt: skip
    assert exited.value.code == 3
    assert f"port {port} is already in use" in capsys.readouterr().err


SUPERVISOR_LINE = re.compile(r"replicated: 2 server processes at http://127\.0\.0\.1:(\d+)/")
REPLICA_LINE = re.compile(r"replica (\d): no card, alone at http://127\.0\.0\.1:(\d+)/")


@dataclass
class Replicated:
    """The supervisor subprocess, the shared URL, each replica's own URL, and its stderr."""

    popen: subprocess.Popen[str]
    url: str
    replicas: list[str]
    log: list[str]

    def replica_pids(self) -> set[int]:
        return children_of(self.popen.pid)


def children_of(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children()}
    except psutil.NoSuchProcess:
        return set()


@contextmanager
def replicated_server(cache: Path) -> Iterator[Replicated]:
    """`oai-server serve --demo --replicas 2` on OS-chosen ports (read from the supervisor's log), both ready."""
    command = [
        sys.executable, "-m", "oai_server", "serve", "--demo", "--cache-dir", str(cache), "--host", "127.0.0.1",
        "--port", "0", "--replicas", "2", "--log-level", "info", "--shutdown-drain-seconds", "5",
    ]  # fmt: skip
    popen = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log: list[str] = []

    def pump() -> None:
        assert popen.stderr is not None
        for line in popen.stderr:
            log.append(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        text = lambda: "".join(log)  # noqa: E731
        assert wait_until(lambda: len(REPLICA_LINE.findall(text())) == 2 or popen.poll() is not None, 60, 0.1)
        shared = SUPERVISOR_LINE.search(text())
        assert shared, text()
        own = dict(REPLICA_LINE.findall(text()))
        replicas = [f"http://127.0.0.1:{own[str(index)]}" for index in range(2)]
        assert wait_until(lambda: all(answers_ready(url) for url in replicas), 180, 0.2), text()
        yield Replicated(popen, f"http://127.0.0.1:{shared.group(1)}", replicas, log)
    finally:
        pids = children_of(popen.pid)
        if popen.poll() is None:
            popen.kill()
            popen.wait(30)
        for pid in pids:
            with_gone(pid)


def with_gone(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Two processes, one port.", "response_format": "pcm"}


@pytest.mark.slow
def test_replicas_share_the_port_and_drain_together_on_sigterm(demo_cache: Path) -> None:
    with replicated_server(demo_cache) as server:
        answered = [httpx.get(f"{url}/health", timeout=10).json()["replica"] for url in server.replicas]
        assert answered == [0, 1]
        pids = server.replica_pids()
        assert len(pids) == 2, pids

        for url in (server.url, *server.replicas):
            spoken = httpx.post(f"{url}/v1/audio/speech", json=SPEECH, timeout=120)
            assert spoken.status_code == 200 and spoken.headers["content-type"].startswith("audio/pcm")
            assert len(spoken.content) >= 2 * 2048 and len(spoken.content) % 2 == 0  # whole 16-bit samples

        # A chat reply's audio id from one replica resolves on the other (the supervisor's shared SQLite file).
        first, second = (OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) for url in server.replicas)
        messages: list[Any] = [{"role": "user", "content": "Hello"}]
        reply = first.chat.completions.create(
            model="gpt-4o-audio-preview", messages=messages, modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"}, max_tokens=10, seed=3,
        )  # fmt: skip
        audio = reply.choices[0].message.audio
        assert audio is not None and audio.transcript
        follow = [*messages, {"role": "assistant", "audio": {"id": audio.id}}, {"role": "user", "content": "More"}]
        answer = second.chat.completions.create(model="gpt-4o-audio-preview", messages=follow, max_tokens=5, seed=3)
        spelled = [*messages, {"role": "assistant", "content": audio.transcript}, {"role": "user", "content": "More"}]
        same = second.chat.completions.create(model="gpt-4o-audio-preview", messages=spelled, max_tokens=5, seed=3)
        assert answer.usage is not None and same.usage is not None
        assert answer.usage.prompt_tokens == same.usage.prompt_tokens

        seen: Counter[int] = Counter()
        for _ in range(48):  # a new connection each: the supervisor hands them to the replicas in turn
            with httpx.Client(timeout=10) as client:
                seen[client.get(f"{server.url}/health").json()["replica"]] += 1
        assert seen == {0: 24, 1: 24}, seen

        async def burst() -> Counter[int]:  # 64 at once, each on its own connection: still exactly in turn
            async def one() -> int:
                async with httpx.AsyncClient(timeout=30) as client:
                    return int((await client.get(f"{server.url}/health")).json()["replica"])

            return Counter(await asyncio.gather(*(one() for _ in range(64))))

        assert asyncio.run(burst()) == {0: 32, 1: 32}

        async def realtime() -> list[str]:  # a Realtime WebSocket through the shared port: events as from one server
            client = await RawClient.connect(server.url.replace("http://", "ws://") + "/v1/realtime")
            await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Hi."}})
            updated = await client.recv()
            await client.close()
            return [event["type"] for event in (*client.events[:1], updated)]

        assert asyncio.run(realtime()) == ["session.created", "session.updated"]

        server.popen.send_signal(signal.SIGTERM)
        assert server.popen.wait(60) == 0, "".join(server.log)
        assert not any(alive(pid) for pid in pids)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=5)


@pytest.mark.slow
def test_a_replica_that_dies_takes_the_server_down_with_status_3(demo_cache: Path) -> None:
    with replicated_server(demo_cache) as server:
        pids = server.replica_pids()
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        assert server.popen.wait(60) == 3, "".join(server.log)
        assert not any(alive(pid) for pid in pids)
        errors = [line for line in server.log if "oai-server: error:" in line]
        assert len(errors) == 1 and re.search(r"replica \d exited with status -9", errors[0]), errors


def test_the_dispatcher_hands_connections_in_turn_to_ready_replicas_only() -> None:
    """In process: two replicas' channel ends read by the test. Nothing is accepted before a replica is ready
    (the port refuses), connections alternate between the ready ones, a replica whose channel closes gets no
    more, and with none left a connection is closed at once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pairs = [channel_pair() for _ in range(2)]
    ready_calls: list[int] = []
    dispatcher = Dispatcher(listener, [ours for ours, _ in pairs], 16, lambda: ready_calls.append(1))
    dispatcher.start()
    replicas = [theirs for _, theirs in pairs]
    for theirs in replicas:
        theirs.settimeout(5)

    def handed_to(replica: int) -> socket.socket:
        message, fds, _, _ = socket.recv_fds(replicas[replica], 1, 1)
        assert message == HANDED and len(fds) == 1
        return socket.socket(fileno=fds[0])

    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        replicas[0].send(READY)
        replicas[1].send(READY)
        assert wait_until(lambda: dispatcher.ready == {0, 1}, 5) and ready_calls == [1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        served = [handed_to(replica) for replica in (0, 1, 0, 1)]  # in turn
        for client, connection in zip(clients, served, strict=True):  # each descriptor is that client's connection
            client.sendall(b"ping")
            assert connection.recv(4) == b"ping"
        assert wait_until(lambda: dispatcher.handed == [2, 2], 5), dispatcher.handed  # counted after the send

        replicas[1].close()  # replica 1 drains: its channel closes
        assert wait_until(lambda: dispatcher.ready == {0}, 5)
        late = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        served += [handed_to(0), handed_to(0)]
        assert wait_until(lambda: dispatcher.handed == [4, 2], 5), dispatcher.handed

        replicas[0].close()  # none left: a connection is accepted and closed at once
        assert wait_until(lambda: not dispatcher.ready, 5)
        orphan = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert orphan.recv(1) == b""
        for sock in (*clients, *served, *late, orphan):
            sock.close()
    finally:
        dispatcher.stop()
        dispatcher.join()
    with pytest.raises(ConnectionRefusedError):  # stopped: the port is closed
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_handed_connections_are_served_on_the_replicas_loop() -> None:
    """The replica's end: it says it is ready, serves each handed descriptor with the protocol it was given,
    and stops when the supervisor's end closes."""
    ours, theirs = channel_pair()
    ours.setblocking(True)
    ours.settimeout(5)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data.upper())

    async def run() -> bytes:
        handed = HandedConnections(theirs)
        handed.start(asyncio.get_running_loop(), Echo)
        assert await asyncio.to_thread(ours.recv, 1) == READY
        client, server_side = socket.socketpair()
        socket.send_fds(ours, [HANDED], [server_side.fileno()])
        server_side.close()
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client, b"hello")
        answer = await asyncio.wait_for(loop.sock_recv(client, 5), 5)
        client.close()
        ours.close()  # the supervisor is gone
        assert await eventually(lambda: theirs.fileno() == -1, 5)
        return answer

    assert asyncio.run(run()) == b"HELLO"
