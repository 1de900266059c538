"""`oai-server serve [--host --port --demo ...]`: every setting is also a flag.

Flags are generated from `Settings` (a field `tts_max_model_len` is `--tts-max-model-len`), so
`--help` lists every setting with its documentation. Flags override the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any

from .settings import Settings

_REPEATABLE = {"api_keys": "--api-key", "voices": "--voice", "cors_origins": "--cors-origin"}


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_list(typing.get_args(annotation)[0])
    return origin is list


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser, one flag per setting."""
    parser = argparse.ArgumentParser(prog="oai-server", description="OpenAI-compatible voice-assistant server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="Run the HTTP server.")
    for name, field in Settings.model_fields.items():
        help_text = (field.description or "").replace("%", "%%")
        if name in _REPEATABLE:
            serve.add_argument(_REPEATABLE[name], dest=name, action="append", help=f"{help_text} (repeatable)")
        elif _is_bool(field.annotation):
            serve.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif _is_list(field.annotation):
            serve.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"{help_text} (comma-separated)")
        else:
            serve.add_argument(f"--{name.replace('_', '-')}", dest=name, help=help_text)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    overrides = {
        name: value for name, value in vars(args).items() if name in Settings.model_fields and value is not None
    }
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `oai-server` command."""
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    import uvicorn

    from .app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_drain_seconds) + 5,
    )
