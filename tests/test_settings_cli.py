"""Settings from the environment (our names and the seed's), the CLI flags, and the README's settings table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from oai_server.cli import build_parser, settings_from_args
from oai_server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_seed_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    seed = {
        "LLM_MODEL_NAME": "my/llm",
        "LLM_MAX_MODEL_LEN": "1024",
        "LLM_GPU_MEMORY_UTILIZATION": "0.2",
        "TTS_MODEL_NAME": "my/tts",
        "TTS_MAX_MODEL_LEN": "4096",
        "TTS_GPU_MEMORY_UTILIZATION": "0.4",
        "PORT": "9999",
        "SNAC_DEVICE": "cuda:1",
    }
    for key, value in seed.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert (s.llm_model_name, s.llm_max_model_len, s.llm_gpu_memory_utilization) == ("my/llm", 1024, 0.2)
    assert (s.tts_model_name, s.tts_max_model_len, s.tts_gpu_memory_utilization) == ("my/tts", 4096, 0.4)
    assert (s.port, s.snac_device) == (9999, "cuda:1")


def test_prefixed_names_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAI_SERVER_VOICES", "tara, leo")
    monkeypatch.setenv("OAI_SERVER_API_KEYS", "k1,k2")
    monkeypatch.setenv("OAI_SERVER_DEFAULT_VOICE", "leo")
    s = Settings()
    assert s.voices == ["tara", "leo"] and s.all_api_keys() == ["k1", "k2"]


def test_invalid_settings_fail_early() -> None:
    with pytest.raises(ValidationError):
        Settings(default_voice="nobody")
    with pytest.raises(ValidationError):
        Settings(engine="remote")
    with pytest.raises(ValidationError):
        Settings(tts_gpu_memory_utilization=1.5)


def test_cli_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "1234")
    args = build_parser().parse_args(
        ["serve", "--port", "4321", "--demo", "--api-key", "a", "--api-key", "b", "--tts-max-model-len", "1000"]
    )
    s = settings_from_args(args)
    assert (s.port, s.demo, s.tts_max_model_len, s.all_api_keys()) == (4321, True, 1000, ["a", "b"])
    assert settings_from_args(build_parser().parse_args(["serve"])).port == 1234


def test_python_dash_m_is_the_same_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "oai_server", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--tts-gpu-memory-utilization" in out and "--demo" in out


def test_readme_documents_every_setting_and_ci_runs_its_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`--{name.replace('_', '-')}`" not in readme]
    assert not missing, f"settings missing from README: {missing}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and "<!-- test-command -->" in readme
