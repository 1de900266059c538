"""Orpheus deltas on frame boundaries: vLLM's lone first-token delta held back until a frame is complete.

With ``stream_interval`` N > 1, vLLM's output processor (``v1/engine/output_processor.py``,
``RequestState.make_request_output``, 0.26.0) sends a request's first token at once and then a delta each
time N more tokens have come: at 1, N + 1, 2N + 1, ... tokens. With N = 7, one SNAC frame, frame k's last
token (the (7k + 7)th) waits for the delta at 7k + 8, so every frame, the first audio among them, reaches the
server one decode step after it was sampled: 3.3 ms at one stream on an H200, a step of a burst's batch
(~12 ms at 192 streams) for a burst's first audio. A lone first audio token is of no use to anyone (no frame,
no audio). Held back until the Nth token, the deltas land at N, 2N, ...: each frame as soon as it is sampled,
and one delta fewer per request.

This is the narrowest hook that does it: the engine's `OutputProcessor.add_request` is wrapped so that each
new request's state gets a ``make_request_output`` that returns nothing for a first delta short of N tokens
while the request runs; finished and aborted requests pass through at once, and vLLM's own rule does the rest.
"""

from __future__ import annotations

from typing import Any

from oai_server.codec.orpheus import TOKENS_PER_FRAME


def frames_per_delta(stream_interval: int) -> bool:
    """Whether deltas of ``stream_interval`` tokens are whole frames, so holding the first one aligns them all."""
    return stream_interval > 1 and stream_interval % TOKENS_PER_FRAME == 0


def deliver_on_frame_boundaries(async_llm: Any) -> None:
    """Make every request of this ``AsyncLLM`` get its first delta only once it holds ``stream_interval``
    tokens (or it ended); no-op when the interval is not a whole number of frames."""
    processor = async_llm.output_processor
    if not frames_per_delta(processor.stream_interval):
        return
    add_request = processor.add_request

    def add_request_held(request: Any, *args: Any, **kwargs: Any) -> None:
        add_request(request, *args, **kwargs)
        state = processor.request_states.get(request.request_id)
        if state is not None and state.detokenizer is not None:
            hold_first_delta(state)

    processor.add_request = add_request_held


def hold_first_delta(state: Any) -> None:
    """Hold back one vLLM ``RequestState``'s first delta until it has ``state.stream_interval`` tokens."""
    make_request_output = state.make_request_output

    def make_request_output_held(
        new_token_ids: list[int], pooling_output: Any, finish_reason: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if (
            finish_reason is None
            and state.sent_tokens_offset == 0
            and state.detokenizer.num_output_tokens() < state.stream_interval
        ):
            return None
        return make_request_output(new_token_ids, pooling_output, finish_reason, *args, **kwargs)

    state.make_request_output = make_request_output_held
