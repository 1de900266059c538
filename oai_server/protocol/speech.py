"""The events of `/v1/audio/speech` with `stream_format: "sse"` (OpenAI's `CreateSpeechResponseStreamEvent`).

Each event goes out as `event: <type>` + `data: <json>`: `speech.audio.delta` pieces (base64 that
concatenates to the whole file; every piece holds whole 16-bit samples for pcm and wav), then one
`speech.audio.done` with the usage. There is no `[DONE]`.
"""

from __future__ import annotations

from typing import Literal

from .wire import WireModel


class SpeechAudioDelta(WireModel):
    """The next piece of the audio, base64."""

    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str


class SpeechUsage(WireModel):
    """Tokens of the request: the Orpheus prompt and the audio tokens generated."""

    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDone(WireModel):
    """All audio was sent."""

    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int) -> SpeechAudioDone:
        """The final event of a request that used these tokens."""
        usage = SpeechUsage(
            input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens
        )
        return cls(usage=usage)


SpeechStreamEvent = SpeechAudioDelta | SpeechAudioDone
