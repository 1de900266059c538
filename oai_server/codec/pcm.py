"""Base64 audio of the Realtime API: `input_audio_buffer.append` in, `response.output_audio.delta` out.

Decoding is strict (RFC 4648 alphabet and padding; whitespace is refused too) and raises the
OpenAI 400 `invalid_value` envelope naming the parameter, so a session can turn it into an
`error` event: bad base64, and for pcm16 an odd byte count (a sample is two bytes), are the
client's mistakes, never a crash.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from oai_server.errors import invalid

from .resample import Int16Array


def b64decode_audio(data: str, param: str = "audio") -> bytes:
    """The bytes of a base64 audio field; `invalid_value` naming `param` if it is not base64."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"Invalid value for '{param}': not valid base64.", param, "invalid_value") from None


def pcm16_from_bytes(raw: bytes, param: str = "audio") -> Int16Array:
    """Little-endian 16-bit samples; an odd byte count is an `invalid_value` error naming `param`."""
    if len(raw) % 2:
        raise invalid(
            f"Invalid value for '{param}': {len(raw)} bytes is not a whole number of 16-bit PCM samples "
            "(the byte count must be even).",
            param,
            "invalid_value",
        )
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def pcm16_from_b64(data: str, param: str = "audio") -> Int16Array:
    """Base64 pcm16 (`audio/pcm`, 24 kHz) → int16 samples, with the two checks above."""
    return pcm16_from_bytes(b64decode_audio(data, param), param)


def pcm16_to_b64(samples: Int16Array) -> str:
    """int16 samples → base64 little-endian pcm16."""
    return base64.b64encode(np.asarray(samples, dtype="<i2").tobytes()).decode("ascii")
