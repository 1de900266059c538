"""Which speech-recognition engine the settings build, per backend (the vLLM one is built on the GPU only)."""

from __future__ import annotations

import logging

import pytest

from oai_server.engines.asr_factory import build_asr, build_vad
from oai_server.engines.asr_remote import RemoteTranscriber
from oai_server.settings import Settings

REMOTE = {"engine": "remote", "llm_remote_url": "http://llm:8000", "tts_remote_url": "http://tts:8000"}


async def test_asr_off_builds_nothing() -> None:
    assert await build_asr(Settings(asr=False), "transformers") is None
    assert await build_vad(None) is None


async def test_remote_asr_needs_its_upstream(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="oai_server.engines.asr_factory"):
        assert await build_asr(Settings(**REMOTE), "remote") is None
    assert "speech recognition is off" in caplog.text
    engine = await build_asr(
        Settings(**REMOTE, asr_remote_url="http://whisper:8000", asr_remote_model="whisper-v3", remote_api_key="k"),
        "remote",
    )
    try:
        assert isinstance(engine, RemoteTranscriber)
        assert engine.config.base_url == "http://whisper:8000" and engine.config.model == "whisper-v3"
        assert engine.config.api_key == "k" and engine.active_requests() == 0
    finally:
        assert engine is not None
        await engine.close()
