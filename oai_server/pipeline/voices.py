"""Voice names: the configured Orpheus voices and the OpenAI voice aliases.

OpenAI clients (Pipecat, LiveKit, the SDK's typed literals) only send OpenAI's 13 voice names,
so each maps to an Orpheus voice:

| OpenAI | Orpheus | | OpenAI | Orpheus |
|---|---|---|---|---|
| alloy | tara | | nova | mia |
| ash | dan | | onyx | leo |
| ballad | leo | | sage | zoe |
| coral | jess | | shimmer | leah |
| echo | zac | | verse | dan |
| fable | julia | | marin | tara |
| cedar | zac | | | |

An alias whose Orpheus voice is not configured falls back to the default voice. Any other
unknown name is a 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import invalid
from .speech import VoiceOptions

OPENAI_VOICE_ALIASES: dict[str, str] = {
    "alloy": "tara",
    "ash": "dan",
    "ballad": "leo",
    "coral": "jess",
    "echo": "zac",
    "fable": "julia",
    "nova": "mia",
    "onyx": "leo",
    "sage": "zoe",
    "shimmer": "leah",
    "verse": "dan",
    "marin": "tara",
    "cedar": "zac",
}


def resolve_voice(requested: str | None, voices: Sequence[str], default: str, param: str = "voice") -> str:
    """The Orpheus voice for a requested name (case-insensitive); 400 for unknown names."""
    if requested is None or not requested.strip():
        return default
    name = requested.strip().lower()
    if name in voices:
        return name
    alias = OPENAI_VOICE_ALIASES.get(name)
    if alias is not None:
        return alias if alias in voices else default
    offered = ", ".join([*voices, *OPENAI_VOICE_ALIASES])
    raise invalid(f"Unknown voice '{requested}'. Supported voices are: {offered}.", param, "invalid_value")


@dataclass(frozen=True)
class VoiceCatalog:
    """The configured voices and the server's Orpheus sampling defaults: voice names -> `VoiceOptions`."""

    voices: tuple[str, ...]
    default: str
    temperature: float
    top_p: float
    repetition_penalty: float

    def options(
        self,
        voice: str | None,
        *,
        param: str = "voice",
        temperature: float | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
    ) -> VoiceOptions:
        """Sampling options for a voice name (400 naming `param` if unknown), defaults for what is not given."""
        return VoiceOptions(
            voice=resolve_voice(voice, self.voices, self.default, param),
            temperature=self.temperature if temperature is None else temperature,
            top_p=self.top_p if top_p is None else top_p,
            repetition_penalty=self.repetition_penalty if repetition_penalty is None else repetition_penalty,
            seed=seed,
            max_tokens=max_tokens,
        )
