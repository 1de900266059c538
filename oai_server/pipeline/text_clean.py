"""Make LLM output speakable: strip markdown, HTML and emoji before Orpheus TTS."""

from __future__ import annotations

import html
import re

EMOTION_TAGS = ("laugh", "chuckle", "sigh", "cough", "sniffle", "groan", "yawn", "gasp")

_EMOTION_RE = re.compile(r"<\s*(" + "|".join(EMOTION_TAGS) + r")\s*>", re.IGNORECASE)
_PLACEHOLDER = "\x00{}\x00"
_PLACEHOLDER_RE = re.compile(r"\x00(\d+)\x00")
_FENCE_LINE_RE = re.compile(r"^[ \t]*(?:```|~~~)[^\n]*$", re.MULTILINE)
_FENCE_RE = re.compile(r"```|~~~")
_INLINE_CODE_RE = re.compile(r"`+([^`]*)`+")
_IMAGE_RE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK_RE = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_REF_LINK_RE = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK_RE = re.compile(r"<((?:https?://|mailto:)[^>\s]+)>")
_HTML_BREAK_RE = re.compile(r"<\s*(?:br|/p|/div|/li|/h[1-6])\s*/?\s*>", re.IGNORECASE)
_HTML_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|<!--.*?-->", re.DOTALL)
_HEADING_RE = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.MULTILINE)
_QUOTE_RE = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.MULTILINE)
_BULLET_RE = re.compile(r"^[ \t]*[-*+•][ \t]+(?:\[[ xX]\][ \t]+)?", re.MULTILINE)
_RULE_RE = re.compile(r"^[ \t]*(?:[-*_][ \t]*){3,}$", re.MULTILINE)
_TABLE_SEP_RE = re.compile(r"^[ \t]*\|?[ \t]*:?-{2,}:?[ \t]*(?:\|[ \t]*:?-{2,}:?[ \t]*)*\|?[ \t]*$", re.MULTILINE)
_TABLE_EDGE_RE = re.compile(r"^[ \t]*\||\|[ \t]*$", re.MULTILINE)
_TABLE_PIPE_RE = re.compile(r"[ \t]*\|[ \t]*")
_BOLD_RE = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_STRIKE_RE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_ITALIC_STAR_RE = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_ITALIC_UNDERSCORE_RE = re.compile(r"(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])")
_STRAY_MARK_RE = re.compile(r"\*\*|__|~~|(?<=\w)\*(?=\W|$)|(?:^|(?<=\s))\*(?=\w)")
_EMOJI_RE = re.compile(
    "["
    "\U0001f000-\U0001faff"  # mahjong, cards, emoticons, pictographs, transport, symbols, flags
    "\u2300-\u23ff"  # misc technical (watch, hourglass, media controls)
    "\u25a0-\u25ff"  # geometric shapes used as icons
    "\u2600-\u27bf"  # misc symbols and dingbats
    "\u2b00-\u2bff"  # arrows, stars and squares
    "\ufe0e\ufe0f\u200d\u20e3"  # variation selectors, zero-width joiner, keycap
    "\U000e0020-\U000e007f"  # emoji tag sequences
    "\u3030\u303d"
    "]+"
)
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.;:!?)\]])")
_WS_RE = re.compile(r"\s+")


def clean_for_speech(text: str) -> str:
    """Return ``text`` with everything that should not be read aloud removed.

    Rules, in order:

    * Orpheus emotion tags (``<laugh> <chuckle> <sigh> <cough> <sniffle> <groan> <yawn> <gasp>``) are
      kept; case and inner spaces are normalised (``< Laugh >`` -> ``<laugh>``).
    * HTML entities are decoded (``&amp;`` -> ``&``); ``<https://...>`` autolinks keep the URL;
      ``<br>`` and block-closing tags become a space; other HTML tags and comments are removed.
    * Code fences: the fence lines (```` ```python ````, ``~~~``) are dropped and the code inside is
      kept, so an answer that leans on a snippet stays understandable; inline ```code``` keeps its text.
      Emphasis rules are not applied inside inline code (``__init__`` stays).
    * Images ``![alt](url)`` are dropped; links ``[text](url)`` and ``[text][ref]`` keep the text.
    * Headings (``# ``), block quotes (``> ``), bullets (``- `` ``* `` ``+ `` ``• ``, task boxes) at the
      start of a line and horizontal rules are removed; numbered list markers (``1.``) are kept.
    * Tables: separator rows are dropped, outer pipes removed, inner pipes become ``, ``.
    * ``**bold**``, ``__bold__``, ``*italic*``, ``_italic_``, ``~~strike~~`` keep their text; stray
      ``**`` ``__`` ``~~`` and word-edge ``*`` are dropped; ``snake_case`` and ``2 * 3`` are untouched.
    * Emoji and pictographs (incl. variation selectors, ZWJ, keycaps, flags) are removed.
    * Whitespace (newlines included) collapses to single spaces; spaces left before ``,.;:!?)]`` by the
      removals are dropped; the result is stripped.

    Letters of any script, digits, currency signs, apostrophes and ordinary punctuation are kept.
    """
    tags: list[str] = []

    def _stash(value: str) -> str:
        tags.append(value)
        return _PLACEHOLDER.format(len(tags) - 1)

    text = text.replace("\x00", "")
    text = _EMOTION_RE.sub(lambda m: _stash(f"<{m.group(1).lower()}>"), text)
    text = html.unescape(text)
    text = _AUTOLINK_RE.sub(r"\1", text)
    text = _HTML_BREAK_RE.sub(" ", text)
    text = _HTML_TAG_RE.sub("", text)
    text = _FENCE_LINE_RE.sub("", text)
    text = _FENCE_RE.sub("", text)
    text = _INLINE_CODE_RE.sub(lambda m: _stash(m.group(1)), text)
    text = _IMAGE_RE.sub("", text)
    text = _LINK_RE.sub(r"\1", text)
    text = _REF_LINK_RE.sub(r"\1", text)
    text = _TABLE_SEP_RE.sub("", text)
    text = _RULE_RE.sub("", text)
    text = _HEADING_RE.sub(r"\1", text)
    text = _QUOTE_RE.sub("", text)
    text = _BULLET_RE.sub("", text)
    text = _TABLE_EDGE_RE.sub("", text)
    text = _TABLE_PIPE_RE.sub(", ", text)
    for _ in range(2):  # nested emphasis such as ***both***
        text = _BOLD_RE.sub(r"\2", text)
        text = _STRIKE_RE.sub(r"\1", text)
        text = _ITALIC_STAR_RE.sub(r"\1", text)
        text = _ITALIC_UNDERSCORE_RE.sub(r"\1", text)
    text = _STRAY_MARK_RE.sub("", text)
    text = _EMOJI_RE.sub("", text)
    for _ in range(2):  # an inline code span may itself hold a stashed emotion tag
        text = _PLACEHOLDER_RE.sub(lambda m: tags[int(m.group(1))], text)
    text = _WS_RE.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    return text.strip()
