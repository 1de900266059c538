"""Silero VAD (`oai_server.engines.vad`) on real espeak-ng speech placed between known silences."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from oai_server.codec.audio_input import resample
from oai_server.engines.vad import (
    SAMPLE_RATE,
    SileroVad,
    SpeechRegion,
    VadParams,
    default_vad,
    speech_regions,
    split_for_asr,
)
from oai_server.engines.vad_stream import PAUSE_MS, StreamingVad, VadEvent, VadStream
from tests.speech_audio import Placed, compose, to_pcm16

TOLERANCE_MS = 150
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back tomorrow morning.",
    "Thank you very much.",
]


@pytest.fixture(scope="module")
def conversation() -> tuple[np.ndarray, list[Placed]]:
    """Three sentences with 1.0 / 1.2 / 0.8 / 1.0 s of silence around them."""
    return compose([1.0, SENTENCES[0], 1.2, SENTENCES[1], 0.8, SENTENCES[2], 1.0])


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def test_each_sentence_is_found_where_it_was_placed(conversation: tuple[np.ndarray, list[Placed]]) -> None:
    audio, placed = conversation
    regions = speech_regions(audio)
    assert len(regions) == len(placed)
    for region, sentence in zip(regions, placed, strict=True):
        assert abs(region.start_ms - _ms(sentence.start)) <= TOLERANCE_MS, (region, sentence)
        assert abs(region.end_ms - _ms(sentence.end)) <= TOLERANCE_MS, (region, sentence)


def test_silence_gives_no_regions() -> None:
    assert speech_regions(np.zeros(3 * SAMPLE_RATE, np.float32)) == []
    hiss = np.random.default_rng(3).standard_normal(3 * SAMPLE_RATE).astype(np.float32) * 0.005
    assert speech_regions(hiss) == []
    assert speech_regions(np.zeros(0, np.float32)) == []


def test_a_pause_splits_only_when_longer_than_silence_duration() -> None:
    audio, placed = compose([0.5, SENTENCES[0], 0.4, SENTENCES[1], 0.5])
    merged = speech_regions(audio, VadParams(silence_duration_ms=500))
    assert len(merged) == 1
    assert abs(merged[0].start_ms - _ms(placed[0].start)) <= TOLERANCE_MS
    assert abs(merged[0].end_ms - _ms(placed[1].end)) <= TOLERANCE_MS
    split = speech_regions(audio, VadParams(silence_duration_ms=300))
    assert len(split) == 2
    assert abs(split[0].end_ms - _ms(placed[0].end)) <= TOLERANCE_MS
    assert abs(split[1].start_ms - _ms(placed[1].start)) <= TOLERANCE_MS


def test_threshold_is_honoured(conversation: tuple[np.ndarray, list[Placed]]) -> None:
    audio, _ = conversation
    peak = float(default_vad().probabilities(audio).max())
    assert peak < 1.0
    assert speech_regions(audio, VadParams(threshold=1.0)) == []
    assert len(speech_regions(audio, VadParams(threshold=peak))) >= 1


def test_split_for_asr_packs_regions_and_cuts_only_in_silence() -> None:
    s = SAMPLE_RATE
    regions = [SpeechRegion(1 * s, 3 * s), SpeechRegion(4 * s, 6 * s), SpeechRegion(7 * s, 9 * s)]
    assert split_for_asr(regions, 30, pad_ms=0) == [SpeechRegion(1 * s, 9 * s)]
    assert split_for_asr(regions, 5.5, pad_ms=0) == [SpeechRegion(1 * s, 6 * s), SpeechRegion(7 * s, 9 * s)]
    # Padding reaches at most halfway to the neighbour and the file's ends.
    total = int(9.5 * s)
    assert split_for_asr(regions, 30, pad_ms=800, total_samples=total) == [SpeechRegion(int(0.2 * s), total)]
    assert split_for_asr(regions, 3.1, pad_ms=800, total_samples=total) == [
        SpeechRegion(int(0.4 * s), int(3.5 * s)),  # 3.3 s padded: the left pad gives up 0.2 s
        SpeechRegion(int(3.5 * s), int(6.5 * s)),
        SpeechRegion(int(6.5 * s), total),
    ]
    # A region that fits is never cut because of its padding: the padding shrinks, evenly.
    assert split_for_asr(regions, 2.9, pad_ms=800, total_samples=total) == [
        SpeechRegion(int(0.55 * s), int(3.45 * s)),
        SpeechRegion(int(3.55 * s), int(6.45 * s)),
        SpeechRegion(int(6.55 * s), int(9.45 * s)),
    ]


def test_split_for_asr_hard_cuts_a_region_longer_than_the_maximum() -> None:
    s = SAMPLE_RATE
    pieces = split_for_asr([SpeechRegion(0, 70 * s), SpeechRegion(71 * s, 72 * s)], 30, pad_ms=0)
    third = 70 * s // 3
    # Three equal hard cuts; the short region after the pause joins the last one (it still fits).
    assert pieces == [SpeechRegion(0, third), SpeechRegion(third, 2 * third), SpeechRegion(2 * third, 72 * s)]
    assert all(p.samples <= 30 * s for p in pieces)


def test_real_audio_pieces_fit_and_cover_every_sentence(conversation: tuple[np.ndarray, list[Placed]]) -> None:
    audio, placed = conversation
    pieces = split_for_asr(speech_regions(audio), 4.0, total_samples=len(audio))
    assert all(p.samples <= 4 * SAMPLE_RATE for p in pieces)
    assert all(a.end <= b.start for a, b in itertools.pairwise(pieces))
    for sentence in placed:
        start, end = int(sentence.start * SAMPLE_RATE), int(sentence.end * SAMPLE_RATE)
        covered = sum(max(0, min(end, p.end) - max(start, p.start)) for p in pieces)
        assert covered >= 0.9 * (end - start)


def _stream_events(vad: StreamingVad, audio: np.ndarray, rate: int, params: VadParams) -> list[VadEvent]:
    stream = vad.stream(params, rate)
    pcm = to_pcm16(audio)
    chunk = rate // 10 * 2  # 100 ms
    events: list[VadEvent] = []
    for start in range(0, len(pcm), chunk):
        events += vad.feed_sync(stream, pcm[start : start + chunk])
    return events


@pytest.mark.parametrize("rate", [16000, 24000])
@pytest.mark.parametrize(
    "params", [VadParams(), VadParams(prefix_padding_ms=100, silence_duration_ms=300)], ids=["defaults", "short"]
)
def test_streaming_detector_emits_started_and_stopped_at_the_right_ms(
    conversation: tuple[np.ndarray, list[Placed]], rate: int, params: VadParams
) -> None:
    audio, placed = conversation
    if rate != SAMPLE_RATE:
        audio = resample(audio, SAMPLE_RATE, rate)
    every = _stream_events(StreamingVad(), audio, rate, params)
    # Each stop follows a pause (silence began) exactly silence_duration_ms earlier: early transcription starts there.
    stops = [i for i, e in enumerate(every) if e.type == "speech_stopped"]
    last_pauses = [max(j for j in range(i) if every[j].type == "speech_paused") for i in stops]
    assert [every[i].audio_ms - every[j].audio_ms for i, j in zip(stops, last_pauses, strict=True)] == [
        params.silence_duration_ms
    ] * len(placed)
    events = [e for e in every if e.type != "speech_paused"]
    assert [e.type for e in events] == ["speech_started", "speech_stopped"] * len(placed)
    previous_end = 0
    for (started, stopped), sentence in zip(zip(events[::2], events[1::2], strict=True), placed, strict=True):
        expected_start = max(_ms(sentence.start) - params.prefix_padding_ms, 0)
        assert abs(started.audio_ms - max(expected_start, previous_end)) <= TOLERANCE_MS, (started, sentence)
        assert started.audio_ms >= previous_end
        expected_end = _ms(sentence.end) + params.silence_duration_ms
        assert abs(stopped.audio_ms - expected_end) <= TOLERANCE_MS, (stopped, sentence)
        previous_end = stopped.audio_ms


def test_streaming_matches_offline_regions(conversation: tuple[np.ndarray, list[Placed]]) -> None:
    audio, _ = conversation
    params = VadParams(prefix_padding_ms=0)
    events = [e for e in _stream_events(StreamingVad(), audio, SAMPLE_RATE, params) if e.type != "speech_paused"]
    regions = speech_regions(audio, params, min_speech_ms=0)
    assert [e.audio_ms for e in events[::2]] == [r.start_ms for r in regions]
    assert [e.audio_ms for e in events[1::2]] == [r.end_ms + params.silence_duration_ms for r in regions]


class _CountingVad(SileroVad):
    """The real model, recording the batch size of every step."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def step(self, windows: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(len(windows))
        return super().step(windows, state)


async def test_concurrent_streams_are_batched_and_match_single_stream_results(
    conversation: tuple[np.ndarray, list[Placed]],
) -> None:
    audio, _ = conversation
    model = _CountingVad()
    vad = StreamingVad(model)
    # Eight sessions, each starting at a different offset into the same conversation.
    offsets = [i * 4000 for i in range(8)]
    expected = [_stream_events(StreamingVad(model), audio[o:], SAMPLE_RATE, VadParams()) for o in offsets]
    model.batches.clear()
    streams = [vad.stream() for _ in offsets]
    got: list[list[VadEvent]] = [[] for _ in offsets]
    chunk = SAMPLE_RATE // 10

    async def session(i: int) -> None:
        pcm = to_pcm16(audio[offsets[i] :])
        for start in range(0, len(pcm), chunk * 2):
            got[i] += await vad.feed(streams[i], pcm[start : start + chunk * 2])

    await asyncio.gather(*(session(i) for i in range(len(offsets))))
    await vad.close()
    assert got == expected
    assert max(model.batches) == len(offsets)
    assert sum(model.batches) == sum(len(audio[o:]) // 512 for o in offsets)


async def test_a_cancelled_feed_still_lands_before_the_next(conversation: tuple[np.ndarray, list[Placed]]) -> None:
    audio, _ = conversation
    vad = StreamingVad()
    stream = vad.stream()
    task = asyncio.create_task(vad.feed(stream, audio[:SAMPLE_RATE]))
    await asyncio.sleep(0)
    task.cancel()
    events = await vad.feed(stream, audio[SAMPLE_RATE : 2 * SAMPLE_RATE])
    assert stream.frames_done == 2 * SAMPLE_RATE // 512
    assert [e.type for e in events] == ["speech_started"]
    await vad.close()


def test_a_pause_is_reported_once_its_silence_lasts_pause_ms_not_for_the_gaps_between_words() -> None:
    """Frame probabilities straight into the turn rules (32 ms frames, defaults: threshold 0.5, 500 ms silence)."""
    speech, silence = [0.9] * 10, [0.1]
    probs = speech + silence * 3 + speech + silence * 8 + speech + silence * 20
    events = VadStream().advance(np.asarray(probs, np.float32))
    assert PAUSE_MS == 160  # 5 frames: the 96 ms gap says nothing, the 256 ms one is a pause
    assert [(e.type, e.audio_ms) for e in events] == [
        ("speech_started", 0),
        ("speech_paused", 23 * 32),  # reported 160 ms later, with the time its silence began
        ("speech_paused", 41 * 32),
        ("speech_stopped", 41 * 32 + 500),  # the turn stops at its last pause, which early transcription started at
    ]


def test_a_short_silence_duration_still_pauses_before_it_stops_unless_it_stops_at_once() -> None:
    stream = VadStream(VadParams(silence_duration_ms=96))
    events = stream.advance(np.asarray([0.9] * 10 + [0.1] * 5, np.float32))
    assert [e.type for e in events] == ["speech_started", "speech_paused", "speech_stopped"]  # paused at 2 of 3 frames
    stream = VadStream(VadParams(silence_duration_ms=32))
    assert [e.type for e in stream.advance(np.asarray([0.9] * 10 + [0.1] * 3, np.float32))] == [
        "speech_started",
        "speech_stopped",
    ]
