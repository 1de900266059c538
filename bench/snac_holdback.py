"""What holding back the last samples of every streamed SNAC chunk would buy in seam fidelity, and cost in slack.

The server emits each chunk of frames once the frame after it is known (`--snac-lookahead-frames 1`): the last
sample of a chunk has 2048 samples of right context, below SNAC's receptive radius (~4757). On the H200 runs'
SNAC (random weights written by `bench/_common.ensure_snac`) the streamed decode is then 48.9 dB from the whole
decode, below the issue's 50 dB (`bench/results/h200_s19_random_weights/snac/`); on another random draw it is
58.4 dB (`bench/results/cpu2core_snac_context_s14.json`), and a second frame of lookahead gives 87 dB at +85 ms of
first audio. This script measures a middle way without the latency: each chunk's last `m` samples are held back
and taken from the next window instead, where they have `m` more samples of right context. The first audio comes as
early (with `m` fewer samples), and the stream's samples come out `m` samples later against generation, so:

* ``snr``: streamed against whole decoding (int16 PCM of a float32 decode, noise off, 48 frames, C=2, L=1, K=4),
  per `m`, through the server's own windows and stitching with `--snac-seam-samples m`, for the SNAC at ``--snac``
  (default: the H200 runs' weights, written here) and the script's own seed-0 draw;
* ``slack``: for a client that starts playing once 250 ms are buffered, the least audio it has left when a chunk
  arrives (negative: an underrun), with generation at a steady RTF, per `m`: what it costs the capacity criterion.

    python bench/snac_holdback.py --out bench/results/cpu2core_snac_holdback_s19.json

The server holds back `SEAM_SAMPLES` (240: the crossfade held them back already, so they cost nothing);
longer seams would cost their length in slack.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from _common import ensure_snac  # type: ignore[import-not-found]
from snac_decode import snac_model  # type: ignore[import-not-found]
from snac_fidelity import decode_whole, streamed_snr, utterance  # type: ignore[import-not-found]

from oai_server.codec.orpheus import SAMPLE_RATE, SAMPLES_PER_FRAME
from oai_server.codec.snac_window_policy import WindowPolicy

F = SAMPLES_PER_FRAME


def load(path: str | None) -> Any:
    """SNAC without its noise blocks, on the CPU: from `path`, or the seed-0 draw of the real 24 kHz config."""
    return snac_model(path, "cpu", fold=True, noise=False)


def snac_draws(snac: str | None, tmp: str) -> dict[str, Any]:
    """The SNACs the fidelity scripts measure, noise off: `snac` (default: the H200 runs' random weights, written
    into `tmp`) and the seed-0 draw."""
    if snac is None:
        runs_snac = Path(tmp) / "snac"
        ensure_snac(runs_snac)
        return {"h200_runs_snac": load(str(runs_snac)), "seed0_noise_free": load(None)}
    return {snac: load(snac), "seed0_noise_free": load(None)}


def fidelity_args(description: str) -> argparse.ArgumentParser:
    """The fidelity scripts' shared flags: --snac, --frames, --threads, --out."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--snac", default=None, help="a SNAC dir (default: the H200 runs' random weights, written here)")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    return p


def write_report(report: dict[str, Any], out: Path | None) -> None:
    """Print `report` as JSON, and write it to `out` when given."""
    print(json.dumps(report, indent=1))
    if out:
        out.write_text(json.dumps(report, indent=1) + "\n")


def held_back_snr(model: Any, frames: int, holdbacks: list[int]) -> dict[int, float | None]:
    """Streamed against whole decoding, per m: the server's own windows and stitching with `--snac-seam-samples m`
    (each chunk's last m samples from the next window), as `bench/snac_decode.py` measures its default."""
    codes = utterance(frames)
    whole = decode_whole(model, codes, "cpu")[1]
    return {
        m: streamed_snr(model, "cpu", codes, whole, [4], policy=WindowPolicy(2, 1, 4, m), graphs=False)[0]["snr_db"]
        for m in holdbacks
    }


def least_slack_ms(rtf: float, holdback: int, frames: int = 120, prebuffer_s: float = 0.25) -> float:
    """The least buffered audio (ms) when a chunk arrives, for a client playing from `prebuffer_s` buffered."""
    frame_s = F / SAMPLE_RATE * rtf
    planner = WindowPolicy(2, 1, 4).planner()
    arrivals: list[tuple[float, int]] = []  # (time, samples delivered up to)
    emitted = 0
    for f in range(frames):
        for window in planner.add([(0,)]):
            emitted += window.count
            arrivals.append(((f + 1) * frame_s, emitted * F - holdback))
    for window in planner.finish():
        emitted += window.count
        arrivals.append((frames * frame_s, emitted * F))
    start = next((t for t, s in arrivals if s >= prebuffer_s * SAMPLE_RATE), arrivals[-1][0])
    least, delivered = float("inf"), 0
    for t, samples in arrivals:
        if t > start:
            least = min(least, (delivered - (t - start) * SAMPLE_RATE) / SAMPLE_RATE)
        delivered = samples
    return round(1000 * least, 1)


def main(argv: list[str] | None = None) -> int:
    p = fidelity_args(__doc__.split("\n\n")[0])
    p.add_argument("--holdbacks", default="0,128,256,512,768,1024,1536", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--rtfs", default="0.8,0.9,0.95,1.0", type=lambda s: [float(x) for x in s.split(",")])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        draws = snac_draws(args.snac, tmp)
        snr = {name: held_back_snr(model, args.frames, args.holdbacks) for name, model in draws.items()}
    slack = {str(rtf): {m: least_slack_ms(rtf, m) for m in args.holdbacks} for rtf in args.rtfs}
    write_report(
        {"random_weights": args.snac is None, "frames": args.frames, "snr_db": snr, "least_slack_ms": slack}, args.out
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
