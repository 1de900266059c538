"""SNAC decoding inside the Orpheus engine's process, and the server's decoder that uses it.

On one GPU without MPS, kernels of different processes never run at the same time: the driver
time-slices their CUDA contexts. SNAC decoding in the server process is such a second context beside
the Orpheus engine core (H100 profile: 71 % of the SNAC thread waiting in `Stream.synchronize` at 128
streams, and the engine paying for every switch). Hosted in the engine-core process instead, SNAC is
one more CUDA stream of the engine's own context, so its convolutions overlap Orpheus's decode steps
instead of taking turns with them.

The engine side is `SnacService`: a thread the Orpheus logits processor starts in the engine-core
process (the one piece of this project's code vLLM runs there), serving one connection at a time on
an abstract Unix socket named after the server's pid and the engine (`service_address`). The server's
side is `EngineSnacDecoder`, a `SnacDecoder` whose batches go over that connection: the batching,
ordering and futures stay the server's; only `decode_frames` and `capture` cross. Messages are
pickled tuples over `multiprocessing.connection`, authenticated with the multiprocessing authkey the
engine core inherits from the server that spawned it: ``(op, *args)`` in, ``("ok", value)`` or
``("error", text)`` out, with ops ``load``, ``capture``, ``decode``, ``decode_many``, ``switch_interval`` and
``stats``. Who answers the rounds (``decode_many``), the service's thread or the engine's own steps, is
`snac_rounds`'s business (``--snac-rounds``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import numpy as np
import torch

from .snac_depthwise import SnacDepthwise, check_depthwise, uses_triton_depthwise
from .snac_fusion import SnacFusion, check_fusion
from .snac_graphs import GraphSet
from .snac_model import load_snac
from .snac_rounds import SnacRounds, StepRounds, check_rounds
from .snac_stream import (
    LaunchedRound,
    SnacDecoder,
    capture_graph_sets,
    decode_frame_batches,
    decode_frames,
    launch_frame_batches,
    window_frames,
)
from .snac_windows import Window, WindowShape

logger = logging.getLogger(__name__)

SERVICE_KEY = "oai_snac_service"
"""Key in vLLM's ``additional_config`` naming the SNAC service an Orpheus engine hosts."""

LOW_PRIORITY_KEY = "oai_snac_low_priority"
"""Key in vLLM's ``additional_config``: true gives the engine's own work a high-priority CUDA stream,
so the SNAC service's kernels (on a stream of the lowest priority) fill the gaps of its steps."""

ROUNDS_KEY = "oai_snac_rounds"
"""Key in vLLM's ``additional_config``: who answers the SNAC service's rounds, its thread or the engine's steps
(`snac_rounds.SnacRounds`)."""

SWITCH_INTERVAL_KEY = "oai_engine_switch_interval_s"
"""Key in vLLM's ``additional_config``: the engine process's GIL switch interval in seconds (``sys.setswitchinterval``),
so the SNAC service's thread, which wakes for every worker round, waits less for the GIL than Python's 5 ms."""

HIGHEST_PRIORITY = -(2**16)
"""torch maps a priority past CUDA's range to its nearest end: this is the highest the device has."""


class SnacServiceError(RuntimeError):
    """The engine-side SNAC service failed a request, or cannot be reached."""


def service_address(name: str, server_pid: int) -> str:
    """The abstract Unix socket of the service `name` started by the server with pid `server_pid`."""
    return f"\0oai-snac-{server_pid}-{name}"


def _authkey() -> bytes:
    return bytes(multiprocessing.current_process().authkey)


class SnacService:
    """Decodes SNAC windows for the server, on its own CUDA stream of the process it runs in."""

    def __init__(self, address: str, device: str, rounds: SnacRounds = "thread") -> None:
        self.address = address
        self.device = device
        self.model: Any = None
        self.max_batch = 64
        self.fusion: SnacFusion = "off"
        self.graphs: dict[WindowShape, GraphSet] = {}
        self._loaded: dict[tuple[Any, ...], tuple[Any, dict[WindowShape, GraphSet]]] = {}
        """Every model a ``load`` asked for, by its arguments, with the graphs captured of it."""
        self.windows_decoded = 0
        self.eager_windows = 0
        self.engine_stream_priority: int | None = None
        """The CUDA priority of the engine's stream, as its processor found it (None: not on CUDA)."""
        # priority 0 is CUDA's lowest: an engine stream of higher priority (`prioritize_engine_stream`)
        # has its pending blocks scheduled first, and SNAC's run where the engine leaves the GPU idle
        self._stream = torch.cuda.Stream(device, priority=0) if device.startswith("cuda") else None
        self.rounds = StepRounds(self) if check_rounds(rounds) == "step" else None
        """Who answers the rounds besides this service's thread: the engine's steps (`step`), or no one."""
        self._listener = Listener(address, family="AF_UNIX", authkey=_authkey())
        self._thread = threading.Thread(target=self._serve, name="snac-service", daemon=True)

    def start(self) -> SnacService:
        """Serve connections on a daemon thread."""
        self._thread.start()
        return self

    @property
    def stream(self) -> torch.cuda.Stream | None:
        """SNAC's CUDA stream (None off CUDA)."""
        return self._stream

    def step(self, rows: int) -> None:
        """The engine's thread, once a step, with `rows` speech requests running: the rounds' turn (`StepRounds.step`)
        when the engine's steps serve them, else nothing."""
        if self.rounds is not None:
            self.rounds.step(rows)

    def _serve(self) -> None:
        stream = self._stream
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            while True:
                try:
                    connection = self._listener.accept()
                except OSError:
                    return  # closed
                except Exception:  # a client that failed authentication
                    logger.warning("SNAC service: a connection was refused", exc_info=True)
                    continue
                with connection:
                    if self.rounds is not None:
                        self.rounds.serve(connection)
                    else:
                        self._answer_each(connection)

    def _answer_each(self, connection: Connection) -> None:
        while True:
            try:
                connection.send(self.answer(connection.recv()))
            except (EOFError, OSError):
                return  # the server went away; wait for the next one

    def answer(self, request: Any) -> tuple[str, Any]:
        """The reply to one request (`handle`): ``("ok", value)``, or ``("error", text)`` for any failure."""
        op = request[0] if isinstance(request, tuple) and request else repr(request)
        return _reply(op, lambda: self.handle(op, *request[1:]))

    def launch_round(self, batches: Sequence[tuple[np.ndarray, Sequence[int]]]) -> LaunchedRound | None:
        """A round's batches launched on the current stream without waiting, an event recorded after them; None,
        with nothing launched, when a batch has no graph (it would decode eagerly, waiting) or more windows than its
        graphs queue at once (`GraphSet.queues`)."""
        if self.model is None or not all(self._queues(frames, shape) for frames, shape in batches):
            return None
        counted = [self._counted(frames, shape) for frames, shape in batches]
        return launch_frame_batches(self.model, self.device, self.graphs, counted, record=True)

    def _queues(self, frames: np.ndarray, shape: Sequence[int]) -> bool:
        """Whether a batch of `frames` of `shape` has graphs that queue it without waiting (`GraphSet.queues`)."""
        key: WindowShape = tuple(shape)  # type: ignore[assignment]
        graph_set = self.graphs.get(key)
        return graph_set is not None and graph_set.queues(len(frames))

    @staticmethod
    def round_reply(results: list[np.ndarray | Exception]) -> tuple[str, Any]:
        """The reply to a launched round, as `answer` replies to a ``decode_many`` (`round_pcm`)."""
        return _reply("decode_many", lambda: round_pcm(results))

    def handle(self, op: str, *args: Any) -> Any:
        """One request: ``load(name, dtype, max_batch, fusion[, depthwise])``, ``capture(shapes)``,
        ``decode(frames, shape)``, ``decode_many([(frames, shape), ...])``, ``switch_interval(seconds | None)`` (the
        process's GIL switch interval, set unless None; the one in force back) or ``stats()``.

        A ``load`` of arguments loaded before switches back to that model and the graphs captured of it, loading and
        capturing nothing: `bench/profile_engine.py --snac-ab` compares SNAC variants on one engine while it
        generates, where a capture would fail the engine. ``capture`` captures only the shapes the model has no graphs
        of."""
        if op == "load":
            name, dtype, max_batch, fusion, *rest = (
                args  # rest: the depthwise kernel (a server before session 41 sends none)
            )
            fusion, depthwise = check_fusion(fusion), check_depthwise(*rest or ["auto"])
            key = (name, dtype, max_batch, fusion, depthwise)
            if key not in self._loaded:
                self._loaded[key] = (load_snac(name, self.device, getattr(torch, dtype), depthwise), {})
            self.max_batch, self.fusion = max_batch, fusion
            self.model, self.graphs = self._loaded[key]
            return None
        if self.model is None and op in ("capture", "decode", "decode_many"):
            raise SnacServiceError("no SNAC model loaded")
        if op == "capture":
            missing = [shape for shape in args[0] if tuple(shape) not in self.graphs]
            if self.device.startswith("cuda") and missing:
                self.graphs.update(capture_graph_sets(self.model, missing, self.max_batch, self.device, self.fusion))
            return sorted(self.graphs)
        if op == "decode":
            frames, shape = self._counted(*args)
            return decode_frames(self.model, self.device, self.graphs, frames, shape)
        if op == "decode_many":  # a worker round, batches of one shape each: one round trip, one wait for them all
            batches = [self._counted(frames, shape) for frames, shape in args[0]]
            return round_pcm(decode_frame_batches(self.model, self.device, self.graphs, batches))
        if op == "switch_interval":  # an A/B of the engine process's GIL switch interval on one engine (a bench)
            set_switch_interval(args[0] if args else None)
            return sys.getswitchinterval()
        if op == "stats":
            return {
                "windows_decoded": self.windows_decoded,
                "eager_windows": self.eager_windows,
                "device": self.device,
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch.") if self.model else None,
                "depthwise": ("triton" if uses_triton_depthwise(self.model) else "aten") if self.model else None,
                "fusion": self.fusion,
                "models_loaded": len(self._loaded),
                "graphs": sorted(self.graphs),
                "engine_stream_priority": self.engine_stream_priority,
                "stream_priority": self._stream.priority if self._stream is not None else None,
                "switch_interval_s": sys.getswitchinterval(),
                "rounds": self.rounds.stats() if self.rounds is not None else {"mode": "thread"},
            }
        raise SnacServiceError(f"unknown operation {op!r}")

    def _counted(self, frames: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, WindowShape]:
        """A batch to decode, counted (its windows, and those without a graph); its shape as a tuple (a key)."""
        key: WindowShape = tuple(shape)  # type: ignore[assignment]
        self.windows_decoded += len(frames)
        self.eager_windows += 0 if key in self.graphs else len(frames)
        return frames, key

    def close(self) -> None:
        """Stop accepting connections."""
        self._listener.close()


def round_pcm(results: list[np.ndarray | Exception]) -> list[np.ndarray]:
    """A round's PCM, batch by batch; the first batch's failure raised instead (a failure fails the round)."""
    failed = next((result for result in results if isinstance(result, Exception)), None)
    if failed is not None:
        raise failed
    return results  # type: ignore[return-value]


def _reply(op: str, compute: Callable[[], Any]) -> tuple[str, Any]:
    """``("ok", compute())``, or ``("error", text)`` for any failure, logged."""
    try:
        return ("ok", compute())
    except Exception as exc:
        logger.exception("SNAC service: %s failed", op)
        return ("error", f"{type(exc).__name__}: {exc}")


def start_service(name: str, device: str, rounds: SnacRounds = "thread") -> SnacService | None:
    """Start the service `name` for the server that spawned this process (the engine core's side), its rounds
    answered as `rounds` says; None when this process already serves it."""
    address = service_address(name, os.getppid())
    try:
        service = SnacService(address, device, rounds).start()
    except OSError as exc:  # the address is taken: a second processor instance in the same engine
        logger.info("SNAC service %s not started again: %s", name, exc)
        return None
    logger.info("SNAC service %s on %s, for server pid %d", name, device, os.getppid())
    return service


def set_switch_interval(seconds: float | None) -> None:
    """Set this process's GIL switch interval (the engine core's, from the Orpheus logits processor); None or 0 keeps
    it. A thread that wakes while another holds the GIL waits up to this long before it may take it: in the engine
    core that is the SNAC service at every round, and the round's windows wait with it."""
    if seconds:
        sys.setswitchinterval(float(seconds))
        logger.info("the engine process's GIL switch interval is %.2f ms", 1000 * sys.getswitchinterval())


def prioritize_engine_stream(device: torch.device) -> torch.cuda.Stream | None:
    """Make this thread's current CUDA stream one of the highest priority on `device`; None off CUDA or
    when it already is one.

    The engine core calls this from its main thread (the Orpheus logits processor's construction, before
    vLLM loads the model or captures its graphs), so every step's kernels go to that stream. With the SNAC
    service's stream at the lowest priority, the GPU's block scheduler runs SNAC's kernels where the decode
    step leaves SMs idle (the host half of the step) instead of slicing them into the step. ``torch.cuda.set_stream``
    is looked up at call time: vLLM wraps it to remember the stream as its own current one.
    """
    if device.type != "cuda":
        return None
    highest = torch.cuda.Stream(device, priority=HIGHEST_PRIORITY)
    if torch.cuda.current_stream(device).priority == highest.priority:
        return None  # a second processor in the same engine: the stream is already set
    torch.cuda.set_stream(highest)
    logger.info("the engine's CUDA stream has priority %d; SNAC's has 0", highest.priority)
    return highest


class ServiceConnection:
    """The server's connection to one engine's SNAC service; one request at a time."""

    def __init__(self, connection: Connection, name: str) -> None:
        self.name = name
        self._connection = connection
        self._lock = threading.Lock()

    @classmethod
    def open(cls, name: str, timeout_s: float = 30.0) -> ServiceConnection:
        """Connect to the service `name` of an engine this process started (it listens from its start)."""
        address = service_address(name, os.getpid())
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return cls(Client(address, family="AF_UNIX", authkey=_authkey()), name)
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                if time.monotonic() >= deadline:
                    raise SnacServiceError(f"the SNAC service {name!r} of the Orpheus engine is not reachable") from exc
                time.sleep(0.1)

    def call(self, op: str, *args: Any) -> Any:
        """Send one request and wait for its answer; `SnacServiceError` for a failure on either side."""
        with self._lock:
            try:
                self._connection.send((op, *args))
                status, value = self._connection.recv()
            except (EOFError, OSError) as exc:
                raise SnacServiceError(f"the SNAC service {self.name!r} went away") from exc
        if status != "ok":
            raise SnacServiceError(f"SNAC service {op}: {value}")
        return value

    def close(self) -> None:
        """Close the connection (the service waits for the next one)."""
        with self._lock:
            self._connection.close()


class EngineSnacDecoder(SnacDecoder):
    """A `SnacDecoder` whose batches are decoded by an engine's `SnacService`."""

    def __init__(
        self,
        connection: ServiceConnection,
        device: str,
        max_batch: int = 64,
        fusion: SnacFusion = "off",
        round_slices: int = 1,
    ) -> None:
        super().__init__(None, device, max_batch, fusion, round_slices)
        self.connection = connection
        self._captured: set[WindowShape] = set()

    @classmethod
    def load(
        cls,
        name: str,
        model_name: str,
        device: str,
        dtype: torch.dtype,
        max_batch: int = 64,
        fusion: SnacFusion = "off",
        depthwise: SnacDepthwise = "auto",
        round_slices: int = 1,
    ) -> EngineSnacDecoder:
        """Connect to the engine's service `name` and have it load SNAC `model_name` (blocking)."""
        decoder = cls(ServiceConnection.open(name), device, max_batch, fusion, round_slices)
        try:
            decoder.use_model(model_name, dtype, fusion, depthwise)
        except BaseException:
            decoder.close()
            raise
        return decoder

    def use_model(
        self, model_name: str, dtype: torch.dtype, fusion: SnacFusion = "off", depthwise: SnacDepthwise = "auto"
    ) -> None:
        """Have the engine's service decode with SNAC `model_name` so built: loaded the first time, switched back to
        with its graphs after that (`SnacService.handle`'s ``load``; blocking)."""
        self.connection.call("load", model_name, str(dtype).removeprefix("torch."), self.max_batch, fusion, depthwise)

    def capture(self, shapes: Sequence[WindowShape]) -> None:
        """Capture the shapes' graphs in the engine's process, only while it generates nothing (the server's
        warm-up): a capture holds the process's CUDA random generator in capture mode, and an engine step that
        samples meanwhile fails the engine ("Offset increment outside graph capture", seen on an H200)."""
        self._captured = {tuple(shape) for shape in self.connection.call("capture", list(shapes))}

    def has_graph(self, shape: WindowShape) -> bool:
        """Whether the engine's process holds a graph of `shape`."""
        return tuple(shape) in self._captured

    def decode_frames(self, frames: np.ndarray, shape: WindowShape) -> np.ndarray:
        """Decode one batch in the engine's process."""
        pcm: np.ndarray = self.connection.call("decode", frames, shape)
        return pcm

    def decode_groups(self, groups: Sequence[Sequence[Window]]) -> Iterator[list[bytes] | Exception]:
        """A worker round in one request to the engine's process: each wake-up of its SNAC thread takes the GIL
        from the thread that schedules the engine's steps, and streams coming and going make rounds of several
        shapes (the ramp's first windows, the last ones). A failure fails the round."""
        try:
            pcms = self.connection.call("decode_many", [(window_frames(w), w[0].decode_shape) for w in groups])
        except Exception as exc:
            for _ in groups:
                yield exc
            return
        for windows, pcm in zip(groups, pcms, strict=True):
            yield self._pcm_of(windows, pcm)

    def close(self) -> None:
        """Stop the worker, then close the connection."""
        super().close()
        self.connection.close()
