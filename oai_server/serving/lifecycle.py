"""The lifecycle of one streamed reply, whatever carries it: deadline, failure after the start, close.

Once a stream has started (an HTTP 200 is out, or a WebSocket response is running), an error
can no longer change a status. `guarded` turns any failure of the stream, and its deadline
passing, into one final `StreamFailed` item carrying the OpenAI error, and always closes the
stream (which aborts its engine requests). Transports render `StreamFailed` their own way: an
SSE error event, a cut raw body, a Realtime `error` event. Admission (`admission.py`) bounds
how many run at once; a client going away cancels the consumer, which closes the stream too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

from ..engines.base import EngineError, EngineOverloadedError
from ..errors import APIError, server_error

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class StreamFailed:
    """The stream failed (or ran past its deadline) after it started; nothing follows."""

    error: APIError


def as_api_error(exc: BaseException) -> APIError:
    """The envelope for an exception raised while serving a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, TimeoutError):
        return APIError(
            504, "The request exceeded its deadline and was cancelled.", type="server_error", code="timeout"
        )
    if isinstance(exc, EngineOverloadedError):  # OpenAI's "engine is currently overloaded": a retryable 503
        return APIError(
            503,
            "The engine is currently overloaded, please try again later.",
            type="server_error",
            code="engine_overloaded",
            headers={"retry-after": "1"},
        )
    if isinstance(exc, EngineError):
        return server_error(f"The engine failed: {exc}")
    return server_error()


async def guarded(body: AsyncIterator[T], *, deadline_seconds: float) -> AsyncIterator[T | StreamFailed]:
    """Yield `body` until done, the deadline passes, or it fails (then one `StreamFailed`); always close it.

    The body is awaited in this task (`asyncio.timeout_at`, not `wait_for`'s inner task): a
    cancellation (the client went away) then goes straight through the body, and the body is
    never still running in another task when it is closed below.
    """
    deadline = asyncio.get_running_loop().time() + deadline_seconds
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    item = await anext(body)
            except StopAsyncIteration:
                return
            yield item
    except Exception as exc:
        error = as_api_error(exc)
        if error.status >= 500:
            logger.error("stream failed: %s", exc, exc_info=not isinstance(exc, TimeoutError | APIError))
        yield StreamFailed(error)
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
