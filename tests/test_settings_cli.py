"""Settings from the environment (our names and the seed's), the CLI flags, `--help`, and the README's table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from oai_server.cli import build_parser, settings_from_args
from oai_server.cli_help import settings_table
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


def oai_server(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m oai_server ...` (the same as the `oai-server` command)."""
    return subprocess.run([sys.executable, "-m", "oai_server", *args], capture_output=True, text=True, timeout=60)


def readme_table() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- settings-table -->\n(.*?)\n<!-- /settings-table -->", readme, re.S)
    assert found, "README.md has no <!-- settings-table --> block"
    return found.group(1)


def readme_rows() -> list[tuple[list[str], list[str], str]]:
    """(flags, environment names, default) of every row of the README's settings table."""
    rows = []
    for line in readme_table().splitlines()[2:]:
        flags, env, default, _ = (cell.strip() for cell in line.strip("|").split(" | "))
        rows.append((re.findall(r"`([^`]+)`", flags), re.findall(r"`([^`]+)`", env), default.strip("`")))
    return rows


def test_readme_settings_table_is_the_generated_one() -> None:
    """The README's table is `oai-server settings`, byte for byte (regenerate it when a setting changes)."""
    assert readme_table() == settings_table()
    assert oai_server("settings").stdout.strip() == settings_table()


def probe(default: str) -> str:
    """A valid value for a setting whose README default is `default` ("none": any short string is valid)."""
    return "1" if default == "none" else default


def test_every_readme_flag_parses_and_every_environment_name_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each flag of the README's table is accepted by `serve`, and each environment name it lists is read."""
    rows = readme_rows()
    assert len(rows) == len(Settings.model_fields)
    every_env_name = {env for _, env_names, _ in rows for env in env_names}
    parser = build_parser()
    for flags, env_names, default in rows:
        for flag in flags:
            argv = ["serve", flag] if default in ("true", "false") else ["serve", flag, probe(default)]
            given = {name for name, value in vars(parser.parse_args(argv)).items() if value is not None}
            assert len(given - {"command"}) == 1, (flag, given)
            assert given - {"command"} <= settings_from_args(parser.parse_args(argv)).model_fields_set
        for env in env_names:
            with monkeypatch.context() as env_patch:
                for name in every_env_name:  # the test session sets some (e.g. the cache dir): start clean
                    env_patch.delenv(name, raising=False)
                env_patch.setenv(env, probe(default))
                read = Settings().model_fields_set
            assert len(read) == 1, f"{env} is not read ({read})"


def test_list_flags_repeat_and_take_commas() -> None:
    """`--voice a --voice b`, `--voices a,b` and a mix give the same list."""
    parser = build_parser()
    for argv in (["--voice", "tara", "--voice", "leo"], ["--voices", "tara,leo"], ["--voices", "tara", "--voice=leo"]):
        settings = settings_from_args(parser.parse_args(["serve", *argv, "--default-voice", "leo"]))
        assert settings.voices == ["tara", "leo"]


def test_plain_field_names_are_not_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray `HOST`, `DEVICE` or `ENGINE` in the environment does not configure the server."""
    monkeypatch.setenv("HOST", "10.9.8.7")
    monkeypatch.setenv("DEVICE", "cuda")
    monkeypatch.setenv("ENGINE", "vllm")
    settings = Settings()
    assert (settings.host, settings.device, settings.engine) == ("0.0.0.0", "auto", "auto")


def test_serve_help_shows_flag_environment_and_default_of_every_setting() -> None:
    out = " ".join(oai_server("serve", "--help").stdout.split())
    for flags, env_names, default in readme_rows():
        assert all(flag in out for flag in flags), flags
        assert f"[env: {', '.join(env_names)}; default: {default}]" in out, env_names
    assert "--port N Port to bind (seed: PORT). [env: OAI_SERVER_PORT, PORT; default: 8080]" in out
    assert "--engine {auto,vllm,transformers,remote}" in out


def test_bare_command_lists_the_commands_and_version_prints_it() -> None:
    bare = oai_server()
    assert bare.returncode == 0 and bare.stderr == ""
    assert "serve" in bare.stdout and "settings" in bare.stdout and "Run the HTTP server." in bare.stdout
    version = oai_server("--version")
    assert version.returncode == 0 and re.fullmatch(r"oai-server \d+\.\d+\.\d+\S*\n", version.stdout)


def test_readme_says_what_ci_installs() -> None:
    """The README's install line for running exactly what CI runs names every tool `.ci/run` installs."""
    import re

    ci = (ROOT / ".ci" / "run").read_text()
    tools = re.search(r"^TOOLS=\(([^)]*)\)", ci, re.M)
    assert tools is not None
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"sudo apt-get update && sudo apt-get install -y ([^\n`]+)", readme)
    assert line is not None, "the README has no apt line for CI's tools"
    assert set(line.group(1).split()) == set(tools.group(1).split())
    for tool in tools.group(1).split():
        assert tool in readme.split("What CI does")[1].split("```")[0], tool


def test_by_default_the_engines_take_every_admitted_request_at_once() -> None:
    """Past their max_num_seqs, admitted requests would wait inside vLLM for a stream to end, where neither the
    queue timeout nor a 429 reaches them: by default the engines hold as many as the server admits."""
    settings = Settings()
    assert settings.tts_max_num_seqs >= settings.max_concurrent_streams
    assert settings.llm_max_num_seqs >= settings.max_concurrent_streams
