"""Every setting as a user meets it: its flags, environment names, default and meaning.

One description per setting (`Settings`' field docstrings) feeds both `oai-server serve --help`
and `oai-server settings`, the Markdown table that the README carries verbatim (a test compares
them), so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import textwrap
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from .settings import Settings

SINGULAR_FLAGS = {"api_keys": "--api-key", "voices": "--voice", "cors_origins": "--cors-origin"}
"""List settings whose flag also has a singular spelling (`--voice tara --voice leo`)."""

SECTIONS = {
    "host": "serving",
    "llm_model_name": "chat model (Gemma)",
    "tts_model_name": "speech model (Orpheus)",
    "snac_model_name": "SNAC decoder",
    "llm_gpus": "placement (several GPUs; defaults keep one GPU)",
    "audio_ttl_seconds": "chat audio",
    "dtype": "engines",
    "api_keys": "limits and security",
}
"""The first setting of each group of `serve --help`."""

DEFAULT_TEXT = {"system_prompt": "a short voice-style prompt (oai_server/settings)"}
"""Defaults too long to print."""


@dataclass(frozen=True)
class SettingDoc:
    """How one setting is given and what it means."""

    name: str
    flags: tuple[str, ...]
    env: tuple[str, ...]
    default: str
    meaning: str


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help layout, without breaking words at hyphens (flags, paths and model ids stay whole)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("oai-server")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def flag_name(name: str) -> str:
    """The flag of a setting: `tts_max_model_len` -> `--tts-max-model-len`."""
    return f"--{name.replace('_', '-')}"


def is_bool(field: FieldInfo) -> bool:
    """Whether the setting is a switch."""
    return field.annotation is bool


def is_list(field: FieldInfo) -> bool:
    """Whether the setting holds a list (comma-separated values)."""
    annotation: Any = field.annotation
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_origin(annotation) is list


def _metavar(field: FieldInfo) -> str:
    """What the flag takes: its choices, or the kind of value (never a name that looks like a variable)."""
    annotation: Any = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return "{" + ",".join(str(choice) for choice in typing.get_args(annotation)) + "}"
    kinds = {int, float, Path}
    found = [arg for arg in (annotation, *typing.get_args(annotation)) if arg in kinds]
    return {int: "N", float: "X", Path: "PATH"}.get(found[0], "TEXT") if found else "TEXT"


def env_names(field: FieldInfo) -> tuple[str, ...]:
    """The environment variables a setting is read from, `OAI_SERVER_*` first."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (str(alias),) if isinstance(alias, str) else ()


def default_text(name: str, field: FieldInfo) -> str:
    """The default as a user would type it."""
    if name in DEFAULT_TEXT:
        return DEFAULT_TEXT[name]
    value = field.get_default(call_default_factory=True)
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        home = Path.home()
        return f"~/{value.relative_to(home)}" if value.is_relative_to(home) else str(value)
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def _meaning(field: FieldInfo) -> str:
    return " ".join((field.description or "").split())


def setting_docs() -> Iterator[SettingDoc]:
    """Every setting, in the order of `Settings`."""
    for name, field in Settings.model_fields.items():
        flags: tuple[str, ...] = (flag_name(name),)
        if is_bool(field):
            flags = (flag_name(name), f"--no-{name.replace('_', '-')}")
        elif name in SINGULAR_FLAGS:
            flags = (flag_name(name), SINGULAR_FLAGS[name])
        yield SettingDoc(name, flags, env_names(field), default_text(name, field), _meaning(field))


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (lists: comma-separated and repeatable), grouped, with env names and defaults."""
    parser.usage = f"{parser.prog} [--flag VALUE ...]"
    parser.description = (parser.description or "") + (
        "\nList settings take comma-separated values, and their flags repeat (--voice a --voice b)."
    )
    group: Any = parser
    fields = Settings.model_fields
    for doc in setting_docs():
        field = fields[doc.name]
        if doc.name in SECTIONS:
            group = parser.add_argument_group(SECTIONS[doc.name])
        env = ", ".join(doc.env)
        help_text = f"{doc.meaning} [env: {env}; default: {doc.default}]".replace("%", "%%")
        if is_bool(field):
            group.add_argument(
                doc.flags[0], dest=doc.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif is_list(field):
            group.add_argument(*doc.flags, dest=doc.name, action="append", metavar="A,B", help=help_text)
        else:
            group.add_argument(doc.flags[0], dest=doc.name, metavar=_metavar(field), help=help_text)


def split_list_values(overrides: dict[str, Any]) -> dict[str, Any]:
    """Repeated list flags, each possibly comma-separated, as one flat list per setting."""
    fields = Settings.model_fields
    out = dict(overrides)
    for name, value in overrides.items():
        if is_list(fields[name]) and isinstance(value, list):
            out[name] = [item.strip() for raw in value for item in str(raw).split(",") if item.strip()]
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_table() -> str:
    """The Markdown table of every setting (the README's Settings section holds exactly this)."""
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for doc in setting_docs():
        flags = " / ".join(f"`{flag}`" for flag in doc.flags)
        env = " / ".join(f"`{name}`" for name in doc.env)
        default = f"`{doc.default}`" if doc.name not in DEFAULT_TEXT else doc.default
        lines.append(f"| {flags} | {env} | {_cell(default)} | {_cell(doc.meaning)} |")
    return "\n".join(lines)
