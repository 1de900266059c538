"""Real speech for tests: espeak-ng speaks sentences, we place them between known silences and encode them.

`speak` runs ``espeak-ng -w out.wav "text"`` (22 050 Hz mono) and returns the voiced part as float32 at
the rate asked for; `compose` lays sentences out between silences and reports where each one is;
`encode` writes samples into wav, mp3, flac, ogg/opus, webm/opus, m4a/aac or mp4/aac with PyAV.
"""

from __future__ import annotations

import functools
import io
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from oai_server.codec.audio_input import decode_audio, resample

ESPEAK_RATE = 22050

#: format -> (ffmpeg muxer, codec, codec sample rate or None for the input's)
ENCODINGS: dict[str, tuple[str, str, int | None]] = {
    "wav": ("wav", "pcm_s16le", None),
    "mp3": ("mp3", "libmp3lame", None),
    "flac": ("flac", "flac", None),
    "ogg": ("ogg", "libopus", 48000),
    "webm": ("webm", "libopus", 48000),
    "m4a": ("ipod", "aac", None),
    "mp4": ("mp4", "aac", None),
}


@functools.lru_cache(maxsize=64)
def _espeak(text: str, voice: str, speed: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True, capture_output=True
        )
        return out.read_bytes()


def speak(text: str, rate: int = 16000, *, voice: str = "en", speed: int = 160, trim: bool = True) -> np.ndarray:
    """``text`` spoken by espeak-ng as mono float32 at ``rate``; with ``trim``, only the voiced part.

    Trimming cuts espeak's own leading and trailing silence (samples under 1% of the peak), so the
    returned audio starts and ends where the speech does.
    """
    samples = decode_audio(_espeak(text, voice, speed), sample_rate=rate).samples
    if trim:
        loud = np.flatnonzero(np.abs(samples) > 0.01 * np.abs(samples).max())
        samples = samples[loud[0] : loud[-1] + 1]
    return samples


@dataclass(frozen=True)
class Placed:
    """Where one spoken sentence lies in a composed file (seconds)."""

    text: str
    start: float
    end: float


def compose(layout: list[float | str], rate: int = 16000) -> tuple[np.ndarray, list[Placed]]:
    """Concatenate silences (a float: seconds of zeros) and sentences (a str: spoken) in order.

    Returns the samples and, for each sentence, where its voiced part starts and ends.
    """
    pieces: list[np.ndarray] = []
    placed: list[Placed] = []
    position = 0
    for item in layout:
        if isinstance(item, str):
            voice = speak(item, rate)
            placed.append(Placed(item, position / rate, (position + len(voice)) / rate))
        else:
            voice = np.zeros(round(item * rate), np.float32)
        pieces.append(voice)
        position += len(voice)
    return np.concatenate(pieces).astype(np.float32), placed


def encode(samples: np.ndarray, rate: int, fmt: str, *, channels: int = 1, muxer: str | None = None) -> bytes:
    """Encode float32 ``samples`` into ``fmt`` (a key of `ENCODINGS`).

    ``samples`` is mono (n,), duplicated when ``channels`` is 2, or already stereo (n, 2).
    ``muxer`` overrides the container (e.g. ``"aiff"``) keeping the format's codec.
    """
    default_muxer, codec, codec_rate = ENCODINGS[fmt]
    samples = np.asarray(samples, dtype=np.float32)
    columns = samples[:, None] if samples.ndim == 1 else samples  # (n, channels)
    if columns.shape[1] == 1 and channels == 2:
        columns = np.repeat(columns, 2, axis=1)
    if codec_rate is not None and codec_rate != rate:
        columns = np.stack([resample(c, rate, codec_rate) for c in columns.T], axis=1)
        rate = codec_rate
    channels = columns.shape[1]
    layout = "stereo" if channels == 2 else "mono"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=muxer or default_muxer) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        pcm = (np.clip(columns, -1, 1) * 32767).astype(np.int16).reshape(-1)  # interleaved
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, len(columns), frame_size):
            chunk = pcm[start * channels : (start + frame_size) * channels]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def to_pcm16(samples: np.ndarray) -> bytes:
    """Mono float32 -> raw s16le bytes."""
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
