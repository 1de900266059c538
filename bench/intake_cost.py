"""What a speech request's text costs the server's event loop before it reaches the engine: `split_text` and the
Orpheus prompt's tokenization, the way the server does them now against the way it did before session 33.

Before: every input went through the sentence segmenter, and the prompt through the Hugging Face wrapper's `encode`
(one text sent through `encode_batch`, a `BatchEncoding` built around it). Now input that fits one piece skips the
segmenter, and the prompt goes to the Rust tokenizer directly (`codec/tokenizer.direct_encoder`, which checks that
it gives the wrapper's ids). A burst of N requests pays N times this on the one event loop before the last one's
engine request is made (session 33: ~0.73 ms of server CPU a request in all on a 2-core CPU, `bench/burst_probe.py`).

    python bench/intake_cost.py --out bench/results/cpu2core_intake_s33.json   # the demo's Orpheus tokenizer
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import write_json

from oai_server.codec.orpheus import speech_prompt
from oai_server.codec.tokenizer import direct_encoder
from oai_server.pipeline.segmenter import segment_and_pack, split_text

TEXTS = {
    "41 chars": "Hello there! How are you doing today, Sam?",
    "287 chars": (
        "The quick brown fox jumps over the lazy dog, then rests beside the river for a while. Later that "
        "afternoon it wanders back through the tall grass, stopping now and then to listen for the farmer's "
        "dog. When the sun finally sets, it curls up under the old oak tree and falls asleep."
    ),
}


def best_us(run: Callable[[], Any], repeats: int, rounds: int = 5) -> float:
    """The fastest of `rounds` rounds of `repeats` calls, in µs a call."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e6


def measure(tokenizer: Any, repeats: int) -> dict[str, Any]:
    """Per text: µs of `split_text` and of the prompt's tokenization, before and now."""
    direct = direct_encoder(tokenizer)
    rows: dict[str, Any] = {}
    for name, text in TEXTS.items():
        assert segment_and_pack(text) == split_text(text) and speech_prompt(direct, "tara", text) == speech_prompt(
            tokenizer, "tara", text
        )
        before = {
            "split_us": best_us(lambda: segment_and_pack(text), repeats),  # noqa: B023
            "prompt_us": best_us(lambda: speech_prompt(tokenizer, "tara", text), repeats),  # noqa: B023
        }
        now = {
            "split_us": best_us(lambda: split_text(text), repeats),  # noqa: B023
            "prompt_us": best_us(lambda: speech_prompt(direct, "tara", text), repeats),  # noqa: B023
        }
        saved = before["split_us"] + before["prompt_us"] - now["split_us"] - now["prompt_us"]
        rows[name] = {"before": before, "now": now, "saved_us": saved}
    return {"direct_encoder": type(direct).__name__, "texts": rows}


def main(argv: list[str] | None = None) -> int:
    """Measure with the given tokenizer (default: the demo's Orpheus one, built if missing) and write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default=None, help="a tokenizer directory or id (default: the demo's Orpheus)")
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from oai_server.engines.loading import load_tokenizer

    if args.tokenizer is None:
        from oai_server.engines.demo import build_demo_models
        from oai_server.settings import Settings

        args.tokenizer = str(build_demo_models(Path(Settings().cache_dir)).tts_dir)
    report = {
        "tokenizer": args.tokenizer,
        "repeats": args.repeats,
        **measure(load_tokenizer(args.tokenizer), args.repeats),
    }
    for name, row in report["texts"].items():
        b, n = row["before"], row["now"]
        print(
            f"{name}: split {b['split_us']:.1f} -> {n['split_us']:.1f} us, prompt {b['prompt_us']:.1f} -> "
            f"{n['prompt_us']:.1f} us; saved {row['saved_us']:.1f} us a request"
        )
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
