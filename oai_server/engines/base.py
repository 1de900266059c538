"""The engine seam: one `typing.Protocol` for a token-streaming LLM engine.

Both models (Gemma for chat, Orpheus for speech) sit behind the same seam. It is shaped after
vLLM's `AsyncLLM`: token ids go in, token-id deltas come out, and a request is aborted by id.
Cancelling the consumer of `generate` (closing the async generator, or cancelling the task
that iterates it) must abort the request inside the engine; `abort` does the same by id.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """Engine-neutral sampling parameters; each engine maps them onto its own."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0
    """No stop token (of ``stop_token_ids``, and `END_OF_SPEECH` under ``orpheus_audio_slots``) is sampled
    before this many tokens are generated."""
    orpheus_audio_slots: bool = False
    """Constrain sampling to the Orpheus audio band of each position (see `pipeline.orpheus`)."""
    orpheus_band_sampling: bool = True
    """Under ``orpheus_audio_slots``, an engine that can may apply top-k/top-p over the position's band only
    (the same ids survive); False leaves them to its sampler over the whole vocabulary (a bench baseline)."""
    orpheus_band_draw: bool = False
    """With ``orpheus_band_sampling``, also draw the token over the band (vLLM then takes its greedy path). Off:
    on an H200 (random weights, bench/results/h200_s17_random_weights) the draw in the band lost throughput at
    256 streams against the filter alone, so it stays a measured option of the bench (`raw_band_draw`)."""


@dataclass(frozen=True)
class EngineInfo:
    """What `/health` and `/metrics` report about an engine."""

    kind: str
    model: str
    max_model_len: int
    details: dict[str, object] = field(default_factory=dict)


class EngineError(RuntimeError):
    """An engine failed to serve a request (raised by `generate`)."""


class EngineOverloadedError(EngineError):
    """The engine has no capacity left for a new request."""


@runtime_checkable
class TokenEngine(Protocol):
    """A token-streaming LLM engine.

    `generate` yields lists of newly generated token ids (deltas; several ids may arrive at
    once) until a stop token (not yielded) or `max_tokens`. Inference never runs on the
    event loop. Abandoning the iterator aborts the request in the engine.
    """

    info: EngineInfo

    def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        """Stream token-id deltas for one request; `request_id` must be unique."""
        ...

    async def abort(self, request_id: str) -> None:
        """Abort an in-flight request by id; unknown ids are ignored."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve (used by `/health/ready`)."""
        ...

    def active_requests(self) -> int:
        """How many requests are in flight inside the engine right now."""
        ...

    async def close(self) -> None:
        """Abort everything in flight and release the engine's resources."""
        ...


def new_request_id(prefix: str) -> str:
    """A request id unique across requests, processes and restarts (unlike Canopy's `req-001`)."""
    return f"{prefix}-{uuid.uuid4().hex}"
