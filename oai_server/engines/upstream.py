"""HTTP calls to an upstream engine server, shared by the remote token engine and the remote transcriber.

`UpstreamCalls` keeps the open calls (counted, aborted on close), sends a request with retries only
while no 2xx response has started (`_send`), and runs each call as a producer task that always ends
its consumer's queue (`_pump`: `STREAM_END` or the `EngineError` that ended the call).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from .base import EngineError, EngineOverloadedError

RETRY_STATUSES = frozenset({429, 502, 503, 504})
_OVERLOAD_STATUSES = frozenset({429, 503})
STREAM_END = object()
"""Put on an upstream call's queue after its last item: the consumer's iterator ends."""
_Queue = asyncio.Queue[Any]


class UpstreamCalls:
    """The open calls of an engine that talks to an HTTP upstream: counted, and aborted on close.

    Subclasses keep ``_tasks`` (request id -> the task of its open call), ``_client`` (the pool) and
    ``_closed``; the token engine here and the remote transcriber share this.
    """

    _tasks: dict[str, asyncio.Task[Any]]
    _client: httpx.AsyncClient
    _closed: bool
    _base: str
    config: Any  # max_retries, backoff_seconds, retry_after_cap

    def active_requests(self) -> int:
        """Requests whose upstream call is open (or being opened) right now."""
        return len(self._tasks)

    async def close(self) -> None:
        """Abort every open call and close the connection pool."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._client.aclose()

    def _start(
        self, request_id: str, call: Callable[[], Awaitable[None]], queue: _Queue, *, what: str
    ) -> asyncio.Task[None]:
        """Run ``call`` as the producer task of ``request_id`` (`_pump`), counted as open until it ends."""
        task = asyncio.create_task(self._pump(call, queue, read_timeout=self.config.read_timeout, what=what))
        self._tasks[request_id] = task
        task.add_done_callback(
            lambda done: self._tasks.pop(request_id, None) if self._tasks.get(request_id) is done else None
        )
        return task

    async def _send(
        self, build: Callable[[], httpx.Request], retry_at_once: Callable[[int, str], bool] | None = None
    ) -> httpx.Response:
        """Send ``build()``'s request and return the 2xx response, still streaming.

        Retries only while no 2xx response has started: connection failures and 429/5xx, with jittered
        exponential backoff (or the upstream's ``Retry-After``, capped), up to ``config.max_retries``
        times; and at once whenever ``retry_at_once(status, message)`` says so (``build`` is called
        again, so it can ask differently). Anything else raises `EngineError` (`EngineOverloadedError`
        for 429/503) with the upstream's own message.
        """
        attempt = 0
        while True:
            request = build()
            last = attempt >= self.config.max_retries
            delay = self.config.backoff_seconds * 2**attempt * (0.5 + random.random())
            attempt += 1
            try:
                response = await self._client.send(request, stream=True)
            except httpx.PoolTimeout as exc:
                raise EngineOverloadedError(f"no free connection to {self._base}") from exc
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                if last:
                    raise EngineError(f"cannot reach upstream {self._base}: {exc!r}") from exc
                await asyncio.sleep(delay)
                continue
            except httpx.TimeoutException as exc:
                raise EngineError(f"upstream {self._base} sent no response in time: {exc!r}") from exc
            if response.is_success:
                return response
            raw = (await response.aread()).decode("utf-8", "replace")
            await response.aclose()
            status = response.status_code
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = None
            message = upstream_message(payload, raw)
            if retry_at_once is not None and retry_at_once(status, message):
                continue
            if status in RETRY_STATUSES and not last:
                retry_after = retry_after_seconds(response, self.config.retry_after_cap)
                await asyncio.sleep(delay if retry_after is None else retry_after)
                continue
            kind = EngineOverloadedError if status in _OVERLOAD_STATUSES else EngineError
            raise kind(f"upstream {status}: {message}")

    @staticmethod
    async def _pump(call: Callable[[], Awaitable[None]], queue: _Queue, *, read_timeout: float, what: str) -> None:
        """Run one upstream ``call`` that fills ``queue``, then put `STREAM_END` or the `EngineError` that
        ended it, so the consumer never waits on a queue that no call will fill."""
        try:
            await call()
        except asyncio.CancelledError:
            queue.put_nowait(STREAM_END)  # aborted: the consumer's iterator ends quietly
            raise
        except EngineError as exc:
            queue.put_nowait(exc)
        except httpx.TimeoutException as exc:
            queue.put_nowait(EngineError(f"upstream stalled for {read_timeout}s: {exc!r}"))
        except (httpx.HTTPError, ValueError) as exc:
            queue.put_nowait(EngineError(f"upstream stream broke: {exc!r}"))
        except Exception as exc:  # the consumer must never hang on a producer bug
            queue.put_nowait(EngineError(f"remote {what} failed: {exc!r}"))
        else:
            queue.put_nowait(STREAM_END)


def upstream_message(payload: Any, fallback: str) -> str:
    """The human message of an OpenAI/vLLM/FastAPI error body."""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            for key in ("message", "detail"):
                if isinstance(error.get(key), str):
                    return str(error[key])
        if isinstance(error, str):
            return error
    return fallback[:500]


def retry_after_seconds(response: httpx.Response, cap: float) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        try:  # the HTTP-date form
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), cap)
