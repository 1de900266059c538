"""One batched transformers Whisper ``generate``: the requests in it, and how each row's tokens reach its request.

`BatchRequest` is a transcription waiting for, or riding in, a batch. `RowStreamer` is the streamer
the batch's ``generate`` calls with each step's token column: it turns every row's tokens into text
deltas for that row's request (and reads the detected language off the decoder prompt).
`RowStop` ends a row at its own ``max_tokens`` or once its request is aborted. Used by
`engines.asr_transformers.TransformersWhisper`; all of it runs on that engine's worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from oai_server.engines.asr import TextDeltas, TranscriptionParams, TranscriptPiece

Item = TranscriptPiece | BaseException | None  # None: the request ended (see BatchRequest.aborted)


@dataclass(eq=False)
class BatchRequest:
    """A transcription request: its audio and parameters, how its items reach its consumer, its abort flag."""

    request_id: str
    audio: np.ndarray
    params: TranscriptionParams
    emit: Callable[[Item], None]
    abort: threading.Event = field(default_factory=threading.Event)
    aborted: bool = False

    @property
    def key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one generate call."""
        p = self.params
        return (p.task, p.prompt, p.temperature, p.language is None)


class RowStreamer:
    """A transformers streamer for a batch: routes each row's tokens to its request as text deltas."""

    def __init__(
        self, batch: list[BatchRequest], tokenizer: Any, eot: int, sot: int, id_to_language: dict[int, str]
    ) -> None:
        self._batch = batch
        self._eot, self._sot = eot, sot
        self._id_to_language = id_to_language
        self._deltas = [TextDeltas(lambda ids: tokenizer.decode(ids, skip_special_tokens=False)) for _ in batch]
        self._languages: list[str | None] = [r.params.language for r in batch]
        self.counts = [0] * len(batch)
        self.done = [False] * len(batch)
        self.prompt_length: int | None = None

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_length is None:  # the first call carries the decoder prompt (B, L)
            self.prompt_length = int(value.shape[-1])
            for row, tokens in enumerate(value.tolist()):
                if self._sot in tokens[:-1]:
                    after_sot = tokens[tokens.index(self._sot) + 1]
                    self._languages[row] = self._id_to_language.get(after_sot, self._languages[row])
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            request = self._batch[row]
            if self.done[row]:
                continue
            if token == self._eot or request.abort.is_set():
                self.done[row] = True
                continue
            self.counts[row] += 1
            if self.counts[row] >= request.params.max_tokens:
                self.done[row] = True
            # Text tokens sit below <|endoftext|>; specials and timestamps above it never reach the text.
            piece = self._deltas[row].push([token] if token < self._eot else [])
            if piece is None and token >= self._eot:
                piece = TranscriptPiece("", 1)
            self._send(row, piece)

    def end(self) -> None:
        """Called by generate when it stops."""

    def finish(self) -> None:
        for row in range(len(self._batch)):
            self._send(row, self._deltas[row].flush())

    def _send(self, row: int, piece: TranscriptPiece | None) -> None:
        if piece is None or self._batch[row].abort.is_set():
            return
        if self._languages[row] is not None:
            piece = TranscriptPiece(piece.text, piece.tokens, self._languages[row])
            self._languages[row] = None
        self._batch[row].emit(piece)


class RowStop:
    """Per-row stopping: a row is done at its own max_tokens or once its request is aborted."""

    def __init__(self, batch: list[BatchRequest], streamer: RowStreamer) -> None:
        self._batch = batch
        self._streamer = streamer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        prompt = self._streamer.prompt_length or input_ids.shape[-1]
        generated = input_ids.shape[-1] - prompt
        done = [r.abort.is_set() or generated >= r.params.max_tokens for r in self._batch]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
