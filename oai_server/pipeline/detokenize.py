"""Incremental detokenization and stop strings, with O(1) work per token.

Decoding the whole reply at every token costs O(n^2); like vLLM we decode only a short window
(`prefix_offset..`) and emit the text past what was already emitted, holding back a trailing
U+FFFD while a multi-byte character is incomplete. Tokens are pieces of UTF-8 bytes: bytes that
never complete a character (a random model writes them; a real one rarely) decode to U+FFFD,
which is dropped, so no replacement character ever reaches a reply or its transcript.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..codec.tokenizer import TextTokenizer

_WINDOW = 6
REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns token-id deltas into text deltas."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def feed(self, token_ids: Sequence[int]) -> str:
        """The new text made complete by `token_ids`."""
        out = []
        for token_id in token_ids:
            self.ids.append(token_id)
            prefix = self.tokenizer.decode(self.ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
            full = self.tokenizer.decode(self.ids[self._prefix_offset :], skip_special_tokens=True)
            if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
                out.append(full[len(prefix) :].replace(REPLACEMENT, ""))
                self._prefix_offset = max(self._read_offset, len(self.ids) - _WINDOW)
                self._read_offset = len(self.ids)
                # Re-anchor the window so `prefix` decodes to what has been emitted.
                self._prefix_offset = min(self._prefix_offset, self._read_offset)
        return "".join(out)


class StopMatcher:
    """Cuts the text stream at the first of the `stop` strings, holding back possible prefixes."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text safe to emit now; sets `stopped` when a stop string was found."""
        if not self.stops or self.stopped:
            return "" if self.stopped else text
        buffer = self._held + text
        cut = min((i for i in (buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), 0, -1):
                if buffer.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        self._held = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """End of stream: release held text (it was not a stop string after all)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
