"""What sending a stream's first frame without lookahead (`--snac-first-lookahead-frames 0`) costs in fidelity.

With the default lookahead of one frame, a stream's first audio waits for its second frame: 14 Orpheus tokens. With
a first lookahead of 0 it goes out after 7, one frame (7 decode steps) sooner, and every later window is the same.
But the first frame is then decoded with no right context at all, and only its last `SEAM_SAMPLES` are decoded
again by the next window. This script measures, streamed against whole decoding (int16 PCM of a float32 decode,
noise off, C=2, L=1, K=4, the server's seams), per first lookahead and per utterance of random codes:

* ``frame0``: the first frame's SNR;
* ``frames0_1``: the first two frames';
* ``whole_utterance``: all `--frames` frames' (a short utterance: one frame weighs 1/48 of it);
* ``frame0_head_<n>``: the first frame's first n samples (`--heads`), the part a first chunk would send if it held
  back the rest of its frame for the next window, as the seams do. Session 21
  (`bench/results/cpu2core_snac_first_frame_s21.json`): that does not rescue a first lookahead of 0. With 1536
  samples held back, the first 512 are still at 30-35 dB on the runs' SNAC (40-43 on the seed-0 draw), against
  60-61 (70-71) with a frame of lookahead: a missing frame of right context reaches across the whole frame.

for the SNAC of the H200 runs (random weights written by `bench/_common.ensure_snac`) and the seed-0 draw.

    python bench/snac_first_frame.py --out bench/results/cpu2core_snac_first_frame_s20.json
    python bench/snac_first_frame.py --heads 512,1024 --out bench/results/cpu2core_snac_first_frame_s21.json
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from snac_fidelity import decode_whole, snr_db, streamed_pcm, utterance  # type: ignore[import-not-found]
from snac_holdback import fidelity_args, snac_draws, write_report  # type: ignore[import-not-found]

from oai_server.codec.orpheus import SAMPLES_PER_FRAME
from oai_server.codec.snac_window_policy import WindowPolicy
from oai_server.codec.snac_windows import SEAM_SAMPLES


def first_frame_snr(
    model: Any, frames: int, seed: int, first_lookahead: int, heads: list[int]
) -> dict[str, float | None]:
    """Streamed against whole decoding of one utterance: its first frame (and its `heads`), first two frames, and
    all of it."""
    codes = utterance(frames, seed)
    whole = decode_whole(model, codes, "cpu")[1]
    streamed = streamed_pcm(model, "cpu", codes, WindowPolicy(2, 1, 4, SEAM_SAMPLES, first_lookahead), False)[0]
    return {
        "frame0": snr_db(whole[:SAMPLES_PER_FRAME], streamed[:SAMPLES_PER_FRAME]),
        "frames0_1": snr_db(whole[: 2 * SAMPLES_PER_FRAME], streamed[: 2 * SAMPLES_PER_FRAME]),
        "whole_utterance": snr_db(whole, streamed),
        **{f"frame0_head_{n}": snr_db(whole[:n], streamed[:n]) for n in heads},
    }


def main(argv: list[str] | None = None) -> int:
    p = fidelity_args(__doc__.split("\n\n")[0])
    p.add_argument("--first-lookaheads", default="1,0", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--heads", default="512,1024", type=lambda s: [int(x) for x in s.split(",")])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        snr = {
            name: {
                f"first_lookahead_{first}": {
                    f"seed{seed}": first_frame_snr(model, args.frames, seed, first, args.heads) for seed in args.seeds
                }
                for first in args.first_lookaheads
            }
            for name, model in snac_draws(args.snac, tmp).items()
        }
    report = {
        "random_weights": args.snac is None,
        "frames": args.frames,
        "seam_samples": SEAM_SAMPLES,
        "heads": args.heads,
        "snr_db": snr,
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
