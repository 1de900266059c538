"""What reading its rows costs the Orpheus slot processor every step on vLLM's engine-core thread, on the host.

`engines/slot_rows.step_rows` (session 34) against the reading it replaced (`per_row_reading`: each row's table row
from a method call, then its new tokens through a slice, a `min` and a comprehension): N rows, each gaining one
audio token a step, as at a steady decode. Pure Python, no torch: the figure is what vLLM's thread spends before the
processor's first kernel launch, which the GPU waits for when the engine is host-bound.

    python bench/slot_rows_cost.py --rows 64,192,384 --out bench/results/cpu2core_slot_rows_s34.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import write_json

from oai_server.codec import orpheus
from oai_server.engines.band_penalty import AUDIO_SPAN
from oai_server.engines.slot_rows import HELD_STOP_ROW, SlotRow, step_rows


def per_row_reading(rows: Sequence[SlotRow]) -> tuple[list[int], list[int]]:
    """The reading `step_rows` replaced (session 33's `_Row.table_row` and `_new_marks`), with the same results."""
    slots = []
    for row in rows:
        position = len(row.output_ids)
        slot = position % orpheus.TOKENS_PER_FRAME
        slots.append(HELD_STOP_ROW if slot == 0 and position < row.min_tokens else slot)
    marks: list[int] = []
    low, high = orpheus.AUDIO_TOKEN_BASE, orpheus.AUDIO_TOKEN_END
    for row in rows:
        new = row.output_ids[row.synced :]
        if not new:
            continue
        if min(new) < 0:
            new = new[: next(i for i, token in enumerate(new) if token < 0)]
        row.synced += len(new)
        offset = row.slot * AUDIO_SPAN - low
        marks += [offset + token for token in new if low <= token < high]
    return slots, marks


def us_per_step(read: Callable[[Sequence[SlotRow]], Any], rows: int, steps: int) -> float:
    """µs a step of `read` over `rows` rows that each gained one audio token (the best of 5 rounds)."""
    table = [SlotRow([orpheus.AUDIO_TOKEN_BASE] * 100, slot, 1.1, synced=100) for slot in range(rows)]
    best = float("inf")
    for _ in range(5):
        spent = 0.0
        for step in range(steps):
            token = orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * (step % 7) + step % 50
            for row in table:
                row.output_ids.append(token)  # type: ignore[attr-defined]
            started = time.perf_counter()
            read(table)
            spent += time.perf_counter() - started
        best = min(best, spent / steps)
    return best * 1e6


def main(argv: list[str] | None = None) -> int:
    """Time both readings per row count; print and write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="64,192,384")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    report: dict[str, Any] = {"steps": args.steps, "rows": {}}
    for rows in map(int, args.rows.split(",")):
        before = us_per_step(per_row_reading, rows, args.steps)
        now = us_per_step(step_rows, rows, args.steps)
        report["rows"][str(rows)] = {"before_us": before, "now_us": now, "saved_us": before - now}
        print(f"{rows:>4} rows: {before:.1f} -> {now:.1f} us a step; saved {before - now:.1f} us")
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
