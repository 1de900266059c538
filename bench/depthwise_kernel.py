"""SNAC's depthwise convolutions alone: ATen's kernel against the Triton kernel (`--snac-depthwise triton`), per layer.

The shapes are the real 24 kHz decoder's, recorded from one decode of the steady window (`--frames`, 7: C=2, K=4,
L=1) at each of `--batch`: every depthwise convolution's channels, dilation and input length. For each, on CUDA, the
median GPU time of ATen's ``conv1d(groups=C)`` and of `snac_depthwise.depthwise_conv1d` at each Triton block size
and warp count of `--blocks` and `--warps` (CUDA events over `--repeats` calls after a warm-up), the bandwidth that
is (the input read once, the output written once, in float32), and the largest difference from ATen. For the twelve
convolutions a Snake follows (the residual units'), also that pair: ATen's convolution then the Snake as inductor
compiles it (the compiled decoder's two kernels), against the kernel with the Snake fused (as the server runs it).
Without CUDA it records the shapes and times ATen's alone, and the pair with an eager Snake (the kernel is CUDA's; a
CI smoke test). No vLLM needed: on the GPU it runs after call B of bench/README.md's setup. Random weights (the
timing does not depend on them).

    python bench/depthwise_kernel.py --device cuda --batch 8,64 --out $OUT/depthwise_kernel.json
"""

from __future__ import annotations

import argparse
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
from snac_decode import snac_model

from oai_server.codec.orpheus import frames_to_levels
from oai_server.codec.snac_depthwise import depthwise_conv1d, depthwise_sites, snake


def depthwise_layers(frames: int) -> list[dict[str, Any]]:
    """Each depthwise convolution of the real 24 kHz decoder as one decode of `frames` frames meets it, with the alpha
    of the Snake right after it (None where none is)."""
    model = snac_model(None, "cpu", fold=True, noise=False)  # the seed-0 draw snac_decode.py times
    layers: list[dict[str, Any]] = []
    sites = depthwise_sites(model.decoder)
    alpha_after = {
        conv: getattr(parent, snake_name).alpha.detach().clone() for parent, _, conv, snake_name in sites if snake_name
    }

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        layers.append(
            {
                "channels": module.in_channels,  # type: ignore[dict-item]
                "kernel": module.kernel_size[0],  # type: ignore[index]
                "dilation": module.dilation[0],  # type: ignore[index]
                "padding": module.padding[0],  # type: ignore[index]
                "length": inputs[0].shape[-1],
                "weight": module.weight.detach().clone(),  # type: ignore[operator]
                "bias": None if module.bias is None else module.bias.detach().clone(),  # type: ignore[operator]
                "snake_alpha": alpha_after.get(module),
            }
        )

    for _, _, conv, _ in sites:
        conv.register_forward_hook(record)
    codes = [torch.from_numpy(level) for level in frames_to_levels(np.zeros((1, frames, 7), dtype=np.int64))]
    with torch.inference_mode():
        model.decode(codes)
    return layers


def gpu_ms(run: Any, device: str, repeats: int) -> float:
    """Median milliseconds of `run()` (CUDA events on CUDA, the wall clock elsewhere), after two warm-up calls."""
    run()
    run()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            run()
            times.append((time.perf_counter() - began) * 1e3)
    return float(np.median(times))


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every layer at every batch size (`measure_layer`)."""
    rows = []
    # the compiled decoder's Snake after an (opaque) convolution: one inductor kernel; eager off CUDA (a smoke test)
    args.snake = torch.compile(snake, dynamic=True) if args.device.startswith("cuda") else snake
    for batch in args.batch:
        for index, layer in enumerate(depthwise_layers(args.frames)):
            rows.append(measure_layer(args, batch, index, layer))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def measure_layer(args: argparse.Namespace, batch: int, index: int, layer: dict[str, Any]) -> dict[str, Any]:
    """One layer at one batch size: ATen's time, and on CUDA the Triton kernel's at each block and warp count and as
    the server launches it."""
    generator = torch.Generator().manual_seed(index)
    x = torch.randn(batch, layer["channels"], layer["length"], generator=generator).to(args.device)
    weight = layer["weight"].to(args.device)
    bias = None if layer["bias"] is None else layer["bias"].to(args.device)
    pad, dilation = layer["padding"], layer["dilation"]

    def aten() -> torch.Tensor:
        return torch.nn.functional.conv1d(x, weight, bias, padding=pad, dilation=dilation, groups=x.shape[1])

    def triton(block: int | None = None, warps: int | None = None) -> torch.Tensor:
        return depthwise_conv1d(x, weight, bias, pad, dilation, block=block, warps=warps)

    alpha = None if layer["snake_alpha"] is None else layer["snake_alpha"].to(args.device)

    def aten_snake() -> torch.Tensor:
        out: torch.Tensor = args.snake(aten(), alpha)
        return out

    def triton_snake() -> torch.Tensor:
        return depthwise_conv1d(x, weight, bias, pad, dilation, alpha)

    with torch.inference_mode():
        reference = aten()
        megabytes = (x.numel() + reference.numel()) * x.element_size() / 1e6
        row: dict[str, Any] = {
            "batch": batch,
            "layer": index,
            **{k: layer[k] for k in ("channels", "dilation", "length")},
            "megabytes": round(megabytes, 2),
            "aten_ms": round(gpu_ms(aten, args.device, args.repeats), 4),
            "triton": [],
        }
        if args.device.startswith("cuda"):
            for block in args.blocks:
                for warps in args.warps:
                    ms = gpu_ms(lambda block=block, warps=warps: triton(block, warps), args.device, args.repeats)
                    row["triton"].append(
                        {
                            "block": block,
                            "warps": warps,
                            "ms": round(ms, 4),
                            "gb_per_s": round(megabytes / ms, 1),
                            "max_abs_diff": float((triton(block, warps) - reference).abs().max()),
                        }
                    )
            row["triton_default_ms"] = round(gpu_ms(triton, args.device, args.repeats), 4)
        if alpha is not None:
            row["aten_snake_ms"] = round(gpu_ms(aten_snake, args.device, args.repeats), 4)
            if args.device.startswith("cuda"):
                row["triton_snake_ms"] = round(gpu_ms(triton_snake, args.device, args.repeats), 4)
                row["triton_snake_max_abs_diff"] = float((triton_snake() - aten_snake()).abs().max())
    row["aten_gb_per_s"] = round(megabytes / row["aten_ms"], 1)
    return row


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per batch size, the decode's depthwise convolutions summed: ATen's, the kernel's default, its best per layer;
    and with the Snakes after them: ATen's and the compiled Snake's (what the compiled decoder runs) against the
    server's kernels (the Snake fused where one follows)."""
    out: dict[str, Any] = {}
    for batch in sorted({row["batch"] for row in rows}):
        of_batch = [row for row in rows if row["batch"] == batch]
        entry: dict[str, Any] = {"layers": len(of_batch), "aten_ms": round(sum(r["aten_ms"] for r in of_batch), 3)}
        if all("triton_default_ms" in r for r in of_batch):
            entry["triton_default_ms"] = round(sum(r["triton_default_ms"] for r in of_batch), 3)
            entry["triton_best_ms"] = round(sum(min(t["ms"] for t in r["triton"]) for r in of_batch if r["triton"]), 3)
        entry["with_snakes_aten_ms"] = round(sum(r.get("aten_snake_ms", r["aten_ms"]) for r in of_batch), 3)
        if all("triton_default_ms" in r for r in of_batch):
            fused = sum(r.get("triton_snake_ms", r["triton_default_ms"]) for r in of_batch)
            entry["with_snakes_triton_ms"] = round(fused, 3)
        out[str(batch)] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", default="1,8", type=lambda s: [int(x) for x in s.split(",")], help="windows a decode")
    p.add_argument("--frames", type=int, default=7, help="frames a window decodes (the steady one: C=2 + K=4 + L=1)")
    p.add_argument("--blocks", default="256,512,1024,2048", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--warps", default="2,4,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rows = measure(args)
    report = {
        "device": args.device,
        "random_weights": True,
        "frames": args.frames,
        "rows": rows,
        "totals": totals(rows),
    }
    print("totals:", json.dumps(report["totals"]), flush=True)
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
