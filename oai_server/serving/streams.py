"""Guards around a streamed body: the request deadline and failures after the 200.

Once the status line is out, an error can no longer change it. An SSE body then ends with one
`data: {"error": ...}` event (and `[DONE]` for chat, whose clients expect it); a raw audio body
is cut off without its final chunk, so the client sees a broken transfer instead of a file
that silently stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from ..engines.base import EngineError
from ..errors import APIError, server_error
from ..sse import DONE, error_event

logger = logging.getLogger(__name__)


def as_api_error(exc: BaseException) -> APIError:
    """The envelope for an exception raised while streaming."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, TimeoutError):
        return APIError(
            504, "The request exceeded its deadline and was cancelled.", type="server_error", code="timeout"
        )
    if isinstance(exc, EngineError):
        return server_error(f"The engine failed: {exc}")
    return server_error()


async def guarded(
    body: AsyncIterator[bytes], *, deadline_seconds: float, sse: bool, send_done: bool
) -> AsyncIterator[bytes]:
    """Yield `body` until done, the deadline passes, or it fails; always close `body`."""
    deadline = time.monotonic() + deadline_seconds
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(anext(body), remaining)
            except StopAsyncIteration:
                return
            yield chunk
    except Exception as exc:
        error = as_api_error(exc)
        if error.status >= 500:
            logger.error("stream failed: %s", exc, exc_info=not isinstance(exc, TimeoutError | APIError))
        if not sse:
            raise
        yield error_event(error)
        if send_done:
            yield DONE
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
