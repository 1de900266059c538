"""The slot processor's band work as CUDA graphs (`engines/band_graphs.py`): a processor with the graphs and one
without, driven through the same batch changes with the same logits, give the same logits at every step. On the
CPU the graph path runs its work eagerly on the graph's buffers, so the buffers, the padding to a bucket and the
refresh of a batch's parameters are what is checked here; on a GPU, the replay too."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

from oai_server.codec import orpheus
from oai_server.engines.band_graphs import BAND_GRAPHS_KEY, BUCKETS, BandGraphs, bucket_for
from oai_server.engines.band_penalty import band_penalty
from oai_server.engines.band_sampling import TOP_K_KEY, TOP_P_KEY, BandFilter
from oai_server.engines.vllm_orpheus_logits import EXTRA_ARGS_KEY, PENALTY_KEY, OrpheusSlotLogitsProcessor

V = orpheus.ORPHEUS_VOCAB_SIZE


def speech(temperature: float = 0.6, penalty: float = 1.3, top_p: float = 0.8, top_k: int = 0) -> Any:
    extra = {EXTRA_ARGS_KEY: True, PENALTY_KEY: penalty, TOP_P_KEY: top_p, TOP_K_KEY: top_k}
    return types.SimpleNamespace(temperature=temperature, extra_args=extra)


def change(added: list[tuple[int, Any, list[int], list[int]]], removed: list[int] | None = None) -> Any:
    return types.SimpleNamespace(batch_size=0, removed=removed or [], added=added, moved=[])


def audio_history(length: int, seed: int) -> list[int]:
    """`length` audio tokens in their slots' bands, repeating a few codes so the penalty has hits."""
    return [orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * (k % 7) + (seed + k) % 5 for k in range(length)]


class Pair:
    """The same batch in a processor with the graphs and one without."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        config = types.SimpleNamespace(additional_config={BAND_GRAPHS_KEY: True})
        self.graphed = OrpheusSlotLogitsProcessor(config, self.device, False)
        self.eager = OrpheusSlotLogitsProcessor(None, self.device, False)
        self.outputs: dict[int, tuple[list[int], list[int]]] = {}  # index -> each processor's own live list
        self.generator = torch.Generator().manual_seed(11)

    def update(self, added: list[tuple[int, Any, int]], removed: list[int] | None = None) -> None:
        for index, _params, length in added:
            self.outputs[index] = (audio_history(length, index), audio_history(length, index))
        for processor, side in ((self.graphed, 0), (self.eager, 1)):
            rows = [(index, params, [1], self.outputs[index][side]) for index, params, _ in added]
            processor.update_state(change(rows, removed))
        for index in removed or []:
            if index not in {i for i, _, _ in added}:
                self.outputs.pop(index, None)

    def step(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both processors' logits for one step of `rows` rows; then every row generates one token."""
        logits = (torch.randn(rows, V, generator=self.generator) * 4).to(self.device)
        got = self.graphed.apply(logits.clone()), self.eager.apply(logits.clone())
        for graphed, eager in self.outputs.values():
            token = orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * (len(graphed) % 7) + len(graphed) % 3
            graphed.append(token)
            eager.append(token)
        self.graphed.update_state(None)
        self.eager.update_state(None)
        return got


def assert_same(got: tuple[torch.Tensor, torch.Tensor]) -> None:
    graphed, eager = got
    assert torch.equal(torch.isfinite(graphed), torch.isfinite(eager))
    finite = torch.isfinite(eager)
    assert int(finite.sum(1).min()) >= 1 and int(finite.sum(1).max()) < orpheus.CODEBOOK_SIZE  # top-p dropped some
    torch.testing.assert_close(graphed[finite], eager[finite], rtol=0, atol=0)


def drive(pair: Pair) -> list[tuple[int, bool, torch.dtype]]:
    """Batch changes a server sees; the graph buckets the graphed processor went through, in order."""
    buckets = []

    def graph_key() -> tuple[int, bool, torch.dtype] | None:
        assert pair.graphed._layout is not None
        layout = pair.graphed._layout[1]
        assert layout is not None
        found = [key for key, g in pair.graphed._graphs.graphs.items() if g.loaded is layout]  # type: ignore[union-attr]
        return found[0] if found else None

    pair.update([(i, speech(0.6 + 0.1 * i), 3 + 5 * i) for i in range(5)])  # 5 rows: bucket 8
    for _ in range(3):
        assert_same(pair.step(5))
    buckets.append(graph_key())
    pair.update([(2, speech(1.0, top_p=0.9), 0)], removed=[2])  # a stream ends, a new one takes its row
    assert_same(pair.step(5))
    buckets.append(graph_key())
    pair.update([(i, speech(0.7), i) for i in range(5, 9)])  # 9 rows: bucket 16
    for _ in range(2):
        assert_same(pair.step(9))
    buckets.append(graph_key())
    pair.update([(9, speech(0.8, top_k=40), 2)])  # a row with a top-k: no graph, eager
    assert_same(pair.step(10))
    buckets.append(graph_key())
    pair.update([], removed=[9])
    assert_same(pair.step(9))
    buckets.append(graph_key())
    return buckets


def test_graphed_band_work_gives_the_eager_processors_logits_through_batch_changes() -> None:
    buckets = drive(Pair())
    assert buckets == [(8, True, torch.float32), (8, True, torch.float32), (16, True, torch.float32), None,
                       (16, True, torch.float32)]  # fmt: skip


def test_a_batch_without_penalty_has_its_own_graph_and_the_same_logits() -> None:
    pair = Pair()
    pair.update([(i, speech(0.6, penalty=1.0), 4 + i) for i in range(3)])
    for _ in range(2):
        assert_same(pair.step(3))
    assert pair.graphed._graphs is not None and list(pair.graphed._graphs.graphs) == [(8, False, torch.float32)]
    assert pair.graphed._graphs.graphs[(8, False, torch.float32)].hit is None


def test_a_graph_that_cannot_be_made_leaves_the_processor_eager_not_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(BandGraphs, "graph_for", refuse)
    pair = Pair()
    pair.update([(i, speech(), 2 + i) for i in range(3)])
    assert_same(pair.step(3))
    assert pair.graphed._graphs is None  # given up for good, with the error in the engine's log
    assert_same(pair.step(3))


def test_buckets_and_which_batches_run_eagerly() -> None:
    assert [bucket_for(n) for n in (1, 8, 9, 200, 512)] == [8, 8, 16, 224, 512]
    assert bucket_for(513) is None and list(BUCKETS) == sorted(BUCKETS)
    graphs = BandGraphs(torch.device("cpu"))
    spec = BandFilter(torch.ones(3, 1), None, torch.full((3, 1), 0.8))
    with_top_k = BandFilter(torch.ones(3, 1), torch.zeros(3, 4097, dtype=torch.bool), torch.full((3, 1), 0.8))
    assert graphs.graph_for(3, torch.float32, spec, False, None) is not None
    assert graphs.graph_for(3, torch.float32, spec, True, None) is None  # drawn here: eager
    assert graphs.graph_for(3, torch.float32, with_top_k, False, None) is None
    assert graphs.graph_for(3, torch.float32, None, False, None) is None  # rows in more than one group
    assert graphs.graph_for(600, torch.float32, spec, False, None) is None  # past the largest bucket


def test_the_first_batch_makes_every_bucket_up_to_the_largest_batch() -> None:
    spec = BandFilter(torch.ones(3, 1), None, torch.full((3, 1), 0.8))
    penalty = band_penalty(torch.zeros(3, dtype=torch.int64), torch.full((3,), 1.1))
    graphs = BandGraphs(torch.device("cpu"), max_rows=200)
    assert graphs.graph_for(3, torch.float32, spec, False, penalty) is not None
    made = sorted(graphs.graphs)
    assert made == [(b, True, torch.float32) for b in (8, 16, 32, 48, 64, 96, 128, 160, 192, 224)]
    assert graphs.graph_for(150, torch.float32, spec, False, penalty) is graphs.graphs[(160, True, torch.float32)]
    assert sorted(graphs.graphs) == made  # nothing made later
    graphs.graph_for(3, torch.float32, spec, False, None)  # the other variant: its own set
    assert len(graphs.graphs) == 2 * len(made)
    assert BandGraphs(torch.device("cpu"), max_rows=600).buckets == BUCKETS  # past the last: every bucket
    one_by_one = BandGraphs(torch.device("cpu"))  # the largest batch unknown: each bucket when met
    one_by_one.graph_for(3, torch.float32, spec, False, None)
    assert list(one_by_one.graphs) == [(8, False, torch.float32)]


def test_the_processor_makes_the_buckets_of_vllms_largest_batch() -> None:
    config = types.SimpleNamespace(
        additional_config={BAND_GRAPHS_KEY: True}, scheduler_config=types.SimpleNamespace(max_num_seqs=20)
    )
    processor = OrpheusSlotLogitsProcessor(config, torch.device("cpu"), False)
    processor.update_state(change([(i, speech(), [1], audio_history(3, i)) for i in range(3)]))
    processor.apply(torch.randn(3, V))
    assert processor._graphs is not None
    assert sorted(processor._graphs.graphs) == [(b, True, torch.float32) for b in (8, 16, 32)]


# --- on the GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_replayed_graphs_give_the_eager_processors_logits_on_cuda() -> None:
    pair = Pair("cuda")
    buckets = drive(pair)
    assert buckets[0] == (8, True, torch.float32) and buckets[3] is None
    assert pair.graphed._graphs is not None
    assert all(graph.graph is not None for graph in pair.graphed._graphs.graphs.values())  # captured, replayed
