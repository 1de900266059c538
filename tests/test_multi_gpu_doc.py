"""The multi-GPU and multi-host recipes stay true to today's settings: every `oai-server serve` flag in
docs/multi_gpu.md is a setting, every layout it names exists, and every variable the Kubernetes ConfigMaps
set is one the server reads."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from oai_server.cli import build_parser
from oai_server.engines.layout import WORKLOADS
from oai_server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "multi_gpu.md"
NOT_SETTINGS = {"HF_HOME", "HF_TOKEN"}
"""Variables the ConfigMaps set for libraries, not for the server."""


def serve_flags() -> set[str]:
    """Every flag `oai-server serve` accepts, from the real parser."""
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return {flag for action in commands.choices["serve"]._actions for flag in action.option_strings}


def serve_commands(text: str) -> list[str]:
    """Every `oai-server serve ...` command of the document, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [m.group(0) for m in re.finditer(r"oai-server serve[^\n&|`]*", joined)]


def test_every_serve_flag_in_the_recipes_is_a_setting() -> None:
    commands = serve_commands(DOC.read_text())
    assert len(commands) >= 3
    known = serve_flags()
    for command in commands:
        flags = re.findall(r"(?<!\S)(--[a-z0-9-]+)", command)
        unknown = [flag for flag in flags if flag not in known]
        assert not unknown, f"{command!r} uses {unknown}"
    assert "--asr-remote-url" in " ".join(commands)


def test_the_layouts_the_doc_names_exist() -> None:
    text = DOC.read_text()
    named = set(re.findall(r"PLACEMENT=(\w+)", text)) | set(re.findall(r"`--placement`?\s*`?(\w+)", text))
    assert named and named <= set(WORKLOADS), named - set(WORKLOADS)
    assert set(re.findall(r"\| `(\w+)`(?: \(default\))?, `(\w+)` \|", text)[0]) <= set(WORKLOADS)


def test_configmaps_set_only_variables_the_server_reads() -> None:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names.update(str(choice).upper() for choice in getattr(alias, "choices", []))
    docs = [
        doc for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
    ]
    env_maps = {
        source["configMapRef"]["name"]
        for doc in docs
        if doc and doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
        for source in container.get("envFrom", [])
        if "configMapRef" in source
    }
    assert env_maps >= {"oai-server-config", "oai-server-remote-config"}
    for doc in docs:
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] in env_maps:
            unknown = [key for key in doc["data"] if key not in names and key not in NOT_SETTINGS]
            assert not unknown, f"{doc['metadata']['name']}: {unknown}"
    remote = (ROOT / "deploy" / "k8s" / "remote-engines.yaml").read_text()
    assert "OAI_SERVER_ASR_REMOTE_URL" in remote
