"""`oai-server serve [--host --port --demo ...]`: every setting is also a flag.

Flags are generated from `Settings` (a field `tts_max_model_len` is `--tts-max-model-len`), so
`--help` lists every setting with its documentation. Flags override the environment.

Shutdown (SIGTERM or SIGINT), by `DrainingServer`: admission starts draining at once (a request
that still reaches the app gets 503 `shutting_down`, `/health/ready` says `draining`), the
listening socket closes (new connections are refused), in-flight streams may finish for
`--shutdown-drain-seconds`, then the ones left are cancelled, which aborts their engine
requests; the lifespan closes the engines and the process exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import socket
import sys
import threading
import typing
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from .settings import Settings

logger = logging.getLogger(__name__)

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


class DrainingServer(uvicorn.Server):
    """uvicorn's server with this app's graceful shutdown (see the module docstring).

    uvicorn already stops listening, lets open responses finish for `timeout_graceful_shutdown`
    and then cancels them; this adds the drain flag the moment shutdown starts (uvicorn alone
    would reach the lifespan, and so the admission, only after every stream is over) and exits
    normally once the shutdown is complete (uvicorn re-raises the signal, so the exit status
    would say "killed" after a clean drain).
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop admitting, then uvicorn's drain: close listeners, wait, cancel what is left, lifespan."""
        services = getattr(getattr(self.config.app, "state", None), "services", None)
        if services is not None:
            services.admission.drain()
            if services.admission.active:
                logger.info(
                    "shutdown: %d streams in flight, draining for up to %s s",
                    services.admission.active,
                    self.config.timeout_graceful_shutdown,
                )
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT start the shutdown; the previous handlers come back after it."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signals can only be handled on the main thread
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(settings: Settings) -> None:
    """Run the app until SIGTERM/SIGINT, then drain; exits 3 if the server could not start."""
    from . import runtime_limits
    from .app import create_app

    runtime_limits.prepare_process(settings)  # issue 20: fd limit, malloc arenas
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=math.ceil(settings.shutdown_drain_seconds),
        **runtime_limits.uvicorn_options(settings, app),  # issue 20: guarded protocols, header limits
    )
    server = DrainingServer(config)
    server.run()
    if not server.started:
        sys.exit(3)  # as `uvicorn.run` does when startup fails


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `oai-server` command."""
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    serve(settings)
