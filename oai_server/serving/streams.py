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
from typing import TYPE_CHECKING

from ..engines.base import EngineError
from ..errors import APIError, server_error
from ..pipeline.orpheus import SAMPLE_RATE, SAMPLES_PER_FRAME
from ..sse import DONE, error_event

if TYPE_CHECKING:
    from ..metrics import Metrics

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
    """Yield `body` until done, the deadline passes, or it fails; always close `body`.

    The body is awaited in this task (`asyncio.timeout_at`, not `wait_for`'s inner task): a
    cancellation (the client went away) then goes straight through the body, and the body is
    never still running in another task when it is closed below.
    """
    deadline = asyncio.get_running_loop().time() + deadline_seconds
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(body)
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


class StreamMeter:
    """Times one reply for the metrics: first token, first audio, real-time factor, frames, aborts."""

    def __init__(self, metrics: Metrics | None, endpoint: str) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.start = time.monotonic()
        self.first_token_at: float | None = None
        self.first_audio_at: float | None = None
        self.finished = False

    def first_token(self) -> None:
        """The first text token of the reply arrived."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            if self.metrics is not None:
                self.metrics.observe_ttft(self.first_token_at - self.start)

    def first_audio(self) -> None:
        """The first audio bytes of the reply are being sent."""
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
            if self.metrics is not None:
                self.metrics.observe_ttfa(self.endpoint, self.first_audio_at - self.start)

    def finish(self, frames: int) -> None:
        """The reply is complete: record its real-time factor and frames."""
        self.finished = True
        if self.metrics is None or frames <= 0:
            return
        audio_seconds = frames * SAMPLES_PER_FRAME / SAMPLE_RATE
        self.metrics.observe_rtf(self.endpoint, (time.monotonic() - self.start) / audio_seconds)
        self.metrics.count_frames(frames)

    def close(self, engines: tuple[str, ...]) -> None:
        """Called when the reply's stream closes: an unfinished reply aborted its engine requests."""
        if not self.finished and self.metrics is not None:
            for engine in engines:
                self.metrics.count_abort(engine)
