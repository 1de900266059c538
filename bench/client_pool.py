"""A burst (or a plan of Poisson arrivals) sent from several client processes, so the load generator is not what a
TTFA or a stall measures.

One Python process driving N streams sends their requests one after another and parses every chunk of
every stream on one event loop: at 100+ streams that adds a few hundred ms to the late streams' time to
first audio (measured on the H200: the client's TTFA minus the server's own was ~160 ms at 144 speech streams
and ~280 ms at 108 chat conversations). `--client-procs P` deals the streams of a burst out to P worker
processes (spawned once per run), which start at one agreed wall-clock moment; each stream's times are
taken in its own process, from its own request. A planned arrival (`RequestSpec.at_s`) is its own worker, sent
at its time after that moment: on the H200 a 1.5x overload's ~220 concurrent streams on one client loop
(and its garbage collections over every stream's arrival times) would blur exactly the small early stalls
the overload verdict counts.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx
from _common import StreamResult
from clients import RequestSpec, open_clients, request_fn

START_MARGIN_S = 0.5
"""How far ahead of now the processes are told to start (every worker process is idle and waiting by then)."""

Worker = tuple[str, list[RequestSpec]]
"""One concurrent client: its part ("speech" or "chat") and the requests it sends one after another."""


async def preconnect(clients: list[httpx.AsyncClient], workers: int) -> None:
    """Open one kept-alive connection per worker (concurrent `GET /health`s), so no timed request pays a connect."""
    responses = await asyncio.gather(*(clients[i % len(clients)].get("/health") for i in range(workers)))
    for response in responses:
        response.raise_for_status()


async def run_workers(
    args: argparse.Namespace, workers: list[Worker], start_at: float | None = None
) -> list[list[StreamResult]]:
    """Every worker at once from this process, over one connection pool; results in worker order.

    With `--preconnect` a connection per burst worker is opened first (a planned arrival stays a new client); the
    workers start at the wall-clock `start_at` (now when None)."""
    limits = httpx.Limits(max_connections=len(workers) + 4, max_keepalive_connections=len(workers) + 4)
    timeout = httpx.Timeout(args.request_timeout, connect=30)
    async with open_clients(args.url, limits, timeout) as clients:
        bursting = sum(1 for _, specs in workers if specs and specs[0].at_s is None)
        if getattr(args, "preconnect", False) and bursting:
            await preconnect(clients, bursting)
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()

        async def send(request: Any, spec: RequestSpec) -> StreamResult:
            client = clients[spec.server % len(clients)]
            if spec.at_s is None:
                return await request(client, args, spec, None, 0.0)
            await asyncio.sleep(max(0.0, started + spec.at_s - time.perf_counter()))
            return await request(client, args, spec, args.hang_s, time.perf_counter() - started)

        async def worker(part: str, specs: list[RequestSpec]) -> list[StreamResult]:
            request = request_fn(part)
            return [await send(request, spec) for spec in specs]

        return list(await asyncio.gather(*(worker(part, specs) for part, specs in workers)))


def _share(args: argparse.Namespace, workers: list[Worker], start_at: float) -> list[list[StreamResult]]:
    return asyncio.run(run_workers(args, workers, start_at))


class ClientPool:
    """`processes` spawned client processes; `run` deals a burst's workers out to them."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        for future in [self._executor.submit(time.sleep, 0) for _ in range(processes)]:
            future.result()  # every process started (and imported this module) before the first burst

    async def run(self, args: argparse.Namespace, workers: list[Worker]) -> list[list[StreamResult]]:
        """The workers' results in their order; worker i runs in process i mod `processes`."""
        shares = [workers[i :: self.processes] for i in range(self.processes)]
        start_at = time.time() + START_MARGIN_S
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(self._executor, _share, args, share, start_at) for share in shares if share]
        per_share = await asyncio.gather(*futures)
        results: list[list[StreamResult]] = [[] for _ in workers]
        for i, share_results in enumerate(per_share):
            for j, worker_results in enumerate(share_results):
                results[i + j * self.processes] = worker_results
        return results

    def close(self) -> None:
        """Stop the processes."""
        self._executor.shutdown(cancel_futures=True)


_POOLS: dict[int, ClientPool] = {}


def pool_for(args: argparse.Namespace) -> ClientPool | None:
    """The run's pool of `--client-procs` processes (made on first use, stopped at exit); None for one process."""
    processes = getattr(args, "client_procs", 1)
    if processes <= 1:
        return None
    if processes not in _POOLS:
        _POOLS[processes] = ClientPool(processes)
        atexit.register(_POOLS[processes].close)
    return _POOLS[processes]
