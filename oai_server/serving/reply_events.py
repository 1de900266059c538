"""The reply as data: typed events of one assistant reply, whatever transport carries it.

`ReplyService.stream` yields, in this order:

    ReplyStarted
    TextDelta*                      (the LLM's text as it is generated; every reply)
    (SegmentStarted AudioChunk*)*   (replies with a voice: each spoken segment, then its audio)
    ReplyFinished

Text and audio interleave: a segment starts once the segmenter has cut it from the text, so
`TextDelta`s run ahead of the audio. Renderers at the edge (chat SSE chunks, the whole chat
JSON, the seed `/chat`, a Realtime session) consume these events; none of them sees an engine.

`SpokenTranscript` keeps, for every sample produced, which segment and which characters of
the spoken transcript it belongs to, so a caller can ask which text the first N ms were.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..codec.orpheus import SAMPLE_RATE

TRANSCRIPT_SEPARATOR = " "
"""Spoken segments are joined with this in the transcript (as the chat transcript deltas are)."""


@dataclass(frozen=True)
class ReplyStarted:
    """The reply began; `audio_id` is set when it will be spoken."""

    reply_id: str
    audio_id: str | None


@dataclass(frozen=True)
class TextDelta:
    """New text of the reply (stop strings applied)."""

    text: str


@dataclass(frozen=True)
class SegmentStarted:
    """A spoken segment starts: its text, and where it sits in the spoken transcript."""

    index: int
    text: str
    transcript_start: int
    """Offset in the spoken transcript of the segment's first character (after the separator)."""
    sample_offset: int
    """Samples of the reply emitted before this segment."""


@dataclass(frozen=True)
class AudioChunk:
    """24 kHz s16le mono PCM of segment `segment`, starting at `sample_offset` of the reply."""

    pcm: bytes
    segment: int
    sample_offset: int

    @property
    def samples(self) -> int:
        """Samples in the chunk."""
        return len(self.pcm) // 2


@dataclass(frozen=True)
class ReplyUsage:
    """Token counts of the reply, for `usage`."""

    prompt_tokens: int
    text_tokens: int
    audio_tokens: int
    frames: int
    audio_prompt_tokens: int = 0
    """Prompt tokens that stand for the user's speech (its transcripts); the rest of the prompt is text."""

    @property
    def completion_tokens(self) -> int:
        """Text and audio tokens generated."""
        return self.text_tokens + self.audio_tokens


@dataclass(frozen=True)
class ReplyFinished:
    """The reply ended normally; `expires_at` is when its audio id stops resolving (spoken replies)."""

    finish_reason: str
    usage: ReplyUsage
    transcript: str
    expires_at: int | None


ReplyEvent = ReplyStarted | TextDelta | SegmentStarted | AudioChunk | ReplyFinished


@dataclass
class SpokenTranscript:
    """The sample -> text map of one spoken reply.

    Each segment covers a run of samples and a span of transcript characters. Inside a segment the
    alignment of words to samples is not known, so the heard part of a partly played segment is
    estimated in proportion to its samples, cut back to a whole word.
    """

    texts: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    """First sample of each segment."""
    samples: int = 0

    def start_segment(self, text: str) -> SegmentStarted:
        """Record a new segment starting at the current sample; returns its event."""
        position = len(self.text) + (len(TRANSCRIPT_SEPARATOR) if self.texts else 0)
        self.texts.append(text)
        self.starts.append(self.samples)
        return SegmentStarted(len(self.texts) - 1, text, position, self.samples)

    def add_audio(self, pcm: bytes) -> AudioChunk:
        """Record audio of the current segment; returns its event."""
        chunk = AudioChunk(pcm, len(self.texts) - 1, self.samples)
        self.samples += len(pcm) // 2
        return chunk

    @property
    def text(self) -> str:
        """The whole spoken transcript so far."""
        return TRANSCRIPT_SEPARATOR.join(self.texts)

    @property
    def duration_ms(self) -> float:
        """Milliseconds of audio produced."""
        return self.samples * 1000 / SAMPLE_RATE

    def heard_text(self, audio_end_ms: float) -> str:
        """The transcript of the first `audio_end_ms` milliseconds of audio."""
        heard = min(self.samples, max(0, round(audio_end_ms * SAMPLE_RATE / 1000)))
        if heard <= 0 or not self.texts:
            return ""
        segment = bisect.bisect_right(self.starts, heard - 1) - 1
        if segment < 0:
            return ""
        whole = self.texts[:segment]
        end = self.starts[segment + 1] if segment + 1 < len(self.starts) else self.samples
        length = max(1, end - self.starts[segment])
        fraction = (heard - self.starts[segment]) / length
        text = self.texts[segment]
        if fraction >= 1:
            partial = text
        else:
            words = text.split()
            partial = " ".join(words[: int(len(words) * fraction)])
        return TRANSCRIPT_SEPARATOR.join([*whole, partial] if partial else whole)
