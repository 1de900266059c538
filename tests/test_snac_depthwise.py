"""SNAC's depthwise convolutions by one Triton kernel each (`codec/snac_depthwise.py`, `--snac-depthwise triton`).

The kernel is CUDA's; here it runs under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors, in a subprocess:
the variable must be set before Triton decorates): against ATen's convolution for every dilation, with and without a
bias, on strided inputs, and through the whole decoder: whole, cropped and torch.compile'd. In this process (no
interpreter) the swapped modules are ATen's convolution, so the swap itself, the crop's plan and the settings are
checked here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from oai_server.codec.snac_crop import receptive_plan
from oai_server.codec.snac_depthwise import (
    TritonDepthwiseConv1d,
    check_depthwise,
    fusable_snake,
    is_depthwise,
    resolve_snac_depthwise,
    use_depthwise,
    uses_triton_depthwise,
)
from oai_server.codec.snac_model import load_snac
from oai_server.codec.snac_service import SnacService
from oai_server.engines.demo import SNAC_DEMO_CONFIG
from oai_server.settings import Settings

from .test_snac_crop import latents_of
from .test_snac_graphs import quiet_model

ROOT = Path(__file__).resolve().parent.parent


def interpreted(script: str) -> list[str]:
    """The lines `script` prints, run by this Python with ``TRITON_INTERPRET=1`` from the project's root."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-c", script]
    result = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()


def test_the_swap_replaces_every_depthwise_convolution_and_keeps_weights_and_plan() -> None:
    model = quiet_model(SNAC_DEMO_CONFIG)
    depthwise = [m for m in model.decoder.modules() if is_depthwise(m)]
    assert len(depthwise) == 13  # the input's, and one in each of the 4 x 3 residual units
    plans = receptive_plan(list(model.decoder.model))
    latents = latents_of(model, 2, 5, seed=1)
    with torch.inference_mode():
        before = model.decoder(latents)
    weights = [m.weight for m in depthwise]
    units = [m.block for m in model.decoder.modules() if type(m).__name__ == "ResidualUnit"]
    alphas = [unit[2].alpha for unit in units]  # each unit: Snake, depthwise convolution, Snake, 1x1 convolution
    snakes = sum(type(m).__name__ == "Snake1d" for m in model.decoder.modules())

    assert use_depthwise(model, "triton") is model
    swapped = [m for m in model.decoder.modules() if isinstance(m, TritonDepthwiseConv1d)]
    assert len(swapped) == 13 and uses_triton_depthwise(model)
    assert not any(is_depthwise(m) for m in model.decoder.modules())  # none left behind
    assert all(new.weight is old for new, old in zip(swapped, weights, strict=True))  # shared, not copied
    # the Snake after each unit's convolution is the kernel's now (the input's convolution has none after it)
    assert swapped[0].snake_alpha is None
    assert all(new.snake_alpha is old for new, old in zip(swapped[1:], alphas, strict=True))
    assert all(isinstance(unit[2], torch.nn.Identity) and type(unit[0]).__name__ == "Snake1d" for unit in units)
    assert sum(type(m).__name__ == "Snake1d" for m in model.decoder.modules()) == snakes - 12
    assert receptive_plan(list(model.decoder.model)) == plans  # the crop plans it as the convolution it is
    with torch.inference_mode():
        after = model.decoder(latents)  # no interpreter here: ATen's convolution and Snake through the custom operator
    assert torch.equal(before, after)


def test_only_a_snake_of_the_convolution_s_channels_right_after_it_is_fused() -> None:
    from snac.layers import Snake1d

    conv = torch.nn.Conv1d(4, 4, 7, padding=3, groups=4)
    unit = torch.nn.Sequential(Snake1d(4), conv, Snake1d(4), torch.nn.Conv1d(4, 4, 1))
    other = torch.nn.Sequential(torch.nn.Conv1d(3, 3, 7, padding=3, groups=3), torch.nn.Tanh())
    model = torch.nn.Module()
    model.decoder = torch.nn.Sequential(unit, other)
    use_depthwise(model, "triton")
    assert isinstance(unit[1], TritonDepthwiseConv1d) and unit[1].snake_alpha is not None
    assert isinstance(unit[2], torch.nn.Identity) and isinstance(unit[0], Snake1d)  # the Snake before it stays
    assert isinstance(other[0], TritonDepthwiseConv1d) and other[0].snake_alpha is None
    assert isinstance(other[1], torch.nn.Tanh)
    assert not fusable_snake(Snake1d(3), 4) and not fusable_snake(None, 4) and fusable_snake(Snake1d(4), 4)


def test_aten_leaves_the_model_as_loaded() -> None:
    model = quiet_model(SNAC_DEMO_CONFIG)
    use_depthwise(model, "aten")
    assert not uses_triton_depthwise(model)
    assert sum(is_depthwise(m) for m in model.decoder.modules()) == 13


def test_the_setting_chooses_triton_only_on_cuda_and_only_when_asked() -> None:
    assert Settings().snac_depthwise == "auto"
    assert Settings(snac_depthwise="triton").snac_depthwise == "triton"
    assert resolve_snac_depthwise("auto", "cuda") == "aten"  # until measured in the server on the GPU
    assert resolve_snac_depthwise("triton", "cuda:1") == "triton"
    assert resolve_snac_depthwise("triton", "cpu") == "aten"  # the kernel is CUDA's
    assert resolve_snac_depthwise("aten", "cuda") == "aten"
    assert check_depthwise("triton") == "triton"
    with pytest.raises(ValueError, match="unknown SNAC depthwise kernel 'cudnn'"):
        check_depthwise("cudnn")


def test_load_snac_on_the_cpu_keeps_aten_even_when_triton_is_asked(noiseless_snac: Path) -> None:
    assert not uses_triton_depthwise(load_snac(str(noiseless_snac), "cpu", torch.float32, "triton"))


def test_the_engine_side_service_loads_with_the_kernel_it_is_told_and_refuses_an_unknown_one(
    noiseless_snac: Path,
) -> None:
    service = SnacService(f"\0oai-snac-test-depthwise-{os.getpid()}", "cpu")
    try:
        assert service.handle("load", str(noiseless_snac), "float32", 8, "off", "aten") is None
        assert service.model is not None and not uses_triton_depthwise(service.model)
        assert service.handle("stats")["depthwise"] == "aten"  # what a bench's log shows of the engine's SNAC
        assert service.handle("load", str(noiseless_snac), "float32", 8, "off") is None  # a server before it
        with pytest.raises(ValueError, match="unknown SNAC depthwise kernel"):
            service.handle("load", str(noiseless_snac), "float32", 8, "off", "bogus")
    finally:
        service.close()


INTERPRETED = textwrap.dedent(
    """
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    from oai_server.codec.snac_crop import decode_span_of
    from oai_server.codec.snac_depthwise import depthwise_conv1d, snake, use_depthwise, uses_triton_depthwise
    from oai_server.codec.snac_fusion import CompiledSnac
    from oai_server.engines.demo import SNAC_DEMO_CONFIG
    from tests.test_snac_crop import latents_of
    from tests.test_snac_graphs import quiet_model

    out = {"kernel": [], "snake": []}
    generator = torch.Generator().manual_seed(0)
    for batch, channels, length, dilation, bias in [(2, 5, 40, 1, True), (1, 4, 100, 9, False), (1, 3, 5, 3, True)]:
        x = torch.randn(batch, channels, length + 10, generator=generator)[..., 4 : 4 + length]  # a strided view
        weight = torch.randn(channels, 1, 7, generator=generator)
        b = torch.randn(channels, generator=generator) if bias else None
        got = depthwise_conv1d(x, weight, b, 3 * dilation, dilation)
        want = torch.nn.functional.conv1d(x, weight, b, padding=3 * dilation, dilation=dilation, groups=channels)
        out["kernel"].append([list(got.shape) == list(want.shape), float((got - want).abs().max())])
        alpha = torch.rand(1, channels, 1, generator=generator) * 2 + 0.1
        fused = depthwise_conv1d(x, weight, b, 3 * dilation, dilation, alpha)
        out["snake"].append([float((fused - snake(want, alpha)).abs().max()), float((fused - got).abs().max())])
    x = torch.randn(1, 2, 10, generator=generator).half()
    weight = torch.randn(2, 1, 7, generator=generator).half()
    got = depthwise_conv1d(x, weight, None, 3, 1)
    want = torch.nn.functional.conv1d(x.float(), weight.float(), None, padding=3, groups=2)
    out["half"] = [str(got.dtype), float((got.float() - want).abs().max())]

    reference = quiet_model(SNAC_DEMO_CONFIG)
    model = use_depthwise(quiet_model(SNAC_DEMO_CONFIG), "triton")
    out["swapped"] = uses_triton_depthwise(model)  # the kernel passed its check under the interpreter
    codes = [torch.randint(0, 4096, (1, 3 << level), generator=generator) for level in range(3)]
    with torch.inference_mode():
        whole = reference.decode(codes)
        out["whole"] = float((decode_span_of(model, codes, 0, 3 * 2048) - whole).abs().max())
        out["cropped"] = float((decode_span_of(model, codes, 1808, 3 * 2048) - whole[..., 1808:]).abs().max())
        out["compiled"] = float((decode_span_of(CompiledSnac(model), codes, 0, 3 * 2048) - whole).abs().max())
    print(json.dumps(out))
    """
)


def test_without_triton_the_swap_keeps_aten_s_kernel_with_a_warning() -> None:
    """Where the kernel would run (here Triton's interpreter) but Triton cannot be imported, the model keeps ATen's
    convolutions and decodes, rather than failing every decode."""
    script = textwrap.dedent(
        """
        import builtins, logging, sys
        real_import = builtins.__import__
        def no_triton(name, *args, **kwargs):
            if name == "triton" or name.startswith("triton."):
                raise ImportError("no Triton here")
            return real_import(name, *args, **kwargs)
        builtins.__import__ = no_triton
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
        from oai_server.codec.snac_depthwise import uses_triton_depthwise, use_depthwise
        from oai_server.engines.demo import SNAC_DEMO_CONFIG
        from tests.test_snac_graphs import quiet_model
        model = use_depthwise(quiet_model(SNAC_DEMO_CONFIG), "triton")
        print("swapped" if uses_triton_depthwise(model) else "kept")
        """
    )
    lines = interpreted(script)
    assert lines[-1] == "kept"
    assert any("keep ATen's kernel: the Triton kernel failed (ImportError: no Triton here)" in line for line in lines)


def test_the_triton_kernel_equals_aten_under_triton_s_interpreter() -> None:
    pytest.importorskip("triton", reason="the test extra installs Triton (its interpreter runs the kernel on CPU)")
    out = json.loads(interpreted(INTERPRETED)[-1])
    assert [ok for ok, _ in out["kernel"]] == [True, True, True]
    assert max(diff for _, diff in out["kernel"]) < 1e-5
    assert max(diff for diff, _ in out["snake"]) < 1e-5  # the Snake applied to the sums, as SNAC's after ATen's
    assert min(change for _, change in out["snake"]) > 1e-2  # and applied at all
    assert out["half"][0] == "torch.float16" and out["half"][1] < 2e-2  # float32 sums, one float16 rounding
    assert out["swapped"]
    assert out["whole"] < 1e-5 and out["cropped"] < 1e-5 and out["compiled"] < 1e-5, out
