"""Encoders: every format decodes with PyAV at the right rate/length, lossless ones exactly, and streams."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest

from oai_server.pipeline.encode import (
    AUDIO_FORMATS,
    WAV_UNKNOWN_SIZE,
    content_type_for,
    encode_all,
    make_encoder,
    normalize_format,
)

from .helpers import decode_audio, sine

SR = 24000
FRAME = 2048  # one SNAC frame
LOSSY = ("mp3", "opus", "aac")
PYAV_FORMATS = ("mp3", "opus", "aac", "flac")
# mp3/aac in a raw stream carry encoder delay + frame padding the decoder cannot trim
# (mp3 ~64 ms, aac ~43-85 ms at 24 kHz); opus in Ogg trims exactly via pre-skip and granule position.
LOSSY_TOLERANCE_S = {"mp3": 0.1, "aac": 0.1, "opus": 0.03}


def stream_encode(fmt: str, pcm: bytes, chunk: int = FRAME * 2) -> tuple[list[bytes], bytes]:
    """Feed ``pcm`` in ``chunk``-byte pieces; return the pieces returned by encode() and finish()."""
    enc = make_encoder(fmt)
    pieces = [enc.encode(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk)]
    return pieces, enc.finish()


def decode(data: bytes) -> tuple[np.ndarray, int, int]:
    """Decode with PyAV; return (samples of channel 0, sample rate, channels)."""
    decoded = decode_audio(data)
    return decoded.samples, decoded.rate, decoded.channels


def test_format_table_and_aliases() -> None:
    assert dict(AUDIO_FORMATS) == {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }
    assert normalize_format("pcm16") == "pcm"
    assert normalize_format("MP3") == "mp3"
    assert content_type_for("pcm16") == "audio/pcm"
    assert make_encoder("pcm16").content_type == "audio/pcm"
    for fmt, ctype in AUDIO_FORMATS.items():
        assert make_encoder(fmt).content_type == ctype
    with pytest.raises(ValueError):
        make_encoder("ogg-vorbis")
    with pytest.raises(ValueError):
        make_encoder("opus", 22050)  # libopus only takes 8/12/16/24/48 kHz


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_streamed_file_decodes_with_right_rate_and_duration(fmt: str) -> None:
    pcm = sine(1.0).tobytes()
    pieces, tail = stream_encode(fmt, pcm)
    samples, rate, channels = decode(b"".join(pieces) + tail)
    assert channels == 1
    # Opus always decodes at 48 kHz in ffmpeg; everything else keeps the input rate.
    assert rate == (48000 if fmt == "opus" else SR)
    duration = len(samples) / rate
    tolerance = LOSSY_TOLERANCE_S.get(fmt, 0.0)
    assert duration >= 1.0 - 0.03, "tail lost"
    assert abs(duration - 1.0) <= tolerance + 1e-9


@pytest.mark.parametrize("fmt", LOSSY)
def test_lossy_keeps_the_signal(fmt: str) -> None:
    """Decoded audio is still a loud 440 Hz tone (not silence or garbage)."""
    pieces, tail = stream_encode(fmt, sine(1.0).tobytes())
    samples, rate, _ = decode(b"".join(pieces) + tail)
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x))
    peak_hz = np.argmax(spectrum) * rate / len(x)
    assert abs(peak_hz - 440) < 5
    # Lossy decoders output float samples in [-1, 1]; the input peak is 10000 / 32768.
    assert samples.dtype.kind == "f"
    steady = x[len(x) // 4 : -len(x) // 4]
    assert np.sqrt(np.mean(steady**2)) == pytest.approx(10000 / 32768 / np.sqrt(2), rel=0.15)


def test_opus_tail_not_lost_with_odd_length() -> None:
    """The last partial Opus packet and last Ogg page come out of finish()."""
    pcm = sine(1.337).tobytes()
    pieces, tail = stream_encode("opus", pcm, chunk=FRAME * 2 + 1)
    assert tail, "finish() must return the final page(s)"
    samples, rate, _ = decode(b"".join(pieces) + tail)
    assert len(samples) / rate >= 1.337 - 0.03


@pytest.mark.parametrize("fmt", ["flac", "wav", "pcm"])
def test_lossless_formats_are_bit_exact(fmt: str) -> None:
    x = sine(0.7) + np.random.default_rng(0).integers(-300, 300, round(0.7 * SR)).astype(np.int16)
    pcm = x.tobytes()
    # Odd-length pieces exercise the dangling byte carried between calls.
    pieces, tail = stream_encode(fmt, pcm, chunk=1001)
    data = b"".join(pieces) + tail
    if fmt == "pcm":
        assert data == pcm
        return
    samples, rate, _ = decode(data)
    assert rate == SR
    assert len(samples) == len(x)
    np.testing.assert_array_equal(samples, x)
    # Whole-file mode too.
    samples, _, _ = decode(encode_all(pcm, fmt))
    np.testing.assert_array_equal(samples, x)


@pytest.mark.parametrize("fmt", PYAV_FORMATS)
def test_streams_before_finish(fmt: str) -> None:
    """Bytes come out while audio is fed, within the first second, and nothing is lost."""
    pcm = sine(2.0).tobytes()
    enc = make_encoder(fmt)
    pieces: list[bytes] = []
    for i in range(0, len(pcm), FRAME * 2):
        pieces.append(enc.encode(pcm[i : i + FRAME * 2]))
    tail = enc.finish()
    early = b"".join(pieces[: SR // FRAME])  # the pieces returned for the first ~1 s of input
    # More than a container header: real audio packets came out during the first second.
    assert len(early) > 2000
    before_finish = b"".join(pieces)
    assert len(before_finish) > 0.8 * (len(before_finish) + len(tail))
    whole = before_finish + tail
    # The concatenation of pieces is a complete, decodable file of the full duration.
    samples, rate, _ = decode(whole)
    assert len(samples) / rate >= 2.0 - 0.03
    assert enc.finish() == b""  # idempotent
    with pytest.raises(RuntimeError):
        enc.encode(pcm[:100])


@pytest.mark.parametrize("fmt", PYAV_FORMATS)
def test_non_streaming_encoder_returns_whole_file_at_finish(fmt: str) -> None:
    pcm = sine(1.0).tobytes()
    enc = make_encoder(fmt, streaming=False)
    assert enc.encode(pcm) == b""
    data = enc.finish()
    assert data == encode_all(pcm, fmt) or fmt in LOSSY  # lossy encoders may not be deterministic
    samples, rate, _ = decode(data)
    duration = len(samples) / rate
    # Seekable output lets mp3 keep its LAME gapless header, so even mp3 is exact here.
    expected_tolerance = {"mp3": 0.0, "opus": 0.0, "flac": 0.0, "aac": 0.1}[fmt]
    assert 1.0 - 1e-9 <= duration <= 1.0 + expected_tolerance + 1e-9


def test_streaming_wav_header_and_samples() -> None:
    x = sine(0.5)
    enc = make_encoder("wav")
    first = enc.encode(x[:100].tobytes())
    assert first[:4] == b"RIFF" and first[8:16] == b"WAVEfmt "
    (riff_size,) = struct.unpack("<I", first[4:8])
    (data_size,) = struct.unpack("<I", first[40:44])
    assert riff_size == WAV_UNKNOWN_SIZE and data_size == WAV_UNKNOWN_SIZE
    channels, rate, byte_rate, align, bits = struct.unpack("<HIIHH", first[22:36])
    assert (channels, rate, byte_rate, align, bits) == (1, SR, SR * 2, 2, 16)
    assert first[44:] == x[:100].tobytes()
    rest = enc.encode(x[100:].tobytes())
    assert rest == x[100:].tobytes()  # header only once
    assert enc.finish() == b""
    samples, rate, _ = decode(first + rest)
    np.testing.assert_array_equal(samples, x)


def test_streaming_wav_without_audio_still_has_header() -> None:
    enc = make_encoder("wav")
    header = enc.finish()
    assert len(header) == 44 and header[:4] == b"RIFF"
    enc = make_encoder("wav")
    assert len(enc.encode(b"")) == 44  # header goes out with the first call, even an empty one
    assert enc.finish() == b""


def test_non_streaming_wav_has_exact_sizes() -> None:
    x = sine(0.8)
    data = encode_all(x.tobytes() + b"\x01", "wav")  # the odd trailing byte is dropped
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SR)
        assert w.getnframes() == len(x)
        assert w.readframes(len(x)) == x.tobytes()
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_empty_stream_finishes_cleanly(fmt: str) -> None:
    enc = make_encoder(fmt)
    assert enc.encode(b"") == b"" or fmt == "wav"
    enc.finish()
    assert enc.finish() == b""


def test_instances_are_independent() -> None:
    """Interleaving two encoders gives the same bytes as running each alone (flac is deterministic)."""
    a, b = sine(0.5, 440).tobytes(), sine(0.5, 880).tobytes()
    ea, eb = make_encoder("flac"), make_encoder("flac")
    out_a, out_b = bytearray(), bytearray()
    for i in range(0, len(a), FRAME * 2):
        out_a += ea.encode(a[i : i + FRAME * 2])
        out_b += eb.encode(b[i : i + FRAME * 2])
    out_a += ea.finish()
    out_b += eb.finish()
    pieces, tail = stream_encode("flac", a)
    assert bytes(out_a) == b"".join(pieces) + tail
    np.testing.assert_array_equal(decode(bytes(out_b))[0], sine(0.5, 880))
