"""Streaming sentence segmentation of LLM output for TTS, plus ``split_text`` for long inputs.

Boundary rules (all decided from the text alone, so the result never depends on how the stream is
chunked into deltas; a decision that needs characters not yet seen waits for them):

* ``.`` ``!`` ``?`` (and runs such as ``?!`` or ``!!``), followed by optional closing quotes or brackets
  (``"`` ``'`` ``”`` ``)`` ``]`` ``*`` ...) and then whitespace, end a sentence unless the next
  non-space character is lowercase (``Yahoo! in``, ``"Hi." she said``). The quote or bracket stays with
  the sentence it closes. A ``.`` followed directly by a non-space character (``$29.99``, ``3.14``,
  ``v1.2.3``, ``example.com/a.b``, ``john.doe@mail.com``, ``Jr.'s``) is never a boundary.
* Abbreviations: titles (``Mr. Dr. Prof. e.g. i.e. vs.`` ...) never end a sentence; ``No. p. Fig.`` ...
  do not end one before a number; single letters (initials), dotted acronyms (``U.S.``, ``a.m.``) and
  ``St. Mt. Jr. Sr.`` end one only when the next word is a common sentence starter (``U.S. How`` splits,
  ``U.S. Government`` does not).
* Ellipsis: exactly three dots (``...``, ``…`` or ``. . .``) is a pause inside a sentence, never a
  boundary (``Wait... What?`` is one segment; Orpheus renders the pause). Four or more dots
  (``that....``) are an ellipsis plus a full stop and follow the ``.`` rule.
* CJK ``。！？`` end a sentence right away (plus any closing brackets), no space needed.
* A newline always ends a segment. A bullet (``•``) after whitespace starts a new one. Numbered or lettered
  list markers (``1.``, ``2.)``, ``3)``, ``a.``) at the start of a sentence are not boundaries, and when a
  sentence started with marker *n*, an inline marker *n+1* starts the next sentence.
* ``max_chars``: a segment that would grow past it is cut at the last clause boundary (``,;:`` or a dash)
  in the second half of the window, else at the last space, else hard at ``max_chars``.
* ``min_chars``: a sentence shorter than this is held and merged with the following one (not at flush).
* ``first_segment_words``: for latency, the first segment of a stream may end at a clause boundary
  once it holds at least that many words.
* ``first_segment_max_words``: for latency, the first segment of a stream holds at most that many
  words: it ends at the space after its last word even without any punctuation, or, when that word
  ends in ``.`` (maybe an abbreviation, as in ``Dr. Smith``), at the space before it, so the word
  opens the next segment. It bounds how long the first audio waits for an LLM that writes a long
  first clause; the price is a cut mid-clause, which Orpheus may voice with a slight pause.

Latency: a boundary after ``.!?`` is emitted once the next non-space character arrives (after an
initial or acronym, once the next word is complete), and a new sentence is not scanned until 10
characters past its start have arrived (to recognise a list marker); ``flush`` decides everything.

Segments are stripped of surrounding whitespace; inner whitespace is kept as is. Concatenating the
segments reproduces the input apart from whitespace at the cuts.
"""

from __future__ import annotations

import re

_CLOSERS = frozenset("\"'”’)]}»›」』】〕）〉》*_`")
_CJK_TERMINATORS = frozenset("。！？｡")
_EXCLAIM_QUESTION = frozenset("!?‼⁇⁈⁉")
_BULLETS = frozenset("•⁃◦▪")
_CLAUSE_PUNCT = frozenset(",;:，；：")
_OPENERS = "\"'“‘([{«¿¡*_`"


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Never end a sentence: they precede a name or an example.
_TITLES = _wordset(
    "mr mrs ms mx dr prof rev gen col capt lt sgt cpl sen rep gov pres hon fr messrs mme mlle e.g i.e vs cf viz"
)
# Do not end a sentence when a number follows ("No. 5", "p. 55").
_NUMBER_ABBREVS = _wordset("no nos nr n° p pp vol fig figs ch sec art tel ph eq approx ca op ex")
# End a sentence only when a common sentence starter follows.
_WEAK_ABBREVS = _wordset("st mt jr sr ft")
_SENTENCE_STARTERS = _wordset(
    "a after also and are as at but can could did do does each every finally first for he hello her here "
    "hi his how however i if in is it it's its let let's many maybe more most my next no now oh ok okay "
    "on one our please she since so some that that's the their then there there's these they this those "
    "thus to today we well were what when where which while who why will with would yes yet you your"
)
_ACRONYM_RE = re.compile(r"(?:[a-z]\.)+[a-z]")
_WORD_RE = re.compile(r"[A-Za-z'’]+")
_MARKER_RE = re.compile(r"[•⁃◦▪]?[ \t]?(\d{1,3}|[A-Za-z])(\.\)|\.|\))[ \t]")
_MARKER_LOOKAHEAD = 10
_WORD_LOOKAHEAD = 24
_NO = -1  # "no boundary here"
_UNDECIDING = re.compile(r"[^\s.…!?‼⁇⁈⁉。！？｡,;:，；：\-–—]+")
"""A run of characters whose `_event` is always "no boundary": no terminator, space, clause mark or dash."""


class _NeedMore(Exception):
    """Raised internally when a decision needs characters that have not arrived yet."""


class SentenceSegmenter:
    """Incremental sentence segmenter for streamed LLM text deltas.

    ``push`` accepts deltas of any size and returns the segments completed so far; ``flush`` ends the
    stream and returns the remainder. The output is identical for every chunking of the same text.
    After ``flush`` the instance is reset and can be reused for a new stream.
    """

    def __init__(
        self,
        max_chars: int = 300,
        min_chars: int = 12,
        first_segment_words: int | None = 4,
        first_segment_max_words: int | None = None,
    ) -> None:
        """Configure length limits; see the module docstring for what each option does."""
        if max_chars < 2:
            raise ValueError("max_chars must be at least 2")
        if min_chars < 0 or min_chars >= max_chars:
            raise ValueError("min_chars must be in [0, max_chars)")
        if first_segment_words is not None and first_segment_words < 1:
            raise ValueError("first_segment_words must be positive or None")
        if first_segment_max_words is not None and first_segment_max_words < 1:
            raise ValueError("first_segment_max_words must be positive or None")
        self.max_chars = max_chars
        self.min_chars = min_chars
        self.first_segment_words = first_segment_words
        self.first_segment_max_words = first_segment_max_words
        self._reset()

    def _reset(self) -> None:
        self._buf = ""
        self._seg_start = 0  # start of the segment being built (may hold merged short sentences)
        self._sent_start = 0  # start of the current sentence (list-marker context)
        self._scan = 0  # everything before this index is decided "no boundary"
        self._marker: tuple[int, str, str] | bool | None = False  # False = not computed yet
        self._emitted = 0
        self._final = False
        self._forced = False

    def push(self, text: str) -> list[str]:
        """Feed a text delta; return the segments completed by it (possibly none)."""
        self._buf += text
        return self._drain()

    def flush(self) -> list[str]:
        """End the stream: return all remaining segments (the last one even if short) and reset."""
        self._final = True
        out = self._drain()
        rest = self._buf[self._seg_start :].strip()
        if rest:
            out.append(rest)
        self._reset()
        return out

    # -- driver ----------------------------------------------------------------------------------------

    def _drain(self) -> list[str]:
        out: list[str] = []
        while True:
            self._forced = False  # set by _length_cut: such a cut is emitted even if short
            try:
                cut = self._next_cut()
            except _NeedMore:
                break
            if cut is None:
                break
            piece = self._buf[self._seg_start : cut].strip()
            self._sent_start = self._scan = cut
            self._marker = False
            if not piece:
                self._seg_start = cut
                continue
            if len(piece) < self.min_chars and not self._forced:
                continue  # too short: keep it and merge it with the next sentence
            out.append(piece)
            self._emitted += 1
            self._buf = self._buf[cut:]
            self._seg_start = self._sent_start = self._scan = 0
        return out

    def _char(self, i: int) -> str:
        """Character at ``i``; ``""`` past the end of a finished stream; raises ``_NeedMore`` otherwise."""
        if i < len(self._buf):
            return self._buf[i]
        if self._final:
            return ""
        raise _NeedMore

    def _next_cut(self) -> int | None:
        """Index at which the current segment ends, or None when the buffer is exhausted."""
        i = self._scan
        while True:
            if i - self._seg_start >= self.max_chars and self._char(i):
                return self._length_cut()
            run = _UNDECIDING.match(self._buf, i, self._seg_start + self.max_chars)
            if run is not None:  # step over the letters of words at once (the length check still stops it)
                i = self._scan = run.end()
                continue
            c = self._char(i)
            if not c:
                return None
            end = self._event(i, c)
            if end > 0:
                return end if end - self._seg_start <= self.max_chars else self._length_cut()
            # A decided "no" (-1, or -resume_index after a run) is final: later pushes resume after it.
            i = max(i + 1, -end)
            self._scan = i

    def _event(self, i: int, c: str) -> int:
        """Cut index (> 0) if a segment ends because of the character at ``i``, else ``-resume_index``."""
        if c == "\n":
            return i + 1
        if c in _CJK_TERMINATORS:
            j = i + 1
            while self._char(j) and (self._char(j) in _CJK_TERMINATORS or self._char(j) in _CLOSERS):
                j += 1
            return j
        if c in _EXCLAIM_QUESTION:
            j = i + 1
            while self._char(j) and self._char(j) in _EXCLAIM_QUESTION:
                j += 1
            return self._after_terminator(i, j, dots=0)
        if c in ".…":
            j, dots = i, 0
            while True:
                d = self._char(j)
                if d == ".":
                    dots, j = dots + 1, j + 1
                elif d == "…":
                    dots, j = dots + 3, j + 1
                elif d == " " and self._char(j + 1) in (".", "…") and self._char(j + 1):  # ". . ."
                    j += 1
                else:
                    break
            if dots == 3 or self._in_marker(i):
                return -j
            return self._after_terminator(i, j, dots)
        if c.isspace():
            cut = self._first_segment_cut(i)
            return cut if cut is not None else self._space_event(i)
        if self._emitted == 0 and self.first_segment_words is not None:
            return self._clause_event(i, c)
        return _NO

    def _after_terminator(self, i: int, j: int, dots: int) -> int:
        """Decide a boundary after the terminator run ``[i, j)``; closers are absorbed."""
        while self._char(j) and self._char(j) in _CLOSERS:
            j += 1
        k = j
        if self._char(k) and not self._char(k).isspace():
            return -j
        while self._char(k) and self._char(k).isspace():
            if self._char(k) == "\n":
                return j
            k += 1
        nxt = self._char(k)
        if not nxt:
            return j
        if nxt.islower():
            return -j
        if dots != 1:
            return j
        token = self._token_before(i)
        if token in _TITLES:
            return -j
        weak = token in _WEAK_ABBREVS or len(token) == 1 or _ACRONYM_RE.fullmatch(token) is not None
        if nxt.isdigit():
            return -j if weak or token in _NUMBER_ABBREVS else j
        if weak and nxt.isalpha():
            return j if self._word_at(k).lower() in _SENTENCE_STARTERS else -j
        return j

    def _token_before(self, i: int) -> str:
        """Lowercased word before the ``.`` at ``i``, without opening quotes or brackets."""
        k = i
        while k > self._sent_start and not self._buf[k - 1].isspace():
            k -= 1
        return self._buf[k:i].lstrip(_OPENERS).lower()

    def _word_at(self, k: int) -> str:
        """The word starting at ``k``; waits until it is terminated (or the stream has ended)."""
        j = k
        while self._char(j) and _WORD_RE.fullmatch(self._char(j)):
            j += 1
            if j - k > _WORD_LOOKAHEAD:
                break
        return self._buf[k:j]

    def _start_marker(self) -> tuple[int, str, str] | None:
        """List marker at the start of the current sentence: (end index, value, style) or None."""
        if self._marker is False:
            k = self._sent_start
            while self._char(k) and self._char(k).isspace():
                k += 1
            if k + _MARKER_LOOKAHEAD > len(self._buf) and not self._final:
                raise _NeedMore
            m = _MARKER_RE.match(self._buf, k)
            self._marker = (m.end(), m.group(1), m.group(2)) if m else None
        return self._marker if isinstance(self._marker, tuple) else None

    def _in_marker(self, i: int) -> bool:
        marker = self._start_marker()
        return marker is not None and i < marker[0]

    def _space_event(self, i: int) -> int:
        """Boundary before a bullet or before the next inline list marker."""
        if not self._buf[self._sent_start : i].strip():
            return _NO
        if self._char(i + 1) in _BULLETS:
            return i
        marker = self._start_marker()
        if marker is None or i < marker[0]:
            return _NO
        _, value, style = marker
        want = str(int(value) + 1) if value.isdigit() else chr(ord(value) + 1)
        probe = [self._char(i + 1 + n) for n in range(len(want) + len(style) + 1)]
        if (
            "".join(probe[: len(want)]) == want
            and "".join(probe[len(want) : -1]) == style
            and (probe[-1] in (" ", "\t"))
        ):
            return i
        return _NO

    def _first_segment_cut(self, i: int) -> int | None:
        """The cut of a first segment that has ``first_segment_max_words`` words before the space at ``i``.

        Right here, or before the last word when it ends in ``.`` (it may be an abbreviation of the
        next word); None while the segment is shorter.
        """
        limit = self.first_segment_max_words
        if self._emitted or limit is None or self._buf[i - 1].isspace():
            return None
        if not self._buf[self._sent_start : i].strip():  # just cut here (and held as too short)
            return None
        words = self._buf[self._seg_start : i].split()
        if len(words) < limit:
            return None
        if words[-1][-1] in ".\u2026":
            cut = self._buf.rindex(words[-1], self._seg_start, i) if len(words) > 1 else self._sent_start
            # only where the segment keeps text of its own sentence: a cut at (or before) the sentence's
            # start would be held and found again at the next space, forever
            return cut if self._buf[self._sent_start : cut].strip() else None
        return i

    def _clause_event(self, i: int, c: str) -> int:
        """Early cut of the first segment at a clause boundary once it has enough words."""
        n = self.first_segment_words or 0
        if c in _CLAUSE_PUNCT or (c in "-–" and i > 0 and self._buf[i - 1] == " "):
            if not self._char(i + 1).isspace() or not self._char(i + 1):
                return _NO
        elif c != "—":
            return _NO
        piece = self._buf[self._seg_start : i + 1]
        if len(piece.split()) >= n and len(piece.strip()) >= self.min_chars:
            return i + 1
        return _NO

    def _length_cut(self) -> int:
        """Cut for a segment that reached ``max_chars`` without a sentence boundary."""
        self._forced = True
        start, limit = self._seg_start, self._seg_start + self.max_chars
        window = self._buf[start:limit]
        for k in range(len(window) - 1, len(window) // 2 - 1, -1):
            if window[k] in _CLAUSE_PUNCT or window[k] in "—–-":
                nxt = self._buf[start + k + 1] if start + k + 1 < len(self._buf) else " "
                if nxt.isspace() and window[:k].strip():
                    return start + k + 1
        for k in range(len(window), 0, -1):
            at = self._buf[start + k] if start + k < len(self._buf) else " "
            if at.isspace() and window[:k].strip():
                return start + k
        return limit


def split_text(text: str, max_chars: int = 300) -> list[str]:
    """Split long input (e.g. ``/v1/audio/speech``) into pieces of at most ``max_chars`` characters.

    Cuts at sentence boundaries, then clause boundaries, then spaces (hard cut only inside a word
    longer than ``max_chars``), and packs consecutive sentences greedily so tiny pieces are merged
    into their neighbours. Nothing is dropped: the pieces joined with spaces equal the input up to
    whitespace. Input of at most ``max_chars`` characters (after collapsing whitespace) is one piece as
    given, without a pass of the segmenter (~0.5 µs a character on the event loop, every speech request).
    """
    words = " ".join(text.split())
    if len(words) <= max_chars:
        return [words] if words else []
    return segment_and_pack(text, max_chars)


def segment_and_pack(text: str, max_chars: int = 300) -> list[str]:
    """`split_text` without its shortcut for input that fits one piece: every input through the segmenter, its
    sentences packed greedily (what `split_text` did for every input before session 33; `bench/intake_cost.py`)."""
    seg = SentenceSegmenter(max_chars=max_chars, min_chars=0, first_segment_words=None)
    out: list[str] = []
    for sentence in seg.push(text) + seg.flush():
        if out and len(out[-1]) + 1 + len(sentence) <= max_chars:
            out[-1] = f"{out[-1]} {sentence}"
        else:
            out.append(sentence)
    return out
