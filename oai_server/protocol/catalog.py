"""What the server says about its models: `/v1/models` (OpenAI's `ListModelsResponse`, `Model`) and the
seed system's `/models` (its own shape, with license fields)."""

from __future__ import annotations

from typing import Literal

from pydantic import MISSING

from .wire import WireModel


class ModelCard(WireModel):
    """One model id the server answers to (https://platform.openai.com/docs/api-reference/models/object)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    """When the server started (Unix seconds)."""
    owned_by: str


class ModelList(WireModel):
    """`GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class SeedModelInfo(WireModel):
    """One model in the seed's `/models`."""

    name: str
    id: str
    """The id clients use for it."""
    provider: str
    parameters: str
    license: str
    license_url: str
    capabilities: list[str]
    voices: list[str] | MISSING = MISSING
    """Speech only: the voices offered."""
    loaded: bool


class SeedModels(WireModel):
    """`GET /models`: the seed's model description, plus whether these are the demo profile's models."""

    llm: SeedModelInfo
    tts: SeedModelInfo
    demo: bool
    """Not in the seed: true in the demo profile (tiny random-weight models: gibberish text, noise speech)."""
    note: str | MISSING = MISSING
    """Not in the seed: what to expect from these models, when it is not the obvious."""
