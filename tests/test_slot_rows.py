"""`engines/slot_rows.step_rows`: the slot processor's one pass a step over its rows gives what the per-row reading
it replaced gave (`bench/slot_rows_cost.per_row_reading`, which the bench times it against): each row's table row,
the new audio tokens' seen-table marks and how far each row is synced, whatever vLLM appended since the last step
(one token, several, placeholders -1, text ids, a frame boundary before `min_tokens`)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from oai_server.codec import orpheus
from oai_server.engines.band_penalty import AUDIO_SPAN
from oai_server.engines.slot_rows import HELD_STOP_ROW, SlotRow, step_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from slot_rows_cost import main as slot_rows_cost
from slot_rows_cost import per_row_reading


def _token(rng: random.Random, position: int) -> int:
    kind = rng.random()
    if kind < 0.05:
        return orpheus.END_OF_SPEECH  # a stop id: outside the audio band, never marked
    if kind < 0.08:
        return 7  # a text id
    return orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * (position % 7) + rng.randrange(orpheus.CODEBOOK_SIZE)


def test_step_rows_matches_the_per_row_reading_it_replaced() -> None:
    rng = random.Random(3)
    ours = [SlotRow([], slot, 1.1, min_tokens=rng.choice([0, 14, 28])) for slot in range(12)]
    theirs = [SlotRow([], slot, 1.1, min_tokens=row.min_tokens) for slot, row in enumerate(ours)]
    for _ in range(300):
        for mine, other in zip(ours, theirs, strict=True):
            assert isinstance(mine.output_ids, list) and isinstance(other.output_ids, list)
            for i in range(max(0, mine.synced - 1), len(mine.output_ids)):  # placeholders filled in, most of them
                if mine.output_ids[i] < 0 and rng.random() < 0.7:
                    mine.output_ids[i] = other.output_ids[i] = _token(rng, i)
            for _ in range(rng.choice([0, 1, 1, 1, 1, 2, 3])):  # none, one (usually), or several this step
                token = -1 if rng.random() < 0.1 else _token(rng, len(mine.output_ids))
                mine.output_ids.append(token)
                other.output_ids.append(token)
        assert step_rows(ours) == per_row_reading(theirs)
        assert [row.synced for row in ours] == [row.synced for row in theirs]
    assert all(row.synced > 200 for row in ours)  # it kept up: placeholders only ever held a row for a step or two


def test_a_row_marks_its_own_line_of_the_seen_table() -> None:
    row = SlotRow([], 3, 1.0, min_tokens=14)
    first = orpheus.AUDIO_TOKEN_BASE + 17  # slot 0's code 17
    row.output_ids.append(first)  # type: ignore[attr-defined]
    assert step_rows([row]) == ([1], [3 * AUDIO_SPAN + 17])
    row.output_ids.extend([first] * 6)  # type: ignore[attr-defined]
    assert step_rows([row])[0] == [HELD_STOP_ROW]  # a frame boundary at 7 < min_tokens 14: END_OF_SPEECH held
    assert row.synced == 7 and step_rows([row]) == ([HELD_STOP_ROW], [])


def test_the_bench_times_both_readings_per_row_count(tmp_path: Path) -> None:
    import json

    out = tmp_path / "cost.json"
    assert slot_rows_cost(["--rows", "4,8", "--steps", "5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert sorted(report["rows"]) == ["4", "8"]
    for row in report["rows"].values():
        assert row["before_us"] > 0 and row["now_us"] > 0
        assert row["saved_us"] == row["before_us"] - row["now_us"]
