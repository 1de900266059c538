"""CUDA graphs for SNAC (`codec/snac_graphs.py`): the planning logic on CPU, the real capture on a GPU.

On CPU: which batch sizes are captured (`batch_ladder`), which graph a batch replays and how larger
batches are cut (`GraphSet.run`), and that `SnacDecoder` sends windows of the captured shape through
its graphs and every other shape through the eager path. The "graphs" there are stand-ins that
decode eagerly on the CPU and record what they were given.

On CUDA (``pytest -m gpu tests/test_snac_graphs.py`` on a GPU machine, deselected by default; on the lent
GPU `bench/snac_decode.py` checks the same, graph against eager and fused against eager): the captured
graphs replay exactly what eager decoding computes, at every captured size, for batches that are padded
and batches that are sliced, and a decoder then serves its steady shape from them, also when the graphs
hold its compiled decoder (`--snac-fusion decoder`: within 50 dB of eager decoding).
"""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from oai_server.codec.orpheus import SAMPLES_PER_FRAME, frames_to_levels
from oai_server.codec.snac_graphs import QUEUED_SLICES, GraphSet, batch_ladder
from oai_server.codec.snac_model import decode_pcm, fold_weight_norm
from oai_server.codec.snac_stream import SnacDecoder
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import Window, WindowShape, decode_shape
from oai_server.engines.demo import SNAC_24KHZ_CONFIG, SNAC_DEMO_CONFIG

POLICY = WindowPolicy(context_frames=2, lookahead_frames=1, frames_per_decode=2)
STEADY = POLICY.steady_shape


def quiet_model(config: dict[str, Any], device: str = "cpu") -> Any:
    """A SNAC without noise (so decodes are comparable), weight norm folded as the server loads it."""
    from snac import SNAC

    torch.manual_seed(0)
    model = SNAC(**{**config, "noise": False})
    fold_weight_norm(model)
    return model.to(device).eval()


def windows(n: int, shape: WindowShape, seed: int) -> list[Window]:
    """`n` windows of `shape` with random codes."""
    length, emit, count, lead = shape
    rng = np.random.default_rng(seed)
    return [Window(tuple(tuple(int(c) for c in f) for f in rng.integers(0, 4096, (length, 7))), emit, count, lead)
            for _ in range(n)]  # fmt: skip


def levels_of(batch: list[Window]) -> list[np.ndarray]:
    return frames_to_levels(np.asarray([w.frames for w in batch], dtype=np.int64))


def eager(model: Any, batch: list[Window], device: str = "cpu") -> np.ndarray:
    codes = [torch.from_numpy(level).to(device) for level in levels_of(batch)]
    with torch.inference_mode():
        return decode_pcm(model, codes, batch[0].shape).cpu().numpy()


class StandIn:
    """A captured graph's stand-in: decodes eagerly on the CPU, records the batch sizes it ran."""

    def __init__(self, size: int, model: Any = None, shape: WindowShape = STEADY) -> None:
        self.size = size
        self.model = model
        self.shape = shape
        self.runs: list[int] = []

    def run(self, levels: list[np.ndarray]) -> np.ndarray:
        n = levels[0].shape[0]
        assert n <= self.size, "a batch larger than the graph was sent to it"
        self.runs.append(n)
        if self.model is None:  # each output row names its input row: its first code
            samples = self.shape[3] + SAMPLES_PER_FRAME * self.shape[2]  # the seam, then the chunk
            return np.repeat(levels[0][:, :1], samples, axis=1).astype(np.int16)
        with torch.inference_mode():
            return decode_pcm(self.model, [torch.from_numpy(level) for level in levels], self.shape).numpy()


def stand_in_set(max_batch: int, model: Any = None, shape: WindowShape = STEADY) -> tuple[GraphSet, dict[int, StandIn]]:
    graphs = {size: StandIn(size, model, shape) for size in batch_ladder(max_batch)}
    return GraphSet(shape, graphs), graphs  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("max_batch", "ladder"),
    [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (8, [1, 2, 3, 4, 5, 6, 7, 8]), (10, [*range(1, 9), 10]),
     (64, [*range(1, 9), 12, 16, 24, 32, 48, 64]), (100, [*range(1, 9), 12, 16, 24, 32, 48, 64, 96, 100])],
)  # fmt: skip
def test_batch_ladder_is_every_size_to_eight_then_steps_of_at_most_half(max_batch: int, ladder: list[int]) -> None:
    assert batch_ladder(max_batch) == ladder
    # a batch pads at most a third of its rows (none up to 8): the padding's GPU time is wasted decoding
    assert all((nxt - (size + 1)) / nxt < 1 / 3 for size, nxt in itertools.pairwise(ladder))


@pytest.mark.parametrize("n", [1, 5, 8, 9, 12, 13, 17, 25, 32])
def test_a_batch_replays_the_smallest_graph_that_holds_it(n: int) -> None:
    graph_set, graphs = stand_in_set(32)
    batch = windows(n, STEADY, seed=n)
    out = graph_set.run(levels_of(batch))
    smallest = min(size for size in graphs if size >= n)
    assert {size: g.runs for size, g in graphs.items() if g.runs} == {smallest: [n]}
    assert out.shape == (n, STEADY[3] + SAMPLES_PER_FRAME * STEADY[2])
    assert out[:, 0].tolist() == [w.frames[0][0] for w in batch]  # rows in order


def test_batches_beyond_the_largest_graph_run_in_slices_in_order() -> None:
    graph_set, graphs = stand_in_set(16)
    batch = windows(16 + 16 + 10, STEADY, seed=1)
    out = graph_set.run(levels_of(batch))
    assert graphs[16].runs == [16, 16] and graphs[12].runs == [10]  # 16 + 16 + the last 10 padded into the 12-graph
    assert sum(len(g.runs) for g in graphs.values()) == 3
    assert out[:, 0].tolist() == [w.frames[0][0] for w in batch]


def test_a_batch_past_the_largest_graph_is_queued_in_slices_each_with_its_own_host_buffers() -> None:
    """A burst's first windows come as one round of up to `QUEUED_SLICES` times the largest graph: its slices are
    queued one after another, each through host buffers of its own, to be waited for once; past the buffers, the
    batch runs in slices waited for at once, as before."""
    log: list[tuple[Any, ...]] = []
    graph_set = GraphSet(STEADY, {4: Launching(4, STEADY, log), 8: Launching(8, STEADY, log, QUEUED_SLICES)})  # type: ignore[dict-item]
    batch = windows(8 + 8 + 8 + 3, STEADY, seed=4)
    assert graph_set.queues(27) and graph_set.queues(36) and not graph_set.queues(37)  # 37: a fifth slice of 8
    read = graph_set.launch(levels_of(batch))
    assert log == [("launch", STEADY, 8), ("launch", STEADY, 8, 1), ("launch", STEADY, 8, 2), ("launch", STEADY, 3)]
    assert read()[:, 0].tolist() == [w.frames[0][0] for w in batch]  # rows in order, the remainder in the 4-graph
    log.clear()
    too_many = windows(8 * (QUEUED_SLICES + 1), STEADY, seed=5)
    assert graph_set.launch(levels_of(too_many))()[:, 0].tolist() == [w.frames[0][0] for w in too_many]
    assert log == []  # run slice by slice, each waited for (a stand-in's run), none queued


def test_on_cuda_a_round_takes_a_burst_s_windows_at_once_and_eager_shapes_decode_max_batch_at_a_time() -> None:
    from oai_server.codec.snac_stream import _Job

    on_cuda = SnacDecoder(None, "cuda", max_batch=4, round_slices=QUEUED_SLICES)
    on_cpu = SnacDecoder(None, "cpu", max_batch=4, round_slices=QUEUED_SLICES)
    try:
        assert (on_cuda.round_limit, on_cpu.round_limit) == (4 * QUEUED_SLICES, 4)
        on_cuda.graphs = {decode_shape(STEADY): stand_in_set(4)[0]}
        jobs = [_Job(window, None, None, 0.0) for window in windows(10, STEADY, seed=6)]  # type: ignore[arg-type]
        assert [len(b) for b in on_cuda._batches_of(decode_shape(STEADY), jobs)] == [10]  # queued in slices
        assert [len(b) for b in on_cuda._batches_of((3, 0, 1, 0), jobs)] == [4, 4, 2]  # no graph: eager, 4 at a time
    finally:
        on_cuda.close()
        on_cpu.close()


def test_a_round_is_one_graph_batch_unless_told_to_take_more_slices() -> None:
    by_default, two = SnacDecoder(None, "cuda", max_batch=4), SnacDecoder(None, "cuda", max_batch=4, round_slices=2)
    try:
        assert (by_default.round_limit, two.round_limit) == (4, 8)
    finally:
        by_default.close()
        two.close()
    for wrong in (0, QUEUED_SLICES + 1):
        with pytest.raises(ValueError, match="round_slices"):
            SnacDecoder(None, "cuda", max_batch=4, round_slices=wrong)


def test_the_decoder_sends_the_captured_shape_through_its_graphs_and_others_eager() -> None:
    model = quiet_model(SNAC_DEMO_CONFIG)
    decoder = SnacDecoder(model, "cpu", max_batch=4)
    try:
        steady = windows(3, STEADY, seed=2)
        other = windows(2, (3, 0, 1, 0), seed=3)
        expected_steady, expected_other = decoder.decode_sync(steady), decoder.decode_sync(other)  # eager
        graph_set, graphs = stand_in_set(4, model, decode_shape(STEADY))  # a graph decodes a length, whole
        decoder.graphs = {decode_shape(STEADY): graph_set}
        assert decoder.decode_sync(steady) == expected_steady  # same numbers, through the graph set
        assert graphs[3].runs == [3]
        assert decoder.decode_sync(other) == expected_other
        assert sum(len(g.runs) for g in graphs.values()) == 1  # the other shape never reached a graph
        assert decoder.windows_decoded == 10 and decoder.frames_emitted == 2 * (3 * 2 + 2 * 1)
        assert decoder.eager_windows == 3 + 2 + 2 and decoder.window_counts() == (10, 7)  # the graph's 3 are not
    finally:
        decoder.close()


def test_a_shape_whose_capture_fails_decodes_eagerly_and_keeps_the_others_graphs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One window shape that cannot be captured (a compile or capture error on the device) costs that shape its
    graphs, logged, not every shape's: before, the warm-up lost them all and the server decoded everything eagerly."""
    from oai_server.codec import snac_stream

    bad = (4, 2, 2, 240)
    captured: list[WindowShape] = []

    def capture(model: Any, shape: WindowShape, max_batch: int, device: str, pool: Any) -> str:
        if shape == bad:
            raise RuntimeError("capture refused")
        captured.append(shape)
        return f"graphs of {shape}"

    monkeypatch.setattr(snac_stream.torch.cuda, "graph_pool_handle", lambda: "pool")
    monkeypatch.setattr(snac_stream.GraphSet, "capture", capture)
    shapes = WindowPolicy().graph_shapes
    graphs = snac_stream.capture_graph_sets(quiet_model(SNAC_DEMO_CONFIG), shapes, 8, "cuda", "off")
    assert set(graphs) == set(shapes) - {bad} and captured == sorted(set(shapes) - {bad}, reverse=True)
    assert f"window shape {bad} failed" in caplog.text


class Launching(StandIn):
    """A stand-in graph that is launched and read later, as a round queues it (`decode_frame_batches`); what happens
    goes into `log`."""

    def __init__(self, size: int, shape: WindowShape, log: list[tuple[Any, ...]], slots: int = 1) -> None:
        super().__init__(size, shape=shape)
        self.log = log
        self.slots = slots

    def launch(self, levels: list[np.ndarray], slot: int = 0) -> Any:
        assert slot < self.slots, "a slot this graph has no host buffers for"
        pcm = self.run(levels)
        self.log.append(("launch", self.shape, len(pcm)) if slot == 0 else ("launch", self.shape, len(pcm), slot))
        return lambda: (self.log.append(("read", self.shape)), pcm)[1]


class Refusing(Launching):
    """A graph whose launch the device refuses."""

    def launch(self, levels: list[np.ndarray], slot: int = 0) -> Any:
        raise RuntimeError("replay refused")


def launching_sets(shapes: list[WindowShape], log: list[tuple[Any, ...]]) -> dict[WindowShape, GraphSet]:
    return {shape: GraphSet(shape, {8: Launching(8, shape, log)}) for shape in shapes}  # type: ignore[dict-item]


def batch_of(n: int, shape: WindowShape, seed: int) -> tuple[np.ndarray, WindowShape]:
    return np.asarray([w.frames for w in windows(n, shape, seed)], dtype=np.int16), shape


def first_codes(pcm: Any) -> list[int]:
    return [int(row[0]) for row in pcm]


OTHER: WindowShape = (3, 0, 1, 0)


def test_a_round_queues_every_graph_then_waits_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each wait on SNAC's lowest-priority stream can last until the engine leaves SMs free: a round of several
    shapes is queued whole and waited for once, except that a shape met again waits before its second launch (its
    graph's staged inputs and host output are still in use)."""
    from oai_server.codec import snac_stream

    log: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        torch.cuda, "current_stream", lambda: SimpleNamespace(synchronize=lambda: log.append(("wait",)))
    )
    batches = [batch_of(3, STEADY, 1), batch_of(2, OTHER, 2), batch_of(4, STEADY, 3)]
    results = snac_stream.decode_frame_batches(None, "cuda", launching_sets([STEADY, OTHER], log), batches)
    assert log == [
        ("launch", STEADY, 3), ("launch", OTHER, 2), ("wait",), ("read", STEADY), ("read", OTHER),
        ("launch", STEADY, 4), ("wait",), ("read", STEADY),
    ]  # fmt: skip
    assert [first_codes(pcm) for pcm in results] == [[int(f[0][0]) for f in frames] for frames, _ in batches]


def test_a_failed_batch_fails_alone_and_eager_batches_decode_between_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    from oai_server.codec import snac_stream

    log: list[tuple[Any, ...]] = []
    model = quiet_model(SNAC_DEMO_CONFIG)
    sets = launching_sets([STEADY], log)
    broken = POLICY.stream_shapes[1]
    sets[broken] = GraphSet(broken, {8: Refusing(8, broken, log)})  # type: ignore[dict-item]
    eager_batch = batch_of(2, OTHER, 5)
    batches = [batch_of(3, STEADY, 4), batch_of(2, broken, 6), eager_batch]
    results = snac_stream.decode_frame_batches(model, "cpu", sets, batches)  # on the CPU nothing waits
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "replay refused"
    assert first_codes(results[0]) == [int(f[0][0]) for f in batches[0][0]]
    np.testing.assert_array_equal(results[2], eager(model, windows(2, OTHER, 5)))
    assert log == [("launch", STEADY, 3), ("read", STEADY)]


def test_a_launched_round_is_read_without_a_wait_once_its_event_has_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's steps collect a round (`--snac-rounds step`) only once its event has passed, and then must not
    wait on the stream: a wait lets go of the GIL, and the engine's thread may wait to get it back."""
    from oai_server.codec import snac_stream

    log: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        torch.cuda, "current_stream", lambda: SimpleNamespace(synchronize=lambda: log.append(("wait",)))
    )
    batches = [batch_of(3, STEADY, 1), batch_of(2, OTHER, 2)]
    launched = snac_stream.launch_frame_batches(None, "cuda", launching_sets([STEADY, OTHER], log), batches)
    passed = [False]
    launched.done = SimpleNamespace(query=lambda: passed[0])
    assert not launched.ready()
    passed[0] = True
    assert launched.ready()
    results = launched.collect()
    assert ("wait",) not in log and [first_codes(pcm) for pcm in results] == wants_of(batches)
    passed[0] = False  # read before its event passed (the service's thread, finishing a step's round): it waits
    launched = snac_stream.launch_frame_batches(None, "cuda", launching_sets([STEADY], log), batches[:1])
    launched.done = SimpleNamespace(query=lambda: passed[0])
    assert first_codes(launched.collect()[0]) == wants_of(batches)[0] and log[-2:] == [("wait",), ("read", STEADY)]


def wants_of(batches: list[tuple[np.ndarray, WindowShape]]) -> list[list[int]]:
    return [[int(f[0][0]) for f in frames] for frames, _ in batches]


def test_when_the_wait_fails_every_queued_batch_gets_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from oai_server.codec import snac_stream

    def lost() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda: SimpleNamespace(synchronize=lost))
    log: list[tuple[Any, ...]] = []
    batches = [batch_of(3, STEADY, 1), batch_of(2, OTHER, 2)]
    results = snac_stream.decode_frame_batches(None, "cuda", launching_sets([STEADY, OTHER], log), batches)
    assert [str(r) for r in results] == ["CUDA error: an illegal memory access was encountered"] * 2
    assert all(isinstance(r, RuntimeError) for r in results) and ("read", STEADY) not in log


# --- on the GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(("n", "queued"), [(1, False), (3, False), (8, False), (11, False), (11, True), (29, True)])
def test_captured_graphs_replay_like_eager_decoding(n: int, queued: bool) -> None:
    """Real SNAC 24 kHz shapes: graph replay (padded to a captured size, or sliced past the largest, waited for
    slice by slice or queued whole) gives the samples eager decoding gives, the same kernels on the same inputs."""
    model = quiet_model(SNAC_24KHZ_CONFIG, "cuda")
    graph_set = GraphSet.capture(model, STEADY, max_batch=8, device="cuda")
    batch = windows(n, STEADY, seed=n)
    if queued:
        read = graph_set.launch(levels_of(batch))
        torch.cuda.current_stream().synchronize()
        replayed = read()
    else:
        replayed = graph_set.run(levels_of(batch))
    reference = eager(model, batch, "cuda")
    assert replayed.dtype == np.int16 and replayed.shape == reference.shape == (n, STEADY[3] + SAMPLES_PER_FRAME * 2)
    assert int(np.abs(replayed.astype(np.int32) - reference).max()) <= 2
    assert int(np.abs(reference).max()) > 0  # a silent decode would compare equal for nothing


@pytest.mark.gpu
def test_the_decoder_serves_its_steady_shape_from_captured_graphs() -> None:
    model = quiet_model(SNAC_24KHZ_CONFIG, "cuda")
    decoder = SnacDecoder(model, "cuda", max_batch=8)
    try:
        batch = windows(5, STEADY, seed=7)
        before = decoder.decode_sync(batch)  # eager
        first = windows(3, POLICY.stream_shapes[0], seed=8)
        first_before = decoder.decode_sync(first)
        asyncio.run(decoder.capture_graphs(POLICY.stream_shapes))
        assert sorted(decoder.graphs) == sorted(POLICY.stream_shapes)
        assert all(decoder.graphs[shape].shape == shape for shape in POLICY.stream_shapes)
        after = decoder.decode_sync(batch)
        for a, b in zip(before, after, strict=True):
            assert len(a) == len(b) == 2 * (STEADY[3] + SAMPLES_PER_FRAME * 2)
            np.testing.assert_allclose(np.frombuffer(a, "<i2"), np.frombuffer(b, "<i2"), atol=2)
        for a, b in zip(first_before, decoder.decode_sync(first), strict=True):  # the first window, one shared pool
            assert len(a) == len(b) == 2 * SAMPLES_PER_FRAME
            np.testing.assert_allclose(np.frombuffer(a, "<i2"), np.frombuffer(b, "<i2"), atol=2)
    finally:
        decoder.close()


@pytest.mark.gpu
def test_graphs_of_the_compiled_decoder_decode_what_eager_decoding_does() -> None:
    model = quiet_model(SNAC_24KHZ_CONFIG, "cuda")
    decoder = SnacDecoder(model, "cuda", max_batch=8, fusion="decoder")
    try:
        shapes = POLICY.stream_shapes
        batches = {shape: windows(3, shape, seed=i) for i, shape in enumerate(shapes)}
        before = {shape: decoder.decode_sync(batch) for shape, batch in batches.items()}  # eager, uncompiled
        asyncio.run(decoder.capture_graphs(shapes))  # torch.compile runs here, at capture
        assert sorted(decoder.graphs) == sorted(shapes)
        assert type(decoder.model.decoder).__name__ == "Decoder"  # the eager path stays uncompiled
        for shape, batch in batches.items():
            for a, b in zip(before[shape], decoder.decode_sync(batch), strict=True):
                want, got = np.frombuffer(a, "<i2").astype(np.float64), np.frombuffer(b, "<i2").astype(np.float64)
                assert got.shape == want.shape == (shape[3] + SAMPLES_PER_FRAME * shape[2],)
                noise = float(np.sum((got - want) ** 2))  # TF32 convolutions may be chosen per layout
                assert noise == 0 or 10 * np.log10(float(np.sum(want**2)) / noise) >= 50, shape
    finally:
        decoder.close()


@pytest.mark.gpu
def test_a_round_queued_whole_decodes_what_each_batch_decodes_alone() -> None:
    """Every shape's graphs share one memory pool, as the server captures them; queued one after another and waited
    for once, each batch still gets its own samples (a second batch of a shape waits for the first)."""
    from oai_server.codec.snac_stream import capture_graph_sets, decode_frame_batches

    model = quiet_model(SNAC_24KHZ_CONFIG, "cuda")
    shapes = list(POLICY.stream_shapes)
    graphs = capture_graph_sets(model, shapes, 8, "cuda")
    batches = [batch_of(3, shape, seed=i) for i, shape in enumerate(shapes)] + [batch_of(5, shapes[0], seed=9)]
    together = decode_frame_batches(model, "cuda", graphs, batches)
    for (frames, shape), pcm in zip(batches, together, strict=True):
        alone = graphs[shape].run(frames_to_levels(frames.astype(np.int64)))
        assert isinstance(pcm, np.ndarray) and int(np.abs(alone).max()) > 0
        np.testing.assert_array_equal(pcm, alone)


def test_windows_of_one_length_share_a_graph_replay_and_each_keeps_its_span() -> None:
    """A steady window and a filled one of the ramp (a 2-frame chunk after 4 frames of context: as long, other
    samples emitted) are one batch, one replay of their length's graph, and each gets the samples an eager decode of
    its own shape gives."""
    model = quiet_model(SNAC_DEMO_CONFIG)
    decoder = SnacDecoder(model, "cpu", max_batch=4)
    try:
        steady = windows(1, STEADY, seed=4)[0]  # (5, 2, 2, lead)
        ramp = windows(1, (STEADY[0], 3, 1, STEADY[3]), seed=5)[0]
        expected = [eager(model, [steady])[0], eager(model, [ramp])[0]]
        graph_set, graphs = stand_in_set(4, model, decode_shape(STEADY))
        decoder.graphs = {decode_shape(STEADY): graph_set}
        got = decoder.decode_sync([steady, ramp])
        assert graphs[2].runs == [2]  # both, in one replay of two rows
        for pcm, want in zip(got, expected, strict=True):  # a batch of two sums in another order than one alone
            np.testing.assert_allclose(np.frombuffer(pcm, "<i2"), want, atol=1)
        assert [len(pcm) // 2 for pcm in got] == [STEADY[3] + 2 * SAMPLES_PER_FRAME, STEADY[3] + SAMPLES_PER_FRAME]
        assert decoder.eager_windows == 0 and decoder.frames_decoded == 2 * STEADY[0] and decoder.frames_emitted == 3
    finally:
        decoder.close()
