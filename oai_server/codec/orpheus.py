"""Orpheus token layout: prompt ids, audio-token to SNAC-code mapping and the per-slot band.

Facts (see shared/reference/orpheus_internals.md):

* Prompt: ``128259`` + tokenize(``"voice: text"``) + ``128009 128260 128261 128257``.
* Generation stops on ``128258`` (end of speech).
* Audio token k (counted from the first audio token) carries
  ``code = id - 128266 - 4096 * (k mod 7)``, valid 0..4095. Seven tokens make one frame:
  1 code for SNAC level 0, 2 for level 1 and 4 for level 2 = 2048 samples at 24 kHz.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .tokenizer import TextTokenizer

START_OF_HUMAN = 128259
END_OF_TEXT = 128009
END_OF_HUMAN = 128260
START_OF_AI = 128261
START_OF_SPEECH = 128257
END_OF_SPEECH = 128258
END_OF_AI = 128262
PAD = 128263
AUDIO_TOKEN_BASE = 128266
CODEBOOK_SIZE = 4096
TOKENS_PER_FRAME = 7
SAMPLES_PER_FRAME = 2048
SAMPLE_RATE = 24000
FRAME_SECONDS = SAMPLES_PER_FRAME / SAMPLE_RATE  # 85.3 ms of audio a frame
ORPHEUS_VOCAB_SIZE = 156940
AUDIO_TOKEN_END = AUDIO_TOKEN_BASE + TOKENS_PER_FRAME * CODEBOOK_SIZE  # exclusive
PROMPT_SUFFIX = (END_OF_TEXT, END_OF_HUMAN, START_OF_AI, START_OF_SPEECH)
STOP_TOKEN_IDS = (END_OF_SPEECH,)

# Position p of a frame -> (SNAC level, index offset inside that level for frame j).
# Level 0 holds 1 code per frame, level 1 two, level 2 four.
SLOT_LEVELS: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (2, 2), (2, 3))

REAL_TIME_TOKENS_PER_SECOND = TOKENS_PER_FRAME * SAMPLE_RATE / SAMPLES_PER_FRAME  # 82.03


def build_prompt_ids(text_token_ids: Sequence[int]) -> list[int]:
    """Wrap the tokenized ``"voice: text"`` (BOS included by the tokenizer) in Orpheus's markers."""
    return [START_OF_HUMAN, *text_token_ids, *PROMPT_SUFFIX]


def speech_prompt(tokenizer: TextTokenizer, voice: str, text: str) -> list[int]:
    """The Orpheus prompt ids for `text` in `voice`: the tokenized ``"voice: text"`` wrapped in markers."""
    return build_prompt_ids(tokenizer.encode(f"{voice}: {text}", add_special_tokens=True))


def slot_band(position: int) -> range:
    """The token ids allowed at audio position ``position`` (the band of slot ``position % 7``)."""
    start = AUDIO_TOKEN_BASE + CODEBOOK_SIZE * (position % TOKENS_PER_FRAME)
    return range(start, start + CODEBOOK_SIZE)


def stop_allowed(position: int) -> bool:
    """End of speech is allowed only on a frame boundary, so every frame is complete."""
    return position % TOKENS_PER_FRAME == 0


def token_to_code(token_id: int, position: int) -> int | None:
    """Map one generated id to its SNAC code for audio position ``position``, or None if invalid."""
    code = token_id - AUDIO_TOKEN_BASE - CODEBOOK_SIZE * (position % TOKENS_PER_FRAME)
    return code if 0 <= code < CODEBOOK_SIZE else None


@dataclass
class AudioTokenParser:
    """Turns a stream of generated token ids into complete 7-code frames.

    Every id of every delta is parsed (never only the last one). Ids outside the audio band of
    the current position are ignored and do not advance the position, so one stray id cannot
    misalign every later frame. Code 0 and code 4095 are valid; 4096 is not.
    """

    position: int = 0
    ignored: int = 0
    _pending: list[int] = field(default_factory=list)

    def feed(self, token_ids: Iterable[int]) -> list[tuple[int, ...]]:
        """Consume token ids; return the frames completed by them (each a tuple of 7 codes)."""
        frames: list[tuple[int, ...]] = []
        for token_id in token_ids:
            code = token_to_code(token_id, self.position)
            if code is None:
                self.ignored += 1
                continue
            self._pending.append(code)
            self.position += 1
            if len(self._pending) == TOKENS_PER_FRAME:
                frames.append(tuple(self._pending))
                self._pending.clear()
        return frames

    @property
    def audio_tokens(self) -> int:
        """Valid audio tokens consumed so far."""
        return self.position

    @property
    def partial_codes(self) -> int:
        """Codes of an unfinished frame (dropped at the end of a stream)."""
        return len(self._pending)


# For each SNAC level, the frame slots that hold its codes, in time order (level 0: 1 per frame, 1: 2, 2: 4).
LEVEL_SLOTS: tuple[tuple[int, ...], ...] = tuple(
    tuple(sorted((slot for slot, (lv, _) in enumerate(SLOT_LEVELS) if lv == level), key=lambda s: SLOT_LEVELS[s][1]))
    for level in range(3)
)


def frames_to_levels(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Redistribute a batch of windows, int array [batch, n, 7], into SNAC's three code levels
    ([batch, n], [batch, 2n], [batch, 4n])."""
    batch = frames.shape[0]
    return tuple(frames[:, :, slots].reshape(batch, -1) for slots in LEVEL_SLOTS)  # type: ignore[return-value]
