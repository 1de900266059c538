"""Who serves the SNAC service's decode rounds in the Orpheus engine's process: its own thread, or the engine's steps.

`SnacService` (`snac_service.py`) decodes the server's SNAC windows in the engine-core process, on a CUDA stream of
its own. With ``--snac-rounds thread`` (the default) its thread waits on the server's connection and answers each
round as it comes: it wakes for every round and needs the GIL, which the engine's scheduler thread holds most of the
time at high load (73 % of the wall time at 192 streams, session 17), several times a round (the request, the
launches, the wait, the reply). On an H200 at 192 streams a round trip a round with no SNAC work at all cost the
engine 30 % of its steady tokens/s and 40 % while streams came and went, more than SNAC's GPU work added (session
33, `bench/results/h200_s33_random_weights/`); setting the GIL's switch interval did not bear out as the fix
(session 34).

With ``--snac-rounds step`` (`StepRounds`) the engine's own thread serves the rounds between its steps, without
waiting and without another thread waking: at each step the Orpheus logits processor calls `StepRounds.step`, which
replies to the round in flight once its CUDA event has passed and launches the request waiting on the connection (a
``decode_many`` whose every batch has a graph) on SNAC's stream, to be collected at a later step. That costs the
engine's thread a poll of the socket a step and a round's own Python once (which the service thread took from it
under the GIL anyway), and no GIL hand-offs. The service thread still serves whenever the engine does not: while
fewer than `STEP_FROM_ROWS` speech requests run (one stream's first audio waits for no step), when no step came for
`STEP_GAP_S` (the engine idle: a stream's last window comes after its last token), and every request a step leaves
to it (loading, capturing graphs, statistics, and batches without a graph, which decode eagerly and would stall the
step).
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any, Literal, Protocol

import numpy as np
import torch

from .snac_stream import LaunchedRound
from .snac_windows import WindowShape

logger = logging.getLogger(__name__)

SnacRounds = Literal["thread", "step"]
SNAC_ROUNDS: tuple[SnacRounds, ...] = ("thread", "step")

STEP_FROM_ROWS = 32
"""Speech requests in the engine's batch from which its steps serve SNAC's rounds. Below, the service's thread does:
a step waits a step before it replies (its round runs on the GPU meanwhile), which one stream's first audio would
pay, and the GIL is not what a light engine waits for."""

STEP_GAP_S = 0.03
"""The engine counts as stepping while its last step is this recent; after that the service's thread serves."""

IDLE_CHECK_S = 0.05
"""While the engine's steps serve, the service's thread looks this often whether they still do (and at once for a
request a step left to it): the longest a stream's last window waits when the engine has just gone idle."""

POLL_S = 0.01
"""While the service's thread serves, it waits this long at a time for a request before it looks again whether the
engine's steps have taken over."""


def check_rounds(rounds: str) -> SnacRounds:
    """`rounds` if it is one of `SNAC_ROUNDS`, else ValueError."""
    if rounds not in SNAC_ROUNDS:
        raise ValueError(f"unknown SNAC rounds {rounds!r}; one of {', '.join(SNAC_ROUNDS)}")
    return rounds


class RoundHost(Protocol):
    """What `StepRounds` needs of the service it serves for (`snac_service.SnacService`)."""

    @property
    def stream(self) -> torch.cuda.Stream | None:
        """SNAC's CUDA stream (None off CUDA)."""
        ...

    def launch_round(self, batches: Sequence[tuple[np.ndarray, WindowShape]]) -> LaunchedRound | None:
        """A ``decode_many`` request's batches launched on the current stream without waiting, with an event after
        them; None (nothing launched) when a batch has no graph."""
        ...

    def answer(self, request: Any) -> tuple[str, Any]:
        """The reply to any request, answered whole (waiting for its GPU work)."""
        ...

    def round_reply(self, results: list[np.ndarray | Exception]) -> tuple[str, Any]:
        """The reply to a ``decode_many`` from its batches' results."""
        ...


def is_round(request: Any) -> bool:
    """Whether `request` is a ``decode_many`` (a worker round)."""
    return isinstance(request, tuple) and bool(request) and request[0] == "decode_many"


class StepRounds:
    """The service's connection served by the engine's steps while they run, and by the service's thread otherwise
    (module docstring). One lock: whoever holds it advances the connection, the engine's thread never waiting for
    it."""

    def __init__(self, host: RoundHost) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._readable: Any = None  # a select.poll of the connection for the engine's thread
        self._inflight: LaunchedRound | None = None
        self._deferred: Any = None  # a request a step read and left to the thread
        self._handoff = threading.Event()
        self._last_step = -math.inf
        self._rows = 0
        self._broken = False
        self.by_step = 0
        """Rounds the engine's steps launched and answered."""
        self.by_thread = 0
        """Rounds the service's thread answered."""
        self.left_to_thread = 0
        """Requests a step read and left to the thread (control operations, rounds without a graph)."""

    def stats(self) -> dict[str, Any]:
        """How the rounds were served so far."""
        return {
            "mode": "step",
            "by_step": self.by_step,
            "by_thread": self.by_thread,
            "left_to_thread": self.left_to_thread,
            "broken": self._broken,
        }

    def engine_serves(self) -> bool:
        """Whether the engine's steps serve the rounds now: enough speech requests run, and a step came lately."""
        return not self._broken and self._rows >= STEP_FROM_ROWS and time.monotonic() - self._last_step < STEP_GAP_S

    def step(self, rows: int) -> None:
        """The engine's thread, once a step, with `rows` speech requests in its batch: reply to the round in flight if
        its GPU work is done, and launch the next request if it is a round a step can. Never waits: another holder
        of the lock (the service's thread) keeps the connection for this step. Never raises into the engine: a
        failure hands every later round to the service's thread."""
        self._last_step = time.monotonic()
        self._rows = rows
        if self._broken or self._connection is None or self._deferred is not None:
            return
        if rows < STEP_FROM_ROWS and self._inflight is None:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            with self._on_stream():
                self._advance(wait=False)
        except (EOFError, OSError):
            self._connection = None  # the server went away: the thread waits for the next one
            self._handoff.set()
        except Exception:
            self._broken = True
            self._handoff.set()
            logger.exception("SNAC rounds: a step failed; the service's thread serves every round from now on")
        finally:
            self._lock.release()

    def serve(self, connection: Connection) -> None:
        """The service's thread: serve `connection` until the server goes away, leaving it to the engine's steps
        while they serve (`engine_serves`)."""
        waiting = select.poll()
        waiting.register(connection.fileno(), select.POLLIN)
        readable = select.poll()
        readable.register(connection.fileno(), select.POLLIN)
        with self._lock:
            self._connection, self._readable = connection, readable
            self._inflight = self._deferred = None
        try:
            while self._connection is connection:
                if self._deferred is None and self.engine_serves():
                    self._handoff.wait(IDLE_CHECK_S)
                    self._handoff.clear()
                    continue
                idle = self._deferred is None and self._inflight is None
                if idle and (not waiting.poll(POLL_S * 1000) or self.engine_serves()):
                    continue  # nothing came, or the engine's steps took over while this thread waited
                with self._lock, self._on_stream():
                    if self._connection is connection:
                        self._advance(wait=True)
        except (EOFError, OSError):
            return  # the server went away; the service waits for the next one
        finally:
            with self._lock:
                if self._connection is connection:
                    self._connection = None
                self._inflight = self._deferred = None

    def _advance(self, wait: bool) -> None:
        """Reply to the round in flight once its work is done (`wait`: waiting for it), then take the next request:
        one a step left, or one waiting on the connection. A step launches a round it can and leaves anything else to
        the thread; the thread (`wait`) answers any request whole."""
        connection = self._connection
        assert connection is not None
        inflight = self._inflight
        if inflight is not None:
            if not (wait or inflight.ready()):
                return
            self._inflight = None
            connection.send(self.host.round_reply(inflight.collect()))
        request, self._deferred = self._deferred, None
        if request is None:
            if not self._readable.poll(0):
                return
            request = connection.recv()
        if wait:
            self.by_thread += is_round(request)
            connection.send(self.host.answer(request))
        elif not self._launch(connection, request):
            self._deferred = request
            self.left_to_thread += 1
            self._handoff.set()

    def _launch(self, connection: Connection, request: Any) -> bool:
        """Launch `request` if it is a round a step can (every batch has a graph): True, and it is in flight (or
        answered with its error); False leaves it to the thread."""
        if not is_round(request):
            return False
        try:
            launched = self.host.launch_round(request[1])
        except Exception as exc:  # the request itself is bad: answered as the thread would
            connection.send(("error", f"{type(exc).__name__}: {exc}"))
            return True
        if launched is None:
            return False
        self._inflight = launched
        self.by_step += 1
        return True

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        """SNAC's stream as the current one (the engine's thread has its own)."""
        stream = self.host.stream
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            yield
