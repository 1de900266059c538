"""Orpheus sampling over the ids a position can emit: its 4096-code band and, at frame boundaries, end-of-speech.

After the slot mask (`vllm_orpheus_logits`) every other logit of the row is -inf, yet vLLM's sampler works over
all 156 940: its top-k/top-p filter sorts or scans the whole row (0.9 ms of a 9 ms step at 192 streams on an
H200), and its draw divides by the temperature, takes a softmax and an exponential race over it. Here both run on
the 4097 columns that can still be drawn, in the slot logits processor:

* the filter is vLLM's top-k, then top-p over what top-k kept, on ``logits / temperature``: the ids kept are the
  ones vLLM keeps (its reference implementation is the tests' oracle);
* the draw (``draw``) is the same distribution as vLLM's over those ids (the exponential race ``argmax(p / E)``
  with ``E ~ Exp(1)``, written as ``argmax(logit / T - log E)``), after which the row keeps one finite logit, the
  drawn id's. Such a request goes to vLLM with temperature 0, so a batch of them takes vLLM's greedy path: one
  argmax, without the temperature, softmax and noise passes over the whole vocabulary.

A request asks for it in ``SamplingParams.extra_args``: `TOP_P_KEY` / `TOP_K_KEY` for the filter (vLLM's own
left at 1.0 / 0), and `TEMPERATURE_KEY` (its temperature, vLLM's set to 0) for the draw. Seeded requests keep
vLLM's draw (its per-request generators make them reproducible); greedy ones need neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from oai_server.codec import orpheus
from oai_server.engines.sampling import GREEDY_BELOW  # vLLM's greedy threshold: no filter changes the argmax

TOP_P_KEY = "orpheus_band_top_p"
"""Key in ``SamplingParams.extra_args``: the top-p applied over the band (default 1: none)."""
TOP_K_KEY = "orpheus_band_top_k"
"""Key in ``SamplingParams.extra_args``: the top-k applied over the band (default 0: none)."""
TEMPERATURE_KEY = "orpheus_band_temperature"
"""Key in ``SamplingParams.extra_args``: draw in the band at this temperature (vLLM's own is then 0)."""


@dataclass(frozen=True)
class BandSampling:
    """One request's sampling over the band."""

    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    draw: bool = False
    """Draw the token here (vLLM then takes the only finite logit); False: only filter, vLLM draws."""

    @cached_property
    def values(self) -> tuple[float, float, float]:
        """(temperature, top_p, top_k) as one row of `sample_band`'s ``settings``."""
        return self.temperature, self.top_p, float(self.top_k)


def band_sampling_of(params: Any) -> BandSampling | None:
    """What a request's ``extra_args`` ask of the band; None when nothing here can change its draw."""
    extra = getattr(params, "extra_args", None) or {}
    top_p = float(extra.get(TOP_P_KEY, 1.0))
    top_k = int(extra.get(TOP_K_KEY, 0))
    drawn = extra.get(TEMPERATURE_KEY)
    temperature = float(drawn) if drawn is not None else float(getattr(params, "temperature", 1.0))
    if temperature < GREEDY_BELOW or (drawn is None and top_p >= 1.0 and top_k <= 0):
        return None
    return BandSampling(temperature, top_p, top_k, draw=drawn is not None)


def check_band_args(extra: dict[str, Any]) -> None:
    """`ValueError` for a malformed band key (the frontend calls this through the processor's `validate_params`)."""
    top_p = extra.get(TOP_P_KEY)
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"extra_args[{TOP_P_KEY!r}] must be a number in (0, 1], got {top_p!r}")
    top_k = extra.get(TOP_K_KEY)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"extra_args[{TOP_K_KEY!r}] must be an integer >= 0, got {top_k!r}")
    temperature = extra.get(TEMPERATURE_KEY)
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= GREEDY_BELOW
    ):
        raise ValueError(f"extra_args[{TEMPERATURE_KEY!r}] must be a number >= {GREEDY_BELOW}, got {temperature!r}")


def column_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """``[7, 4097]`` int64: row ``k`` is `band_columns` of audio position ``k`` (its band, then `END_OF_SPEECH`)."""
    return band_columns(torch.arange(orpheus.TOKENS_PER_FRAME, device=device))


def band_columns(positions: torch.Tensor) -> torch.Tensor:
    """``[rows, 4097]`` vocabulary ids each row may emit: its position's band, then `END_OF_SPEECH`."""
    offsets = orpheus.AUDIO_TOKEN_BASE + orpheus.CODEBOOK_SIZE * torch.remainder(positions, orpheus.TOKENS_PER_FRAME)
    band = offsets.unsqueeze(1) + torch.arange(orpheus.CODEBOOK_SIZE, device=positions.device)
    eos = torch.full_like(offsets, orpheus.END_OF_SPEECH).unsqueeze(1)
    return torch.cat([band, eos], dim=1)


@dataclass(frozen=True)
class BandFilter:
    """What `filter_band` needs of the rows' settings, built once for as long as the batch stays the same."""

    temperature: torch.Tensor  # float [rows, 1]
    beyond_k: torch.Tensor | None  # bool [rows, 4097]: ranks past each row's top-k; None when no row has one
    top_p: torch.Tensor  # float [rows, 1]: each row's top-p, inf where it is off


def band_filter(settings: torch.Tensor, any_top_k: bool) -> BandFilter:
    """The `BandFilter` of float ``[rows, 3]`` settings: temperature (> 0), top_p (1: off) and top_k (0: off);
    ``any_top_k``: whether some row has a top-k (known on the host, so no device read is needed)."""
    temperature, top_p, top_k = settings.unbind(1)
    beyond_k = None
    if any_top_k:
        rank = torch.arange(orpheus.CODEBOOK_SIZE + 1, device=settings.device).unsqueeze(0)
        beyond_k = (top_k.unsqueeze(1) > 0) & (rank >= top_k.unsqueeze(1))
    return BandFilter(temperature.unsqueeze(1), beyond_k, torch.where(top_p < 1.0, top_p, float("inf")).unsqueeze(1))


def sample_band(logits: torch.Tensor, positions: torch.Tensor, settings: torch.Tensor, draw: bool) -> torch.Tensor:
    """vLLM's top-k then top-p over each row's band and `END_OF_SPEECH`, then (``draw``) the draw.

    Every row of ``logits`` takes part, in order, and must already be masked to its band (the rest is -inf,
    so it can neither be kept nor shift the probabilities). ``settings`` is float ``[rows, 3]``: temperature
    (> 0), top_p (1: off) and top_k (0: off); `filter_band` says what happens to the columns. Changes ``logits``
    in place and returns it. The whole-row form (the tests'): it reads the top-k column back from the device,
    where the slot processor builds its `BandFilter` once per batch from what the host knows.
    """
    columns = band_columns(positions)
    values = filter_band(logits.gather(1, columns), band_filter(settings, bool((settings[:, 2] > 0).any())), draw)
    return logits.scatter_(1, columns, values)


def filter_band(values: torch.Tensor, spec: BandFilter, draw: bool) -> torch.Tensor:
    """`sample_band` on the band's logits: ``values`` is ``[rows, 4097]``, each row's `band_columns` in order.

    The top-p threshold is vLLM's: an id is dropped when the probability of the ids ranked above it is at least
    ``top_p``; the most likely id always stays. Without ``draw`` the dropped ids become -inf; with it every id
    but the drawn one does (the drawn one keeps its logit). Changes ``values`` in place and returns it.
    """
    ranked, order = (values / spec.temperature).sort(dim=1, descending=True)
    probs = (ranked if spec.beyond_k is None else ranked.masked_fill(spec.beyond_k, float("-inf"))).softmax(1)
    drop = (probs.cumsum(dim=1) - probs) >= spec.top_p
    if spec.beyond_k is not None:
        drop |= spec.beyond_k
    drop[:, 0] = False
    if draw:
        # the exponential race vLLM runs over the whole row, here over the ids the filter kept
        noise = torch.empty_like(ranked).exponential_().log_()
        pick = (ranked.masked_fill(drop, float("-inf")) - noise).argmax(dim=1, keepdim=True)
        drop = torch.ones_like(drop).scatter_(1, pick, False)
    return values.masked_fill_(torch.zeros_like(drop).scatter_(1, order, drop), float("-inf"))
