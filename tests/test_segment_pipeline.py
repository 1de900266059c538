"""`synthesize_segments`: order, how many segments generate at once, cancellation (scripted synthesizer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from oai_server.pipeline.assistant import spoken_segments
from oai_server.pipeline.speech import CROSSFADE_SAMPLES, Crossfader, SpeechStats, TailPcm, synthesize_segments

from .helpers import eventually


class ScriptedSynthesizer:
    """Speaks a segment as `frames` chunks of 2048 samples, one per `delay` seconds; records overlap."""

    def __init__(self, frames: int = 3, delay: float = 0.01) -> None:
        self.frames = frames
        self.delay = delay
        self.generating = 0
        self.most_at_once = 0
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.first: dict[str, bool] = {}
        self.leads: dict[str, Any] = {}

    async def synthesize(
        self, text: str, options: Any, stats: SpeechStats, *, first: bool = True, lead: Any = None
    ) -> AsyncIterator[bytes]:
        self.first[text] = first
        self.leads[text] = lead
        self.generating += 1
        self.most_at_once = max(self.most_at_once, self.generating)
        try:
            for i in range(self.frames):
                await asyncio.sleep(self.delay)
                yield bytes([i % 256, len(text) % 256]) * 2048
            self.finished.append(text)
        except asyncio.CancelledError:
            self.cancelled.append(text)
            raise
        finally:
            self.generating -= 1


async def texts(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def collect(depth: int, synth: ScriptedSynthesizer, n: int = 6) -> list[str]:
    spoken = []
    events = synthesize_segments(synth, texts(*(f"segment {i}" for i in range(n))), None, depth=depth)  # type: ignore[arg-type]
    async for event in events:
        if event.text:
            spoken.append(event.text)
    return spoken


@pytest.mark.parametrize("depth", [1, 2, 3])
async def test_segments_in_order_with_at_most_depth_generating(depth: int) -> None:
    synth = ScriptedSynthesizer()
    spoken = await collect(depth, synth)
    assert spoken == [f"segment {i}" for i in range(6)]
    assert synth.most_at_once == depth
    assert synth.first == {f"segment {i}": i == 0 for i in range(6)}  # only the reply's start may hurry
    assert len({id(lead) for lead in synth.leads.values()}) == 1 and synth.leads["segment 0"] is not None


async def test_next_segment_generates_while_a_slow_reader_still_plays() -> None:
    synth = ScriptedSynthesizer(frames=2, delay=0.005)
    events = synthesize_segments(synth, texts("one", "two", "three"), None, depth=1)  # type: ignore[arg-type]
    first = await anext(events)
    assert first.text == "one"
    # The reader stalls here; generation carries on, one segment at a time, to the end of the reply.
    assert await eventually(lambda: synth.finished == ["one", "two", "three"])
    assert synth.generating == 0 and synth.most_at_once == 1
    rest = [event async for event in events]
    assert [e.text for e in rest if e.text] == ["two", "three"]


async def test_closing_cancels_generating_segments() -> None:
    synth = ScriptedSynthesizer(frames=100, delay=0.01)
    events = synthesize_segments(synth, texts("one", "two"), None, depth=2)  # type: ignore[arg-type]
    await anext(events)
    await anext(events)
    await events.aclose()
    assert synth.generating == 0
    assert set(synth.cancelled) == {"one", "two"}


async def test_first_segment_is_cut_after_max_words_while_the_reply_goes_on() -> None:
    produced: list[int] = []

    async def reply() -> AsyncIterator[str]:  # an LLM writing 40 words without punctuation
        for i in range(40):
            produced.append(i)
            yield f"w{i} "

    segments = spoken_segments(reply(), max_chars=300, first_segment_words=4, first_segment_max_words=10)
    first = await anext(segments)
    assert first == " ".join(f"w{i}" for i in range(10))
    assert len(produced) == 10  # spoken as soon as the 10th word is complete, not at the 300-char cut
    rest = [segment async for segment in segments]
    assert rest == [" ".join(f"w{i}" for i in range(10, 40))]


class TailedSynthesizer:
    """Speaks a segment as the real one does: chunks, then its held-back end as a `TailPcm`."""

    def __init__(self, value: int) -> None:
        self.value = value

    async def synthesize(
        self, text: str, options: Any, stats: SpeechStats, *, first: bool = True, lead: Any = None
    ) -> AsyncIterator[bytes]:
        for _ in range(2):
            yield np.full(1000, self.value, "<i2").tobytes()
        yield TailPcm(np.full(CROSSFADE_SAMPLES, self.value, "<i2").tobytes())


async def test_chunks_pass_at_once_and_each_segments_end_crossfades_into_the_next() -> None:
    synth = TailedSynthesizer(1000)
    events = synthesize_segments(synth, texts("one", "two"), None)  # type: ignore[arg-type]
    pcm = [np.frombuffer(e.pcm, "<i2") for e in [event async for event in events] if e.pcm]
    assert [len(p) for p in pcm[:2]] == [1000, 1000]  # nothing of a chunk waits for the crossfade
    audio = np.concatenate(pcm)
    assert len(audio) == 2 * (2000 + CROSSFADE_SAMPLES) - CROSSFADE_SAMPLES  # the two ends overlap once
    assert (audio == 1000).all()  # a crossfade of equal audio changes nothing


def test_the_crossfader_holds_back_only_a_segments_last_piece() -> None:
    fader = Crossfader(4)
    assert fader.feed(np.arange(6, dtype="<i2").tobytes()) == np.arange(6, dtype="<i2").tobytes()
    assert np.frombuffer(fader.feed(np.full(6, 8, "<i2").tobytes(), last=True), "<i2").tolist() == [8, 8]
    fader.boundary()
    joined = np.frombuffer(fader.feed(np.zeros(6, "<i2").tobytes()), "<i2").tolist()
    assert joined[:4] == [8, 5, 3, 0] and joined[4:] == [0, 0]  # 8 fading out over the ramp 0, 1/3, 2/3, 1
    assert fader.flush() == b""
