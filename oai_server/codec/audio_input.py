"""Uploaded audio in, mono float32 at a model's rate out: PyAV (ffmpeg) demuxes and decodes, libswresample resamples.

Accepted: anything in the wav, mp3, flac, ogg (opus, vorbis, flac), matroska/webm, mov/mp4/m4a
and ADTS aac demuxers, whatever its codec, sample rate and channel count; and raw signed 16-bit
little-endian PCM when the caller knows its rate (`decode_pcm16`). A well-formed 16-bit PCM WAV file,
the most common upload, skips the demuxer and decoder: its samples go straight to `decode_pcm16`.
The samples are the same; 5 s at 16 kHz take 0.15 ms instead of 4.2 ms (`bench/audio_cpu.py`), 2 ms
instead of 6 ms when they need resampling, and PyAV's decoding holds the GIL, which bounded 32
concurrent transcriptions on a 32-core host. Other demuxers are refused
with ffmpeg's ``format_whitelist``: playlist-like formats (hls, concat, ...) would open further
files or URLs named inside the upload.

Channels are averaged to mono (libswresample's own downmix scales by 1/sqrt(2), so a centred
stereo voice would come out 3 dB louder than the same voice in mono), then resampled with
``av.AudioResampler`` (libswresample) to the requested rate (16 kHz for Whisper, 24 kHz for
the speech pipeline, ...).

Every failure of the input is the OpenAI 400 envelope (`oai_server.errors.invalid`) with the
caller's ``param`` (``"file"``, ``"messages[0].content[1].input_audio"``) and a code:
``audio_too_large``, ``empty_audio``, ``invalid_audio`` (not decodable), ``unsupported_audio``
(a refused container, no audio stream, no decoder), ``audio_too_long`` or ``invalid_base64``.

Blocking: decoding is CPU work (about 1-2% of the audio's duration); call these functions from
a worker thread (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import av
import av.audio.frame
import numpy as np

from oai_server.errors import APIError, invalid

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
"""OpenAI's upload limit for `/v1/audio/transcriptions`."""
ALLOWED_DEMUXERS = ("wav", "mp3", "flac", "ogg", "matroska", "mov", "aac")
"""ffmpeg demuxer names accepted (``matroska`` covers webm, ``mov`` covers mp4 and m4a)."""
_CHUNK_SAMPLES = 1 << 16
_OUT_FRAME_SAMPLES = 1 << 14


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded audio: mono float32 samples in [-1, 1] at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int
    container: str
    """The demuxer that read it (``"wav"``, ``"ogg"``, ``"matroska,webm"``, ...) or ``"pcm"``."""
    codec: str
    """The decoder (``"pcm_s16le"``, ``"mp3float"``, ``"libopus"``, ...) or ``"pcm_s16le"`` for raw input."""

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


def decode_base64(data: str | bytes, *, param: str, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """Strictly decode base64 (standard alphabet, padding optional, a ``data:...;base64,`` prefix allowed).

    Raises the 400 envelope: ``invalid_base64`` for bad input, ``audio_too_large`` when the decoded
    size would exceed ``max_bytes`` (checked before decoding), ``empty_audio`` for nothing.
    """
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())  # line breaks of MIME-style base64
    if len(text) // 4 * 3 > max_bytes:
        raise _too_large(len(text) // 4 * 3, max_bytes, param)
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"The audio in '{param}' is not valid base64.", param, "invalid_base64") from None
    if not raw:
        raise invalid(f"The audio in '{param}' is empty.", param, "empty_audio")
    return raw


def decode_audio(
    data: bytes,
    *,
    sample_rate: int = 16000,
    param: str = "file",
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_seconds: float | None = None,
) -> DecodedAudio:
    """Decode an audio file of any accepted container/codec to mono float32 at ``sample_rate``.

    ``max_seconds`` bounds the decoded duration: decoding stops and ``audio_too_long`` is raised
    as soon as it is passed, so a long upload costs no more than the limit.
    """
    _check_size(len(data), max_bytes, param)
    wav = _pcm16_wav(data)
    if wav is not None:  # the common upload: no demuxer, decoder or per-frame conversions (3x faster, same samples)
        pcm, source_rate, channels = wav
        decoded = decode_pcm16(
            pcm, source_rate, sample_rate=sample_rate, param=param, max_bytes=max_bytes, max_seconds=max_seconds,
            channels=channels,
        )  # fmt: skip
        return dataclasses.replace(decoded, container="wav")  # the demuxer PyAV would have named
    try:
        container = av.open(io.BytesIO(data), "r", options={"format_whitelist": ",".join(ALLOWED_DEMUXERS)})
    except av.ArgumentError:  # ffmpeg's EINVAL: the probed demuxer is not on the whitelist
        raise _unsupported(param, "its container format is not accepted") from None
    except (av.FFmpegError, UnicodeDecodeError):
        raise _undecodable(param) from None
    with container:
        if not container.streams.audio:
            raise _unsupported(param, "it contains no audio stream")
        stream = container.streams.audio[0]
        codec = stream.codec_context.name if stream.codec_context is not None else "unknown"
        try:
            frames = container.decode(stream)
            samples = _resample(frames, sample_rate, max_seconds, param)
        except av.DecoderNotFoundError:
            raise _unsupported(param, f"no decoder for its codec ({codec})") from None
        except av.FFmpegError:
            raise _undecodable(param) from None
        name = container.format.name
    return _finish(samples, sample_rate, name, codec, param)


def decode_pcm16(
    data: bytes,
    source_rate: int,
    *,
    sample_rate: int = 16000,
    param: str = "file",
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_seconds: float | None = None,
    channels: int = 1,
) -> DecodedAudio:
    """Decode raw s16le PCM (interleaved if ``channels`` > 1) at ``source_rate`` to mono float32 at ``sample_rate``."""
    _check_size(len(data), max_bytes, param)
    if source_rate <= 0 or channels < 1:
        raise ValueError("source_rate and channels must be positive")
    if len(data) % (2 * channels):
        raise invalid(
            f"The audio in '{param}' is not 16-bit PCM: {len(data)} bytes is not a whole number of "
            f"{channels}-channel samples.",
            param,
            "invalid_audio",
        )
    if max_seconds is not None and len(data) / (2 * channels * source_rate) > max_seconds:
        raise _too_long(max_seconds, param)
    pcm = np.frombuffer(data, dtype="<i2").reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0
    samples = resample(pcm, source_rate, sample_rate)
    return _finish(samples, sample_rate, "pcm", "pcm_s16le", param)


def _pcm16_wav(data: bytes) -> tuple[bytes, int, int] | None:
    """(samples, rate, channels) of a well-formed 16-bit PCM WAV file; None for anything else (PyAV reads it)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, fmt = 12, None
    while offset + 8 <= len(data):
        tag, size = data[offset : offset + 4], int.from_bytes(data[offset + 4 : offset + 8], "little")
        body = data[offset + 8 : offset + 8 + size]
        if len(body) < size:
            return None  # truncated, or a streamed WAV's unknown size
        if tag == b"fmt " and size >= 16:
            fmt = body
        elif tag == b"data":
            if fmt is None or not body:
                return None
            audio_format = int.from_bytes(fmt[0:2], "little")
            channels, rate = int.from_bytes(fmt[2:4], "little"), int.from_bytes(fmt[4:8], "little")
            bits = int.from_bytes(fmt[14:16], "little")
            extensible_pcm = audio_format == 0xFFFE and len(fmt) >= 26 and fmt[24:26] == b"\x01\x00"
            pcm16 = (audio_format == 1 or extensible_pcm) and bits == 16 and channels >= 1 and rate > 0
            if pcm16 and len(body) % (2 * channels) == 0:
                return body, rate, channels
            return None
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample mono float32 ``samples`` with libswresample (one-shot; for streams keep an `av.AudioResampler`)."""
    mono = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    if source_rate == target_rate or not len(mono):
        return mono.copy()
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    out: list[np.ndarray] = []
    for start in range(0, len(mono), _CHUNK_SAMPLES):
        frame = av.AudioFrame.from_ndarray(mono[None, start : start + _CHUNK_SAMPLES], format="flt", layout="mono")
        frame.sample_rate = source_rate
        out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _resample(
    frames: Iterable[av.audio.frame.AudioFrame], rate: int, max_seconds: float | None, param: str
) -> np.ndarray:
    """Resample decoded frames to planar float at ``rate``, average the channels, stop past ``max_seconds``."""
    limit = None if max_seconds is None else int(max_seconds * rate) + 1
    out: list[np.ndarray] = []
    total = 0
    resampler: av.AudioResampler | None = None
    setup: tuple[int, str, str] | None = None
    for frame in frames:
        if frame.samples == 0:
            continue
        key = (frame.sample_rate, frame.format.name, frame.layout.name)
        if key != setup:  # the stream changed shape (chained ogg, ...): flush and start a new resampler
            if resampler is not None:
                out.extend(_planar_mean(resampler.resample(None)))
            # Frames of a second or so out: fewer conversions than one per decoded frame (~1152 samples of flac)
            resampler, setup = av.AudioResampler(format="fltp", rate=rate, frame_size=_OUT_FRAME_SAMPLES), key
        assert resampler is not None
        for samples in _planar_mean(resampler.resample(frame)):
            out.append(samples)
            total += len(samples)
        if limit is not None and total > limit:
            raise _too_long(max_seconds or 0.0, param)
    if resampler is not None:
        out.extend(_planar_mean(resampler.resample(None)))
    samples = np.concatenate(out) if out else np.zeros(0, np.float32)
    if limit is not None and len(samples) > limit:
        raise _too_long(max_seconds or 0.0, param)
    return samples


def _planar_mean(frames: Iterable[av.audio.frame.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        yield frame.to_ndarray().mean(axis=0, dtype=np.float32)


def _finish(samples: np.ndarray, sample_rate: int, container: str, codec: str, param: str) -> DecodedAudio:
    if not len(samples):
        raise invalid(f"The audio in '{param}' has no samples (zero length).", param, "empty_audio")
    return DecodedAudio(np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False), sample_rate, container, codec)


def _check_size(size: int, max_bytes: int, param: str) -> None:
    if size == 0:
        raise invalid(f"The audio in '{param}' is empty.", param, "empty_audio")
    if size > max_bytes:
        raise _too_large(size, max_bytes, param)


def _too_large(size: int, max_bytes: int, param: str) -> APIError:
    return invalid(
        f"The audio in '{param}' is {size} bytes; the maximum is {max_bytes} bytes.", param, "audio_too_large"
    )


def _too_long(max_seconds: float, param: str) -> APIError:
    return invalid(
        f"The audio in '{param}' is longer than the maximum of {max_seconds:g} seconds.", param, "audio_too_long"
    )


def _undecodable(param: str) -> APIError:
    return invalid(
        f"The audio in '{param}' could not be decoded. Supported formats: flac, m4a, mp3, mp4, ogg, opus, wav, webm.",
        param,
        "invalid_audio",
    )


def _unsupported(param: str, why: str) -> APIError:
    return invalid(f"The audio in '{param}' is not supported: {why}.", param, "unsupported_audio")
