"""Tests for ``clean_for_speech``."""

from __future__ import annotations

import pytest

from oai_server.pipeline.text_clean import EMOTION_TAGS, clean_for_speech


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("**Bold** and __strong__ text.", "Bold and strong text."),
        ("Some *italic* and _emphasis_ here.", "Some italic and emphasis here."),
        ("***Both*** at once.", "Both at once."),
        ("~~Old~~ new.", "Old new."),
        ("Run `pip install x` now.", "Run pip install x now."),
        ("Call `__init__` or `my_var`.", "Call __init__ or my_var."),
        ("snake_case and 2 * 3 = 6 stay.", "snake_case and 2 * 3 = 6 stay."),
        ("```python\nprint('hi')\n```\nDone.", "print('hi') Done."),
        ("~~~\ncode\n~~~", "code"),
        ("# Title\n## Sub ##\nText.", "Title Sub Text."),
        ("> Quoted line\n> more.", "Quoted line more."),
        ("- one\n* two\n+ three\n• four\n- [x] done", "one two three four done"),
        ("1. First\n2. Second", "1. First 2. Second"),
        ("See [the docs](https://x.com/a) now.", "See the docs now."),
        ("Look ![a cat](cat.png) here.", "Look here."),
        ("Read [this][1] first.", "Read this first."),
        ("Visit <https://example.com> today.", "Visit https://example.com today."),
        ("| Name | Age |\n|---|:---:|\n| Bob | 5 |", "Name, Age Bob, 5"),
        ("<b>bold</b> and<br/>more <span class='x'>text</span>.", "bold and more text."),
        ("A <!-- comment --> B", "A B"),
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("Great job! 🎉👍🏽 Flags 🇺🇸 done ❤️", "Great job! Flags done"),
        ("Press 1️⃣ now ✅.", "Press 1 now."),
        ("Text with **unclosed bold", "Text with unclosed bold"),
        ("---\nAfter the rule.", "After the rule."),
        ("  lots \n\n of   space\t here  ", "lots of space here"),
        (
            "It costs $29.99, €5 or £3 — don't worry; 3.14%!",
            "It costs $29.99, €5 or £3 — don't worry; 3.14%!",
        ),
        ("日本語のテキスト。Привет, мир! مرحبا", "日本語のテキスト。Привет, мир! مرحبا"),
        (
            "Email john.doe@mail.com or see example.com/a_b.",
            "Email john.doe@mail.com or see example.com/a_b.",
        ),
        ("Ha <laugh> that is funny <sigh> ok.", "Ha <laugh> that is funny <sigh> ok."),
        ("Well < Chuckle > fine <GASP>.", "Well <chuckle> fine <gasp>."),
        ("**<laugh>** `<yawn>`", "<laugh> <yawn>"),
        ("", ""),
    ],
)
def test_clean_for_speech(raw: str, expected: str) -> None:
    assert clean_for_speech(raw) == expected


@pytest.mark.parametrize("tag", EMOTION_TAGS)
def test_every_emotion_tag_survives(tag: str) -> None:
    assert clean_for_speech(f"Oh <{tag}> well.") == f"Oh <{tag}> well."


def test_unknown_tags_are_removed_not_spoken() -> None:
    assert clean_for_speech("Hello <shout>there</shout> <laughs>") == "Hello there"


def test_idempotent() -> None:
    raw = "# Hi\n**Bold** [link](u) 🎉 <laugh> `code` | a | b |"
    once = clean_for_speech(raw)
    assert clean_for_speech(once) == once
