"""Shared fixtures (the tiny demo models, a real server on loopback) and the suite's rules.

The server is the real app (`create_app`) on the real transformers engines and SNAC, served by
uvicorn on 127.0.0.1 in a background thread, so clients see real streaming over sockets. The
helpers every module uses live in `tests/helpers.py`.

Rules enforced here for every run:

- the demo models are built once per run into one cache (``OAI_TEST_CACHE`` or a temp dir), and
  ``OAI_SERVER_CACHE_DIR`` points there, so nothing (a subprocess, a default `Settings`) builds them
  into the user's home cache;
- under ``CI`` a skipped test fails (a skip there means a test that never ran);
- ``@pytest.mark.gpu`` tests are deselected by default (``-m "not gpu"`` in addopts) and, when
  selected without CUDA, skip locally / fail in CI;
- the coverage floor (``[tool.coverage.report] fail_under``) is enforced, and the table printed, on
  full runs only, since a run of a few files covers less by design (``--cov-report`` brings the table
  back); the summary says which applied;
- the order seed (pytest-randomly) is printed in the summary, so a shuffled run can be replayed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from oai_server.engines.demo import SNAC_DEMO_CONFIG, DemoModels, build_demo_models, write_random_snac

from .helpers import (
    IN_CI,
    LiveServer,
    ThreadedServer,
    demo_settings,
    quiet_settings,
    quiet_snac,
    sdk_client,
    start_server,
    wait_until,
)

__all__ = ["LiveServer", "demo_settings", "start_server", "wait_until"]  # for modules that import them from here

DEFAULT_MARKEXPR = "not gpu"


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One demo-model cache for the whole session (``OAI_TEST_CACHE`` reuses one across runs); also the
    default cache of anything this run starts (`OAI_SERVER_CACHE_DIR`)."""
    cache = Path(os.environ.get("OAI_TEST_CACHE") or tmp_path_factory.mktemp("demo-cache"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OAI_SERVER_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="session")
def noiseless_snac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a demo-sized SNAC without its noise blocks, so two decodes of the same codes are equal."""
    import torch

    out = tmp_path_factory.mktemp("quiet-snac")
    torch.manual_seed(0)
    write_random_snac(out, {**SNAC_DEMO_CONFIG, "noise": False})
    return out


@pytest.fixture(scope="session")
def demo_models(demo_cache: Path) -> DemoModels:
    """The tiny random-weight models, built once per run."""
    return build_demo_models(demo_cache)


@pytest.fixture(scope="session")
def live_server(demo_cache: Path, demo_models: DemoModels) -> Iterator[LiveServer]:
    """The shared server most API tests talk to."""
    server = start_server(demo_settings(demo_cache))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def quiet_server(
    demo_cache: Path, demo_models: DemoModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A demo server whose audio is a pure function of a seeded request (SNAC noise off, windows decoded alone):
    for tests that compare audio byte for byte."""
    import torch

    torch.set_num_threads(1)
    snac = quiet_snac(demo_models.snac_dir, tmp_path_factory.mktemp("snac-quiet"))
    server = start_server(quiet_settings(demo_cache, demo_models, snac))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def remote_server(demo_cache: Path, demo_models: DemoModels) -> Iterator[LiveServer]:
    """The app with ``--engine remote`` against two upstreams on loopback (`tests/upstream_server.py`,
    vLLM's wire shape) serving the demo Gemma and the demo Orpheus on transformers engines."""
    import asyncio

    from oai_server.engines.loading import load_tokenizer
    from oai_server.engines.transformers_engine import TransformersEngine

    from .upstream_server import create_upstream_app

    models = {"llm": ("gemma-demo", demo_models.llm_dir), "tts": ("orpheus-demo", demo_models.tts_dir)}
    engines = {
        role: TransformersEngine(path, kind=f"upstream-{role}", device="cpu", max_concurrency=4, torch_threads=1)
        for role, (_, path) in models.items()
    }
    apps = {
        role: create_upstream_app(engines[role], load_tokenizer(path), model=name)
        for role, (name, path) in models.items()
    }
    upstreams = {role: ThreadedServer(app, lifespan="off", name=f"upstream-{role}") for role, app in apps.items()}
    settings = demo_settings(
        demo_cache,
        engine="remote",
        llm_remote_url=upstreams["llm"].url,
        llm_remote_model="gemma-demo",
        tts_remote_url=upstreams["tts"].url,
        tts_remote_model="orpheus-demo",
    )
    server = start_server(settings)
    server.upstream_engines, server.upstream_apps = engines, apps
    yield server
    server.stop()
    for role in models:
        upstreams[role].stop()
        asyncio.run(engines[role].close())


@pytest.fixture(scope="session", params=["in-process", "remote"])
def any_server(request: pytest.FixtureRequest) -> LiveServer:
    """The API tests that matter most run twice: on in-process engines and with ``--engine remote``."""
    server: LiveServer = request.getfixturevalue("live_server" if request.param == "in-process" else "remote_server")
    return server


@pytest.fixture(scope="session")
def client(live_server: LiveServer) -> Any:
    """The official openai SDK pointed at the live server."""
    return sdk_client(live_server)


@pytest.fixture(scope="session")
def any_client(any_server: LiveServer) -> Any:
    """The openai SDK pointed at `any_server`."""
    return sdk_client(any_server)


# --- suite rules ----------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    cov = config.pluginmanager.get_plugin("_cov")
    if cov is not None and not _full_run(config):
        config.stash[_FLOOR_RELAXED] = cov.options.cov_fail_under
        cov.options.cov_fail_under = None
        if not any(arg.startswith("--cov-report") for arg in config.invocation_params.args):
            cov.options.cov_report = {}  # a few files' coverage says little: no table unless asked for


_FLOOR_RELAXED = pytest.StashKey[Any]()


def _full_run(config: pytest.Config) -> bool:
    """The whole suite as configured: no paths, -k, --lf or another -m given."""
    return (
        config.args_source is pytest.Config.ArgsSource.TESTPATHS
        and not config.option.keyword
        and not config.getoption("lf", False)
        and not config.getoption("deselect", None)
        and (config.option.markexpr or "") == DEFAULT_MARKEXPR
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason="needs CUDA (a gpu-marked test)"))


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (a test that does not run is a failure here): {_skip_reason(report)}"
    return report


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every hop to a worker thread through anyio (FastAPI's thread pool) or `asyncio.to_thread`, as
    ``"<anyio|asyncio>:<qualified name of the function>"``, in order."""
    seen: list[str] = []

    def counting(real: Callable[..., Any], via: str) -> Callable[..., Any]:
        async def hop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            seen.append(f"{via}:{getattr(fn, '__qualname__', fn)}")
            return await real(fn, *args, **kwargs)

        return hop

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting(anyio.to_thread.run_sync, "anyio"))
    monkeypatch.setattr(asyncio, "to_thread", counting(asyncio.to_thread, "asyncio"))
    return seen


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"module skipped under CI: {_skip_reason(report)}"
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    seed = config.getoption("randomly_seed", None) if config.pluginmanager.has_plugin("randomly") else None
    if seed is not None:
        terminalreporter.write_line(f"test order: shuffled by pytest-randomly; replay with --randomly-seed={seed}")
    else:
        terminalreporter.write_line("test order: as collected (pytest-randomly not active)")
    floor = config.stash.get(_FLOOR_RELAXED, None)
    if floor:
        terminalreporter.write_line(f"coverage floor ({floor} %) not enforced: it applies to full runs only")
