"""SNAC streaming windows: which frames to decode together so each frame is emitted exactly once.

Window policy (settings `snac_context_frames` C, `snac_lookahead_frames` L, `snac_frames_per_decode` K;
defaults C=2, L=1, K=4): frames are emitted in chunks. A chunk of k frames starting at frame f is
emitted once frame f+k-1+L is known (or at the end of the stream), by decoding frames
``[f-C, f+k-1+L]`` (clipped to what exists) and keeping the 2048*k samples that belong to the chunk.
Chunk sizes ramp up 1, 1, 2, 3, 4, ... to K, each no longer than the audio emitted before it and at most one
frame longer than the chunk before it (`ramp="step"`; `"gentle"`, the default, sends sizes 1 and 2 twice and larger
ones three times, 1, 1, 2, 2, 3, 3, 3, 4; `"double"` is the earlier 1, 1, 2, 4), so:

* every frame is emitted once, in order, as exactly 2048 samples: n frames -> 2048*n samples,
  with nothing trimmed at the start and the tail flushed at the end;
* the first audio needs L+1 frames = 14 tokens with L=1 (Canopy's reference needs 28 and never
  plays the first frame or the last two); a first lookahead of its own (`first_lookahead_frames`, the
  server's `--snac-first-lookahead-frames`) of 0 sends the first frame alone after 7 tokens, decoded without
  right context (26 dB from a whole decode against 46, `bench/snac_first_frame.py`), and every later
  window as before;
* in steady state each decode covers C+K+L frames for K emitted ones: 1.75 decoded frames per
  emitted frame with the defaults (2.5 at K=2), against 4 for Canopy's (and K=1's) one-frame-per-window
  scheme. SNAC's GPU time goes with the frames decoded: on an H200, 72 us per emitted frame at K=4
  against 104 at K=2, batch 128 (`bench/snac_decode.py`). Larger K saves more SNAC work but delivers
  audio in K-frame (K*85 ms) steps. With no chunk longer than what was sent before it, a client that
  starts playing once ~3 frames (250 ms) are buffered never runs dry while generation keeps real time,
  for K up to 4; larger K needs a longer pre-buffer. (With the earlier ramp 1, 2, 4 the 4-frame chunk
  came 4 frames of generation after playback had started on 3 frames of audio: at K=4 every stream
  with an RTF above 0.75 stalled once, as measured on an H200.) Steady windows have one static shape,
  so they batch across streams and run as CUDA graphs on a GPU (`snac_graphs.py`);
* a stream's start keeps a cushion: a player that starts on 250 ms of audio starts when 4 frames have
  arrived, and with 1, 1, 2, 4 the next chunk (4 frames, 28 tokens away) was the closest call of the whole
  stream. On an H200 every stall of the chat bursts of 128 and 144 conversations and 77 % of those of a 1.5x
  Poisson overload came exactly there, at 0.331 s of audio. Stepping up one frame at a time builds three frames
  of surplus before the first K-chunk: at 1.11x real time a chunk's least lead on such a player is 60 ms
  instead of 34 (120 instead of 68 at 1.25x), for one more window (of C+3+L frames) per stream.
  The gentle ramp repeats each size before the next and builds more: 128 ms at 1.11x, for one window more over a
  6 s stream (21 against 20) and ~2 % more SNAC work. On an H200 it halved the streams that stalled under arrivals
  (session 27).
* a stream near real time can hurry (`WindowPlanner.add(..., hurry=True)`, the server's `--snac-hurry-lead-ms`):
  a chunk waits for its last frame, K frames of generation at most, and at 1.1x real time (the admission gate's
  margin, so every stream under full load) a stream's lead grows only 8 ms a frame, so on an H200 a quarter of
  the streams admitted under a 1.5x overload stalled once at their first 3- or 4-frame chunk (session 25).
  Hurried, every frame that has its lookahead goes at once, and the ramp resumes from that shorter chunk; the
  pipeline hurries a reply's first segment while a player that plays on arrival would hold less than the lead
  (`ListenerLead`). It costs SNAC work (C+1+L frames decoded for one emitted) only while a stream is that close.
* a stream near real time can wait at the ramp's last step instead (`WindowPlanner.add(..., lead_s=...)`, the
  server's `--snac-grow-lead`): its chunks stay one frame short of K until a player that plays on arrival holds
  `grow_lead` times a K-frame chunk's audio, so the first K-frame chunk, the longest wait of a stream's start,
  never comes while the player holds less than it takes at real time. That is where most stalls of the H200's
  overloads began (155 of 339 in session 35, at 1.27 s of audio with the gentle ramp). It costs SNAC work only
  while a stream is that close, and less than hurrying: C+K-1+L frames decoded for K-1 emitted. On the planner
  alone (`bench/snac_hurry.py`, 100 ms pauses every second), a `grow_lead` of 1 took the streams of a 250 ms
  pre-buffer that stall at 1.05-1.1x real time from 22-40 % to none, for 6-12 % more SNAC work there and none at
  1.6x (`bench/results/cpu_snac_grow_lead_s36.json`). On an H200 under a 1.5x overload, in one run, it took the
  admitted streams that stalled from 156 of 1 690 to 2 of 1 722 (session 36), so it is on by default (1).
* a stream far ahead of its listener can stretch its chunks (`WindowPlanner.add(..., lead_s=...)` with
  `stretch_frames` K2 > K, the server's `--snac-stretch-frames`): once a player that plays on arrival holds `grow_lead`
  times a K2-frame chunk's audio (683 ms for K2 = 8), its chunks are K2 frames, C+K2+L decoded for K2 emitted (1.375
  decoded frames an emitted one for K2 = 8 against 1.75 at K = 4), in half as many windows. The lead is checked again
  at every `add`, so a stretched chunk still waiting for its frames goes back to K-frame chunks, at once for the frames
  it has, as soon as the lead falls short: no listener waits on a stretched chunk holding less than K2 frames' audio.
  Streams run far ahead of real time below capacity (2x at 80 % of it on an H200), where SNAC's windows compete with
  the engine's steps for the GPU and the GIL of the engine's process; streams near real time never stretch. On an
  H200 (session 39, one run each) it left Poisson arrivals below capacity as they were and cost bursts at capacity
  (208 streams against 240): there the few streams that stretch add a second window length, a second graph replay a
  round. So it is off by default.
* windows decode by length, not by shape (`Window.decode_shape`): a decode returns all its frames' samples and
  each window cuts its own span after, so windows of one length are one batch, one CUDA graph replay, whatever
  they emit. With `fill` (the server's `--snac-fill-windows`, on where SNAC runs on CUDA) a window whose chunk is
  shorter than K (the ramp's 2- and 3-frame chunks, a stream's last, a hurried or held one) takes more frames of
  left context, up to the steady length C+K+L, where the stream has them: past its first three windows (2, 3 and 5
  frames with the defaults) every window of a stream of 7 frames or more decodes as one length. While streams
  come and go, the ramps' windows of the different shapes each replayed a graph of their own, a few windows each
  (on an H200 at 192 churning streams SNAC's thread took 1.09 ms a window against 0.61 steady: twice the rounds
  for as many windows, session 35); a replay costs ~0.45 ms before its first window (`snac_graphs.batch_ladder`'s
  timings). The longer windows decode more frames (C+K+L for k emitted) and only add left context, which brings a
  chunk closer to a whole decode, never further. On an H200 with 192 streams coming and going it made the engine
  1.42x as fast as the same code without it, in one run (session 37).
* with `crop` (the server's `--snac-crop-decodes`) a window past a stream's start is cut from a decode of its frames
  from its context's end on (`cropped_decode`: ``(7, 2, 5, 240)`` for every 7-frame window with the defaults), whose
  later stages `snac_crop` computes only where the kept samples depend on them: the same samples, less SNAC work,
  and still one decode, one batch, per length.

Why L=1, C=2: SNAC 24 kHz is purely convolutional with a receptive radius of ~2.3 frames. Every
frame of lookahead adds 85 ms to the first audio; L=1 gives 2048 samples of right context, and the
seams it leaves are small (SNAC's NoiseBlocks add fresh noise on every decode anyway). Set L=2 for
Canopy's right context at +85 ms latency. Each chunk's last `SEAM_SAMPLES` come from the next window
instead, with a chunk more of right context, at no cost in latency (`SeamStitcher`). Left context costs
SNAC work in proportion (C+K+L frames decoded per K emitted) and buys little past two frames: streamed
against whole decoding at K=4 was 56.0 dB with C=1, 58.4 with C=2 and 58.4 with C=3, before the seams
(CPU, float32, noise off, random weights; `bench/results/cpu2core_snac_context_s14.json`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .orpheus import FRAME_SECONDS, SAMPLES_PER_FRAME

Frame = tuple[int, ...]

Ramp = Literal["step", "gentle", "double"]
"""How a stream's chunks grow to K frames (`WindowPolicy.ramp`, the server's `--snac-ramp`)."""

SEAM_SAMPLES = 240
"""Default samples at the end of each emitted chunk that the stream's next window decodes again, and that wait
for it (`SeamStitcher`; `WindowPolicy.seam_samples`, the server's `--snac-seam-samples`). In its chunk's window
the last sample of a chunk has one frame of right context (L=1), below SNAC's receptive radius; in the next
window it has a whole chunk more. 240 samples (10 ms) are what the speech pipeline held back of every chunk for
the crossfade between segments, so they cost no latency: streamed against whole decoding gains ~2 dB (48.98 ->
51.06 dB on the random SNAC of the GPU runs, 58.38 -> 60.47 on another draw; `bench/snac_decode.py`;
`bench/snac_holdback.py` prices longer seams)."""


@dataclass(frozen=True)
class Window:
    """Frames to decode together, and which of them to emit."""

    frames: tuple[Frame, ...]
    emit: int
    """Index in `frames` of the first frame whose samples are emitted."""
    count: int = 1
    """How many frames, from `emit` on, are emitted."""
    lead: int = 0
    """Samples decoded before the emitted frames: the end of the stream's previous chunk, again (a seam)."""
    cropped: WindowShape | None = None
    """The cropped decode it is cut from (`cropped_decode`; None: its frames' whole decode)."""

    @property
    def shape(self) -> WindowShape:
        """(frames decoded, first emitted, emitted, lead): what the window is."""
        return (len(self.frames), self.emit, self.count, self.lead)

    @property
    def decode_shape(self) -> WindowShape:
        """What its decode is (`decode_shape`, or its `cropped` one): windows of one length decode as one batch, and
        each keeps its span of the batch's PCM (`cut`)."""
        return self.cropped or decode_shape(self.shape)

    @property
    def span(self) -> slice:
        """The samples of its whole decode that it emits: its `lead`, then 2048 per emitted frame."""
        return slice(self.emit * SAMPLES_PER_FRAME - self.lead, (self.emit + self.count) * SAMPLES_PER_FRAME)

    @property
    def cut(self) -> slice:
        """Its `span` in the samples its decode returns (`decode_shape`: from that decode's lead on)."""
        _, emit, _, lead = self.decode_shape
        start = emit * SAMPLES_PER_FRAME - lead
        return slice(self.span.start - start, self.span.stop - start)


WindowShape = tuple[int, int, int, int]


def decode_shape(shape: WindowShape) -> WindowShape:
    """The decode of a window of `shape`: all its frames' samples, (frames, 0, frames, 0). Windows of one length
    share it whatever they emit, so they decode as one batch (one CUDA graph replay), each cutting its own span
    after."""
    return (shape[0], 0, shape[0], 0)


def cropped_decode(shape: WindowShape, context: int, chunk: int, lookahead: int, seam: int) -> WindowShape | None:
    """The decode a window of `shape` (frames, emit, count, lead) is cut from when decodes are cropped: its frames
    from the context's end on, ``(frames, e, frames - e, lead)`` with ``e = min(context, frames - chunk - lookahead)``
    (None: its frames' whole decode). Every window of a length past a stream's start lies in it: a running chunk
    ends at the lookahead and is at most `chunk` frames long, a stream's last ones end at the window's end. A window
    emitting before it (a stream's first ones) is not cropped."""
    frames, emit = shape[0], shape[1]
    start = max(0, min(context, frames - chunk - lookahead))
    if start == 0 or emit < start:
        return None
    return (frames, start, frames - start, min(seam, start * SAMPLES_PER_FRAME))


class WindowPlanner:
    """Decides which window to decode for each chunk of frames of one stream (pure; no I/O)."""

    def __init__(
        self,
        context_frames: int = 2,
        lookahead_frames: int = 1,
        frames_per_decode: int = 1,
        seam_samples: int = 0,
        first_lookahead_frames: int | None = None,
        ramp: Ramp = "gentle",
        grow_lead: float = 1.0,
        fill: bool = False,
        stretch_frames: int = 0,
        crop: bool = False,
    ) -> None:
        self.context = context_frames
        self.fill = fill
        self.crop = crop
        self.stretch = stretch_frames if stretch_frames > frames_per_decode else 0
        self.ramp = ramp
        self.grow_lead = grow_lead
        self.lookahead = lookahead_frames
        self.first_lookahead = lookahead_frames if first_lookahead_frames is None else first_lookahead_frames
        self.frames_per_decode = frames_per_decode
        self.seam_samples = seam_samples
        self._frames: list[Frame] = []
        self._next_emit = 0
        self._emitted = 0
        self._last_chunk = 0
        self._last_chunk_runs = 0  # chunks of `_last_chunk` frames in a row
        self._lead_s: float | None = None

    def _chunk(self) -> int:
        chunk = self._ramp_chunk()
        growing_to_k = chunk == self.frames_per_decode > self._last_chunk > 0
        if growing_to_k and self._lead_s is not None and self._lead_s < self.grow_lead * chunk * FRAME_SECONDS:
            return self._last_chunk  # the listener could run dry waiting for the first K-frame chunk
        if self._stretches(chunk):
            return self.stretch
        return chunk

    def _stretches(self, chunk: int) -> bool:
        """Whether the next chunk is a stretched one (`stretch_frames`): the ramp is at K, the stream has sent that
        much audio, and its listener holds `grow_lead` times the stretched chunk's audio. Checked again at every
        `add`, so a stretched chunk still waiting for its frames shrinks back to K once the lead falls short."""
        return (
            self.stretch > 0
            and chunk == self.frames_per_decode
            and self._emitted >= self.stretch
            and self._lead_s is not None
            and self._lead_s >= self.grow_lead * self.stretch * FRAME_SECONDS
        )

    def _ramp_chunk(self) -> int:
        # The first audio as early as possible, then fewer, larger decodes, never a chunk longer than the audio
        # already sent (waiting for it cannot drain a pre-buffer below real time); "step" also grows a chunk by
        # one frame at most (each step up spends the cushion the smaller chunks built: see the module docstring).
        chunk = min(self.frames_per_decode, max(1, self._emitted))
        if self.ramp == "double":
            return chunk
        last = self._last_chunk
        if self.ramp == "gentle" and last and self._last_chunk_runs < (2 if last < 3 else 3):
            return min(chunk, last)  # sizes 1 and 2 go twice, larger ones three times: 1, 1, 2, 2, 3, 3, 3, 4
        return min(chunk, last + 1)

    def _lookahead(self) -> int:
        return self.first_lookahead if self._emitted == 0 else self.lookahead

    @property
    def _steady_length(self) -> int:
        return self.context + self.frames_per_decode + self.lookahead

    def _take(self, count: int) -> Window:
        first = self._next_emit
        start = max(0, first - self.context)
        end = min(len(self._frames), first + count + self._lookahead())
        if self.fill:  # as long as a steady window where the frames before allow: more context, one decode batch
            start = max(0, min(start, end - self._steady_length))
        self._next_emit += count
        self._emitted += count
        self._last_chunk_runs = self._last_chunk_runs + 1 if count == self._last_chunk else 1
        self._last_chunk = count
        if self._lead_s is not None:
            self._lead_s += count * FRAME_SECONDS
        emit = first - start
        lead = min(self.seam_samples, emit * SAMPLES_PER_FRAME)
        shape = (end - start, emit, count, lead)
        cropped = (
            cropped_decode(shape, self.context, self.frames_per_decode, self.lookahead, self.seam_samples)
            if self.crop
            else None
        )
        return Window(tuple(self._frames[start:end]), emit, count, lead, cropped)

    def add(self, frames: Sequence[Frame], *, hurry: bool = False, lead_s: float | None = None) -> list[Window]:
        """Add complete frames; return the windows whose frames can now be emitted. With `hurry` (the stream's
        listener is about to run out of audio) every frame that has its lookahead goes now, in a chunk shorter than
        the ramp's if need be, instead of waiting for the rest of its chunk; the ramp goes on from that chunk.
        `lead_s`, the audio a listener who plays on arrival holds now, keeps the ramp from its last step, up to K
        frames, while it is under `grow_lead` times a K-frame chunk's audio (None or a `grow_lead` of 0: the ramp
        alone)."""
        self._lead_s = lead_s if self.grow_lead > 0 else None
        self._frames.extend(frames)
        ready = []
        while self._next_emit + self._chunk() + self._lookahead() <= len(self._frames):
            ready.append(self._take(self._chunk()))
        waiting = len(self._frames) - self._lookahead() - self._next_emit
        if hurry and waiting > 0:
            ready.append(self._take(min(waiting, self.frames_per_decode)))
        self._trim()
        return ready

    def finish(self) -> list[Window]:
        """End of stream: the windows of the frames still waiting for lookahead."""
        self._lead_s = None
        ready = []
        while self._next_emit < len(self._frames):
            ready.append(self._take(min(self._chunk(), len(self._frames) - self._next_emit)))
        return ready

    def _trim(self) -> None:
        # Keep only the frames later windows can still need, so memory stays O(C + K + L).
        drop = max(0, self._next_emit - (self._steady_length - 1 if self.fill else self.context))
        if drop > 64:
            del self._frames[:drop]
            self._next_emit -= drop


class SeamStitcher:
    """Joins one stream's decoded windows into PCM that is never revised: a chunk's last `hold` samples wait for
    the next window (or `finish`), whose lead replaces as many of them as it decodes again; the rest go out as
    they were. Every sample of the stream comes out once, in order: n frames -> 2048 * n samples."""

    def __init__(self, hold: int = SEAM_SAMPLES) -> None:
        self.hold = hold
        self._held = b""

    def add(self, pcm: bytes, lead: int) -> bytes:
        """PCM (s16le) to emit now, from one window's decode: its `lead` samples, then its chunk."""
        samples, held = len(pcm) // 2, len(self._held) // 2
        keep = min(self.hold, samples - lead)
        skip = max(0, lead - held)  # lead samples before the held ones: already emitted, as they were
        out = self._held[: 2 * max(0, held - lead)] + pcm[2 * skip : 2 * (samples - keep)]
        self._held = pcm[2 * (samples - keep) :]
        return out

    def finish(self) -> bytes:
        """The stream's last samples, held back until its end."""
        tail, self._held = self._held, b""
        return tail
