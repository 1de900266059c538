"""SNAC's depthwise convolutions as one Triton kernel each on CUDA (`--snac-depthwise triton`): the same samples.

SNAC's decoder has thirteen depthwise convolutions (one filter per channel, kernel 7): the input's, and one in each
of the twelve residual units (dilations 1, 3 and 9). On CUDA in float32, ATen runs them with its generic depthwise
kernel, a loop with no reuse of what neighbouring outputs read, and on an H200 that kernel took 45 % of the compiled
decoder's GPU time: 10.8 of 24.1 ms for 128 steady windows (`bench/results/h200x2_s14_random_weights/`, `snac_decode.py
--kernel-profile`), for a stencil that reads and writes each activation once. Written as shifted sums for inductor to
fuse (session 14) the decoder got slower, 56 against 48 us a frame.

`depthwise_conv1d` is that stencil as a Triton kernel: one program per row (a batch item's channel) and block of
output samples, the seven taps loaded from the input as it lies (any strides: a cropped decode's slices), summed in
float32. In a residual unit (Snake, depthwise convolution, Snake, 1x1 convolution) the kernel also applies the Snake
after it to its sums before it stores them: inductor cannot fuse that Snake into an opaque call or into the 1x1
convolution (an external kernel), so on its own it would write the activation and read it back once more, the
unit's largest avoidable traffic. `use_depthwise` swaps SNAC's depthwise `Conv1d`s for `TritonDepthwiseConv1d`, a
`Conv1d` that calls it through the `oai_server::snac_depthwise_conv1d` custom operator on CUDA (torch.compile and
CUDA graphs see one opaque call) and is ATen's convolution (and `snake`) anywhere else, once the kernel has passed a
check against ATen's on the device (`triton_problem`); a fused Snake is replaced by an identity. Its samples equal
ATen's to float rounding (the sum's order).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Literal, TypeGuard

import torch

logger = logging.getLogger(__name__)

SnacDepthwise = Literal["auto", "aten", "triton"]
SNAC_DEPTHWISE: tuple[SnacDepthwise, ...] = ("auto", "aten", "triton")


def check_depthwise(depthwise: str) -> SnacDepthwise:
    """`depthwise` if it is one of `SNAC_DEPTHWISE`, else ValueError."""
    if depthwise not in SNAC_DEPTHWISE:
        raise ValueError(f"unknown SNAC depthwise kernel {depthwise!r}; one of {', '.join(SNAC_DEPTHWISE)}")
    return depthwise


def resolve_snac_depthwise(depthwise: SnacDepthwise, device: str) -> Literal["aten", "triton"]:
    """`auto` -> ATen's kernel everywhere, until the Triton kernel is measured in the server on the GPU; `triton`
    -> ATen's off CUDA too (the kernel is CUDA's)."""
    if depthwise == "triton" and device.startswith("cuda"):
        return "triton"
    return "aten"


def is_depthwise(module: torch.nn.Module) -> TypeGuard[torch.nn.Conv1d]:
    """Whether `module` is a depthwise convolution `TritonDepthwiseConv1d` computes: one filter per channel, stride 1,
    zero padding given as a number."""
    return (
        type(module) is torch.nn.Conv1d
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
        and module.stride == (1,)
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
    )


def output_length(length: Any, kernel: int, padding: int, dilation: int) -> Any:
    """Samples out of a stride-1 convolution of `length` samples (an int, or torch.compile's symbolic size)."""
    return length + 2 * padding - dilation * (kernel - 1)


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, compiled per kernel size and block on first use (imported late: CPU installs have no
    Triton, and `TRITON_INTERPRET=1` must be set before it decorates)."""
    import triton
    import triton.language as tl

    # One compile per kernel size, block (`_block`) and bias, at warm-up: Triton would otherwise specialise on each
    # length's and stride's divisibility by 16 and the input's alignment (a cropped decode's slice), and a window of a
    # new length met while serving would stall SNAC's thread for a compile. (The time stride stays: it is always 1.)
    @triton.jit(
        do_not_specialize=[
            "channels",
            "length_in",
            "length_out",
            "stride_b",
            "stride_c",
            "padding",
            "dilation",
        ],
        do_not_specialize_on_alignment=["x_ptr"],
    )
    def depthwise_conv1d_kernel(  # type: ignore[no-untyped-def]
        x_ptr,
        w_ptr,
        b_ptr,
        alpha_ptr,
        out_ptr,
        channels,
        length_in,
        length_out,
        stride_b,
        stride_c,
        stride_t,
        padding,
        dilation,
        HAS_BIAS: tl.constexpr,
        HAS_SNAKE: tl.constexpr,
        KERNEL: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)  # batch item * channels + channel
        batch, channel = row // channels, row % channels
        t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        keep = t < length_out
        row_ptr = x_ptr + batch * stride_b + channel * stride_c
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for tap in tl.static_range(KERNEL):
            source = t + tap * dilation - padding
            inside = keep & (source >= 0) & (source < length_in)
            x = tl.load(row_ptr + source * stride_t, mask=inside, other=0.0)
            acc += x.to(tl.float32) * tl.load(w_ptr + channel * KERNEL + tap).to(tl.float32)
        if HAS_BIAS:
            acc += tl.load(b_ptr + channel).to(tl.float32)
        if HAS_SNAKE:  # SNAC's Snake: x + 1 / (alpha + 1e-9) * sin(alpha * x) ** 2
            alpha = tl.load(alpha_ptr + channel).to(tl.float32)
            wave = tl.sin(alpha * acc)
            acc += (1.0 / (alpha + 1e-9)) * (wave * wave)
        tl.store(out_ptr + row * length_out + t, acc.to(out_ptr.dtype.element_ty), mask=keep)

    return depthwise_conv1d_kernel


def _block(length: int) -> int:
    """Output samples a program computes: 1024, or 256 for a row that short (the codes' rate, SNAC's first block).
    Two sizes, so every compile happens at warm-up, whatever lengths cropped decodes meet later."""
    return 256 if length <= 256 else 1024


def depthwise_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
    dilation: int,
    snake_alpha: torch.Tensor | None = None,
    *,
    block: int | None = None,
    warps: int | None = None,
) -> torch.Tensor:
    """``conv1d(x, weight, bias, padding=padding, dilation=dilation, groups=C)`` of `x` ``[B, C, T]`` (weight
    ``[C, 1, K]``) by the Triton kernel, then ``snake(·, snake_alpha)`` (C values) if given, contiguous ``[B, C, T']``,
    in `x`'s dtype (float32 sums); `block` output samples a program and `warps` warps for it (a bench's sweep; by
    default chosen from the row's length)."""
    batch, channels, length = x.shape
    kernel = weight.shape[-1]
    length_out = output_length(length, kernel, padding, dilation)
    out = torch.empty((batch, channels, length_out), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    weight = weight.reshape(channels, kernel).contiguous()
    alpha = snake_alpha.reshape(channels).contiguous() if snake_alpha is not None else None
    block = block or _block(length_out)
    grid = (batch * channels, -(-length_out // block))
    _kernel()[grid](
        x,
        weight,
        bias if bias is not None else weight,  # never read without HAS_BIAS
        alpha if alpha is not None else weight,  # never read without HAS_SNAKE
        out,
        channels,
        length,
        length_out,
        *x.stride(),
        padding,
        dilation,
        HAS_BIAS=bias is not None,
        HAS_SNAKE=alpha is not None,
        KERNEL=kernel,
        BLOCK=block,
        num_warps=warps or max(1, min(8, block // 256)),  # 8 samples a thread at full blocks; a short row's, one warp
    )
    return out


def kernel_runs_on(device: torch.device) -> bool:
    """Whether the custom operator runs the Triton kernel on `device`: on CUDA, and on the CPU under Triton's
    interpreter (``TRITON_INTERPRET=1``: the tests); elsewhere it is ATen's convolution."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """SNAC's Snake activation of `x` ``[B, C, T]`` with `alpha` ``[1, C, 1]``, as `snac.layers.snake` computes it."""
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


@torch.library.custom_op("oai_server::snac_depthwise_conv1d", mutates_args=())
def snac_depthwise_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    snake_alpha: torch.Tensor | None,
    padding: int,
    dilation: int,
) -> torch.Tensor:
    """SNAC's depthwise convolution, and the Snake after it if `snake_alpha` is given: the Triton kernel
    (`depthwise_conv1d`) where it runs (`kernel_runs_on`), else ATen's convolution and `snake`."""
    if kernel_runs_on(x.device):
        return depthwise_conv1d(x, weight, bias, padding, dilation, snake_alpha)
    out = torch.nn.functional.conv1d(x, weight, bias, padding=padding, dilation=dilation, groups=x.shape[1])
    return out if snake_alpha is None else snake(out, snake_alpha)


@snac_depthwise_conv1d.register_fake
def _snac_depthwise_conv1d_shape(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    snake_alpha: torch.Tensor | None,
    padding: int,
    dilation: int,
) -> torch.Tensor:
    length_out = output_length(x.shape[-1], weight.shape[-1], padding, dilation)
    return x.new_empty((x.shape[0], x.shape[1], length_out))


class TritonDepthwiseConv1d(torch.nn.Conv1d):
    """A depthwise `Conv1d` (`is_depthwise`) computed by `snac_depthwise_conv1d`, with the Snake after it fused when
    `snake_alpha` is set; its weight, bias and alpha are the replaced modules' own (shared), and `snac_crop` plans it
    as the convolution it is (a Snake is pointwise)."""

    snake_alpha: torch.nn.Parameter | None

    @classmethod
    def replacing(cls, conv: torch.nn.Conv1d, snake_after: torch.nn.Module | None = None) -> TritonDepthwiseConv1d:
        """The module computing `conv` (`is_depthwise`) with the Triton kernel, and then `snake_after` (a SNAC
        `Snake1d`, `fusable_snake`) if given."""
        module = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            padding=int(conv.padding[0]),
            dilation=conv.dilation[0],
            groups=conv.groups,
            bias=conv.bias is not None,
            device="meta",
        )
        module.weight = conv.weight
        module.bias = conv.bias
        module.snake_alpha = snake_after.alpha if snake_after is not None else None  # type: ignore[assignment]
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of `x` ``[B, C, T]``."""
        out: torch.Tensor = torch.ops.oai_server.snac_depthwise_conv1d(
            x,
            self.weight,
            self.bias,
            self.snake_alpha,
            int(self.padding[0]),
            int(self.dilation[0]),
        )
        return out


def fusable_snake(module: torch.nn.Module | None, channels: int) -> bool:
    """Whether `module` is SNAC's Snake over `channels` channels (`Snake1d`: a per-channel ``alpha`` of shape
    ``[1, C, 1]``), which the kernel can apply to a depthwise convolution's output."""
    alpha = getattr(module, "alpha", None)
    return (
        type(module).__name__ == "Snake1d"
        and isinstance(alpha, torch.nn.Parameter)
        and tuple(alpha.shape) == (1, channels, 1)
    )


def use_depthwise(model: Any, depthwise: Literal["aten", "triton"]) -> Any:
    """`model` (a loaded SNAC) with its decoder's depthwise convolutions computed by `depthwise`, swapped in place
    (`TritonDepthwiseConv1d`, each with the Snake right after it in its `Sequential` fused, that Snake replaced by an
    identity; ATen's: as loaded); returns it. Where the kernel would run and fails its check (`triton_problem`: no
    Triton, a compile error, other samples), ATen's stay, with a warning, instead of every decode failing."""
    if depthwise != "triton":
        return model
    problem = triton_problem(next(model.parameters()).device)
    if problem is not None:
        logger.warning("SNAC's depthwise convolutions keep ATen's kernel: the Triton kernel %s", problem)
        return model
    sites = depthwise_sites(model.decoder)
    for parent, name, conv, snake_name in sites:
        snake_after = getattr(parent, snake_name) if snake_name else None
        setattr(parent, name, TritonDepthwiseConv1d.replacing(conv, snake_after))
        if snake_name:  # the Sequential runs its parts in order: the Snake's place becomes a pass-through
            setattr(parent, snake_name, torch.nn.Identity())
    fused = sum(1 for *_, snake_name in sites if snake_name)
    logger.info(
        "SNAC's %d depthwise convolutions run the Triton kernel (%d with the Snake after them)", len(sites), fused
    )
    return model


def depthwise_sites(decoder: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Conv1d, str | None]]:
    """Each depthwise convolution of `decoder` (`is_depthwise`): its parent, its name, and the name of the Snake right
    after it in a `Sequential` that the kernel can apply (`fusable_snake`), else None."""
    sites: list[tuple[torch.nn.Module, str, torch.nn.Conv1d, str | None]] = []
    for parent in decoder.modules():
        children = list(parent.named_children())
        for index, (name, child) in enumerate(children):
            if not is_depthwise(child):
                continue
            next_name, after = children[index + 1] if index + 1 < len(children) else ("", None)
            fuse = isinstance(parent, torch.nn.Sequential) and fusable_snake(after, child.out_channels)
            sites.append((parent, name, child, next_name if fuse else None))
    return sites


def triton_problem(device: torch.device) -> str | None:
    """Why the Triton kernel cannot serve on `device` (it fails, or differs from ATen's on a small case), or None.
    Where it does not run (`kernel_runs_on`), the swapped modules run ATen's convolution: None."""
    if not kernel_runs_on(device):
        return None
    generator = torch.Generator().manual_seed(0)
    shapes = ((2, 8, 100), (8, 1, 7), (8,), (1, 8, 1))
    x, weight, bias, alpha = (torch.randn(shape, generator=generator).to(device) for shape in shapes)
    try:
        conv = torch.nn.functional.conv1d(x, weight, bias, padding=9, dilation=3, groups=8)
        got = (depthwise_conv1d(x, weight, bias, 9, 3), depthwise_conv1d(x, weight, bias, 9, 3, alpha))
        error = max(float((g - want).abs().max()) for g, want in zip(got, (conv, snake(conv, alpha)), strict=True))
    except Exception as exc:  # no Triton, a compile or launch failure: whatever it is, ATen's kernel still works
        return f"failed ({type(exc).__name__}: {exc})"
    return None if error < 1e-3 else f"differs from ATen's by {error:.3g}"


def uses_triton_depthwise(model: Any) -> bool:
    """Whether any of `model`'s decoder convolutions is a `TritonDepthwiseConv1d`."""
    return any(isinstance(module, TritonDepthwiseConv1d) for module in model.decoder.modules())
