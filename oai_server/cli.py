"""The `oai-server` command: `serve` runs the server, `settings` prints every setting.

Flags are generated from `Settings` (a field `tts_max_model_len` is `--tts-max-model-len`), so
`serve --help` lists every setting with its flag, environment names, default and meaning, and
`oai-server settings` prints the same as the Markdown table in the README (a test keeps the two
equal). Flags override the environment. List settings take comma-separated values, and their
flags repeat (`--voice tara --voice leo` is `--voices tara,leo`).

Start-up failures are one line on stderr (what failed, why, what to do) and a non-zero exit:
2 for a setting that cannot work (a bad value, `--engine vllm` without vLLM or a GPU), checked
before anything loads; 3 when the server could not start (the port is taken, a model cannot be
loaded). `--log-level debug` adds the traceback.

Several cards (`--placement replicated`, auto's choice on 2+): this process supervises one replica of
itself per card on the one port (`replicas.py`); each replica runs everything below on its card.

Shutdown (SIGTERM or SIGINT), by `DrainingServer`: admission starts draining at once (a request
that still reaches the app gets 503 `shutting_down`, `/health/ready` says `draining`), the
listening socket closes (new connections are refused), in-flight streams may finish for
`--shutdown-drain-seconds`, then the ones left are cancelled, which aborts their engine
requests; the lifespan closes the engines and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import math
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import uvicorn
from pydantic import ValidationError
from uvicorn.server import HANDLED_SIGNALS

from .cli_help import HelpFormatter, add_setting_flags, flag_name, settings_table, split_list_values, version
from .settings import Settings
from .startup import BAD_SETTING, StartupError, bind_socket, loopback_url

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from .handoff import HandedConnections

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser: the commands, and one flag per setting for `serve`."""
    parser = argparse.ArgumentParser(
        prog="oai-server",
        description="OpenAI-compatible voice-assistant server (Gemma 2 chat + Orpheus TTS).",
        epilog="Try it offline: oai-server serve --demo, then open http://127.0.0.1:8080/",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"oai-server {version()}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="Run the HTTP server.",
        description="Run the HTTP server. Every setting is a flag and an environment variable; flags win.",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    add_setting_flags(serve_parser)
    commands.add_parser(
        "settings",
        help="Print every setting (flag, environment, default, meaning) as a Markdown table.",
        allow_abbrev=False,
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    return Settings(**_overrides(args))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {
        name: value for name, value in vars(args).items() if name in Settings.model_fields and value is not None
    }
    return split_list_values(overrides)


def explain_validation(error: ValidationError) -> str:
    """One line naming each bad setting where it came from (a flag or an environment variable)."""
    problems = []
    for item in error.errors():
        where = str(item["loc"][0]) if item["loc"] else ""
        message = str(item["msg"]).removeprefix("Value error, ")
        secret = "key" in where.lower()
        shown = "***" if secret else item.get("input")
        if where in Settings.model_fields:  # a flag (environment values are named by their variable)
            problems.append(f"{flag_name(where)} {shown!r}: {message}")
        elif where:
            problems.append(f"{where}={shown!r}: {message}")
        else:
            problems.append(message)
    return "bad setting: " + "; ".join(problems) + " (`oai-server serve --help` lists every setting)"


def check_engine(settings: Settings) -> None:
    """Refuse `--engine vllm` where it cannot run, before any model or tokenizer is fetched."""
    if settings.engine != "vllm":
        return
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise StartupError(
            "--engine vllm needs the vllm package, which is not installed: install it on a machine with an "
            "NVIDIA GPU (pip install -e '.[vllm]'), or run with --engine transformers (slower) or --demo "
            "(tiny offline models, CPU only)",
            BAD_SETTING,
        )
    import torch

    if not torch.cuda.is_available():
        raise StartupError(
            "--engine vllm needs a CUDA GPU, and torch finds none (torch.cuda.is_available() is False): run it "
            "on a machine with an NVIDIA GPU and CUDA drivers, or use --engine transformers or --demo",
            BAD_SETTING,
        )


def check_key_file(settings: Settings) -> None:
    """An `--api-key-file` that cannot be read is a bad setting, not a traceback."""
    if settings.api_key_file is None:
        return
    try:
        settings.api_key_file.read_text()
    except OSError as exc:
        raise StartupError(
            f"--api-key-file {str(settings.api_key_file)!r} cannot be read ({exc.strerror or exc}): give a "
            "readable file with one API key per line",
            BAD_SETTING,
        ) from exc


class StartupReporter:
    """The app, with the exception of a failed start-up (lifespan) kept for a one-line report.

    Starlette sends `lifespan.startup.failed` from inside its `except` block, with the traceback
    as the message, which uvicorn would log; the message is blanked here and the exception kept.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass every call through; a failed start-up is recorded instead of logged."""
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                self.error = sys.exc_info()[1]
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, quiet_send)


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.text


class DrainingServer(uvicorn.Server):
    """uvicorn's server with this app's graceful shutdown (see the module docstring).

    uvicorn already stops listening, lets open responses finish for `timeout_graceful_shutdown`
    and then cancels them; this adds the drain flag the moment shutdown starts (uvicorn alone
    would reach the lifespan, and so the admission, only after every stream is over) and exits
    normally once the shutdown is complete (uvicorn re-raises the signal, so the exit status
    would say "killed" after a clean drain). Once started it logs where to open the page.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, handed: HandedConnections | None = None) -> None:
        super().__init__(config)
        self.app = app
        self.handed = handed
        """A replica's connections from its supervisor (`--placement replicated`), served beside its own port."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up, then the address lines: uvicorn's own and a loopback URL to open (a replica
        instead starts taking its supervisor's connections, and the supervisor logs where to open)."""
        await super().startup(sockets)
        if not self.started or not self.servers or not self.servers[0].sockets:
            return
        listeners = list(self.servers[0].sockets)
        self._log_started_message(listeners)  # skipped by uvicorn for sockets it did not bind
        if self.handed is not None:
            protocol = functools.partial(  # type: ignore[call-arg]  # typed as a bare asyncio.Protocol, as uvicorn's
                self.config.http_protocol_class,
                config=self.config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
            )  # what uvicorn's own listeners serve each connection with
            self.handed.start(asyncio.get_running_loop(), protocol)
            return
        port = listeners[0].getsockname()[1]
        url = loopback_url(self.config.host, port)
        settings: Settings = self.app.state.settings
        demo = (
            " (demo profile: tiny random-weight models, so replies are gibberish and speech is noise)"
            if settings.demo
            else ""
        )
        logger.info("Ready: open %s in a browser, or point OpenAI clients at %sv1%s", url, url, demo)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop admitting, then uvicorn's drain: close listeners, wait, cancel what is left, lifespan."""
        if self.handed is not None:
            self.handed.stop()
        services = getattr(self.app.state, "services", None)
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


def _create_app(settings: Settings) -> FastAPI:
    from .app import create_app

    try:
        return create_app(settings)
    except ValueError as exc:  # a setting that needs more than one field (GPU placement)
        raise StartupError(f"bad setting: {exc}", BAD_SETTING) from exc
    except OSError as exc:  # the demo models could not be written
        raise StartupError(
            f"could not build the demo models in --cache-dir {str(settings.cache_dir)!r} ({exc.strerror or exc}): "
            "choose a writable directory with --cache-dir (OAI_SERVER_CACHE_DIR)"
        ) from exc


def _load_failure(error: BaseException | None) -> StartupError:
    from .errors import ModelLoadError

    if isinstance(error, ModelLoadError):
        return StartupError(str(error))
    what = f"{type(error).__name__}: {error}" if error is not None else "see the log above"
    return StartupError(f"the server could not start: {what} (run with --log-level debug for the traceback)")


def serve(settings: Settings, argv: Sequence[str] = ()) -> None:
    """Check, bind, load and run the app until SIGTERM/SIGINT, then drain; or, with several replicas, run
    them (`replicas.Supervisor`, the same command `argv` once per replica). Raises `StartupError`."""
    from . import runtime_limits
    from .replicas import ReplicaRole, replica_count, supervise

    check_engine(settings)
    check_key_file(settings)
    role = ReplicaRole.from_environ(os.environ)
    if role is None:
        count, on_cards = replica_count(settings)
        if count > 1:
            supervise(settings, argv, count, on_cards)
            return
    runtime_limits.prepare_process(settings)  # issue 20: fd limit, malloc arenas
    if role is None:
        sock, handed = bind_socket(settings.host, settings.port), None
    else:
        sock, handed = role.own_socket(), role.channel()
        role.watch_supervisor()
        own = sock.getsockname()[1]
        logger.info("%s: on the shared port, and alone at %s", role.label, loopback_url(settings.host, own))
    try:
        app = _create_app(settings)
        app.state.replica = role.index if role is not None else None
        reporter = StartupReporter(app)
        config = uvicorn.Config(
            reporter,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,  # our own access line (with the request id) is the one per request
            timeout_graceful_shutdown=math.ceil(settings.shutdown_drain_seconds),
            **runtime_limits.uvicorn_options(settings, app),  # issue 20: guarded protocols, header limits
        )
        logging.getLogger("uvicorn.error").addFilter(_DropMessage("Application startup failed. Exiting."))
        server = DrainingServer(config, app, handed)
        with contextlib.suppress(SystemExit):  # uvicorn exits when the lifespan fails; reported below
            server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise _load_failure(reporter.error) from reporter.error


def _fail(error: StartupError, debug: bool) -> None:
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    message = " ".join(str(error).split())  # one line, whatever the cause's text holds (HF errors hold newlines)
    print(f"oai-server: error: {message}", file=sys.stderr)
    sys.exit(error.status)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `oai-server` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return
    if args.command == "settings":
        print(settings_table())
        return
    overrides = _overrides(args)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"oai-server: error: {explain_validation(exc)}", file=sys.stderr)
        sys.exit(BAD_SETTING)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    try:
        serve(settings, list(argv) if argv is not None else sys.argv[1:])
    except StartupError as exc:
        _fail(exc, settings.log_level == "debug")
