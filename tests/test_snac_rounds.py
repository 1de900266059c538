"""Who answers the SNAC service's rounds (`codec/snac_rounds.py`, ``--snac-rounds step``): the engine's steps while
they run with enough speech requests, the service's thread otherwise, and every request answered once, whoever
holds it, through failures and a server that goes away.

The service runs in this process on the CPU, a real `ServiceConnection` talking to it over its socket; a thread of
the test plays the engine, calling `step` as the Orpheus logits processor does. The service's graphs are stand-ins
that launch now and are read later (`tests/test_snac_graphs.py`), each PCM row its window's first code."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from oai_server.codec import snac_rounds
from oai_server.codec.snac_model import load_snac
from oai_server.codec.snac_rounds import STEP_FROM_ROWS, StepRounds, check_rounds
from oai_server.codec.snac_service import (
    ROUNDS_KEY,
    SERVICE_KEY,
    EngineSnacDecoder,
    ServiceConnection,
    SnacService,
    SnacServiceError,
    service_address,
)
from oai_server.codec.snac_stream import LaunchedRound, SnacDecoder
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.engines.vllm_args import EngineSpec
from oai_server.settings import Settings

from .test_snac_graphs import OTHER, STEADY, batch_of, launching_sets, wants_of
from .test_snac_service import spawned_engine, windows

ROWS = STEP_FROM_ROWS + 8


class Service:
    """A service with rounds answered as ``rounds`` says, its client, and an engine thread that steps on demand."""

    def __init__(self, snac: Path, rounds: str = "step") -> None:
        self.name = f"rounds-{uuid.uuid4().hex[:8]}"
        self.service = SnacService(service_address(self.name, os.getpid()), "cpu", check_rounds(rounds)).start()
        self.client = ServiceConnection.open(self.name)
        self.client.call("load", str(snac), "float32", 8, "off", "aten")
        self.log: list[tuple[Any, ...]] = []
        self.service.graphs.update(launching_sets([STEADY], self.log))
        self.rows = ROWS
        self._stepping = threading.Event()
        self._stop = threading.Event()
        self._engine = threading.Thread(target=self._steps, daemon=True)
        self._engine.start()

    def _steps(self) -> None:
        while not self._stop.is_set():
            if self._stepping.wait(0.01):
                self.service.step(self.rows)
                time.sleep(0.002)

    def steps(self, on: bool) -> None:
        """Start or stop the engine's steps."""
        (self._stepping.set if on else self._stepping.clear)()

    @property
    def rounds(self) -> StepRounds:
        assert self.service.rounds is not None
        return self.service.rounds

    def close(self) -> None:
        self._stop.set()
        self._engine.join(5)
        self.client.close()
        self.service.close()


@pytest.fixture
def service(noiseless_snac: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    # a loaded CI machine may leave a gap between two of the test's steps: the engine counts as stepping for 2 s
    monkeypatch.setattr(snac_rounds, "STEP_GAP_S", 2.0)
    made = Service(noiseless_snac)
    try:
        yield made
    finally:
        made.close()


def first_codes(pcm: Any) -> list[int]:
    return [int(row[0]) for row in pcm]


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_engine_s_steps_answer_the_rounds_while_enough_speech_requests_run(service: Service) -> None:
    service.steps(True)
    wait_for(service.rounds.engine_serves)
    for seed in range(3):
        batches = [batch_of(3, STEADY, seed)]
        assert [first_codes(pcm) for pcm in service.client.call("decode_many", batches)] == wants_of(batches)
    stats = service.client.call("stats")["rounds"]
    assert (stats["by_step"], stats["by_thread"]) == (3, 0)  # no round woke the service's thread
    assert stats["left_to_thread"] == 1 and stats["mode"] == "step"  # the stats request itself went to the thread
    assert [entry[0] for entry in service.log] == ["launch", "read"] * 3


def test_below_the_threshold_and_without_steps_the_service_s_thread_answers(service: Service) -> None:
    batches = [batch_of(2, STEADY, 1)]
    assert wants_of(batches) == [first_codes(pcm) for pcm in service.client.call("decode_many", batches)]  # no steps
    service.rows = STEP_FROM_ROWS - 1
    service.steps(True)
    time.sleep(0.05)
    assert not service.rounds.engine_serves()
    assert wants_of(batches) == [first_codes(pcm) for pcm in service.client.call("decode_many", batches)]
    stats = service.client.call("stats")["rounds"]
    assert (stats["by_step"], stats["by_thread"], stats["left_to_thread"]) == (0, 2, 0)


def test_a_step_leaves_what_would_make_it_wait_to_the_thread(service: Service) -> None:
    """Control requests, and rounds with a batch that has no graph (eager: the step would wait for it), go to the
    service's thread, which answers them whole; the engine's steps go on meanwhile."""
    service.steps(True)
    wait_for(service.rounds.engine_serves)
    eager = [batch_of(2, STEADY, 2), batch_of(1, OTHER, 3)]
    pcms = service.client.call("decode_many", eager)
    assert first_codes(pcms[0]) == wants_of(eager)[0] and pcms[1].shape[0] == 1  # OTHER decoded by the model
    sliced = [batch_of(9, STEADY, 9)]  # past the one 8-window graph, which has host buffers for one slice at a time
    assert [first_codes(pcm) for pcm in service.client.call("decode_many", sliced)] == wants_of(sliced)
    assert service.client.call("switch_interval", None) > 0
    with pytest.raises(SnacServiceError, match="unknown operation 'bogus'"):
        service.client.call("bogus")
    stats = service.client.call("stats")["rounds"]
    assert (stats["by_step"], stats["by_thread"], stats["left_to_thread"]) == (0, 2, 5)
    assert service.rounds.engine_serves()  # still the steps' to serve


def test_a_round_a_step_launched_is_finished_by_the_thread_once_the_steps_stop(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine goes idle with a round in flight (its GPU work not done at the last step): the service's thread
    waits for it and answers, within a look at the engine (`IDLE_CHECK_S`) after the steps counted as stopped."""
    monkeypatch.setattr(snac_rounds, "STEP_GAP_S", 0.1)
    never = SimpleNamespace(query=lambda: False)  # a CUDA event that has not passed, as far as steps can see
    launch = service.service.launch_round

    def pending(batches: Any) -> LaunchedRound | None:
        launched = launch(batches)
        assert launched is not None
        launched.done = never
        return launched

    monkeypatch.setattr(service.service, "launch_round", pending)
    service.steps(True)
    wait_for(service.rounds.engine_serves)
    batches = [batch_of(4, STEADY, 4)]
    replied: list[Any] = []
    caller = threading.Thread(target=lambda: replied.append(service.client.call("decode_many", batches)))
    caller.start()
    wait_for(lambda: service.rounds.by_step == 1)
    time.sleep(0.05)
    assert not replied  # in flight: no step may wait for it
    service.steps(False)
    caller.join(10)
    assert [first_codes(pcm) for pcm in replied[0]] == wants_of(batches)
    assert service.rounds.by_thread == 0  # the thread finished the step's round; it answered none of its own


def test_a_step_that_fails_hands_every_later_round_to_the_thread_without_raising_into_the_engine(
    service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service.steps(True)
    wait_for(service.rounds.engine_serves)
    monkeypatch.setattr(service.rounds, "_readable", SimpleNamespace(poll=lambda _: 1 / 0))
    wait_for(lambda: service.rounds.stats()["broken"])  # the engine's thread went on stepping
    assert service._engine.is_alive()  # the failure stayed in the step
    assert "a step failed; the service's thread serves every round from now on" in caplog.text
    monkeypatch.undo()
    batches = [batch_of(2, STEADY, 5)]
    assert [first_codes(pcm) for pcm in service.client.call("decode_many", batches)] == wants_of(batches)
    assert service.rounds.stats()["by_thread"] == 1 and not service.rounds.engine_serves()


def test_a_round_whose_launch_fails_is_answered_with_its_error_by_the_step(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(batches: Any) -> None:
        raise RuntimeError("replay refused")

    monkeypatch.setattr(service.service, "launch_round", refused)
    service.steps(True)
    wait_for(service.rounds.engine_serves)
    with pytest.raises(SnacServiceError, match="decode_many: RuntimeError: replay refused"):
        service.client.call("decode_many", [batch_of(1, STEADY, 6)])
    assert not service.rounds.stats()["broken"]  # one bad request, not a broken step


def test_a_server_that_goes_away_mid_steps_leaves_the_service_to_the_next_one(service: Service) -> None:
    service.steps(True)
    wait_for(service.rounds.engine_serves)
    batches = [batch_of(2, STEADY, 7)]
    service.client.call("decode_many", batches)
    service.client.close()  # the server process exits
    service.client = ServiceConnection.open(service.name)
    assert [first_codes(pcm) for pcm in service.client.call("decode_many", batches)] == wants_of(batches)
    assert service.rounds.by_step == 2


def test_the_thread_mode_answers_each_request_on_the_service_s_thread(noiseless_snac: Path) -> None:
    made = Service(noiseless_snac, rounds="thread")
    try:
        made.steps(True)
        batches = [batch_of(2, STEADY, 8)]
        assert [first_codes(pcm) for pcm in made.client.call("decode_many", batches)] == wants_of(batches)
        assert made.service.rounds is None and made.client.call("stats")["rounds"] == {"mode": "thread"}
    finally:
        made.close()


def test_the_setting_reaches_the_engine_and_its_processor_steps_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from oai_server.engines.vllm_orpheus_logits import OrpheusSlotLogitsProcessor

    assert Settings().snac_rounds == "thread" and Settings(snac_rounds="step").snac_rounds == "step"
    with pytest.raises(ValueError, match="unknown SNAC rounds 'fibers'"):
        check_rounds("fibers")

    def config(rounds: str) -> dict[str, Any]:
        kwargs = EngineSpec(
            "m", tokenizer=None, max_model_len=64, gpu_memory_utilization=0.5, orpheus_slots=True,
            snac_service="orpheus-0", snac_rounds=rounds,
        ).engine_kwargs()  # fmt: skip
        extra: dict[str, Any] = kwargs["additional_config"]
        return extra

    assert ROUNDS_KEY not in config("thread") and config("step")[ROUNDS_KEY] == "step"
    name = f"rounds-{uuid.uuid4().hex[:8]}"
    extra = {SERVICE_KEY: name, ROUNDS_KEY: "step"}
    processor = OrpheusSlotLogitsProcessor(SimpleNamespace(additional_config=extra), "cpu", False)
    assert processor.snac_service is not None and processor.snac_service.rounds is not None
    steps: list[int] = []
    monkeypatch.setattr(processor.snac_service.rounds, "step", steps.append)
    try:
        processor.update_state(None)  # a step without batch changes still gives SNAC its turn
        processor._rows = dict.fromkeys(range(3))  # type: ignore[arg-type]
        processor.update_state(None)
        assert steps == [0, 3]
    finally:
        processor.snac_service.close()


def stepping_engine_core(name: str, ready: Any) -> None:
    """vLLM's engine core with `--snac-rounds step`: the Orpheus logits processor, then a step loop calling its
    `update_state` as vLLM's model runner does, with 40 speech requests in the batch."""
    from oai_server.engines.vllm_orpheus_logits import OrpheusSlotLogitsProcessor

    config = {SERVICE_KEY: name, ROUNDS_KEY: "step"}
    processor = OrpheusSlotLogitsProcessor(SimpleNamespace(additional_config=config), "cpu", False)
    processor._rows = dict.fromkeys(range(ROWS))  # type: ignore[arg-type]
    ready.set()
    while True:
        processor.update_state(None)
        time.sleep(0.003)


async def test_the_server_s_decoder_decodes_through_an_engine_whose_steps_serve_the_rounds(
    noiseless_snac: Path,
) -> None:
    """The real pair in two processes, as the server and vLLM's engine core run them: the server's decoder loads,
    captures and decodes through a spawned engine whose steps serve the rounds; on the CPU there are no graphs, so
    every round goes to the service's thread, whole, and decodes what a local decoder decodes."""
    with spawned_engine(stepping_engine_core) as (name, _):
        remote = await asyncio.to_thread(EngineSnacDecoder.load, name, str(noiseless_snac), "cpu", torch.float32, 8)
        local = SnacDecoder(load_snac(str(noiseless_snac), "cpu"), "cpu", max_batch=8)
        try:
            await remote.capture_graphs(WindowPolicy().stream_shapes)
            batch = windows()
            got = await asyncio.wait_for(asyncio.gather(*(remote.decode(window) for window in batch)), 30)
            for pcm, want in zip(got, local.decode_sync(batch), strict=True):
                np.testing.assert_allclose(np.frombuffer(pcm, "<i2"), np.frombuffer(want, "<i2"), atol=1)
            rounds = remote.connection.call("stats")["rounds"]
            assert rounds["mode"] == "step" and rounds["by_step"] == 0 and not rounds["broken"]
            assert rounds["left_to_thread"] >= 2  # the decode rounds (no graphs here) and this very stats request
        finally:
            remote.close()
            local.close()
