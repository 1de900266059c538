"""SNAC decoding in the Orpheus engine's process (`codec/snac_service.py`): the logits processor starts the
service in a process the test spawns, as vLLM spawns its engine core, and the server's `EngineSnacDecoder`
decodes through it exactly what a local decoder decodes; failures reach the caller as errors, never hangs.
Which engine hosts it is the layout's decision, checked on fake card counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from oai_server.codec.orpheus import SAMPLES_PER_FRAME
from oai_server.codec.snac_model import load_snac
from oai_server.codec.snac_service import (
    LOW_PRIORITY_KEY,
    SERVICE_KEY,
    SWITCH_INTERVAL_KEY,
    EngineSnacDecoder,
    ServiceConnection,
    SnacServiceError,
    prioritize_engine_stream,
    service_address,
)
from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import SEAM_SAMPLES, Window
from oai_server.engines.factory import snac_hosts_of
from oai_server.engines.layout import LayoutRequest, plan_layout
from oai_server.settings import Settings

H200_GIB = 139.8
ENGINE_SWITCH_INTERVAL_S = 0.0005


def engine_core(name: str, ready: Any) -> None:
    """What vLLM's engine core does with our code: build the Orpheus logits processor, then keep running.
    As in vLLM's engine core, only vLLM's logger has a handler: our lines must reach it."""
    import io
    import logging

    from oai_server.engines.vllm_orpheus_logits import OrpheusSlotLogitsProcessor

    vllm_log = io.StringIO()
    logging.getLogger("vllm").addHandler(logging.StreamHandler(vllm_log))
    logging.getLogger("vllm").propagate = False
    assert sys.getswitchinterval() == 0.005  # Python's, until the engine asks for another
    config = {SERVICE_KEY: name, SWITCH_INTERVAL_KEY: ENGINE_SWITCH_INTERVAL_S}
    processor = OrpheusSlotLogitsProcessor(SimpleNamespace(additional_config=config), "cpu", False)
    again = OrpheusSlotLogitsProcessor(SimpleNamespace(additional_config={SERVICE_KEY: name}), "cpu", False)
    assert processor.snac_service is not None and again.snac_service is None  # one service per engine process
    assert sys.getswitchinterval() == ENGINE_SWITCH_INTERVAL_S  # a processor without the key keeps it
    assert f"SNAC service {name} on cpu" in vllm_log.getvalue() and "not started again" in vllm_log.getvalue()
    assert "GIL switch interval is 0.50 ms" in vllm_log.getvalue()
    assert len(logging.getLogger("oai_server").handlers) == 1  # handed over once, not per processor
    ready.set()
    threading.Event().wait()


@contextlib.contextmanager
def spawned_engine(target: Callable[[str, Any], None]) -> Iterator[tuple[str, multiprocessing.process.BaseProcess]]:
    """`target(name, ready)` in a spawned process, as vLLM spawns its engine core: (the service's name, the process)
    once it set `ready`; killed at the end."""
    context = multiprocessing.get_context("spawn")
    name = f"test-{uuid.uuid4().hex[:8]}"
    ready = context.Event()
    process = context.Process(target=target, args=(name, ready), daemon=True)
    process.start()
    try:
        assert ready.wait(60), "the engine process did not start its SNAC service"
        yield name, process
    finally:
        process.kill()
        process.join(10)


@pytest.fixture
def engine_process() -> Iterator[tuple[str, multiprocessing.process.BaseProcess]]:
    with spawned_engine(engine_core) as engine:
        yield engine


def control_decoder(kind: str) -> type[EngineSnacDecoder]:
    """One of `bench/profile_engine.py`'s control decoders (the bench folder is not a package)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import profile_engine

    kinds: dict[str, type[EngineSnacDecoder]] = {
        "wait_per_shape": profile_engine.WaitPerShape,
        "round_trip": profile_engine.RoundTripOnly,
    }
    return kinds[kind]


def windows() -> list[Window]:
    codes = [tuple((7 * i + j) * 37 % 4096 for j in range(7)) for i in range(9)]
    return [Window(tuple(codes[i : i + 5]), 2, 2, SEAM_SAMPLES) for i in range(4)]


async def test_the_engine_decodes_what_the_server_would(
    engine_process: tuple[str, multiprocessing.process.BaseProcess], noiseless_snac: Path
) -> None:
    name, _ = engine_process
    remote = await asyncio.to_thread(EngineSnacDecoder.load, name, str(noiseless_snac), "cpu", torch.float32, 8)
    local = SnacDecoder(load_snac(str(noiseless_snac), "cpu"), "cpu", max_batch=8)
    try:
        batch = windows()
        expected = local.decode_sync(batch)
        together = await asyncio.gather(*(remote.decode(window) for window in batch))
        assert [len(pcm) for pcm in together] == [2 * (SEAM_SAMPLES + 2 * SAMPLES_PER_FRAME)] * len(batch)
        for got, want in zip(together, expected, strict=True):
            np.testing.assert_allclose(np.frombuffer(got, "<i2"), np.frombuffer(want, "<i2"), atol=1)
        assert remote.windows_decoded == len(batch) and remote.frames_emitted == 2 * len(batch)
        await remote.capture_graphs(WindowPolicy().stream_shapes)  # CPU: nothing to capture, and no error
        stats = remote.connection.call("stats")
        assert stats["windows_decoded"] == len(batch) and stats["device"] == "cpu" and stats["graphs"] == []
        assert stats["dtype"] == "float32"  # the precision it decodes in, after the load's check
        assert stats["fusion"] == "off" and stats["models_loaded"] == 1
        assert stats["eager_windows"] == remote.eager_windows == len(batch)  # CPU: no graphs, every window eager
        assert stats["engine_stream_priority"] is None and stats["stream_priority"] is None  # no CUDA streams
        assert stats["switch_interval_s"] == ENGINE_SWITCH_INTERVAL_S  # the engine process's, as it asked
        assert sys.getswitchinterval() == 0.005  # the server's own is untouched
    finally:
        remote.close()
        local.close()


@pytest.mark.parametrize(
    ("kind", "requests"),
    [("server", ["decode_many"]), ("wait_per_shape", ["decode", "decode"]), ("round_trip", ["stats"])],
)
async def test_a_round_of_several_shapes_is_one_request_to_the_engine(
    engine_process: tuple[str, multiprocessing.process.BaseProcess],
    noiseless_snac: Path,
    kind: str,
    requests: list[str],
) -> None:
    """Streams starting and ending make worker rounds of several window shapes; the engine's SNAC thread takes the
    GIL from its scheduler at each request, so a round goes in one (`decode_many`), decoded as a local decoder
    decodes each shape, first windows first. `bench/profile_engine.py --snac-round-wait each` (the control of an
    A/B) sends each shape alone and decodes the same; its `--snac-decode round-trip` makes the round trip alone and
    gets silence of the same lengths, nothing decoded in the engine."""
    name, _ = engine_process
    decoder = EngineSnacDecoder if kind == "server" else control_decoder(kind)
    remote = await asyncio.to_thread(decoder.load, name, str(noiseless_snac), "cpu", torch.float32, 8)
    local = SnacDecoder(load_snac(str(noiseless_snac), "cpu"), "cpu", max_batch=8)
    calls: list[str] = []
    call = remote.connection.call

    def recording(op: str, *args: Any) -> Any:
        calls.append(op)
        return call(op, *args)

    remote.connection.call = recording  # type: ignore[method-assign]
    codes = [tuple((7 * i + j) * 37 % 4096 for j in range(7)) for i in range(9)]
    first = Window(tuple(codes[:2]), 0, 1)  # a stream's first window: no context, one frame, one of lookahead
    steady, later = windows()[:2]
    release = threading.Event()
    threads = threading.active_count()
    try:
        remote._jobs.put(release.wait)  # the worker waits here while the round is queued
        tasks = [asyncio.ensure_future(remote.decode(w)) for w in (steady, first, later)]
        await asyncio.sleep(0.05)
        release.set()
        got = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert calls == requests
        want = [*local.decode_sync([steady, later]), *local.decode_sync([first])]
        if kind == "round_trip":
            want = [bytes(len(pcm)) for pcm in want]
        for pcm, expected in zip([got[0], got[2], got[1]], want, strict=True):
            np.testing.assert_allclose(np.frombuffer(pcm, "<i2"), np.frombuffer(expected, "<i2"), atol=1)
        assert (remote.windows_decoded, remote.batches, remote.frames_emitted) == (3, 2, 5)
        assert call("stats")["windows_decoded"] == (0 if kind == "round_trip" else 3)
        assert threading.active_count() == threads  # a round starts no thread (no decoder of its own)
    finally:
        remote.close()
        local.close()


async def test_profile_engines_idle_control_loads_snac_in_the_engine_and_never_asks_it(
    engine_process: tuple[str, multiprocessing.process.BaseProcess],
    noiseless_snac: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`bench/profile_engine.py --snac-decode idle`: SNAC loaded (and captured, where CUDA has graphs) in the engine's
    process as the server's decoder has it, while the pipeline decodes silence in the bench's: what SNAC's presence
    costs the engine apart from its round trips. Both connections close at the end."""
    name, _ = engine_process
    control_decoder("round_trip")  # puts bench/ on the path
    import profile_engine

    monkeypatch.setattr(profile_engine, "SNAC_SERVICE", name)
    args = profile_engine.parse_args(
        ["--tts-model", "m", "--mode", "ours_in_engine", "--snac", str(noiseless_snac), "--snac-decode", "idle",
         "--engine-switch-interval-ms", "0.5", "--out", "o"]
    )  # fmt: skip
    assert args.engine_switch_interval_ms == 0.5
    closers: list[Any] = []
    synthesizer, control = await profile_engine._pipeline(args, None, None, closers)
    try:
        assert type(synthesizer.decoder) is profile_engine.SilentDecoder
        service_close, decoder_close = closers
        service = service_close.__self__
        assert decoder_close == synthesizer.decoder.close
        assert isinstance(service, EngineSnacDecoder) and service.connection.call("stats")["windows_decoded"] == 0
        assert control is service.connection  # what --switch-interval-ab sets the engine's switch interval through
        assert len(await synthesizer.decoder.decode(windows()[0])) == 2 * (SEAM_SAMPLES + 2 * SAMPLES_PER_FRAME)
        assert service.connection.call("stats")["windows_decoded"] == 0  # silence here, nothing asked of the engine
    finally:
        for close in closers:
            close()
    with pytest.raises(SnacServiceError, match="went away"):
        service.connection.call("stats")


async def test_a_switch_interval_ab_sets_the_engines_interval_and_back_around_each_measurement(
    engine_process: tuple[str, multiprocessing.process.BaseProcess],
) -> None:
    """`bench/profile_engine.py --switch-interval-ab 2 --switch-repeats 2`: on one engine, B then A twice, each run
    measured while the engine's process has the interval the run names, and the engine left at what it had."""
    name, _ = engine_process
    control_decoder("round_trip")  # puts bench/ on the path
    import profile_engine

    connection = await asyncio.to_thread(ServiceConnection.open, name)
    seen: list[float] = []

    async def measure(settle_s: float) -> dict[str, Any]:
        assert settle_s == 0.25
        seen.append(await asyncio.to_thread(connection.call, "switch_interval", None))
        return {"aggregate_tokens_per_s": 1000.0 * len(seen)}

    args = profile_engine.parse_args(
        ["--tts-model", "m", "--mode", "ours_in_engine", "--churn", "--switch-interval-ab", "2",
         "--switch-settle-s", "0.25", "--out", "o"]
    )  # fmt: skip
    try:
        report = await profile_engine.switch_interval_ab(connection, measure, args)
        assert seen == [0.002, ENGINE_SWITCH_INTERVAL_S] * 2
        assert report["switch_interval_ms_before"] == 1000 * ENGINE_SWITCH_INTERVAL_S
        assert [(run["switch_interval_ms"], run["aggregate_tokens_per_s"]) for run in report["runs"]] == [
            (2.0, 1000.0), (0.5, 2000.0), (2.0, 3000.0), (0.5, 4000.0)
        ]  # fmt: skip
        assert connection.call("stats")["switch_interval_s"] == ENGINE_SWITCH_INTERVAL_S
    finally:
        connection.close()
    with pytest.raises(SystemExit, match="needs --mode ours_in_engine --churn"):
        profile_engine.main(["--tts-model", "m", "--snac", "s", "--switch-interval-ab", "2", "--out", "o"])


def test_a_load_of_arguments_loaded_before_switches_back_to_that_model_and_its_graphs(
    noiseless_snac: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SnacService`'s ``load`` keeps every model it loaded, with the graphs captured of it: a ``load`` of the same
    arguments switches back without loading or capturing (what `bench/profile_engine.py --snac-ab` needs on an engine
    that samples, where a capture fails it), and ``capture`` captures only the shapes the model lacks."""
    from oai_server.codec import snac_service

    loaded: list[tuple[Any, ...]] = []
    captured: list[list[tuple[int, ...]]] = []

    def load_snac(name: str, device: str, dtype: torch.dtype, depthwise: str) -> object:
        loaded.append((name, device, dtype, depthwise))
        return object()

    def capture_graph_sets(model: Any, shapes: Any, max_batch: int, device: str, fusion: str) -> dict[Any, Any]:
        captured.append([tuple(shape) for shape in shapes])
        return {tuple(shape): (model, fusion) for shape in shapes}

    # the service's CUDA path on a machine without CUDA: its model and graphs stood in for, its bookkeeping real
    monkeypatch.setattr(snac_service, "load_snac", load_snac)
    monkeypatch.setattr(snac_service, "capture_graph_sets", capture_graph_sets)
    service = snac_service.SnacService(service_address(f"test-{uuid.uuid4().hex[:8]}", os.getpid()), "cpu")
    service.device = "cuda:0"
    snac = str(noiseless_snac)
    try:
        service.handle("load", snac, "float32", 8, "off", "aten")
        assert loaded == [(snac, "cuda:0", torch.float32, "aten")]
        first, first_graphs = service.model, service.graphs
        assert service.handle("capture", [(7, 0, 7, 0), (4, 0, 4, 0)]) == [(4, 0, 4, 0), (7, 0, 7, 0)]
        assert service.handle("capture", [(7, 0, 7, 0), (5, 0, 5, 0)]) == [(4, 0, 4, 0), (5, 0, 5, 0), (7, 0, 7, 0)]
        assert captured == [[(7, 0, 7, 0), (4, 0, 4, 0)], [(5, 0, 5, 0)]]  # the shape it had is not captured again
        service.handle("load", snac, "float32", 8, "decoder", "aten")  # another variant: loaded, no graphs yet
        assert service.model is not first and service.graphs == {} and service.fusion == "decoder"
        assert service.handle("capture", [(7, 0, 7, 0)]) == [(7, 0, 7, 0)]
        assert service.graphs[(7, 0, 7, 0)] == (service.model, "decoder")
        service.handle("load", snac, "float32", 8, "off", "aten")  # back: the same model, its graphs, its fusion
        assert service.model is first and service.graphs is first_graphs and service.fusion == "off"
        assert service.handle("capture", [(7, 0, 7, 0), (5, 0, 5, 0)]) == [(4, 0, 4, 0), (5, 0, 5, 0), (7, 0, 7, 0)]
        assert len(captured) == 3 and len(loaded) == 2  # nothing loaded or captured again
        with pytest.raises(ValueError, match="unknown SNAC fusion"):
            service.handle("load", snac, "float32", 8, "fused", "aten")
        assert service.model is first  # a refused load leaves the model in use as it was
    finally:
        service.close()


async def test_a_snac_ab_runs_each_variant_in_turn_on_one_engine(
    engine_process: tuple[str, multiprocessing.process.BaseProcess],
    noiseless_snac: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`bench/profile_engine.py --snac-ab`: on one engine, the variants in the order A, B, C, C, B, A, each measured
    while the engine's service and the server's decoder do what it names: decode in the engine (its windows counted
    there), one round trip and silence, or silence without asking; each run's line as `churn_table.py` reads it."""
    name, _ = engine_process
    control_decoder("round_trip")  # puts bench/ on the path
    from churn_table import read_snac_ab_runs
    from snac_ab import SwitchableDecoder, parse_variants, prepare, snac_ab

    snac = str(noiseless_snac)
    decoder = await asyncio.to_thread(SwitchableDecoder.load, name, snac, "cpu", torch.float32, 8)
    variants = parse_variants("fusion=off,decode=none,fusion=decoder+decode=round-trip", "aten", "auto", "off")
    seen: list[tuple[str, bool, int]] = []

    async def measure(settle_s: float) -> dict[str, Any]:
        assert settle_s == 0.5
        pcm = np.frombuffer(await decoder.decode(windows()[0]), "<i2")
        stats = await asyncio.to_thread(decoder.connection.call, "stats")
        seen.append((decoder.decode_mode, bool(pcm.any()), stats["windows_decoded"]))
        return {"aggregate_tokens_per_s": 1000.0 * len(seen), "wall_ms_per_step": 192_000 / (1000.0 * len(seen))}

    try:
        await prepare(decoder, variants, snac, WindowPolicy().stream_shapes)
        report = await snac_ab(decoder, variants, measure, snac, repeats=2, settle_s=0.5)
        assert [run["snac_variant"] for run in report["runs"]] == [
            "fusion=off", "decode=none", "fusion=decoder+decode=round-trip",
            "fusion=decoder+decode=round-trip", "decode=none", "fusion=off",
        ]  # fmt: skip
        # decoded in the engine (a window more there, audio back), or silence: asked for nothing, or one round trip
        assert seen == [
            ("gpu", True, 1), ("none", False, 1), ("round-trip", False, 1),
            ("round-trip", False, 1), ("none", False, 1), ("gpu", True, 2),
        ]  # fmt: skip
        assert decoder.decode_mode == "gpu"  # left on the first variant
        lines = "v1: --mode ours_in_engine\nunprofiled, churn: " + json.dumps(
            {"aggregate_tokens_per_s": 500.0, "wall_ms_per_step": 384.0}
        )
        lines += "\n" + "\n".join(line for line in capsys.readouterr().out.splitlines() if line.startswith("unpro"))
        [(variant, _, runs)] = read_snac_ab_runs(lines)
        assert variant == "--mode ours_in_engine" and [run["snac_variant"] for run in runs] == [
            run["snac_variant"] for run in report["runs"]
        ]
    finally:
        decoder.close()


async def test_profile_engines_pipeline_with_a_snac_ab_loads_every_variant_before_the_streams(
    engine_process: tuple[str, multiprocessing.process.BaseProcess],
    noiseless_snac: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`bench/profile_engine.py --snac-ab`: the pipeline's decoder can switch what its rounds do, and the engine's
    service holds every variant's model (captured there on CUDA) before any stream starts, on the first variant."""
    name, _ = engine_process
    control_decoder("round_trip")  # puts bench/ on the path
    import profile_engine
    from snac_ab import SwitchableDecoder

    monkeypatch.setattr(profile_engine, "SNAC_SERVICE", name)
    args = profile_engine.parse_args(
        ["--tts-model", "m", "--mode", "ours_in_engine", "--churn", "--snac", str(noiseless_snac),
         "--snac-ab", "fusion=decoder,fusion=off+decode=none", "--out", "o"]
    )  # fmt: skip
    closers: list[Any] = []
    synthesizer, control = await profile_engine._pipeline(args, None, None, closers)
    try:
        assert type(synthesizer.decoder) is SwitchableDecoder and synthesizer.decoder.decode_mode == "gpu"
        stats = control.call("stats")
        assert stats["models_loaded"] == 2 and stats["fusion"] == "decoder"  # both loaded, the first in use
    finally:
        for close in closers:
            close()


async def test_a_failed_request_is_an_error_and_the_service_keeps_serving(
    engine_process: tuple[str, multiprocessing.process.BaseProcess], noiseless_snac: Path
) -> None:
    name, _ = engine_process
    connection = await asyncio.to_thread(ServiceConnection.open, name)
    try:
        with pytest.raises(SnacServiceError, match="no SNAC model loaded"):
            connection.call("decode", np.zeros((1, 5, 7), np.int16), (5, 2, 2, 0))
        with pytest.raises(SnacServiceError, match="no SNAC model loaded"):
            connection.call("decode_many", [(np.zeros((1, 5, 7), np.int16), (5, 2, 2, 0))])
        with pytest.raises(SnacServiceError, match="unknown operation 'nap'"):
            connection.call("nap")
        connection._connection.send(42)  # not a request at all: an error answer, and the service stays up
        assert connection._connection.recv()[0] == "error"
        with pytest.raises(SnacServiceError, match="Could not load the SNAC decoder"):
            connection.call("load", "/nonexistent/snac", "float32", 8, "off")
        with pytest.raises(SnacServiceError, match="unknown SNAC fusion 'bogus'"):  # the fusion reaches the engine
            connection.call("load", str(noiseless_snac), "float32", 8, "bogus")
        connection.call("load", str(noiseless_snac), "float32", 8, "off")
        pcm = connection.call("decode", np.zeros((3, 5, 7), np.int16), (5, 2, 2, SEAM_SAMPLES))
        assert pcm.shape == (3, SEAM_SAMPLES + 2 * SAMPLES_PER_FRAME) and pcm.dtype == np.int16
    finally:
        connection.close()


async def test_a_dead_engine_fails_the_decodes_waiting_on_it(
    engine_process: tuple[str, multiprocessing.process.BaseProcess], noiseless_snac: Path
) -> None:
    name, process = engine_process
    remote = await asyncio.to_thread(EngineSnacDecoder.load, name, str(noiseless_snac), "cpu", torch.float32, 8)
    try:
        assert len(await remote.decode(windows()[0])) == 2 * (SEAM_SAMPLES + 2 * SAMPLES_PER_FRAME)
        process.kill()
        process.join(10)
        with pytest.raises(SnacServiceError, match="went away"):
            await asyncio.wait_for(remote.decode(windows()[1]), 10)
    finally:
        remote.close()


def test_no_service_is_a_clear_error_not_a_hang() -> None:
    with pytest.raises(SnacServiceError, match="not reachable"):
        ServiceConnection.open(f"nobody-{uuid.uuid4().hex[:8]}", timeout_s=0.3)


def test_the_address_names_the_server_and_the_engine() -> None:
    assert service_address("orpheus-0", os.getpid()) == f"\0oai-snac-{os.getpid()}-orpheus-0"


def test_every_orpheus_engine_alone_on_its_card_hosts_a_snac_where_snacs_card_has_orpheus() -> None:
    def hosts(cards: int, **settings: object) -> list[tuple[int, ...]]:
        resolved = Settings(snac_in_engine=True, **settings)  # type: ignore[arg-type]
        layout = plan_layout(cards, H200_GIB, LayoutRequest.from_settings(resolved))
        return [plan.cards for plan in snac_hosts_of(resolved, layout)]

    assert hosts(1) == [(0,)]  # one card: the shared layout's Orpheus
    assert hosts(2, placement="speech") == [(0,), (1,)]  # a replica on every card, each with its SNAC
    assert hosts(4, placement="speech") == [(0,), (1,), (2,), (3,)]
    assert hosts(2, tts_gpus="0,1") == [(0,), (1,)]  # manual replicas, one a card
    assert hosts(2) == []  # balanced: SNAC in the server on card 0, which has no Orpheus
    assert hosts(3, placement="chat") == []
    assert hosts(2, placement="speech", snac_device="cpu") == []  # SNAC asked off the GPU
    assert hosts(2, placement="speech", snac_device="cuda:1") == [(1,)]  # asked on card 1: its engine, every stream
    assert hosts(2, tts_gpus="0,1", tts_tensor_parallel_size=2) == []  # one engine over two cards
    assert hosts(2, tts_gpus="0,1", tts_data_parallel_size=2) == []  # vLLM's data parallelism: one engine
    off = Settings(snac_in_engine=False)
    assert snac_hosts_of(off, plan_layout(1, H200_GIB, LayoutRequest.from_settings(off))) == ()
    assert snac_hosts_of(Settings(snac_in_engine=True), None) == ()  # not vLLM: no layout


def test_the_engine_stream_is_left_alone_off_cuda() -> None:
    assert prioritize_engine_stream(torch.device("cpu")) is None


# --- on the GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_the_engine_stream_outranks_snacs_on_cuda() -> None:
    """The processor of an engine asked for it moves that thread's work to a stream of CUDA's highest priority
    (once: a second processor keeps it), the SNAC service decodes on one of the lowest, and work still runs."""
    from oai_server.engines.vllm_orpheus_logits import OrpheusSlotLogitsProcessor

    seen: dict[str, Any] = {}

    def engine_thread() -> None:  # a thread of its own: the test's own current stream stays as it was
        name = f"test-{uuid.uuid4().hex[:8]}"
        config = SimpleNamespace(additional_config={SERVICE_KEY: name, LOW_PRIORITY_KEY: True})
        processor = OrpheusSlotLogitsProcessor(config, "cuda", False)
        stream = torch.cuda.current_stream()
        OrpheusSlotLogitsProcessor(SimpleNamespace(additional_config=config.additional_config), "cuda", False)
        seen.update(priority=stream.priority, kept=torch.cuda.current_stream() == stream)
        seen["sum"] = float((torch.ones(1024, device="cuda") * 2).sum().item())
        assert processor.snac_service is not None
        seen["stats"] = processor.snac_service.handle("stats")
        processor.snac_service.close()

    worker = threading.Thread(target=engine_thread)
    worker.start()
    worker.join(60)
    lowest = torch.cuda.Stream(priority=0).priority
    assert seen["priority"] < lowest and seen["kept"] and seen["sum"] == 2048.0
    assert (seen["stats"]["engine_stream_priority"], seen["stats"]["stream_priority"]) == (seen["priority"], lowest)
    assert torch.cuda.current_stream().priority == lowest  # this thread's default stream is untouched


def test_our_log_lines_go_through_vllms_handler_only_where_nothing_else_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine core's situation in this process: no root handler, vLLM's logger with its own."""
    import io
    import logging

    from oai_server.engines.vllm_orpheus_logits import log_through_vllm

    ours, root, vllm_logger = logging.getLogger("oai_server"), logging.getLogger(), logging.getLogger("vllm")
    out = io.StringIO()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(vllm_logger, "handlers", [logging.StreamHandler(out)])
    saved = (list(ours.handlers), ours.level, ours.propagate)
    ours.handlers = []
    try:
        log_through_vllm()
        log_through_vllm()  # once: the second call finds ours set up
        logging.getLogger("oai_server.codec.snac_service").info("SNAC service x on cuda:0")
        assert out.getvalue() == "SNAC service x on cuda:0\n" and len(ours.handlers) == 1 and not ours.propagate
        ours.handlers = []
        root.handlers = [logging.NullHandler()]  # the server process: it logs already
        log_through_vllm()
        assert ours.handlers == []
    finally:
        ours.handlers, ours.propagate = saved[0], saved[2]
        ours.setLevel(saved[1])  # setLevel, not an assignment: it clears the loggers' cached levels
