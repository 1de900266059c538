"""Chat content parts beyond text: ``input_audio`` (a spoken user message).

``{"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav" | "mp3"}}``, as the
openai SDK types it (`ChatCompletionContentPartInputAudioParam`): only wav and mp3 are allowed.
A message's part type (`chat.ContentPart`) is a union tagged by `part_kind`: a part whose
``type`` is ``input_audio`` is read as `InputAudioPart` (`InputAudioPart.check` then gives a
missing ``data`` or another format a 400 naming exactly that field); every other part stays a
text part, whose ``type`` the message's ``text()`` checks. The audio is transcribed in
`serving.chat`, and the transcript stands for the part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import invalid

INPUT_AUDIO_FORMATS = ("wav", "mp3")


class InputAudio(BaseModel):
    """``input_audio`` of a part: base64 audio and its format (checked by `InputAudioPart.check`)."""

    model_config = ConfigDict(extra="ignore")

    data: str | None = None
    format: str | None = None


class InputAudioPart(BaseModel):
    """A ``{"type": "input_audio", "input_audio": {...}}`` content part."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["input_audio"]
    input_audio: InputAudio = Field(default_factory=InputAudio)

    def check(self, param: str) -> str:
        """The base64 data; 400s naming ``param`` + ``.input_audio.data`` / ``.format`` when missing or wrong.

        (Checked here rather than by the union's validation, whose error locations name union branches.)
        """
        audio = self.input_audio
        if audio.format is None:
            raise invalid(
                f"Missing required parameter: '{param}.input_audio.format'.",
                f"{param}.input_audio.format",
                "missing_required_parameter",
            )
        if audio.format not in INPUT_AUDIO_FORMATS:
            raise invalid(
                f"Invalid value: '{audio.format}'. Supported values are: 'wav' and 'mp3'.",
                f"{param}.input_audio.format",
                "invalid_value",
            )
        if not audio.data:
            raise invalid(
                f"Missing required parameter: '{param}.input_audio.data'.",
                f"{param}.input_audio.data",
                "missing_required_parameter",
            )
        return audio.data


def part_kind(value: Any) -> str:
    """The tag of a content part for the message's discriminated union: ``input_audio`` or ``other``."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "input_audio" if kind == "input_audio" else "other"


def audio_parts(content: str | Sequence[object] | None) -> list[tuple[int, InputAudioPart]]:
    """The ``input_audio`` parts of a message's content, with their indices."""
    if content is None or isinstance(content, str):
        return []
    return [(index, part) for index, part in enumerate(content) if isinstance(part, InputAudioPart)]
