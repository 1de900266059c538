"""The engine bundle: every model role a server runs, built once and closed together.

A role is one model behind its engine seam (`llm`: Gemma on a `TokenEngine`; `tts`: Orpheus on a
`TokenEngine` with its SNAC decoder). `roles()` lists them by name, so health checks, metrics and
shutdown cover a new role without being edited: adding a model role means a field here, its
settings, and its builder in `factory.py`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from ..codec.snac_stream import SnacDecoding
from .asr import SpeechRecognizer
from .base import EngineInfo, TokenEngine
from .vad_stream import StreamingVad


class RoleEngine(Protocol):
    """What every role's engine offers, whatever its seam: identity, health, load, shutdown."""

    info: EngineInfo

    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""
        ...

    def active_requests(self) -> int:
        """Requests in flight inside the engine."""
        ...

    async def close(self) -> None:
        """Abort everything in flight and release the engine."""
        ...


@dataclass
class Engines:
    """Everything the pipelines need from the model side."""

    llm: TokenEngine
    llm_tokenizer: Any
    llm_stop_token_ids: tuple[int, ...]
    tts: TokenEngine
    tts_tokenizer: Any
    snac: SnacDecoding
    asr: SpeechRecognizer | None = None
    """Speech recognition (None when disabled with `--no-asr`)."""
    vad: StreamingVad | None = None
    """Voice activity detection for turn taking and for cutting long audio (with the ASR role)."""

    def roles(self) -> dict[str, RoleEngine]:
        """Each model role's engine by name (`llm`, `tts`, `asr`)."""
        roles: dict[str, RoleEngine] = {"llm": self.llm, "tts": self.tts}
        if self.asr is not None:
            roles["asr"] = self.asr
        return roles

    async def close(self) -> None:
        """Abort everything and release the engines."""
        await asyncio.gather(*(engine.close() for engine in self.roles().values()), return_exceptions=True)
        if self.vad is not None:
            await self.vad.close()
        await asyncio.to_thread(self.snac.close)
