"""G.711 μ-law / A-law tables, 24 ↔ 8 kHz streaming resampling, and the base64 pcm16 helpers."""

from __future__ import annotations

import base64
import importlib.util
import math

import numpy as np
import pytest

from oai_server.codec import g711
from oai_server.codec.g711 import TelephonyDecoder, TelephonyEncoder, decode, encode
from oai_server.codec.pcm import b64decode_audio, pcm16_from_b64, pcm16_from_bytes, pcm16_to_b64
from oai_server.codec.resample import DELAY_24K, LOWPASS, Downsampler, Upsampler, downsample, upsample
from oai_server.errors import APIError

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))
LAWS = ("pcmu", "pcma")


# --- G.711: values straight from the ITU-T G.711 tables -------------------------------------------------------


@pytest.mark.parametrize(
    ("law", "code", "linear"),
    [
        ("pcmu", 0xFF, 0),  # positive zero
        ("pcmu", 0x7F, 0),  # negative zero
        ("pcmu", 0xFE, 8),
        ("pcmu", 0x80, 32124),  # largest magnitude
        ("pcmu", 0x00, -32124),
        ("pcmu", 0xF0, 120),
        ("pcma", 0xD5, 8),  # smallest positive step
        ("pcma", 0x55, -8),
        ("pcma", 0xAA, 32256),  # largest magnitude
        ("pcma", 0x2A, -32256),
        ("pcma", 0xC5, 264),
    ],
)
def test_decode_known_codes(law: g711.Law, code: int, linear: int) -> None:
    assert decode(bytes([code]), law).tolist() == [linear]


@pytest.mark.parametrize(
    ("law", "linear", "code"),
    [
        ("pcmu", 0, 0xFF),
        ("pcmu", 32767, 0x80),
        ("pcmu", -32768, 0x00),
        ("pcmu", -1, 0x7E),
        ("pcma", 0, 0xD5),
        ("pcma", -1, 0x55),
        ("pcma", 32767, 0xAA),
        ("pcma", -32768, 0x2A),
    ],
)
def test_encode_known_values(law: g711.Law, linear: int, code: int) -> None:
    assert encode(np.array([linear], dtype=np.int16), law) == bytes([code])


def test_all_256_codes_round_trip() -> None:
    # every A-law code is its own encoding; μ-law's negative zero (0x7F) encodes as positive zero
    assert encode(decode(ALL_CODES, "pcma"), "pcma") == ALL_CODES
    expected = bytearray(ALL_CODES)
    expected[0x7F] = 0xFF
    assert encode(decode(ALL_CODES, "pcmu"), "pcmu") == bytes(expected)


@pytest.mark.parametrize("law", LAWS)
def test_decoded_codes_are_symmetric_and_monotonic(law: g711.Law) -> None:
    values = decode(ALL_CODES, law).astype(np.int64)
    # μ-law inverts all bits (0x80 is the largest positive); A-law inverts the even bits (0x55)
    order = np.arange(0xFF, 0x7F, -1) if law == "pcmu" else np.arange(0x80, 0x100) ^ 0x55
    positive = values[order]
    negative = values[order ^ 0x80]
    assert (np.diff(positive) > 0).all()
    assert (negative == -positive).all()


@pytest.mark.parametrize(("law", "rel", "small"), [("pcmu", 0.0351, 35), ("pcma", 1 / 32, 16)])
def test_quantisation_error_is_within_the_segment_step(law: g711.Law, rel: float, small: int) -> None:
    x = ALL_INT16.astype(np.int64)
    err = np.abs(decode(encode(ALL_INT16, law), law).astype(np.int64) - x)
    big = np.abs(x) >= 1024
    assert (err[big] <= rel * np.abs(x[big])).all()
    assert err[~big].max() <= small


@pytest.mark.skipif(importlib.util.find_spec("audioop") is None, reason="audioop left the stdlib in 3.13")
def test_tables_equal_an_independent_implementation() -> None:
    import audioop  # CPython's C implementation of the same reference algorithm

    assert encode(ALL_INT16, "pcmu") == audioop.lin2ulaw(ALL_INT16.tobytes(), 2)
    assert encode(ALL_INT16, "pcma") == audioop.lin2alaw(ALL_INT16.tobytes(), 2)
    assert decode(ALL_CODES, "pcmu").tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    assert decode(ALL_CODES, "pcma").tobytes() == audioop.alaw2lin(ALL_CODES, 2)


# --- resampling -----------------------------------------------------------------------------------------------


def _tone(freq: float, rate: int, seconds: float, amp: float = 10_000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _level_db(x: np.ndarray, amp: float = 10_000.0) -> float:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return 20 * math.log10(max(rms * math.sqrt(2) / amp, 1e-12))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 479, 480, 481, 24_000])
def test_sample_counts_are_exact(n: int) -> None:
    x = np.zeros(n, dtype=np.int16)
    assert len(downsample(x)) == math.ceil(n / 3)
    assert len(upsample(x)) == 3 * n


def _chunks(x: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    cuts = np.sort(rng.choice(np.arange(1, len(x)), size=40, replace=False))
    return np.split(x, cuts)


def test_streaming_equals_whole_downsampling() -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(24_000) * 6000).clip(-32768, 32767).astype(np.int16)
    down = Downsampler()
    streamed = np.concatenate([down.process(c) for c in _chunks(x, rng)])
    whole = downsample(x)
    assert len(streamed) == len(whole) == 8000
    assert np.abs(streamed.astype(int) - whole.astype(int)).max() <= 1  # float summation order only


def test_streaming_equals_whole_upsampling() -> None:
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(8000) * 6000).clip(-32768, 32767).astype(np.int16)
    up = Upsampler()
    streamed = np.concatenate([up.process(c) for c in _chunks(x, rng)])
    whole = upsample(x)
    assert len(streamed) == len(whole) == 24_000
    assert np.abs(streamed.astype(int) - whole.astype(int)).max() <= 1


def test_single_sample_chunks_stream_like_whole() -> None:
    x = _tone(440, 24_000, 0.05)
    down = Downsampler()
    streamed = np.concatenate([down.process(x[i : i + 1]) for i in range(len(x))])
    assert np.abs(streamed.astype(int) - downsample(x).astype(int)).max() <= 1


@pytest.mark.parametrize(("freq", "low", "high"), [(300, -0.1, 0.1), (1000, -0.1, 0.1), (3400, -0.2, 0.1)])
def test_downsampling_passes_the_telephone_band(freq: float, low: float, high: float) -> None:
    y = downsample(_tone(freq, 24_000, 1.0))[100:]  # past the filter's start-up
    assert low <= _level_db(y) <= high


@pytest.mark.parametrize("freq", [4000, 5000, 7000, 11_000])
def test_downsampling_removes_what_would_alias(freq: float) -> None:
    y = downsample(_tone(freq, 24_000, 1.0))[100:]
    assert _level_db(y) <= -55


def test_upsampling_keeps_the_tone_and_suppresses_images() -> None:
    y = upsample(_tone(1000, 8000, 1.0))[300:]
    assert -0.1 <= _level_db(y) <= 0.1
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / 24_000)
    assert 20 * math.log10(spectrum[freqs > 4500].max() / spectrum.max()) <= -60  # images at 7, 9, 15, 17 kHz


def test_round_trip_is_the_tone_delayed_by_the_filters() -> None:
    x = _tone(1000, 24_000, 0.5)
    y = upsample(downsample(x))
    delay = round(2 * DELAY_24K)  # two passes of the linear-phase filter: 143 samples, 6 ms
    assert len(y) == len(x)
    diff = y[delay + 200 :].astype(int) - x[200 : len(x) - delay].astype(int)
    assert np.abs(diff).max() <= 60  # 0.6 % of the amplitude: the ends of the passband ripple


def test_downsampler_is_the_fir_and_saturates_full_scale_overshoot() -> None:
    square = np.tile(np.r_[np.full(30, 32767), np.full(30, -32768)], 20).astype(np.int16)
    reference = np.convolve(square.astype(np.float64), LOWPASS)[: len(square)][::3]
    assert reference.max() > 32767.5  # the Gibbs overshoot is there, so the clip is exercised
    expected = np.clip(np.rint(reference), -32768, 32767)
    assert np.abs(downsample(square).astype(np.float64) - expected).max() <= 1


# --- the session seams -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("law", LAWS)
def test_telephony_codec_streams_with_exact_counts(law: g711.Law) -> None:
    x = _tone(800, 24_000, 0.3)
    enc = TelephonyEncoder(law)
    out = b"".join(enc.process(c) for c in np.array_split(x, 17))
    assert len(out) == math.ceil(len(x) / 3)
    dec = TelephonyDecoder(law)
    back = np.concatenate([dec.process(out[i : i + 160]) for i in range(0, len(out), 160)])
    assert len(back) == 3 * len(out)
    delay = round(2 * DELAY_24K)
    err = back[delay + 200 :].astype(int) - x[200 : len(x) - delay].astype(int)
    assert np.sqrt(np.mean(err.astype(float) ** 2)) < 0.03 * 10_000 / math.sqrt(2)  # G.711 SNR is ~35 dB


# --- base64 pcm16 ----------------------------------------------------------------------------------------------


def test_pcm16_round_trip_is_little_endian_and_exact() -> None:
    samples = np.array([0, 1, -1, 32767, -32768, 256], dtype=np.int16)
    data = pcm16_to_b64(samples)
    assert base64.b64decode(data) == b"\x00\x00\x01\x00\xff\xff\xff\x7f\x00\x80\x00\x01"
    assert pcm16_from_b64(data).tolist() == samples.tolist()


def test_odd_byte_count_is_a_clear_400() -> None:
    with pytest.raises(APIError) as info:
        pcm16_from_b64(base64.b64encode(b"\x00\x01\x02").decode())
    err = info.value
    assert (err.status, err.code, err.param) == (400, "invalid_value", "audio")
    assert "3 bytes" in err.message and "even" in err.message
    with pytest.raises(APIError):
        pcm16_from_bytes(b"\x00", param="item.content[0].audio")


@pytest.mark.parametrize("bad", ["not base64!", "AAA", "AA\nAA==", "ÿÿÿÿ"])
def test_invalid_base64_is_a_clear_400(bad: str) -> None:
    with pytest.raises(APIError) as info:
        b64decode_audio(bad, param="audio")
    assert (info.value.status, info.value.code, info.value.param) == (400, "invalid_value", "audio")
    assert "base64" in info.value.message


def test_empty_audio_is_zero_samples() -> None:
    assert pcm16_from_b64("").tolist() == []
