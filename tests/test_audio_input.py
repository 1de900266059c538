"""Uploaded audio decoding (`oai_server.codec.audio_input`) on real espeak-ng speech in every container."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest

from oai_server.codec.audio_input import decode_audio, decode_base64, decode_pcm16
from oai_server.errors import APIError
from tests.speech_audio import ENCODINGS, encode, speak, to_pcm16

RATE = 16000
# Samples one codec frame may add (encoder priming/padding), at 16 kHz: 0 for lossless formats.
FRAME_SLACK = {"wav": 0, "flac": 0, "mp3": 1152, "ogg": 320, "webm": 320, "m4a": 1024, "mp4": 1024}
CONTAINERS = {
    "wav": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "ogg": "ogg",
    "webm": "matroska,webm",
    "m4a": "mov,mp4,m4a,3gp,3g2,mj2",
    "mp4": "mov,mp4,m4a,3gp,3g2,mj2",
}
PARAM = "messages[0].content[1].input_audio"


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return speak("The quick brown fox jumps over the lazy dog.", RATE)


def _best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
    """Highest normalised correlation of ``a`` and ``b`` over lags up to ``max_lag`` samples."""
    n = min(len(a), len(b)) - max_lag
    best = -1.0
    for lag in range(-max_lag, max_lag + 1, 8):
        x = a[max(lag, 0) : max(lag, 0) + n]
        y = b[max(-lag, 0) : max(-lag, 0) + n]
        best = max(best, float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))))
    return best


def _pcm(samples: np.ndarray) -> np.ndarray:
    """What ``samples`` become after a round trip through s16 (as `encode` and `to_pcm16` write it)."""
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32768


def _error(excinfo: pytest.ExceptionInfo[APIError]) -> tuple[int, str | None, str | None, str]:
    error = excinfo.value
    return error.status, error.param, error.code, error.type


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", sorted(ENCODINGS))
def test_every_container_decodes_to_the_right_length_and_rate(voice: np.ndarray, fmt: str, channels: int) -> None:
    data = encode(voice, RATE, fmt, channels=channels)
    decoded = decode_audio(data, sample_rate=RATE, param="file")
    assert decoded.sample_rate == RATE
    assert decoded.container == CONTAINERS[fmt]
    assert decoded.samples.dtype == np.float32
    assert decoded.samples.ndim == 1
    assert 0 <= len(decoded.samples) - len(voice) <= FRAME_SLACK[fmt]
    assert decoded.duration == pytest.approx(len(voice) / RATE, abs=FRAME_SLACK[fmt] / RATE + 1e-9)
    lag = FRAME_SLACK[fmt] or 8
    assert _best_correlation(decoded.samples, voice, lag) > (0.999 if FRAME_SLACK[fmt] == 0 else 0.8)


def test_lossless_decode_is_exact_and_resamples_to_24k(voice: np.ndarray) -> None:
    wav = encode(voice, RATE, "wav")
    decoded = decode_audio(wav, sample_rate=RATE)
    np.testing.assert_allclose(decoded.samples, _pcm(voice), atol=1e-7)
    at_24k = decode_audio(wav, sample_rate=24000)
    assert at_24k.sample_rate == 24000
    assert abs(len(at_24k.samples) - len(voice) * 1.5) <= 1
    assert at_24k.duration == pytest.approx(decoded.duration, abs=1 / RATE)


def test_stereo_is_averaged_to_mono(voice: np.ndarray) -> None:
    left_only = np.stack([voice, np.zeros_like(voice)], axis=1)
    decoded = decode_audio(encode(left_only, RATE, "wav"), sample_rate=RATE)
    np.testing.assert_allclose(decoded.samples, _pcm(voice) / 2, atol=1e-7)


def test_raw_pcm16_at_a_given_rate(voice: np.ndarray) -> None:
    same = decode_pcm16(to_pcm16(voice), RATE, sample_rate=RATE)
    np.testing.assert_allclose(same.samples, _pcm(voice), atol=1e-7)
    assert (same.container, same.codec) == ("pcm", "pcm_s16le")
    from_24k = decode_pcm16(to_pcm16(np.zeros(24000, np.float32) + 0.25), 24000, sample_rate=RATE)
    assert len(from_24k.samples) == RATE
    assert np.median(from_24k.samples) == pytest.approx(0.25, abs=1e-3)


def test_garbage_is_a_400_naming_the_param() -> None:
    rng = np.random.default_rng(7)
    with pytest.raises(APIError) as excinfo:
        decode_audio(rng.bytes(5000), param=PARAM)
    assert _error(excinfo) == (400, PARAM, "invalid_audio", "invalid_request_error")


@pytest.mark.parametrize("data", [b"", b"RIFF"], ids=["no-bytes", "truncated-header"])
def test_empty_or_truncated_is_a_400(data: bytes) -> None:
    with pytest.raises(APIError) as excinfo:
        decode_audio(data, param="file")
    assert excinfo.value.status == 400
    assert excinfo.value.param == "file"
    assert excinfo.value.code == ("empty_audio" if not data else "invalid_audio")


def test_zero_length_audio_is_empty() -> None:
    header_only = encode(np.zeros(0, np.float32), RATE, "wav")
    with pytest.raises(APIError) as excinfo:
        decode_audio(header_only, param="file")
    assert _error(excinfo) == (400, "file", "empty_audio", "invalid_request_error")
    with pytest.raises(APIError) as excinfo:
        decode_pcm16(b"", RATE, param="file")
    assert excinfo.value.code == "empty_audio"


def test_odd_pcm16_is_invalid() -> None:
    with pytest.raises(APIError) as excinfo:
        decode_pcm16(b"\x00\x01\x02", RATE, param=PARAM)
    assert _error(excinfo) == (400, PARAM, "invalid_audio", "invalid_request_error")


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg"])
def test_too_long_is_a_400(voice: np.ndarray, fmt: str) -> None:
    data = encode(voice, RATE, fmt)  # ~2.7 s
    with pytest.raises(APIError) as excinfo:
        decode_audio(data, param="file", max_seconds=1.0)
    assert _error(excinfo) == (400, "file", "audio_too_long", "invalid_request_error")
    assert decode_audio(data, param="file", max_seconds=10.0).duration > 2.0
    with pytest.raises(APIError) as excinfo:
        decode_pcm16(to_pcm16(voice), RATE, param="file", max_seconds=1.0)
    assert excinfo.value.code == "audio_too_long"


def test_too_large_is_a_400(voice: np.ndarray) -> None:
    data = encode(voice, RATE, "wav")
    with pytest.raises(APIError) as excinfo:
        decode_audio(data, param="file", max_bytes=len(data) - 1)
    assert _error(excinfo) == (400, "file", "audio_too_large", "invalid_request_error")
    assert len(decode_audio(data, param="file", max_bytes=len(data)).samples) == len(voice)


def test_container_outside_the_whitelist_is_unsupported(voice: np.ndarray) -> None:
    caf = encode(voice, RATE, "wav", muxer="caf")  # a real audio file ffmpeg reads, but not an accepted format
    with pytest.raises(APIError) as excinfo:
        decode_audio(caf, param="file")
    assert _error(excinfo) == (400, "file", "unsupported_audio", "invalid_request_error")


def test_playlist_naming_a_local_file_is_refused(tmp_path: object) -> None:
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
    with pytest.raises(APIError) as excinfo:
        decode_audio(playlist, param="file")
    assert excinfo.value.status == 400
    assert excinfo.value.code in ("invalid_audio", "unsupported_audio")


def test_video_without_audio_is_unsupported() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 32, 32
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 40, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(APIError) as excinfo:
        decode_audio(buffer.getvalue(), param="file")
    assert _error(excinfo) == (400, "file", "unsupported_audio", "invalid_request_error")
    assert "no audio stream" in excinfo.value.message


def test_base64_round_trip_and_errors(voice: np.ndarray) -> None:
    wav = encode(voice, RATE, "wav")
    text = base64.b64encode(wav).decode()
    assert decode_base64(text, param=PARAM) == wav
    assert decode_base64("data:audio/wav;base64," + text, param=PARAM) == wav
    assert decode_base64(text.rstrip("="), param=PARAM) == wav
    for bad in ("not base64 at all!", "QUJD*", "A"):
        with pytest.raises(APIError) as excinfo:
            decode_base64(bad, param=PARAM)
        assert _error(excinfo) == (400, PARAM, "invalid_base64", "invalid_request_error")
    with pytest.raises(APIError) as excinfo:
        decode_base64("", param=PARAM)
    assert excinfo.value.code == "empty_audio"
    with pytest.raises(APIError) as excinfo:
        decode_base64(text, param=PARAM, max_bytes=len(wav) // 2)
    assert _error(excinfo) == (400, PARAM, "audio_too_large", "invalid_request_error")


def _wav_header(fmt_body: bytes, data: bytes, *, data_size: int | None = None) -> bytes:
    size = len(data) if data_size is None else data_size
    chunks = b"fmt " + len(fmt_body).to_bytes(4, "little") + fmt_body + b"data" + size.to_bytes(4, "little") + data
    return b"RIFF" + (4 + len(chunks)).to_bytes(4, "little") + b"WAVE" + chunks


def _pcm_fmt(channels: int, rate: int, bits: int = 16, audio_format: int = 1) -> bytes:
    block = channels * bits // 8
    return b"".join(
        (audio_format.to_bytes(2, "little"), channels.to_bytes(2, "little"), rate.to_bytes(4, "little"),
         (rate * block).to_bytes(4, "little"), block.to_bytes(2, "little"), bits.to_bytes(2, "little"))
    )  # fmt: skip


@pytest.mark.parametrize(("channels", "rate", "target"), [(1, 16000, 16000), (2, 22050, 16000), (1, 16000, 24000)])
def test_a_pcm16_wav_skips_the_demuxer_and_decodes_the_same_samples(
    voice: np.ndarray, monkeypatch: pytest.MonkeyPatch, channels: int, rate: int, target: int
) -> None:
    from oai_server.codec import audio_input

    samples = audio_input.resample(voice, RATE, rate)
    wav = encode(np.stack([samples, samples * 0.5], axis=1) if channels == 2 else samples, rate, "wav")
    assert audio_input._pcm16_wav(wav) is not None  # the fast path takes it
    fast = decode_audio(wav, sample_rate=target)
    monkeypatch.setattr(audio_input, "_pcm16_wav", lambda data: None)  # what PyAV makes of the same file
    slow = decode_audio(wav, sample_rate=target)
    assert (
        (fast.container, fast.codec, fast.sample_rate)
        == (slow.container, slow.codec, target)
        == (
            "wav",
            "pcm_s16le",
            target,
        )
    )
    assert len(fast.samples) == len(slow.samples)
    np.testing.assert_allclose(fast.samples, slow.samples, atol=1e-6)


def test_only_well_formed_pcm16_wav_takes_the_fast_path(voice: np.ndarray) -> None:
    from oai_server.codec.audio_input import _pcm16_wav

    pcm = to_pcm16(voice)
    extensible = _pcm_fmt(2, RATE, audio_format=0xFFFE) + (22).to_bytes(2, "little") + b"\x10\x00" + bytes(4)
    extensible += b"\x01\x00" + bytes(14)  # SubFormat: KSDATAFORMAT_SUBTYPE_PCM
    stereo = pcm[: len(pcm) // 4 * 4]  # whole 2-channel samples
    assert _pcm16_wav(_wav_header(extensible, stereo)) == (stereo, RATE, 2)
    assert _pcm16_wav(_wav_header(_pcm_fmt(1, RATE, bits=24), pcm[: len(pcm) // 6 * 6])) is None  # 24-bit
    assert _pcm16_wav(_wav_header(_pcm_fmt(1, RATE, audio_format=3, bits=32), pcm)) is None  # float
    assert _pcm16_wav(_wav_header(_pcm_fmt(1, RATE), pcm, data_size=0xFFFFFFFF)) is None  # streamed: size unknown
    assert _pcm16_wav(_wav_header(_pcm_fmt(1, RATE), pcm + b"\x00")) is None  # not whole samples
    assert _pcm16_wav(_wav_header(_pcm_fmt(1, RATE), b"")) is None  # no samples: PyAV's empty_audio
    assert _pcm16_wav(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None  # truncated
    assert _pcm16_wav(encode(voice, RATE, "flac")) is None


def test_a_streamed_wav_still_decodes_through_pyav(voice: np.ndarray) -> None:
    pcm = to_pcm16(voice)
    decoded = decode_audio(_wav_header(_pcm_fmt(1, RATE), pcm, data_size=0xFFFFFFFF), sample_rate=RATE)
    np.testing.assert_allclose(decoded.samples, _pcm(voice), atol=1e-7)
