"""Streaming encoders for the OpenAI speech ``response_format`` values.

Input is always signed 16-bit little-endian mono PCM (what the SNAC decoder produces, 24 kHz).
Every encoder has the same shape: ``encode(pcm)`` returns the encoded bytes that are ready *now*
(so a client hears audio while it is still being generated) and ``finish()`` flushes the codec and
writes the container trailer. The concatenation of every returned piece is the complete file.

Lossy and FLAC encoding goes through PyAV (libmp3lame, libopus in Ogg, ffmpeg's AAC in ADTS, FLAC);
WAV and raw PCM are written directly.

Thread-safety: an encoder instance holds per-stream codec state and is not thread-safe. Use one
instance per response stream; calls on one instance must not overlap (running each call in a worker
thread with ``asyncio.to_thread`` is fine as long as they are awaited in order). Separate instances
share nothing and may run concurrently.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Literal, Protocol, get_args

import av
import av.audio.stream
import numpy as np

#: OpenAI format name -> HTTP content type.
AUDIO_FORMATS: Mapping[str, str] = MappingProxyType(
    {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }
)

#: Accepted alternative names (the chat completions audio API says ``pcm16``).
FORMAT_ALIASES: Mapping[str, str] = MappingProxyType({"pcm16": "pcm"})

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
"""`response_format` of `/v1/audio/speech`: the keys of `AUDIO_FORMATS`."""
ChatAudioFormat = Literal["wav", "aac", "mp3", "flac", "opus", "pcm16"]
"""`audio.format` of chat completions: the same formats, raw PCM named ``pcm16``."""
STREAMED_CHAT_FORMATS: tuple[str, ...] = ("pcm16",)
"""Chat audio formats a streamed reply may use: each delta must be playable on its own."""
INLINE_FORMATS = frozenset({"pcm", "wav"})
"""Formats cheap enough to encode on the event loop (no codec); the others run in worker threads."""
if set(get_args(SpeechFormat)) != set(AUDIO_FORMATS) or {
    FORMAT_ALIASES.get(name, name) for name in get_args(ChatAudioFormat)
} != set(AUDIO_FORMATS):
    raise AssertionError("the format literals must name exactly the AUDIO_FORMATS")

#: RIFF/data size used by streaming WAV headers, where the length is unknown (as OpenAI and Kokoro do).
WAV_UNKNOWN_SIZE = 0xFFFFFFFF

_LOSSY_BIT_RATE = 64_000
# Ogg pages are flushed once they hold this much audio (microseconds). The muxer default (1 s) would
# hold back a second of audio; 40 ms (2 Opus packets per page) gives ~80 ms to the first audio page
# (under one 2048-sample SNAC frame) for a few percent of extra page overhead.
_OGG_PAGE_DURATION_US = 40_000


def normalize_format(fmt: str) -> str:
    """Return the canonical format name for ``fmt`` (case-insensitive, aliases resolved).

    Raises ``ValueError`` for an unknown format.
    """
    name = fmt.strip().lower()
    name = FORMAT_ALIASES.get(name, name)
    if name not in AUDIO_FORMATS:
        raise ValueError(f"unsupported audio format {fmt!r}; expected one of {sorted(AUDIO_FORMATS)}")
    return name


def content_type_for(fmt: str) -> str:
    """Return the HTTP content type for a format name or alias."""
    return AUDIO_FORMATS[normalize_format(fmt)]


class AudioEncoder(Protocol):
    """A per-stream encoder from s16le mono PCM to one output format."""

    content_type: str
    format: str

    def encode(self, pcm: bytes) -> bytes:
        """Feed s16le mono PCM (any length, odd too); return the encoded bytes ready now."""
        ...

    def finish(self) -> bytes:
        """Flush the encoder and return the remaining bytes (trailer included); idempotent."""
        ...


class _SampleAligner:
    """Keeps a dangling odd byte from one chunk for the next so only whole samples pass."""

    def __init__(self) -> None:
        self._pending = b""

    def align(self, pcm: bytes) -> bytes:
        data = self._pending + bytes(pcm) if self._pending else bytes(pcm)
        if len(data) % 2:
            self._pending = data[-1:]
            return data[:-1]
        self._pending = b""
        return data


class PcmEncoder:
    """Raw s16le passthrough (``pcm``/``pcm16``): no header, bytes out as they come in.

    An odd trailing byte is held back until its partner arrives; one left at ``finish()`` is dropped
    because it is not a whole sample.
    """

    format = "pcm"
    content_type = AUDIO_FORMATS["pcm"]

    def __init__(self, sample_rate: int = 24000) -> None:
        self.sample_rate = sample_rate
        self._aligner = _SampleAligner()
        self._finished = False

    def encode(self, pcm: bytes) -> bytes:
        """Return the whole samples of ``pcm`` (plus any byte held from the previous call)."""
        _check_open(self._finished)
        return self._aligner.align(pcm)

    def finish(self) -> bytes:
        """End the stream; raw PCM has no trailer, so this returns ``b""``."""
        self._finished = True
        return b""


def wav_header(sample_rate: int, data_size: int | None, channels: int = 1, sample_width: int = 2) -> bytes:
    """Build a 44-byte RIFF/WAVE PCM header.

    ``data_size=None`` means unknown length (streaming): both RIFF and data sizes become 0xFFFFFFFF.
    """
    if data_size is None:
        riff_size = data_size_field = WAV_UNKNOWN_SIZE
    else:
        riff_size = min(36 + data_size, WAV_UNKNOWN_SIZE)
        data_size_field = min(data_size, WAV_UNKNOWN_SIZE)
    block_align = channels * sample_width
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        sample_width * 8,
        b"data",
        data_size_field,
    )


class WavEncoder:
    """16-bit mono WAV.

    ``streaming=True``: the header (sizes 0xFFFFFFFF) comes out with the first ``encode`` call, then
    samples pass straight through; ``finish()`` returns the header if nothing was encoded yet.
    ``streaming=False``: everything is buffered and ``finish()`` returns one file with exact sizes.
    """

    format = "wav"
    content_type = AUDIO_FORMATS["wav"]

    def __init__(self, sample_rate: int = 24000, *, streaming: bool = True) -> None:
        self.sample_rate = sample_rate
        self.streaming = streaming
        self._aligner = _SampleAligner()
        self._header_sent = False
        self._buffer = bytearray()
        self._finished = False

    def encode(self, pcm: bytes) -> bytes:
        """Streaming: return header (first call only) + whole samples; buffered mode: return ``b""``."""
        _check_open(self._finished)
        data = self._aligner.align(pcm)
        if not self.streaming:
            self._buffer += data
            return b""
        if not self._header_sent:
            self._header_sent = True
            return wav_header(self.sample_rate, None) + data
        return data

    def finish(self) -> bytes:
        """Streaming: the header if not yet sent; buffered mode: the whole file with exact sizes."""
        if self._finished:
            return b""
        self._finished = True
        if not self.streaming:
            out = wav_header(self.sample_rate, len(self._buffer)) + bytes(self._buffer)
            self._buffer.clear()
            return out
        if not self._header_sent:
            self._header_sent = True
            return wav_header(self.sample_rate, None)
        return b""


@dataclass(frozen=True)
class _CodecSpec:
    container: str
    codec: str
    bit_rate: int | None
    streaming_options: Mapping[str, str]
    file_options: Mapping[str, str]


def _codec_spec(fmt: str) -> _CodecSpec:
    if fmt == "mp3":
        # No Xing/LAME header and no ID3 tag while streaming: the muxer cannot seek back to fill the
        # Xing frame, and a stale one makes iOS/Safari misjudge the length. Files keep it (gapless info).
        return _CodecSpec("mp3", "libmp3lame", _LOSSY_BIT_RATE, {"write_xing": "0", "id3v2_version": "0"}, {})
    if fmt == "opus":
        page = {"page_duration": str(_OGG_PAGE_DURATION_US)}
        return _CodecSpec("ogg", "libopus", _LOSSY_BIT_RATE, page, {})
    if fmt == "aac":
        return _CodecSpec("adts", "aac", _LOSSY_BIT_RATE, {}, {})
    if fmt == "flac":
        # The 8 KiB padding block only exists to let the muxer rewrite metadata later; it cannot
        # when streaming, so it would just delay the first audio.
        return _CodecSpec("flac", "flac", None, {"metadata_header_padding": "0"}, {})
    raise ValueError(f"no PyAV codec for format {fmt!r}")


class _DrainSink:
    """Write-only, non-seekable file object that collects what the muxer writes until drained."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def drain(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class PyAVEncoder:
    """mp3 / opus (Ogg) / aac (ADTS) / flac through PyAV, fed s16le mono PCM.

    ``streaming=True`` writes to a non-seekable sink drained after every call, so bytes come out as
    soon as the codec and muxer emit them. ``streaming=False`` writes to a seekable buffer, which lets
    the muxers finalise headers (mp3 Xing/LAME gapless info, FLAC STREAMINFO sample count and MD5);
    ``encode`` then returns ``b""`` and ``finish()`` returns the whole file.
    """

    def __init__(self, fmt: str, sample_rate: int = 24000, *, streaming: bool = True) -> None:
        self.format = normalize_format(fmt)
        self.content_type = AUDIO_FORMATS[self.format]
        self.sample_rate = sample_rate
        self.streaming = streaming
        spec = _codec_spec(self.format)
        rates = av.codec.Codec(spec.codec, "w").audio_rates
        if rates and sample_rate not in rates:
            raise ValueError(f"{self.format} does not support {sample_rate} Hz (supported: {sorted(rates)})")
        self._sink = _DrainSink()
        self._file = io.BytesIO()
        options = spec.streaming_options if streaming else spec.file_options
        self._container = av.open(
            self._sink if streaming else self._file,
            mode="w",
            format=spec.container,
            container_options=dict(options),
        )
        stream = self._container.add_stream(spec.codec, rate=sample_rate, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        self._stream = stream
        if spec.bit_rate is not None:
            self._stream.bit_rate = spec.bit_rate
        self._time_base = Fraction(1, sample_rate)
        self._pts = 0
        self._aligner = _SampleAligner()
        self._finished = False

    def encode(self, pcm: bytes) -> bytes:
        """Encode whole samples of ``pcm``; return container bytes emitted so far (streaming mode)."""
        _check_open(self._finished)
        data = self._aligner.align(pcm)
        if data:
            samples = np.frombuffer(data, dtype="<i2").reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.time_base = self._time_base
            frame.pts = self._pts
            self._pts += samples.shape[1]
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.drain() if self.streaming else b""

    def finish(self) -> bytes:
        """Flush the codec, write the trailer and close; return the remaining bytes (or the whole file)."""
        if self._finished:
            return b""
        self._finished = True
        try:
            # An empty stream still gets its header so the output is a (zero-length) valid file.
            self._container.start_encoding()
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
        if self.streaming:
            return self._sink.drain()
        return self._file.getvalue()


def make_encoder(fmt: str, sample_rate: int = 24000, *, streaming: bool = True) -> AudioEncoder:
    """Create a fresh encoder for ``fmt`` (an OpenAI format name or ``pcm16``).

    ``streaming=False`` buffers and makes ``finish()`` return one complete file (exact WAV sizes,
    mp3 Xing/LAME header, complete FLAC STREAMINFO). Raises ``ValueError`` for an unknown format or a
    sample rate the codec cannot take.
    """
    name = normalize_format(fmt)
    if name == "pcm":
        return PcmEncoder(sample_rate)
    if name == "wav":
        return WavEncoder(sample_rate, streaming=streaming)
    return PyAVEncoder(name, sample_rate, streaming=streaming)


def encode_all(pcm: bytes, fmt: str, sample_rate: int = 24000) -> bytes:
    """Encode a whole s16le mono clip into one complete file of format ``fmt``."""
    encoder = make_encoder(fmt, sample_rate, streaming=False)
    return encoder.encode(pcm) + encoder.finish()


def _check_open(finished: bool) -> None:
    if finished:
        raise RuntimeError("encoder already finished")
