"""Score ``SentenceSegmenter`` against the English Golden Rules (pySBD / Pragmatic Segmenter).

Usage: ``python bench/golden_rules.py`` prints ``passed/total`` and each failing case.
The cases live in ``tests/data/golden_rules_en.json`` (provenance inside the file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from oai_server.pipeline.segmenter import SentenceSegmenter

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden_rules_en.json"


def _norm(s: str) -> str:
    return " ".join(s.split())


def segment(text: str) -> list[str]:
    """Segment one golden-rule text: whole text pushed, then flushed, no merging or early cut."""
    seg = SentenceSegmenter(min_chars=0, first_segment_words=None)
    return [_norm(s) for s in seg.push(text) + seg.flush()]


def evaluate() -> tuple[int, list[tuple[str, list[str], list[str]]]]:
    """Return (number passed, failures as (text, expected, got))."""
    cases = json.loads(DATA.read_text(encoding="utf-8"))["cases"]
    failures = []
    for case in cases:
        expected = [_norm(s) for s in case["expected"]]
        got = segment(case["text"])
        if got != expected:
            failures.append((case["text"], expected, got))
    return len(cases) - len(failures), failures


def main() -> int:
    """Print the pass rate and the failing cases."""
    total = len(json.loads(DATA.read_text(encoding="utf-8"))["cases"])
    passed, failures = evaluate()
    print(f"{passed}/{total}")
    for text, expected, got in failures:
        print(f"\nFAIL: {text!r}\n  expected: {expected}\n  got:      {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
