"""SNAC decode cost per emitted frame: the seed's scheme against ours, side by side in one run.

Schemes (all on the real SNAC 24 kHz architecture; random weights unless --snac names a model):

* ``seed``: Canopy's / the seed's decode: weight norm as loaded, eager, one 4-frame window per
  emitted frame (K=1);
* ``eager-K``: ours without graphs: weight norm folded, C=2 / L=1 windows emitting K frames;
* ``graph-K``: the same through the CUDA graphs the server captures at warm-up (CUDA only);
* ``eager-K-bf16``, ``graph-K-fp16``, ...: ours with the model cast to each of `--precisions`
  other than fp32 (fp32, bf16, fp16: those the device runs; `precision` lists which ran);
* ``graph-K-decoder``: ours with each of `--fusions` other than off (the server's ``--snac-fusion``:
  the CUDA graphs of the decoder compiled by torch.compile; on the CPU, eager calls of it).
* ``...-crop``: the steady window's decode cropped to what it keeps (the server's ``--snac-crop-decodes``,
  `codec/snac_crop.py`; `--crops off,on` times both, the default).
* ``...-triton``: SNAC's depthwise convolutions by the Triton kernel (the server's ``--snac-depthwise triton``,
  `codec/snac_depthwise.py`; `--depthwise aten,triton` times both; off CUDA it is ATen's anyway).

``--kernel-profile`` adds, per fusion and depthwise kernel, torch.profiler's GPU kernels of eager decodes of the steady
window at the largest batch, grouped (convolutions, elementwise kernels, the rest), so the
cost per frame is split into where it goes.

For each batch size it prints the time per batch and per emitted frame, and how many real-time
streams SNAC alone could keep up with (one frame is 85.3 ms of audio) on this device. On CUDA it
also checks that graph replay matches eager decoding (noise off). Fidelity (`snac_fidelity.py`,
noise off): the SNR in dB of each precision against fp32, and of our streamed (windowed) decode
against a whole-utterance decode for the default windows (C=2, L=1) and each K (target >= 50 dB).
Usage:

    python bench/snac_decode.py --out /tmp/snac_decode.json                 # CPU: small batches
    python bench/snac_decode.py --device cuda --batch 1,8,32,64,128 --out $OUT/snac_decode.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_json
from snac_fidelity import cast, decode_whole, precision_snr, snr_db, streamed_snr, utterance

from oai_server.codec.orpheus import FRAME_SECONDS, frames_to_levels
from oai_server.codec.snac_depthwise import check_depthwise, use_depthwise
from oai_server.codec.snac_fusion import check_fusion, graph_model
from oai_server.codec.snac_model import decode_pcm, fold_weight_norm, remove_noise_blocks
from oai_server.codec.snac_window_policy import WindowPolicy, fills_windows
from oai_server.engines.demo import SNAC_24KHZ_CONFIG


def build_model(args: argparse.Namespace, *, fold: bool, noise: bool = True) -> Any:
    return snac_model(args.snac, args.device, fold=fold, noise=noise)


def snac_model(path: str | None, device: str, *, fold: bool, noise: bool = True) -> Any:
    """SNAC from `path`, or the seed-0 draw of the real 24 kHz config; without `noise`, its NoiseBlocks taken out
    (equal codes then decode equal); with `fold`, its weight norm folded in, as the server loads it."""
    from snac import SNAC

    if path:
        model = SNAC.from_pretrained(path)
        if not noise:  # its config has noise on: take the NoiseBlocks out, so equal codes decode equal
            remove_noise_blocks(model)
    else:
        torch.manual_seed(0)
        model = SNAC(**{**SNAC_24KHZ_CONFIG, "noise": noise})
    if fold:
        fold_weight_norm(model)
    return model.to(device).eval()


def with_depthwise(model: Any, depthwise: str) -> Any:
    """`model` itself for ATen's depthwise kernel; for ``triton`` a copy with the Triton kernel swapped in."""
    return model if depthwise == "aten" else use_depthwise(copy.deepcopy(model), "triton")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_batches(run: Any, device: str, repeats: int) -> float:
    """Median seconds of `run()` after two warm-up calls."""
    run()
    run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


DEFAULT_WINDOWS = (WindowPolicy().context_frames, WindowPolicy().lookahead_frames)
"""The server's context and lookahead frames (C=2, L=1)."""


def windows(batch: int, length: int) -> list[np.ndarray]:
    codes = np.random.default_rng(batch).integers(0, 4096, size=(batch, length, 7))
    return list(frames_to_levels(codes))


def measure(args: argparse.Namespace, precisions: list[str]) -> dict[str, Any]:
    """Time every scheme at every batch size (precisions: those that ran in the fidelity check)."""
    seed_model = build_model(args, fold=False)
    ours = build_model(args, fold=True)
    rows: list[dict[str, Any]] = []
    schemes: list[tuple[str, str, Any, WindowPolicy, bool]] = [
        ("seed", "fp32", seed_model, WindowPolicy(2, 1, 1), False)
    ]
    for precision, depthwise in [(precision, depthwise) for precision in precisions for depthwise in args.depthwise]:
        # a copy per precision and kernel, shared by its fusions (they only wrap it)
        cast_model = with_depthwise(cast(ours, precision), depthwise)
        for fusion in args.fusions:
            model = graph_model(cast_model, fusion)
            suffix = ("" if precision == "fp32" else f"-{precision}") + ("" if fusion == "off" else f"-{fusion}")
            suffix += "" if depthwise == "aten" else f"-{depthwise}"
            for context, lookahead in args.windows:
                tag = "" if (context, lookahead) == DEFAULT_WINDOWS else f"-C{context}L{lookahead}"
                for k in args.frames_per_decode:
                    for crop in args.crops:
                        policy = WindowPolicy(context, lookahead, k, crop=crop == "on")
                        name = f"K{k}{tag}{suffix}" + ("-crop" if crop == "on" else "")
                        if fusion == "off" or not args.device.startswith("cuda"):
                            schemes.append((f"eager-{name}", precision, model, policy, False))
                        if args.device.startswith("cuda"):
                            schemes.append((f"graph-{name}", precision, model, policy, True))
    for name, precision, model, policy, graphs in schemes:
        # the steady window's decode as the server runs it: whole, or cropped (--snac-crop-decodes); K frames kept
        shape = policy.decode_of(policy.steady_shape)
        emitted = policy.frames_per_decode
        graph_set, capture_s = None, None
        if graphs:
            from oai_server.codec.snac_graphs import GraphSet

            started = time.perf_counter()
            try:
                graph_set = GraphSet.capture(model, shape, max(args.batch), args.device)
            except RuntimeError as exc:  # a precision the graphs cannot take: say so, time the others
                rows.append({"scheme": name, "precision": precision, "error": f"capture: {str(exc)[:200]}"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            capture_s = round(time.perf_counter() - started, 2)  # with a fusion: torch.compile's first compiles too
        for batch in args.batch:
            levels = windows(batch, shape[0])
            if graph_set is not None:
                gs = graph_set

                def run(gs: Any = gs, levels: list[np.ndarray] = levels) -> Any:
                    return gs.run(levels)
            else:

                def run(model: Any = model, levels: list[np.ndarray] = levels, shape: Any = shape) -> Any:
                    codes = [torch.from_numpy(level).to(args.device) for level in levels]
                    with torch.inference_mode():
                        return decode_pcm(model, codes, shape).cpu().numpy()

            seconds = time_batches(run, args.device, args.repeats)
            per_frame = seconds / (batch * emitted)
            rows.append(
                {
                    "scheme": name,
                    "precision": precision,
                    "batch": batch,
                    "context_frames": policy.context_frames,
                    "lookahead_frames": policy.lookahead_frames,
                    "window_frames": shape[0],
                    "emitted_frames": emitted,
                    "decoded_samples": shape[3] + 2048 * shape[2],
                    "ms_per_batch": round(seconds * 1e3, 3),
                    "us_per_emitted_frame": round(per_frame * 1e6, 1),
                    "realtime_streams_snac_alone": int(FRAME_SECONDS / per_frame),
                    "capture_s": capture_s,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def fusion_matches_eager(args: argparse.Namespace) -> dict[str, Any]:
    """Each fusion against the eager decoder, same windows, noise off: max |difference| in int16 steps, SNR in dB."""
    model = build_model(args, fold=True, noise=False)
    shape = WindowPolicy().steady_shape
    codes = [torch.from_numpy(level).to(args.device) for level in windows(8, shape[0])]
    with torch.inference_mode():
        eager = decode_pcm(model, codes, shape).cpu().numpy().astype(np.int32)
        out = {}
        for fusion, depthwise in [(fusion, depthwise) for fusion in args.fusions for depthwise in args.depthwise]:
            if fusion != "off" or depthwise != "aten":
                variant = graph_model(with_depthwise(model, depthwise), fusion)
                got = decode_pcm(variant, codes, shape).cpu().numpy().astype(np.int32)
                key = fusion + ("" if depthwise == "aten" else f"-{depthwise}")
                out[key] = int(np.abs(got - eager).max())
                out[f"{key}_snr_db"] = snr_db(eager.astype(np.float64), got.astype(np.float64))
    return out


KERNEL_GROUPS = (  # first match wins: inductor names its fused kernels after their ops, "convolution" too
    ("elementwise (Snakes, residuals, noise)", ("triton", "elementwise_kernel", "unrolled_elementwise")),
    ("convolution", ("conv", "cudnn", "gemm", "sm90", "sm80", "cutlass", "xmma", "implicit", "winograd", "fft")),
)


def kernel_profile(args: argparse.Namespace) -> list[dict[str, Any]]:
    """GPU time per kernel group of eager decodes of the steady window at the largest batch, per fusion and depthwise
    kernel."""
    from torch.profiler import ProfilerActivity, profile

    policy = WindowPolicy(frames_per_decode=max(args.frames_per_decode))
    shape = policy.steady_shape
    decoded = policy.decode_of(shape)  # the steady window's whole decode, as the server's without --snac-crop-decodes
    batch = max(args.batch)
    codes = [torch.from_numpy(level).to(args.device) for level in windows(batch, shape[0])]
    runs, rows = 5, []
    for fusion, depthwise in [(fusion, depthwise) for fusion in args.fusions for depthwise in args.depthwise]:
        model = graph_model(with_depthwise(build_model(args, fold=True), depthwise), fusion)
        with torch.inference_mode():
            for _ in range(3):
                decode_pcm(model, codes, decoded)
            synchronize(args.device)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(runs):
                    decode_pcm(model, codes, decoded)
                synchronize(args.device)
        kernels: dict[str, float] = {}
        for event in prof.key_averages():
            us = float(getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0))
            if us > 0:
                kernels[event.key] = kernels.get(event.key, 0.0) + us / runs
        total = sum(kernels.values())
        groups: dict[str, float] = {}
        for key, us in kernels.items():
            low = key.lower()
            group = next((g for g, marks in KERNEL_GROUPS if any(m in low for m in marks)), "other")
            groups[group] = groups.get(group, 0.0) + us
        top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
        frames = batch * shape[2]
        rows.append(
            {
                "fusion": fusion,
                "depthwise": depthwise,
                "batch": batch,
                "window": list(shape),
                "gpu_us_per_decode": round(total, 1),
                "gpu_us_per_emitted_frame": round(total / frames, 2),
                "groups_us_per_emitted_frame": {g: round(us / frames, 2) for g, us in groups.items()},
                "top_kernels_us_per_decode": [[key[:120], round(us, 1)] for key, us in top],
            }
        )
        print("kernel profile:", json.dumps(rows[-1]), flush=True)
    return rows


def graph_matches_eager(args: argparse.Namespace) -> dict[str, Any]:
    """Graph replay vs eager decode of the same windows, noise off: max |difference| in int16 steps."""
    from oai_server.codec.snac_graphs import GraphSet

    model = build_model(args, fold=True, noise=False)
    shape = WindowPolicy().steady_shape
    graph_set = GraphSet.capture(model, shape, 8, args.device)
    levels = windows(5, shape[0])
    with torch.inference_mode():
        eager = decode_pcm(model, [torch.from_numpy(lv).to(args.device) for lv in levels], shape).cpu().numpy()
    replay = graph_set.run(levels)
    diff = int(np.abs(eager.astype(np.int32) - replay.astype(np.int32)).max())
    return {"max_abs_diff_int16": diff, "ok": diff <= 2}


def set_tf32(allowed: bool) -> None:
    """Whether cuDNN convolutions and matmuls may run float32 as TF32 (torch's default for convolutions)."""
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed


def seams(args: argparse.Namespace, model: Any, codes: np.ndarray, whole_pcm: np.ndarray) -> list[dict[str, Any]]:
    """Streamed against whole decoding for each of `--windows` and `--frames-per-decode`."""
    return [
        row
        for context, lookahead in args.windows
        for row in streamed_snr(
            model, args.device, codes, whole_pcm, args.frames_per_decode, args.snr_target_db,
            WindowPolicy(context, lookahead, ramp=args.ramp, fill=fills_windows(args.fill_windows, args.device)),
        )
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--snac", default=None, help="SNAC dir or id (default: random weights, real 24 kHz config)")
    p.add_argument("--batch", default="1,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--frames-per-decode", default="1,2,4", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument(
        "--windows",
        default="2:1",
        type=lambda s: [tuple(int(n) for n in w.split(":")) for w in s.split(",")],
        help="context:lookahead frames of our windows, e.g. 2:1,1:1 (the server's default 2:1; fewer overlapping "
        "frames decode less per emitted frame, the streamed-vs-whole SNR says what it costs)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--crops", default="off,on", type=lambda s: [x for x in s.split(",") if x],
        help="the steady window's decode whole (off) and cropped (on: --snac-crop-decodes), each a scheme",
    )  # fmt: skip
    p.add_argument("--precisions", default="fp32,bf16,fp16", type=lambda s: [x for x in s.split(",") if x])
    p.add_argument(
        "--fusions", default="off", type=lambda s: [check_fusion(x) for x in s.split(",") if x],
        help="the server's --snac-fusion values to time: off,decoder (torch.compile; off is the reference)",
    )  # fmt: skip
    p.add_argument(
        "--depthwise", default="aten", type=lambda s: [check_depthwise(x) for x in s.split(",") if x],
        help="the server's --snac-depthwise kernels to time: aten,triton (the Triton kernel on CUDA; ATen's elsewhere)",
    )  # fmt: skip
    p.add_argument("--kernel-profile", action="store_true", help="GPU time per kernel group (CUDA only)")
    p.add_argument("--ramp", default=WindowPolicy().ramp, help="the chunks' ramp of the streamed SNRs (--snac-ramp)")
    p.add_argument(
        "--fill-windows", choices=("auto", "on", "off"), default="auto",
        help="the streamed SNRs' windows filled to the steady length (the server's --snac-fill-windows; auto: on CUDA)",
    )  # fmt: skip
    p.add_argument("--snr-frames", type=int, default=48, help="frames of the utterance the SNRs are measured on")
    p.add_argument("--snr-target-db", type=float, default=50.0, help="streamed vs whole target")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms (before capture)")
    p.add_argument(
        "--no-tf32", action="store_true",
        help="float32 convolutions and matmuls in full float32 (by default cuDNN may run them as TF32)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    set_tf32(not args.no_tf32)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")  # the reference
    clean = build_model(args, fold=True, noise=False)
    codes = utterance(args.snr_frames)
    reference = decode_whole(clean, codes, args.device)
    precision = precision_snr(clean, args.precisions, args.device, codes, reference)
    print("precision vs fp32:", json.dumps(precision), flush=True)
    streamed = seams(args, clean, codes, reference[1])
    for row in streamed:
        print("streamed vs whole:", json.dumps(row), flush=True)
    seams_fp32 = []
    if args.device.startswith("cuda") and not args.no_tf32:
        # The seams alone, in full float32 (with TF32 the whole decode and the windows may get different cuDNN
        # algorithms). Session 14's 48.9 dB against 58.2 was not TF32 but the SNAC weights: `--snac` with
        # `ensure_snac`'s random weights gives 48.98 dB in full float32 too, on the GPU and on the CPU (session 19).
        set_tf32(False)
        seams_fp32 = seams(args, clean, codes, decode_whole(clean, codes, args.device)[1])
        set_tf32(True)
        for row in seams_fp32:
            print("streamed vs whole, full float32:", json.dumps(row), flush=True)
    ran = [name for name, result in precision.items() if result["ran"]]
    report: dict[str, Any] = {
        "device": args.device,
        "random_weights": not args.snac,  # drawn here (seed 0); a --snac dir may hold random weights too (ensure_snac)
        "snac": args.snac,
        "cudnn_benchmark": args.cudnn_benchmark,
        "tf32": not args.no_tf32,
        "precision": precision,
        "precisions_ran": ran,
        "streamed_vs_whole": streamed,
        "streamed_vs_whole_full_fp32": seams_fp32,
        **measure(args, ran),
    }
    if args.device.startswith("cuda"):
        report["graph_vs_eager"] = graph_matches_eager(args)
        print("graph vs eager:", report["graph_vs_eager"], flush=True)
    if any(fusion != "off" for fusion in args.fusions) or args.depthwise != ["aten"]:
        report["fusion_vs_eager_max_abs_diff_int16"] = fusion_matches_eager(args)
        print("fusion vs eager:", report["fusion_vs_eager_max_abs_diff_int16"], flush=True)
    if args.kernel_profile and args.device.startswith("cuda"):
        report["kernel_profile"] = kernel_profile(args)
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
