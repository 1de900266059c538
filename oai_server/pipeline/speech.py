"""Text to speech: Orpheus tokens -> SNAC frames -> PCM, one segment or a pipeline of them.

`SpeechSynthesizer.synthesize` speaks one segment and yields one 2048-sample PCM chunk per
SNAC frame as soon as it is decoded. `synthesize_segments` speaks a stream of segments in
order while the next `depth` segments are already generating (TTS of segment k+1 runs while
segment k streams), joined with a short crossfade. Leaving either iterator early cancels every
engine request it started.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..codec.orpheus import SAMPLE_RATE, STOP_TOKEN_IDS, TOKENS_PER_FRAME, AudioTokenParser, speech_prompt
from ..codec.snac_stream import SnacDecoding
from ..codec.snac_window_policy import WindowPolicy
from ..codec.snac_windows import SeamStitcher, Window
from ..codec.tokenizer import TextTokenizer, direct_encoder
from ..engines.base import SamplingParams, TokenEngine, new_request_id

CROSSFADE_SAMPLES = 240  # 10 ms at 24 kHz

MIN_SPEECH_TOKENS = 3 * TOKENS_PER_FRAME
"""Audio tokens (three frames, ~0.25 s) a segment generates before Orpheus may end it. Orpheus may stop on any
frame boundary, the first included; a segment with no frame would answer a 200 with no audio (random weights
did, 2 of 649 requests on an H200), and no spoken text is shorter than this."""


class GenerationObserver(Protocol):
    """Told about every speech request's generation (e.g. the admission's real-time headroom gate)."""

    def started(self) -> None:
        """A request's first tokens arrived (it is generating from now on)."""
        ...

    def finished(self) -> None:
        """A request stopped generating."""
        ...

    def record(self, tokens: int) -> None:
        """Audio tokens arrived."""
        ...


@dataclass(frozen=True)
class VoiceOptions:
    """Per-request Orpheus options."""

    voice: str
    temperature: float
    top_p: float
    repetition_penalty: float
    seed: int | None = None
    max_tokens: int | None = None


@dataclass
class SpeechStats:
    """Token counts of what was spoken, for `usage`; when its first Orpheus tokens came and its first SNAC window went
    to the decoder (`time.monotonic()`), for the metrics' split of the time to first audio."""

    prompt_tokens: int = 0
    audio_tokens: int = 0
    frames: int = 0
    segments: int = 0
    ignored_tokens: int = 0
    first_tokens_at: float | None = None
    first_window_at: float | None = None


@dataclass
class SpeechEvent:
    """One step of a multi-segment stream: a segment starts (text set) or audio (pcm set)."""

    text: str | None = None
    pcm: bytes = b""
    stats: SpeechStats = field(default_factory=SpeechStats)


class SpeechSynthesizer:
    """Speaks text with Orpheus on a `TokenEngine`, decoding with SNAC (one decoder for every stream, or the one of the
    Orpheus replica a stream runs on)."""

    def __init__(
        self,
        engine: TokenEngine,
        tokenizer: TextTokenizer,
        decoder: SnacDecoding,
        *,
        windows: WindowPolicy,
        tokens_per_char: float,
        max_tokens: int,
        max_model_len: int,
        observer: GenerationObserver | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = direct_encoder(tokenizer)
        self.decoder = decoder
        self.windows = windows
        self.tokens_per_char = tokens_per_char
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        self.observer = observer

    def prompt_ids(self, text: str, voice: str) -> list[int]:
        """Orpheus prompt ids for `voice: text`."""
        return speech_prompt(self.tokenizer, voice, text)

    def token_budget(self, text: str, prompt_len: int, requested: int | None) -> int:
        """Audio tokens allowed for one segment: scaled by text length, whole frames, capped."""
        budget = requested or max(8 * TOKENS_PER_FRAME, math.ceil(len(text) * self.tokens_per_char))
        budget = min(budget, self.max_tokens, self.max_model_len - prompt_len)
        return max(TOKENS_PER_FRAME, budget - budget % TOKENS_PER_FRAME)

    async def synthesize(
        self,
        text: str,
        options: VoiceOptions,
        stats: SpeechStats,
        *,
        first: bool = True,
        lead: ListenerLead | None = None,
    ) -> AsyncIterator[bytes]:
        """PCM (s16le) of one segment, a chunk of frames at a time as SNAC decodes them; every sample is final. Each
        chunk's last samples wait for the next window, which decodes them again (`SeamStitcher`); the segment's last
        come at its end, as a `TailPcm`. `lead` is the reply's listener (`ListenerLead`; None: this segment's own),
        which keeps the ramp from its last step while short (the policy's `grow_lead`); a `first` segment (its
        listener has no audio before it) also hurries its frames out while that lead is under `hurry_lead_ms`. A
        request with a seed does neither: its windows, and so its samples, do not depend on timing."""
        prompt = self.prompt_ids(text, options.voice)
        if len(prompt) + TOKENS_PER_FRAME > self.max_model_len:
            from ..errors import invalid

            raise invalid("The input is too long for the speech model's context.", "input")
        budget = self.token_budget(text, len(prompt), options.max_tokens)
        params = SamplingParams(
            max_tokens=budget,
            temperature=options.temperature,
            top_p=options.top_p,
            repetition_penalty=options.repetition_penalty,
            seed=options.seed,
            stop_token_ids=STOP_TOKEN_IDS,
            min_tokens=min(MIN_SPEECH_TOKENS, budget),
            orpheus_audio_slots=True,
        )
        parser = AudioTokenParser()
        planner = self.windows.planner()
        stitcher = seam_stitcher(self.windows)
        stats.prompt_tokens += len(prompt)
        stats.segments += 1
        observer = self.observer
        decoder: SnacDecoding | None = None
        generating = False  # told to the observer from the first tokens on: a queued prefill is not a rate
        # A seeded request's body must repeat byte for byte, so its chunks never follow the clock: no hurry, no hold.
        follows_listener = options.seed is None
        hurry_below_s = self.windows.hurry_lead_ms / 1000 if first and follows_listener else 0.0
        lead = lead if lead is not None else ListenerLead()
        try:
            request_id = new_request_id("tts")
            deltas = self.engine.generate(prompt, params, request_id)
            async with aclosing(deltas):  # type: ignore[type-var]
                async for delta in deltas:
                    if decoder is None:  # the engine has placed the request by its first tokens
                        decoder = self.decoder.for_stream(request_id)
                        if stats.first_tokens_at is None:
                            stats.first_tokens_at = time.monotonic()
                    if observer is not None:
                        if not generating:
                            observer.started()
                            generating = True
                        observer.record(len(delta))
                    lead_s = lead.seconds() if follows_listener else None
                    windows = planner.add(parser.feed(delta), hurry=lead.under(hurry_below_s), lead_s=lead_s)
                    for pcm in await self._decode(decoder, windows, stats, stitcher):
                        lead.sent(len(pcm) // 2)
                        yield pcm
            if observer is not None and generating:
                observer.finished()
                generating = False
            for pcm in await self._decode(decoder or self.decoder, planner.finish(), stats, stitcher):
                yield pcm
            tail = stitcher.finish()
            if tail:
                yield TailPcm(tail)
        finally:
            if observer is not None and generating:
                observer.finished()
            stats.audio_tokens += parser.audio_tokens
            stats.ignored_tokens += parser.ignored

    @staticmethod
    async def _decode(
        decoder: SnacDecoding, windows: list[Window], stats: SpeechStats, stitcher: SeamStitcher
    ) -> list[bytes]:
        stats.frames += sum(window.count for window in windows)
        if windows and stats.first_window_at is None:
            stats.first_window_at = time.monotonic()
        decoded = await asyncio.gather(*(decoder.decode(window) for window in windows))
        pieces = [stitcher.add(pcm, window.lead) for pcm, window in zip(decoded, windows, strict=True)]
        return [pcm for pcm in pieces if pcm]


class ListenerLead:
    """How far one stream's audio sent runs ahead of a listener who plays it from its first sample on arrival: the
    time left before such a player runs dry (a player with a pre-buffer has more)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started: float | None = None
        self._samples = 0

    def sent(self, samples: int) -> None:
        """`samples` more went out (the first of them start the listener's clock)."""
        if self._started is None:
            self._started = self._clock()
        self._samples += samples

    def seconds(self) -> float:
        """Seconds of audio the listener holds now (0 before the first audio, never below 0)."""
        if self._started is None:
            return 0.0
        return max(0.0, self._samples / SAMPLE_RATE - (self._clock() - self._started))

    def under(self, seconds: float) -> bool:
        """Whether the listener holds less than `seconds` of audio (never, for 0): the stream should hurry."""
        return seconds > 0 and self.seconds() < seconds


def seam_stitcher(windows: WindowPolicy) -> SeamStitcher:
    """The `SeamStitcher` of one stream: it holds each chunk's last `seam_samples`, and at least the crossfade's
    `CROSSFADE_SAMPLES`, which the segment's end must keep for the next segment's start anyway."""
    return SeamStitcher(max(windows.seam_samples, CROSSFADE_SAMPLES))


class TailPcm(bytes):
    """A segment's last PCM (`synthesize`'s last piece): what its windows held back until the segment ended."""


@functools.cache
def _ramp(samples: int) -> np.ndarray:
    """The crossfade's rising ramp, 0 to 1 over `samples` (built once per length, shared read-only)."""
    ramp = np.linspace(0.0, 1.0, samples, dtype=np.float32)
    ramp.flags.writeable = False
    return ramp


class Crossfader:
    """Joins segments with a short linear crossfade: a segment's last few samples wait for the next one's first."""

    def __init__(self, samples: int = CROSSFADE_SAMPLES) -> None:
        self.samples = samples
        self._tail = np.zeros(0, dtype="<i2")
        self._join_next = False
        self._ramp = _ramp(samples)

    def boundary(self) -> None:
        """The next audio starts a new segment."""
        self._join_next = bool(len(self._tail))

    def feed(self, pcm: bytes, last: bool = False) -> bytes:
        """Audio to emit now: all of it, but for the held-back end of a segment's `last` piece."""
        audio = np.frombuffer(pcm, dtype="<i2")
        if self._join_next and len(audio) >= len(self._tail):
            n = len(self._tail)
            ramp = self._ramp[-n:] if n < self.samples else self._ramp
            head = self._tail * (1.0 - ramp) + audio[:n] * ramp
            audio = np.concatenate([np.round(head).astype("<i2"), audio[n:]])
        else:
            audio = np.concatenate([self._tail, audio])
        self._join_next = False
        keep = min(self.samples, len(audio)) if last else 0
        self._tail = audio[len(audio) - keep :].copy()
        return audio[: len(audio) - keep].tobytes()

    def flush(self) -> bytes:
        """End of stream: the held-back tail."""
        tail, self._tail = self._tail, np.zeros(0, dtype="<i2")
        return tail.tobytes()


_END = object()


async def synthesize_segments(
    synthesizer: SpeechSynthesizer,
    segments: AsyncIterator[str],
    options: VoiceOptions,
    *,
    depth: int = 1,
    crossfade_samples: int = CROSSFADE_SAMPLES,
    stats: SpeechStats | None = None,
) -> AsyncGenerator[SpeechEvent, None]:
    """Speak segments in order, with at most `depth` segments generating at once.

    With depth 1 the next segment starts generating when the previous one has finished generating
    (usually long before it has finished playing), so a reply never holds more than one engine
    request and concurrent replies don't slow each other's playing segment below real time; a
    larger depth overlaps segments. At most `depth + 2` finished segments wait for a slow reader.
    Yields a text event when a segment's audio starts, then its audio events. Counts go to
    `stats` (also carried by every event). Closing the iterator cancels all segment tasks (and so
    aborts their engine requests) before it returns.
    """
    stats = stats if stats is not None else SpeechStats()
    lead = ListenerLead()  # the reply's listener: a later segment's audio plays after the audio already sent
    order: asyncio.Queue[tuple[str, asyncio.Queue[object], asyncio.Task[None]] | object] = asyncio.Queue(depth + 2)
    generating = asyncio.Semaphore(depth)
    tasks: list[asyncio.Task[None]] = []

    async def speak(text: str, out: asyncio.Queue[object], first: bool) -> None:
        try:
            async for pcm in synthesizer.synthesize(text, options, stats, first=first, lead=lead):
                out.put_nowait(pcm)
            out.put_nowait(_END)
        except Exception as exc:
            out.put_nowait(exc)
        finally:
            generating.release()

    async def produce() -> None:
        try:
            async for text in segments:
                out: asyncio.Queue[object] = asyncio.Queue()
                await generating.acquire()
                task = asyncio.create_task(speak(text, out, not tasks))  # later segments play after it
                tasks.append(task)
                await order.put((text, out, task))
            await order.put(_END)
        except Exception as exc:
            await order.put(exc)
        finally:
            close = getattr(segments, "aclose", None)
            if close is not None:
                await close()

    producer = asyncio.create_task(produce())
    fader = Crossfader(crossfade_samples)
    try:
        while True:
            item = await order.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, tuple)
            text, out, _ = item
            fader.boundary()
            yield SpeechEvent(text=text, stats=stats)
            while True:
                piece = await out.get()
                if piece is _END:
                    break
                if isinstance(piece, BaseException):
                    raise piece
                assert isinstance(piece, bytes)
                pcm = fader.feed(piece, last=isinstance(piece, TailPcm))
                if pcm:
                    yield SpeechEvent(pcm=pcm, stats=stats)
        tail = fader.flush()
        if tail:
            yield SpeechEvent(pcm=tail, stats=stats)
    finally:
        producer.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(producer, *tasks, return_exceptions=True)
