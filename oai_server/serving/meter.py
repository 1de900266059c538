"""Latency and throughput metrics of one reply: first token, first segment, first audio (and its stages), real-time
factor, frames, aborts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..codec.orpheus import FRAME_SECONDS

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..pipeline.speech import SpeechStats


class StreamMeter:
    """Times one reply for the metrics: first token, first segment, first audio, real-time factor, frames, aborts."""

    def __init__(self, metrics: Metrics | None, endpoint: str) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.start = time.monotonic()
        self.first_token_at: float | None = None
        self.first_segment_at: float | None = None
        self.first_audio_at: float | None = None
        self.finished = False

    def first_token(self) -> None:
        """The first text token of the reply arrived."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            if self.metrics is not None:
                self.metrics.observe_ttft(self.first_token_at - self.start)

    def first_segment(self) -> None:
        """The first text segment of a spoken reply goes to speech synthesis."""
        if self.first_segment_at is None:
            self.first_segment_at = time.monotonic()
            if self.metrics is not None:
                self.metrics.observe_first_segment(self.endpoint, self.first_segment_at - self.start)

    def first_audio(self, speech: SpeechStats | None = None) -> None:
        """The first audio bytes of the reply are being sent; `speech` says when its first Orpheus tokens came and its
        first SNAC window went to the decoder, the stages of that wait."""
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
            if self.metrics is None:
                return
            self.metrics.observe_ttfa(self.endpoint, self.first_audio_at - self.start)
            if speech is None:
                return
            for stage, at in (("first_tokens", speech.first_tokens_at), ("first_window", speech.first_window_at)):
                if at is not None:
                    self.metrics.observe_speech_stage(self.endpoint, stage, at - self.start)

    def finish(self, frames: int) -> None:
        """The reply is complete: record its real-time factor and frames."""
        self.finished = True
        if self.metrics is None or frames <= 0:
            return
        audio_seconds = frames * FRAME_SECONDS
        self.metrics.observe_rtf(self.endpoint, (time.monotonic() - self.start) / audio_seconds)
        self.metrics.count_frames(frames)

    def close(self, engines: tuple[str, ...]) -> None:
        """Called when the reply's stream closes: an unfinished reply aborted its engine requests."""
        if not self.finished and self.metrics is not None:
            for engine in engines:
                self.metrics.count_abort(engine)
