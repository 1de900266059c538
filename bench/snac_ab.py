"""SNAC variants in turn on one engine while its streams come and go: `bench/profile_engine.py --snac-ab`.

Two engines of the same code differ by more than the effects asked about: in session 43 ours' steady step took 9.09
and 10.53 ms on two engines of one variant, where the Triton kernel's cut of SNAC's GPU time predicts ~0.5 ms a step.
So one engine runs every variant: its SNAC service loads and captures each variant's model before the streams start
(the engine idle: a capture while it samples fails it), and between measurements a ``load`` of the same arguments
switches the service back to a model it holds (`SnacService.handle`), between two rounds, with nothing compiled or
captured. The server's side switches what a round does (`SwitchableDecoder`).

A variant is ``key=value`` settings joined by ``+``, variants joined by ``,`` (no spaces, so it passes through
`gpu_session.sh`'s ``CHURN_VARIANTS`` as one word); a key left out keeps the run's own flag:

* ``depthwise`` (``aten``, ``triton``), ``dtype`` (``auto``, ``float32``, ``float16``, ``bfloat16``), ``fusion``
  (``off``, ``decoder``): the model the engine's service decodes with, as `--snac-depthwise` and the rest;
* ``decode``: ``gpu`` (the server's), ``round-trip`` (one round trip a round to the service, no frames, no GPU work,
  silence back) or ``none`` (silence here, nothing asked: SNAC loaded in the engine but idle).

    --snac-ab depthwise=aten,depthwise=triton,decode=none,decode=round-trip --snac-ab-repeats 2

runs A, B, C, D, D, C, B, A (each repeat the reverse of the one before, so a linear drift cancels), each measured
`--measure-s` after `--snac-ab-settle-s`, each line printed as ``unprofiled, churn, snac <variant>: {...}``
(`churn_table.py` tabulates them).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

from baselines import silence

from oai_server.codec.snac_model import resolve_snac_dtype
from oai_server.codec.snac_service import EngineSnacDecoder
from oai_server.codec.snac_windows import Window, WindowShape

CHOICES = {
    "depthwise": ("aten", "triton"),
    "dtype": ("auto", "float32", "float16", "bfloat16"),
    "fusion": ("off", "decoder"),
    "decode": ("gpu", "round-trip", "none"),
}


@dataclass(frozen=True)
class SnacVariant:
    """One variant of `--snac-ab`: the engine service's model (depthwise, dtype, fusion) and what a round does."""

    label: str
    depthwise: str
    dtype: str
    fusion: str
    decode: str


def parse_variants(text: str, depthwise: str, dtype: str, fusion: str) -> list[SnacVariant]:
    """`--snac-ab`'s variants, each setting not given taken from the run's flags; ValueError for a malformed one."""
    variants = []
    for label in text.split(","):
        settings: dict[str, str] = {"depthwise": depthwise, "dtype": dtype, "fusion": fusion, "decode": "gpu"}
        for setting in filter(None, label.split("+")):
            key, _, value = setting.partition("=")
            if value not in CHOICES.get(key, ()):
                known = ", ".join(f"{k}={'|'.join(v)}" for k, v in CHOICES.items())
                raise ValueError(f"--snac-ab: {setting!r} is none of {known}")
            settings[key] = value
        variants.append(SnacVariant(label=label or "as started", **settings))
    if len(variants) < 2 or len({v.label for v in variants}) < len(variants):
        raise ValueError(f"--snac-ab needs two or more distinct variants, got {text!r}")
    return variants


def schedule(variants: Sequence[SnacVariant], repeats: int) -> Iterator[SnacVariant]:
    """The variants in order, then in reverse, `repeats` times in all: A, B, B, A, A, B, ..."""
    for repeat in range(repeats):
        yield from (variants if repeat % 2 == 0 else reversed(variants))


class SwitchableDecoder(EngineSnacDecoder):
    """The server's decoder through the engine's service, whose rounds do what `decode_mode` says when they start:
    decode in the engine (``gpu``), one round trip there and silence back (``round-trip``), or silence here
    (``none``)."""

    decode_mode = "gpu"

    def decode_groups(self, groups: Sequence[Sequence[Window]]) -> Iterator[list[bytes] | Exception]:
        """A round as `decode_mode` has it: each group's PCM (silence but for ``gpu``) or the error that failed it."""
        mode = self.decode_mode
        if mode == "gpu":
            yield from super().decode_groups(groups)
            return
        if mode == "round-trip":
            try:
                self.connection.call("stats")
            except Exception as exc:
                for _ in groups:
                    yield exc
                return
        for windows in groups:
            shape: WindowShape = windows[0].decode_shape
            yield self._pcm_of(windows, silence(len(windows), shape))


async def switch(decoder: SwitchableDecoder, variant: SnacVariant, snac: str) -> None:
    """The engine's service on `variant`'s model (loaded the first time), the decoder's rounds as `variant` does."""
    dtype = resolve_snac_dtype(variant.dtype, "cuda")
    await asyncio.to_thread(decoder.use_model, snac, dtype, variant.fusion, variant.depthwise)  # type: ignore[arg-type]
    decoder.decode_mode = variant.decode


async def prepare(
    decoder: SwitchableDecoder, variants: Sequence[SnacVariant], snac: str, shapes: Sequence[WindowShape]
) -> None:
    """Load and capture every variant's model in the engine's service (its engine idle), then switch to the first."""
    for variant in [*variants[1:], variants[0]]:
        await switch(decoder, variant, snac)
        await decoder.capture_graphs(shapes)


async def snac_ab(
    decoder: SwitchableDecoder,
    variants: Sequence[SnacVariant],
    measure: Callable[[float], Awaitable[dict[str, Any]]],
    snac: str,
    repeats: int,
    settle_s: float,
) -> dict[str, Any]:
    """Each variant in `schedule`'s order on the running engine, switched to and measured after `settle_s`, every
    run's line printed as it comes; then the engine back on the first variant."""
    runs: list[dict[str, Any]] = []
    for variant in schedule(variants, repeats):
        await switch(decoder, variant, snac)
        runs.append({"snac_variant": variant.label, **await measure(settle_s)})
        print(f"unprofiled, churn, snac {variant.label}: {json.dumps(runs[-1])}", flush=True)
    await switch(decoder, variants[0], snac)
    return {"variants": [{f.name: getattr(v, f.name) for f in fields(v)} for v in variants], "runs": runs}
